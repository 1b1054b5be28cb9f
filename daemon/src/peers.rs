//! Addresses the member asked this daemon to dial (`hearth peer add`), kept so they are
//! dialled again on every start. They are stored as one sealed value, never as table keys:
//! the addresses of fellow members are exactly what an abuser holding the disk would want.

use libp2p::Multiaddr;

use crate::store::{Store, StoreError, Table, WriteOp};

const PEERS_KEY: &[u8] = b"peers";
/// Most remembered addresses; the oldest are forgotten first.
const MAX_REMEMBERED: usize = 64;

pub fn remember(store: &Store, addr: &Multiaddr) -> Result<(), StoreError> {
    let mut list = remembered(store)?;
    list.retain(|a| a != addr);
    list.push(addr.clone());
    if list.len() > MAX_REMEMBERED {
        list.drain(..list.len() - MAX_REMEMBERED);
    }
    let bytes: Vec<Vec<u8>> = list.iter().map(|a| a.to_vec()).collect();
    store.write(vec![WriteOp::Put {
        table: Table::Peers,
        key: PEERS_KEY.to_vec(),
        value: crate::records::encode(&bytes),
    }])
}

pub fn remembered(store: &Store) -> Result<Vec<Multiaddr>, StoreError> {
    let Some(raw) = store.get(Table::Peers, PEERS_KEY)? else {
        return Ok(Vec::new());
    };
    let list: Vec<Vec<u8>> = postcard::from_bytes(&raw).unwrap_or_default();
    Ok(list
        .into_iter()
        .filter_map(|b| Multiaddr::try_from(b).ok())
        .collect())
}
