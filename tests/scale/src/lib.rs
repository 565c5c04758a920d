//! The control plane at scale. Everything is in `benches/control_plane.rs`:
//! `cargo bench -p scale --bench control_plane -- --monitors N`.
