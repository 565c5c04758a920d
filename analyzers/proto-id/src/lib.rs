//! `proto-id`: Protocol identification: L3/L4 mix and application protocols by payload inspection with port hints.
