//! How hearthd's state maps onto the encrypted store: table keys and record encodings.
//!
//! Keys are store aliases of group and member ids (never the ids themselves, so a disk
//! does not show who is in which group), counters and fixed labels; every value is sealed
//! by the store. Records are postcard-encoded.

use hearth_protocol::crypto::SecretKey;
use hearth_protocol::envelope::Envelope;
use hearth_protocol::ids::{GroupId, MemberId};
use hearth_protocol::membership::GroupInfo;
use serde::{Deserialize, Serialize};

use crate::store::{Store, Table, WriteOp};

/// Meta key of this device's secret keys.
pub const IDENTITY_KEY: &[u8] = b"identity";

/// A group this device belongs to.
#[derive(Debug, Serialize, Deserialize)]
pub struct GroupRecord {
    pub info: GroupInfo,
    /// The document this device joined with, if it joined rather than created the group.
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

/// The key prefix under which everything of one group is kept.
pub fn group_key(store: &Store, group: &GroupId) -> Vec<u8> {
    store.alias(&[b"group", group.as_bytes()]).to_vec()
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

/// Epoch keys are kept as `(epoch, key)` records under `alias(group) || epoch`.
pub fn put_epoch_key(store: &Store, group: &GroupId, epoch: u32, key: &SecretKey) -> WriteOp {
    let mut k = group_key(store, group);
    k.extend_from_slice(&epoch.to_be_bytes());
    WriteOp::Put {
        table: Table::EpochKeys,
        key: k,
        value: encode(&(epoch, *key.expose())),
    }
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
