//! What the membership integration tests share: simulated devices holding one group, and
//! the ways they exchange envelopes, restart, and forge an operation as a hostile author.

#![allow(dead_code)]

use std::collections::BTreeSet;

use hearth_protocol::api::Role;
use hearth_protocol::crypto::SecretKey;
use hearth_protocol::envelope::{Body, Envelope, Header, ZERO_HASH};
use hearth_protocol::group::{Access, Group, KeyGrant, VersionVector};
use hearth_protocol::identity::MemberKeys;
use hearth_protocol::ids::MemberId;
use hearth_protocol::membership::RosterOp;
use rand_core::OsRng;

pub struct Device {
    pub keys: MemberKeys,
    pub group: Group,
    /// What the daemon stores outside the logs, to simulate a restart.
    pub grants: Vec<KeyGrant>,
    pub snapshot: Option<Vec<u8>>,
}

impl Device {
    /// What the daemon's `load_slot` does: restore from stored grants and replay the store.
    pub fn restart(&mut self) {
        let all = everything(self);
        let mut g = Group::restore(
            *self.group.info(),
            &self.keys,
            self.grants.clone(),
            self.snapshot.as_deref(),
        )
        .unwrap();
        g.ingest_stored(all);
        self.group = g;
    }
}

impl Device {
    pub fn id(&self) -> MemberId {
        self.keys.member_id()
    }
}

pub fn creator() -> Device {
    let keys = MemberKeys::generate(&mut OsRng);
    let (group, k, _) = Group::create(&keys, "Circle", "Support", &mut OsRng).unwrap();
    let grants = vec![KeyGrant {
        epoch: 0,
        rotation: None,
        access: Access::Full(k),
    }];
    Device {
        keys,
        group,
        grants,
        snapshot: None,
    }
}

pub fn everything(d: &Device) -> Vec<Envelope> {
    d.group
        .missing_for(&VersionVector::new(), usize::MAX, usize::MAX)
}

/// What the daemon's `admit` hands a joiner: the *current* epoch's key after the add, the
/// roster keys of every other epoch, and the snapshot.
pub fn admit(by: &mut Device, role: Role) -> Device {
    let keys = MemberKeys::generate(&mut OsRng);
    let written = by
        .group
        .add_member(keys.public(), role, "new", 0, &mut OsRng)
        .unwrap();
    let (epoch, key) = by.group.current_epoch();
    let mut grants = vec![KeyGrant {
        epoch,
        rotation: Some(written.own.hash()),
        access: Access::Full(key.unwrap().clone()),
    }];
    grants.extend(
        by.group
            .roster_history()
            .into_iter()
            .filter(|(e, r, _)| !(*e == epoch && *r == Some(written.own.hash())))
            .map(|(e, r, k)| KeyGrant {
                epoch: e,
                rotation: r,
                access: Access::Roster(k),
            }),
    );
    let snapshot = by.group.snapshot();
    let mut group =
        Group::restore(*by.group.info(), &keys, grants.clone(), Some(&snapshot)).unwrap();
    group.ingest(everything(by));
    Device {
        keys,
        group,
        grants,
        snapshot: Some(snapshot),
    }
}

pub fn sync_all(devices: &mut [Device]) {
    for _ in 0..2 {
        for to in 0..devices.len() {
            for from in 0..devices.len() {
                if from != to {
                    let theirs = devices[to].group.version_vector();
                    let missing = devices[from]
                        .group
                        .missing_for(&theirs, usize::MAX, usize::MAX);
                    devices[to].group.ingest(missing);
                }
            }
        }
    }
}

pub fn give(from: &Device, to: &mut Device) {
    let theirs = to.group.version_vector();
    let missing = from.group.missing_for(&theirs, usize::MAX, usize::MAX);
    to.group.ingest(missing);
}

/// A hostile author's hand-made membership operation, sealed under the current epoch it
/// holds, continuing its own log correctly.
pub fn forge_roster(d: &mut Device, op: RosterOp, epoch_key: Option<(u32, SecretKey)>) -> Envelope {
    let (epoch, key) = match epoch_key {
        Some(x) => x,
        None => {
            let (e, k) = d.group.current_epoch();
            (e, k.unwrap().clone())
        }
    };
    let prior = d.group.head(&d.id()).copied();
    let header = Header {
        version: 1,
        group_id: d.group.id(),
        epoch,
        author: d.id(),
        seq: prior.map_or(1, |h| h.seq + 1),
        prev: prior.map_or(ZERO_HASH, |h| h.hash),
        change_head: prior.map_or(ZERO_HASH, |h| h.change_head),
    };
    let env = Envelope::seal(&d.keys, header, &Body::Roster(op), &key, &mut OsRng);
    let r = d.group.ingest(vec![env.clone()]);
    assert!(r.accepted.contains(&env), "forged op not accepted: {r:?}");
    env
}

pub fn texts(d: &Device) -> BTreeSet<String> {
    d.group
        .read()
        .agreements
        .values()
        .map(|a| a.text.clone())
        .collect()
}
