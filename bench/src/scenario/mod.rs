//! The scenarios hearth-bench measures, each beside its baseline.

pub mod catchup;
pub mod history;
pub mod idle;
pub mod join;
pub mod live;
pub mod locking;
pub mod rotation;
pub mod store;
