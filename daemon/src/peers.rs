//! Addresses the member asked this daemon to dial (`hearth peer add`), kept so they are
//! dialled again. They are stored as one sealed value, never as table keys: the addresses
//! of fellow members are exactly what an abuser holding the disk would want.
//!
//! An address belongs to the memberships it was proven to reach: once a session through it
//! shares groups, it is kept for those (group, member) pairs and forgotten when each has
//! ended (the group is left, or that member left or was removed), so a device does not go
//! on calling a former member. An address never proven is forgotten once
//! [`UNPROVEN_MISSES`] sessions through it shared nothing (one may come before the peer
//! has heard of an admission), or after [`UNPROVEN_TTL_SECS`].

use hearth_protocol::ids::{GroupId, MemberId};
use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

use crate::node::{Node, now_unix};
use crate::store::{Store, StoreError, Table, WriteOp};

const PEERS_KEY: &[u8] = b"peers";
/// Most remembered addresses; the oldest are forgotten first.
const MAX_REMEMBERED: usize = 64;
/// How long an address that has not yet reached a fellow member is tried (7 days).
pub const UNPROVEN_TTL_SECS: u64 = 7 * 24 * 60 * 60;
/// Sessions sharing nothing after which an address never proven is forgotten.
pub const UNPROVEN_MISSES: u8 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Remembered {
    addr: Vec<u8>,
    added_at: u64,
    /// The memberships a session through this address shared.
    reaches: Vec<(GroupId, MemberId)>,
    /// Sessions in a row through it that shared nothing, while it was never proven.
    misses: u8,
}

fn load(store: &Store) -> Result<Vec<Remembered>, StoreError> {
    let Some(raw) = store.get(Table::Peers, PEERS_KEY)? else {
        return Ok(Vec::new());
    };
    if let Ok(list) = postcard::from_bytes(&raw) {
        return Ok(list);
    }
    // Stores from before addresses belonged to memberships kept a plain list: each
    // address starts again as unproven.
    let plain: Vec<Vec<u8>> = postcard::from_bytes(&raw).unwrap_or_default();
    let now = now_unix();
    Ok(plain
        .into_iter()
        .map(|addr| Remembered {
            addr,
            added_at: now,
            reaches: Vec::new(),
            misses: 0,
        })
        .collect())
}

fn save(store: &Store, list: &[Remembered]) -> Result<(), StoreError> {
    store.write(vec![WriteOp::Put {
        table: Table::Peers,
        key: PEERS_KEY.to_vec(),
        value: crate::records::encode(&list),
    }])
}

/// Remembers an address the member added; it is proven by the first session through it.
pub fn remember(store: &Store, addr: &Multiaddr) -> Result<(), StoreError> {
    let mut list = load(store)?;
    list.retain(|r| r.addr != addr.to_vec());
    list.push(Remembered {
        addr: addr.to_vec(),
        added_at: now_unix(),
        reaches: Vec::new(),
        misses: 0,
    });
    if list.len() > MAX_REMEMBERED {
        list.drain(..list.len() - MAX_REMEMBERED);
    }
    save(store, &list)
}

/// Records what a session through `addrs` shared: each remembered address among them now
/// belongs to those memberships, or, if the session shared nothing and the address was
/// never proven, counts a miss (and is forgotten after [`UNPROVEN_MISSES`]).
pub fn settle(
    store: &Store,
    addrs: &[Multiaddr],
    shared: &[(GroupId, MemberId)],
) -> Result<(), StoreError> {
    let mut list = load(store)?;
    let before = list.clone();
    let through = |r: &Remembered| addrs.iter().any(|a| a.to_vec() == r.addr);
    for r in list.iter_mut().filter(|r| through(r)) {
        if shared.is_empty() && r.reaches.is_empty() {
            r.misses = r.misses.saturating_add(1);
        }
        for pair in shared {
            if !r.reaches.contains(pair) {
                r.reaches.push(*pair);
            }
        }
    }
    list.retain(|r| !r.reaches.is_empty() || r.misses < UNPROVEN_MISSES);
    if list != before {
        save(store, &list)?;
    }
    Ok(())
}

/// The addresses still worth dialling; forgets the rest: those whose every membership has
/// ended, and unproven ones past their time.
pub fn current(node: &Node) -> Result<Vec<Multiaddr>, StoreError> {
    let mut list = load(node.store())?;
    let before = list.clone();
    let now = now_unix();
    for r in &mut list {
        // Both memberships must last: the peer's, and this device's own in that group.
        r.reaches
            .retain(|(g, m)| node.is_in(g) && node.is_current_member(g, m));
    }
    list.retain(|r| {
        let proven = before
            .iter()
            .any(|b| b.addr == r.addr && !b.reaches.is_empty());
        if proven {
            !r.reaches.is_empty()
        } else {
            now.saturating_sub(r.added_at) < UNPROVEN_TTL_SECS
        }
    });
    if list != before {
        save(node.store(), &list)?;
    }
    Ok(list
        .into_iter()
        .filter_map(|r| Multiaddr::try_from(r.addr).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::identity::MemberKeys;
    use rand_core::OsRng;

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
    }

    #[test]
    fn an_address_is_kept_while_a_membership_it_reaches_lasts() {
        let tmp = tempfile::tempdir().unwrap();
        let node = Node::open(Store::open_unprotected(tmp.path()).unwrap()).unwrap();
        let group = node.create_group("Circle", "", None).unwrap();
        let me = node.member_keys(&group).unwrap().member_id();
        let stranger = MemberKeys::generate(&mut OsRng).member_id();
        let (kept, gone, silent) = (addr(1), addr(2), addr(3));
        for a in [&kept, &gone, &silent] {
            remember(node.store(), a).unwrap();
        }
        // Unproven addresses are dialled until they are proven or turn out to share nothing.
        assert_eq!(current(&node).unwrap().len(), 3);
        settle(node.store(), std::slice::from_ref(&kept), &[(group, me)]).unwrap();
        for _ in 1..UNPROVEN_MISSES {
            settle(node.store(), std::slice::from_ref(&gone), &[]).unwrap();
        }
        assert_eq!(current(&node).unwrap().len(), 3);
        settle(node.store(), std::slice::from_ref(&gone), &[]).unwrap();
        // Sessions through a proven address that share nothing do not make it forgotten.
        for _ in 0..UNPROVEN_MISSES {
            settle(node.store(), std::slice::from_ref(&kept), &[]).unwrap();
        }
        assert_eq!(current(&node).unwrap(), vec![kept.clone(), silent.clone()]);
        // An address proven for a membership that is not (or no longer) current is dropped.
        settle(
            node.store(),
            std::slice::from_ref(&silent),
            &[(group, stranger)],
        )
        .unwrap();
        assert_eq!(current(&node).unwrap(), vec![kept.clone()]);
        node.forget_group(&group).unwrap();
        assert!(current(&node).unwrap().is_empty());
    }

    #[test]
    fn addresses_remembered_by_an_older_store_are_kept_as_unproven() {
        let tmp = tempfile::tempdir().unwrap();
        let node = Node::open(Store::open_unprotected(tmp.path()).unwrap()).unwrap();
        let old: Vec<Vec<u8>> = vec![addr(1).to_vec(), addr(2).to_vec()];
        node.store()
            .write(vec![WriteOp::Put {
                table: Table::Peers,
                key: PEERS_KEY.to_vec(),
                value: crate::records::encode(&old),
            }])
            .unwrap();
        assert_eq!(current(&node).unwrap(), vec![addr(1), addr(2)]);
    }
}
