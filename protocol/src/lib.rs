//! hearth-protocol: the sans-IO core of hearth.
//!
//! Pure functions and state machines only: no sockets, no files, no clocks (callers pass
//! the time in), no async runtime. The daemon drives this crate; clients use [`api`].

pub mod api;
pub mod code;
pub mod crypto;
pub mod doc;
pub mod duration;
pub mod envelope;
pub mod group;
pub mod identity;
pub mod ids;
pub mod invite;
pub mod lockbox;
pub mod membership;
pub mod session;
pub mod wire;
