//! The `hearth` client library: the transport to hearthd's local API and its errors, for
//! the `hearth` CLI and other Rust clients (hearth's benchmark harness drives daemons
//! through it).

pub mod client;
pub mod error;
