//! How hearthd's state maps onto the encrypted store: table keys and record encodings.
//!
//! Keys are store aliases of group and member ids (never the ids themselves, so a disk
//! does not show who is in which group), counters and fixed labels; every value is sealed
//! by the store. Records are postcard-encoded.

use hearth_protocol::crypto::SecretKey;
use hearth_protocol::envelope::Envelope;
use hearth_protocol::group::{Access, Compacted, KeyGrant};
use hearth_protocol::identity::PublicIdentity;
use hearth_protocol::ids::{GroupId, MemberId};
use hearth_protocol::membership::GroupInfo;
use serde::{Deserialize, Serialize};

use crate::store::{Store, Table, WriteOp};

/// Meta key of the one device identity that stores from before per-group identities
/// used in every group; read only to migrate such a store (see [`LegacyGroupRecord`]).
pub const LEGACY_IDENTITY_KEY: &[u8] = b"identity";

/// A group this device belongs to.
#[derive(Serialize, Deserialize)]
pub struct GroupRecord {
    pub info: GroupInfo,
    /// The document this device joined with, if it joined rather than created the group.
    pub snapshot: Option<Vec<u8>>,
    /// This device's secret keys in this group (64 bytes), made when it created or joined
    /// it: sealed under the group's own storage key, so leaving shreds them with the rest.
    pub keys: Vec<u8>,
    /// The facilitator who admitted this device, trusted until the admission syncs.
    pub introducer: Option<PublicIdentity>,
}

impl Drop for GroupRecord {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.keys);
    }
}

/// A group record as stores kept it when one device identity served every group. Such a
/// group keeps that identity (it is already known to the group's members); only groups
/// created or joined from then on get identities of their own.
#[derive(Deserialize)]
pub struct LegacyGroupRecord {
    pub info: GroupInfo,
    pub snapshot: Option<Vec<u8>>,
}

/// An open invite, kept by the facilitator's daemon until used or expired.
#[derive(Serialize, Deserialize)]
pub struct InviteRecord {
    pub group_id: GroupId,
    pub secret: [u8; 32],
    pub expires_at: u64,
}

impl Drop for InviteRecord {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

/// An open spoken invite code, kept by the facilitator's daemon under [`code_key`] until
/// it is matched, burnt (the third checked wrong guess, from different sources: see
/// `codes`), withdrawn or expires. A hello alone, a refused relay and fewer wrong guesses
/// leave it in place; the count of wrong guesses is kept in memory only.
#[derive(Serialize, Deserialize)]
pub struct CodeRecord {
    pub group_id: GroupId,
    pub channel: u16,
    pub words: [u8; hearth_protocol::code::CODE_WORDS],
    pub expires_at: u64,
}

impl Drop for CodeRecord {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.words);
    }
}

/// Spoken codes live in the invites table under `"code" || channel`.
pub fn code_key(channel: u16) -> Vec<u8> {
    let mut k = b"code".to_vec();
    k.extend_from_slice(&channel.to_be_bytes());
    k
}

/// The alias of a group: the key prefix under which everything of it is kept, and the
/// name of its storage key.
pub fn group_alias(store: &Store, group: &GroupId) -> [u8; 16] {
    store.alias(&[b"group", group.as_bytes()])
}

/// The key prefix under which everything of one group is kept.
pub fn group_key(store: &Store, group: &GroupId) -> Vec<u8> {
    group_alias(store, group).to_vec()
}

/// `alias(group) || alias(group, author) || seq`: scannable by group, then by author.
fn envelope_key(store: &Store, group: &GroupId, author: &MemberId, seq: u64) -> Vec<u8> {
    let mut k = group_key(store, group);
    k.extend_from_slice(&store.alias(&[b"author", group.as_bytes(), author.as_bytes()]));
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn put_envelope(store: &Store, env: &Envelope) -> WriteOp {
    let h = env.header();
    WriteOp::Put {
        table: Table::Envelopes,
        key: envelope_key(store, &h.group_id, &h.author, h.seq),
        value: env.as_bytes().to_vec(),
    }
}

/// Deletes the stored envelope or segment of `author` ending at `seq`.
pub fn delete_envelope(store: &Store, group: &GroupId, author: &MemberId, seq: u64) -> WriteOp {
    WriteOp::Delete {
        table: Table::Envelopes,
        key: envelope_key(store, group, author, seq),
    }
}

/// Stores a segment of this device's own log and deletes what it restates.
pub fn put_compacted(store: &Store, compacted: &[Compacted]) -> Vec<WriteOp> {
    let mut ops = Vec::new();
    for c in compacted {
        let h = c.segment.header();
        ops.extend(
            c.replaced
                .iter()
                .filter(|s| **s != h.seq)
                .map(|s| delete_envelope(store, &h.group_id, &h.author, *s)),
        );
        ops.push(put_envelope(store, &c.segment));
    }
    ops
}

/// A key handed to this device outside the logs (the group's first epoch key for its
/// creator; the admission epoch key and earlier roster keys for a joiner). Keys that came
/// in lockboxes inside the logs are taken again from the logs on every start.
#[derive(Serialize, Deserialize)]
pub struct KeyGrantRecord {
    pub epoch: u32,
    pub rotation: Option<[u8; 32]>,
    /// The full epoch key, or only the epoch's roster key.
    pub full: bool,
    pub key: [u8; 32],
}

impl Drop for KeyGrantRecord {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl KeyGrantRecord {
    pub fn grant(&self) -> KeyGrant {
        let key = SecretKey::from_bytes(self.key);
        KeyGrant {
            epoch: self.epoch,
            rotation: self.rotation,
            access: if self.full {
                Access::Full(key)
            } else {
                Access::Roster(key)
            },
        }
    }
}

/// Key grants are kept under `alias(group) || index`.
pub fn put_key_grants(store: &Store, group: &GroupId, grants: &[KeyGrant]) -> Vec<WriteOp> {
    grants
        .iter()
        .zip(0u32..)
        .map(|(g, i)| {
            let mut k = group_key(store, group);
            k.extend_from_slice(&i.to_be_bytes());
            let (full, key) = match &g.access {
                Access::Full(k) => (true, k),
                Access::Roster(k) => (false, k),
            };
            let record = KeyGrantRecord {
                epoch: g.epoch,
                rotation: g.rotation,
                full,
                key: *key.expose(),
            };
            WriteOp::Put {
                table: Table::EpochKeys,
                key: k,
                value: encode(&record),
            }
        })
        .collect()
}

/// A member this device's user verified face to face: `alias(group) || alias(group, member)`
/// maps to the identity (64 bytes) that was verified.
pub fn verified_key(store: &Store, group: &GroupId, member: &MemberId) -> Vec<u8> {
    let mut k = group_key(store, group);
    k.extend_from_slice(&store.alias(&[b"verified", group.as_bytes(), member.as_bytes()]));
    k
}

pub fn put_group(store: &Store, record: &GroupRecord) -> WriteOp {
    WriteOp::Put {
        table: Table::Groups,
        key: group_key(store, &record.info.group_id),
        value: encode(record),
    }
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("serialising an in-memory record cannot fail")
}
