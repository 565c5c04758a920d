//! `dns-stats`: DNS statistics: queries by type, response codes, top names, query-to-response latency.
