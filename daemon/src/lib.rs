//! hearthd: the hearth daemon. Drives the sans-IO `hearth-protocol` core with tokio:
//! encrypted storage, libp2p networking, the sync engine and the local API.

pub mod code;
pub mod codes;
pub mod config;
pub mod daemon;
mod frame;
pub mod http;
pub mod join;
pub mod leave;
pub mod net;
pub mod node;
pub mod pagefile;
mod peering;
mod peers;
mod records;
pub mod store;
pub mod sync;
