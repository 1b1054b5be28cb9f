//! Shared fixtures for hearth's fuzz targets: fixed keys, a deterministic RNG (so a crash
//! input reproduces exactly), a fixed group, and the byte formats the targets parse.

use hearth_protocol::api::Role;
use hearth_protocol::crypto::{self, SecretKey, labels};
use hearth_protocol::envelope::{
    self, Body, Envelope, FORMAT_VERSION, Hash, Header, Sealing, ZERO_HASH,
};
use hearth_protocol::group::{Access, Group, KeyGrant};
use hearth_protocol::identity::{MemberKeys, PublicIdentity};
use hearth_protocol::ids::MemberId;
use hearth_protocol::membership::GroupInfo;
use std::sync::OnceLock;

/// Deterministic splitmix64 stream. NOT a CRNG: it is marked `CryptoRng` only so the
/// protocol's APIs accept it; fixed randomness makes every fuzz input reproducible.
pub struct FixedRng(u64);

impl FixedRng {
    pub fn new(seed: u64) -> Self {
        FixedRng(seed)
    }
}

impl rand_core::RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand_core::impls::fill_bytes_via_next(self, dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl rand_core::CryptoRng for FixedRng {}

/// Everything fixed, computed once per process (key derivation and group creation cost
/// far more than most inputs, and would otherwise dominate every execution).
pub struct Fixture {
    /// creator (the only facilitator), a plain member it added (the "hostile member" of
    /// the threat model), and a stranger never added.
    pub keys: [MemberKeys; 3],
    pub ids: [MemberId; 3],
    pub publics: [PublicIdentity; 3],
    pub info: GroupInfo,
    /// The group's first epoch key (the creator's, from before the add).
    pub first_key: SecretKey,
    /// The current epoch (started by the add) and its key.
    pub epoch: u32,
    pub epoch_key: SecretKey,
    /// The group's log: the creator's first envelope, then its add of `member`.
    pub log: Vec<Envelope>,
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let keys = [7u8, 8, 9].map(|b| MemberKeys::from_secret_bytes(&[b; 64]).expect("64 bytes"));
        let mut rng = FixedRng::new(1);
        let (mut group, first_key, first) =
            Group::create(&keys[0], "Circle", "Support", &mut rng).expect("fixture group");
        let add = group
            .add_member(keys[1].public(), Role::Member, "member", 0, &mut rng)
            .expect("fixture add")
            .own;
        let (epoch, key) = group.current_epoch();
        let epoch_key = key.expect("the creator holds the epoch it started").clone();
        Fixture {
            ids: keys.each_ref().map(|k| k.member_id()),
            publics: keys.each_ref().map(|k| k.public()),
            info: *group.info(),
            first_key,
            epoch,
            epoch_key,
            log: vec![first, add],
            keys,
        }
    })
}

pub fn creator() -> &'static MemberKeys {
    &fixture().keys[0]
}
pub fn member() -> &'static MemberKeys {
    &fixture().keys[1]
}
pub fn stranger() -> &'static MemberKeys {
    &fixture().keys[2]
}
/// Epoch key for targets that have no group.
pub fn fixed_epoch_key() -> SecretKey {
    SecretKey::from_bytes([1u8; 32])
}

/// A fresh copy of the fixed group, as the creator's device holds it: rebuilt from its
/// root and log (4x cheaper than creating it). Returns the group, its current epoch key and
/// log.
pub fn fixture_group() -> (Group, SecretKey, Vec<Envelope>) {
    let f = fixture();
    let first = KeyGrant {
        epoch: 0,
        rotation: None,
        access: Access::Full(f.first_key.clone()),
    };
    let mut group = Group::restore(f.info, &f.keys[0], [first], None).expect("fixture restores");
    let r = group.ingest(f.log.clone());
    assert_eq!(r.accepted.len(), f.log.len(), "fixture log ingests");
    (group, f.epoch_key.clone(), f.log.clone())
}

/// Seals and signs an arbitrary plaintext as an envelope body, exactly as
/// `Envelope::seal` does for a `Body` (under the roster key if the plaintext decodes as a
/// membership operation, else the content key). A member holds these keys, so any
/// plaintext is reachable by an insider; this lets fuzzers get past AEAD and the signature.
pub fn seal_raw(
    keys: &MemberKeys,
    mut header: Header,
    plaintext: &[u8],
    epoch_key: &SecretKey,
    rng: &mut FixedRng,
) -> Envelope {
    header.version = FORMAT_VERSION;
    let header_bytes = header.to_bytes();
    let sealing = postcard::from_bytes::<Body>(plaintext).map_or(Sealing::Content, |b| b.sealing());
    let key = envelope::body_key(epoch_key, &header.group_id, header.epoch, sealing);
    let (nonce, ct) = crypto::seal(&key, &header_bytes, plaintext, rng);
    let mut bytes = header_bytes.to_vec();
    bytes.extend_from_slice(&nonce);
    bytes.extend_from_slice(&(ct.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&ct);
    let sig = keys.sign(labels::SIG_ENVELOPE, &bytes);
    bytes.extend_from_slice(&sig);
    Envelope::decode(bytes).expect("a sealed envelope decodes")
}

/// The `change_head` an honest author would put in the header for this plaintext
/// (mirrors `Group::append_own`), so changes reach automerge instead of being
/// dropped for a mismatched head.
pub fn honest_change_head(plaintext: &[u8], prior: Hash) -> Hash {
    match postcard::from_bytes::<Body>(plaintext) {
        Ok(Body::Changes { changes }) => changes
            .last()
            .and_then(|c| hearth_protocol::doc::parse_canonical_change(c.clone()))
            .map_or(ZERO_HASH, |c| c.hash().0),
        Ok(
            Body::Roster(_)
            | Body::Reseal { .. }
            | Body::Segment { .. }
            | Body::ResealSegment { .. },
        ) => prior,
        Err(_) => ZERO_HASH,
    }
}

/// Record format of `group_ingest`: `flags u8 | len u16 BE | payload`, repeated.
/// A truncated last record takes what is left.
pub fn records(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&flags, rest) = data.split_first()?;
        let len = match rest {
            [a, b, ..] => u16::from_be_bytes([*a, *b]) as usize,
            _ => 0,
        };
        let rest = rest.get(2..).unwrap_or(&[]);
        let (payload, tail) = rest.split_at(len.min(rest.len()));
        data = tail;
        Some((flags, payload))
    })
}

/// Encodes one `group_ingest` record (for the seed generator).
pub fn record(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Rewrites the checksum of every automerge chunk in `bytes` (while they parse), so
/// mutated snapshots get past automerge's SHA-256 checksum to the parsers behind it.
/// A facilitator sending a hostile snapshot computes valid checksums too.
pub fn fix_chunk_checksums(bytes: &mut [u8]) {
    use sha2::{Digest, Sha256};
    const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
    let mut pos = 0;
    while bytes.len() >= pos + 9 && bytes[pos..pos + 4] == MAGIC {
        let chunk_type = bytes[pos + 8];
        // Only document (0) and change (1) chunks: a compressed chunk's checksum covers
        // its inflated form.
        if chunk_type > 1 {
            return;
        }
        let (mut len, mut shift, mut at) = (0u64, 0u32, pos + 9);
        loop {
            let Some(&b) = bytes.get(at) else { return };
            if shift > 56 {
                return;
            }
            len |= u64::from(b & 0x7f) << shift;
            shift += 7;
            at += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        let Some(end) = at.checked_add(len as usize).filter(|e| *e <= bytes.len()) else {
            return;
        };
        let mut h = Sha256::new();
        h.update([chunk_type]);
        let mut n = len;
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            h.update([if n == 0 { b } else { b | 0x80 }]);
            if n == 0 {
                break;
            }
        }
        h.update(&bytes[at..end]);
        let sum = h.finalize();
        bytes[pos + 4..pos + 8].copy_from_slice(&sum[..4]);
        pos = end;
    }
}
