//! How hearthd's state maps onto the encrypted store: table keys and record encodings.
//!
//! Keys are random ids and counters only (never names or text); every value is sealed by
//! the store. Records are postcard-encoded.

use hearth_protocol::crypto::SecretKey;
use hearth_protocol::envelope::Envelope;
use hearth_protocol::ids::{GroupId, MemberId};
use hearth_protocol::membership::GroupInfo;
use serde::{Deserialize, Serialize};

use crate::store::{Table, WriteOp};

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

pub fn envelope_key(group: &GroupId, author: &MemberId, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(40);
    k.extend_from_slice(group.as_bytes());
    k.extend_from_slice(author.as_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn epoch_key_key(group: &GroupId, epoch: u32) -> Vec<u8> {
    let mut k = group.as_bytes().to_vec();
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}

pub fn put_envelope(env: &Envelope) -> WriteOp {
    let h = env.header();
    WriteOp::Put {
        table: Table::Envelopes,
        key: envelope_key(&h.group_id, &h.author, h.seq),
        value: env.as_bytes().to_vec(),
    }
}

pub fn put_epoch_key(group: &GroupId, epoch: u32, key: &SecretKey) -> WriteOp {
    WriteOp::Put {
        table: Table::EpochKeys,
        key: epoch_key_key(group, epoch),
        value: key.expose().to_vec(),
    }
}

pub fn put_group(record: &GroupRecord) -> WriteOp {
    WriteOp::Put {
        table: Table::Groups,
        key: record.info.group_id.as_bytes().to_vec(),
        value: encode(record),
    }
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("serialising an in-memory record cannot fail")
}
