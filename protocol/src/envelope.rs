//! Sealed, signed change envelopes: the unit every device appends to its per-group log.
//!
//! Layout (all integers big-endian), normative in docs/protocol.md:
//!
//! ```text
//! header (109 bytes): version u8 | group_id [16] | epoch u32 | author [16] | seq u64
//!                     | prev [32] | change_head [32]
//! nonce [24] | ciphertext_len u32 | ciphertext | signature [64]
//! ```
//!
//! The ciphertext is XChaCha20-Poly1305 under the epoch's envelope key, with the header
//! as associated data. The signature (Ed25519, context `SIG_ENVELOPE`) covers header,
//! nonce and ciphertext. `prev` is the hash of the author's previous envelope (zero for
//! seq 1), so one verified signature on the newest envelope of a run authenticates the run.
//!
//! A segment is an author's own restatement of a run of its content envelopes (positions
//! `first..=seq`, all of one epoch) as one envelope, so that a long history costs a few
//! bytes per change instead of a signature, nonce and tag each. Its header has version
//! [`SEGMENT_FORMAT`] and is followed by `first u64 | last_hash [32]`, the hash of the
//! author's envelope at `seq` (what the author's next envelope names as `prev`); `prev` and
//! `change_head` are those of the run. The extra fields are part of the associated data
//! and of what is signed.

use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{self, SecretKey, TAG_LEN, XNONCE_LEN, labels};
use crate::identity::{MemberKeys, PublicIdentity};
use crate::ids::{GroupId, MemberId};
use crate::membership::RosterOp;

pub const FORMAT_VERSION: u8 = 1;
/// Header version of a segment.
pub const SEGMENT_FORMAT: u8 = 2;
/// Length of a segment's fields after the header.
const SPAN_LEN: usize = 8 + 32;
pub const HEADER_LEN: usize = 1 + 16 + 4 + 16 + 8 + 32 + 32;
const SIG_LEN: usize = 64;
/// Largest envelope accepted from anyone: one user action never needs more, and an author
/// cuts its segments below it.
pub const MAX_ENVELOPE_LEN: usize = 1 << 20;
/// Most log positions one segment may restate.
pub const MAX_SEGMENT_POSITIONS: u64 = 8192;
/// Most automerge changes one envelope may carry.
pub const MAX_CHANGES_PER_ENVELOPE: usize = 4096;

/// A 32-byte BLAKE3 hash (envelope hashes, automerge change hashes).
pub type Hash = [u8; 32];
pub const ZERO_HASH: Hash = [0u8; 32];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub group_id: GroupId,
    pub epoch: u32,
    pub author: MemberId,
    pub seq: u64,
    /// Hash of the author's previous envelope in this group, or zero for seq 1.
    pub prev: Hash,
    /// Hash of the author's newest automerge change once this envelope is applied
    /// (zero if the author has made none).
    pub change_head: Hash,
}

impl Header {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let mut w = Writer::new(&mut out);
        w.put(&[self.version]);
        w.put(self.group_id.as_bytes());
        w.put(&self.epoch.to_be_bytes());
        w.put(self.author.as_bytes());
        w.put(&self.seq.to_be_bytes());
        w.put(&self.prev);
        w.put(&self.change_head);
        out
    }

    fn from_bytes(b: &[u8; HEADER_LEN]) -> Header {
        let mut r = Reader { buf: b, pos: 0 };
        Header {
            version: r.array::<1>()[0],
            group_id: GroupId(r.array()),
            epoch: u32::from_be_bytes(r.array()),
            author: MemberId(r.array()),
            seq: u64::from_be_bytes(r.array()),
            prev: r.array(),
            change_head: r.array(),
        }
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}
impl<'a> Writer<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, pos: 0 }
    }
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}
impl Reader<'_> {
    /// Callers check the total length first, so this never reads past the end.
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        out
    }
}

/// What is inside an envelope's ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A membership operation: sealed under the epoch's roster key.
    Roster(RosterOp),
    /// Automerge changes made by the author, in causal order (one user action): sealed
    /// under the epoch's content key.
    Changes { changes: Vec<Vec<u8>> },
    /// The changes of another envelope (`author`'s at `seq`), re-sealed under the current
    /// epoch for a member admitted while it was being written: it is not in that member's
    /// snapshot and was sealed under an epoch it never gets. Checked against the original
    /// envelope's signed header, like the original would be.
    Reseal {
        author: MemberId,
        seq: u64,
        changes: Vec<Vec<u8>>,
    },
    /// The changes of the author's content envelopes at a segment's positions, as one
    /// automerge bundle; `ends[i]` is the automerge sequence number of the author's last
    /// change at position `first + i`. Sealed under the epoch's segment key.
    Segment { ends: Vec<u64>, bundle: Vec<u8> },
    /// A segment (`author`'s, ending at `seq`) re-sealed under the current epoch for a
    /// member admitted while it was being written, as [`Body::Reseal`] is for an envelope.
    /// Checked against the original segment's signed header, like the original would be.
    ResealSegment {
        author: MemberId,
        seq: u64,
        ends: Vec<u64>,
        bundle: Vec<u8>,
    },
}

/// Which of an epoch's two body keys seals a body. A member admitted later is given the
/// roster keys of earlier epochs (so it can follow who belongs) but not their content keys
/// (so it cannot read what was written before it joined).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealing {
    Content,
    Roster,
    Segment,
}

impl Body {
    pub fn sealing(&self) -> Sealing {
        match self {
            Body::Roster(_) => Sealing::Roster,
            Body::Changes { .. } | Body::Reseal { .. } | Body::ResealSegment { .. } => {
                Sealing::Content
            }
            Body::Segment { .. } => Sealing::Segment,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("envelope is {0} bytes, outside the accepted range")]
    BadLength(usize),
    #[error("envelope format version {0} is not supported (this build speaks {FORMAT_VERSION})")]
    Version(u8),
    #[error("envelope length field does not match its size")]
    Truncated,
    #[error("envelope signature does not verify")]
    BadSignature,
    #[error("envelope does not decrypt under the epoch key")]
    Decrypt,
    #[error("envelope body is malformed")]
    BadBody,
    #[error("segment spans positions {first}..={last}, outside what a segment may restate")]
    BadSpan { first: u64, last: u64 },
}

/// What a segment restates: the author's positions `first..=header.seq`, and the hash of
/// its envelope at `header.seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub first: u64,
    pub last_hash: Hash,
}

/// A sealed envelope, kept as its exact bytes (what was signed and hashed).
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    header: Header,
    span: Option<Span>,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Envelope(author {}, seq {}, {} bytes)",
            self.header.author,
            self.header.seq,
            self.bytes.len()
        )
    }
}

/// The key that seals envelope bodies of kind `sealing` of `group` at `epoch`.
pub fn body_key(epoch_key: &SecretKey, group: &GroupId, epoch: u32, sealing: Sealing) -> SecretKey {
    let label = match sealing {
        Sealing::Content => labels::ENVELOPE_KEY,
        Sealing::Roster => labels::ROSTER_KEY,
        Sealing::Segment => labels::SEGMENT_KEY,
    };
    crypto::derive_key(
        epoch_key.expose(),
        &[label, group.as_bytes(), &epoch.to_be_bytes()],
    )
}

impl Envelope {
    /// Seals and signs `body` under `header` (whose version is set here), with the epoch
    /// key's body key for the body's kind.
    pub fn seal(
        keys: &MemberKeys,
        mut header: Header,
        body: &Body,
        epoch_key: &SecretKey,
        rng: &mut impl CryptoRngCore,
    ) -> Envelope {
        header.version = FORMAT_VERSION;
        Envelope::seal_with(keys, header, None, body, epoch_key, rng)
    }

    /// Seals and signs a segment: `body` must be [`Body::Segment`] restating the author's
    /// positions `span.first..=header.seq`.
    pub fn seal_segment(
        keys: &MemberKeys,
        mut header: Header,
        span: Span,
        body: &Body,
        epoch_key: &SecretKey,
        rng: &mut impl CryptoRngCore,
    ) -> Envelope {
        header.version = SEGMENT_FORMAT;
        Envelope::seal_with(keys, header, Some(span), body, epoch_key, rng)
    }

    fn seal_with(
        keys: &MemberKeys,
        header: Header,
        span: Option<Span>,
        body: &Body,
        epoch_key: &SecretKey,
        rng: &mut impl CryptoRngCore,
    ) -> Envelope {
        let mut header_bytes = header.to_bytes().to_vec();
        if let Some(span) = &span {
            header_bytes.extend_from_slice(&span.first.to_be_bytes());
            header_bytes.extend_from_slice(&span.last_hash);
        }
        let plaintext = Zeroizing::new(
            postcard::to_stdvec(body).expect("serialising an in-memory body cannot fail"),
        );
        let key = body_key(epoch_key, &header.group_id, header.epoch, body.sealing());
        let (nonce, ct) = crypto::seal(&key, &header_bytes, &plaintext, rng);
        let mut bytes =
            Vec::with_capacity(header_bytes.len() + XNONCE_LEN + 4 + ct.len() + SIG_LEN);
        bytes.extend_from_slice(&header_bytes);
        bytes.extend_from_slice(&nonce);
        let ct_len = u32::try_from(ct.len()).expect("bodies are far below 4 GiB");
        bytes.extend_from_slice(&ct_len.to_be_bytes());
        bytes.extend_from_slice(&ct);
        let sig = keys.sign(labels::SIG_ENVELOPE, &bytes);
        bytes.extend_from_slice(&sig);
        Envelope {
            header,
            span,
            bytes,
        }
    }

    /// Parses the framing of untrusted bytes. Checks nothing cryptographic.
    pub fn decode(bytes: Vec<u8>) -> Result<Envelope, EnvelopeError> {
        let min = HEADER_LEN + XNONCE_LEN + 4 + TAG_LEN + SIG_LEN;
        if bytes.len() < min || bytes.len() > MAX_ENVELOPE_LEN {
            return Err(EnvelopeError::BadLength(bytes.len()));
        }
        let header_bytes: &[u8; HEADER_LEN] = bytes[..HEADER_LEN]
            .try_into()
            .expect("length checked above");
        let header = Header::from_bytes(header_bytes);
        let span = match header.version {
            FORMAT_VERSION => None,
            SEGMENT_FORMAT => {
                if bytes.len() < min + SPAN_LEN {
                    return Err(EnvelopeError::BadLength(bytes.len()));
                }
                let first = u64::from_be_bytes(
                    bytes[HEADER_LEN..HEADER_LEN + 8]
                        .try_into()
                        .expect("length checked above"),
                );
                let last_hash: Hash = bytes[HEADER_LEN + 8..HEADER_LEN + SPAN_LEN]
                    .try_into()
                    .expect("length checked above");
                let last = header.seq;
                if first == 0 || first >= last || last - first >= MAX_SEGMENT_POSITIONS {
                    return Err(EnvelopeError::BadSpan { first, last });
                }
                Some(Span { first, last_hash })
            }
            other => return Err(EnvelopeError::Version(other)),
        };
        let aad_len = HEADER_LEN + if span.is_some() { SPAN_LEN } else { 0 };
        let len_at = aad_len + XNONCE_LEN;
        let ct_len = u32::from_be_bytes(
            bytes[len_at..len_at + 4]
                .try_into()
                .expect("length checked above"),
        ) as usize;
        if len_at + 4 + ct_len + SIG_LEN != bytes.len() {
            return Err(EnvelopeError::Truncated);
        }
        Ok(Envelope {
            header,
            span,
            bytes,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The positions a segment restates; none for an ordinary envelope.
    pub fn span(&self) -> Option<&Span> {
        self.span.as_ref()
    }

    /// The author's first log position this envelope holds.
    pub fn first(&self) -> u64 {
        self.span.map_or(self.header.seq, |s| s.first)
    }

    /// What the author's next envelope names as `prev`: the envelope's own hash, or for a
    /// segment the hash of the envelope it restates last.
    pub fn chain_hash(&self) -> Hash {
        self.span.map_or_else(|| self.hash(), |s| s.last_hash)
    }

    /// Length of the associated data: the header, and a segment's span.
    fn aad_len(&self) -> usize {
        HEADER_LEN + if self.span.is_some() { SPAN_LEN } else { 0 }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The hash the author's next envelope names as `prev`: covers every byte, signature
    /// included.
    pub fn hash(&self) -> Hash {
        blake3::derive_key(labels::ENVELOPE_HASH, &self.bytes)
    }

    fn signature(&self) -> &[u8; 64] {
        self.bytes[self.bytes.len() - SIG_LEN..]
            .try_into()
            .expect("decode checked the length")
    }

    /// Checks the author's signature.
    pub fn verify(&self, author: &PublicIdentity) -> Result<(), EnvelopeError> {
        let signed = &self.bytes[..self.bytes.len() - SIG_LEN];
        author
            .verify(labels::SIG_ENVELOPE, signed, self.signature())
            .map_err(|_| EnvelopeError::BadSignature)
    }

    /// Decrypts and decodes the body with the epoch key (trying its content and roster
    /// body keys). Call only after the signature (or the hash chain up to a verified
    /// signature) has been checked.
    pub fn open(&self, epoch_key: &SecretKey) -> Result<Body, EnvelopeError> {
        let group = &self.header.group_id;
        let epoch = self.header.epoch;
        if self.span.is_some() {
            return self.open_with(
                &body_key(epoch_key, group, epoch, Sealing::Segment),
                Sealing::Segment,
            );
        }
        match self.open_with(
            &body_key(epoch_key, group, epoch, Sealing::Content),
            Sealing::Content,
        ) {
            Err(EnvelopeError::Decrypt) => self.open_with(
                &body_key(epoch_key, group, epoch, Sealing::Roster),
                Sealing::Roster,
            ),
            other => other,
        }
    }

    /// Decrypts and decodes the body with one body key, which must seal a body of kind
    /// `sealing` (a body of the other kind under it is malformed).
    pub fn open_with(&self, body_key: &SecretKey, sealing: Sealing) -> Result<Body, EnvelopeError> {
        let aad = self.aad_len();
        let nonce: [u8; XNONCE_LEN] = self.bytes[aad..aad + XNONCE_LEN]
            .try_into()
            .expect("decode checked the length");
        let ct = &self.bytes[aad + XNONCE_LEN + 4..self.bytes.len() - SIG_LEN];
        let plaintext = crypto::open(body_key, &self.bytes[..aad], &nonce, ct)
            .map_err(|_| EnvelopeError::Decrypt)?;
        let body: Body = postcard::from_bytes(&plaintext).map_err(|_| EnvelopeError::BadBody)?;
        let too_big = match &body {
            Body::Changes { changes } | Body::Reseal { changes, .. } => {
                changes.len() > MAX_CHANGES_PER_ENVELOPE
            }
            Body::Roster(op) => {
                op.deps.len() > crate::membership::MAX_DEPS
                    || op.action.lockboxes().len() > crate::membership::MAX_MEMBERS
            }
            Body::Segment { ends, .. } => {
                let positions = self.span.map_or(0, |s| self.header.seq - s.first + 1);
                ends.len() as u64 != positions
            }
            Body::ResealSegment { ends, .. } => ends.len() as u64 > MAX_SEGMENT_POSITIONS,
        };
        // A segment's body only in a segment, and only a segment's body in one.
        let kind_ok = matches!(body, Body::Segment { .. }) == self.span.is_some();
        if too_big || !kind_ok || body.sealing() != sealing {
            return Err(EnvelopeError::BadBody);
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_core::OsRng;

    fn header(author: MemberId) -> Header {
        Header {
            version: FORMAT_VERSION,
            group_id: GroupId([3; 16]),
            epoch: 0,
            author,
            seq: 1,
            prev: ZERO_HASH,
            change_head: ZERO_HASH,
        }
    }

    fn sample() -> (MemberKeys, SecretKey, Envelope, Body) {
        let keys = MemberKeys::generate(&mut OsRng);
        let epoch_key = SecretKey::random(&mut OsRng);
        let body = Body::Changes {
            changes: vec![b"change".to_vec()],
        };
        let env = Envelope::seal(
            &keys,
            header(keys.member_id()),
            &body,
            &epoch_key,
            &mut OsRng,
        );
        (keys, epoch_key, env, body)
    }

    #[test]
    fn seal_verify_open_round_trip() {
        let (keys, epoch_key, env, body) = sample();
        let decoded = Envelope::decode(env.as_bytes().to_vec()).unwrap();
        decoded.verify(&keys.public()).unwrap();
        assert_eq!(decoded.open(&epoch_key).unwrap(), body);
        assert_eq!(decoded.hash(), env.hash());
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let (keys, epoch_key, env, _) = sample();
        for i in 0..env.as_bytes().len() {
            let mut bytes = env.as_bytes().to_vec();
            bytes[i] ^= 0x01;
            let ok = Envelope::decode(bytes)
                .ok()
                .filter(|e| e.verify(&keys.public()).is_ok())
                .and_then(|e| e.open(&epoch_key).ok());
            assert!(ok.is_none(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn other_signer_and_other_key_fail() {
        let (_, epoch_key, env, _) = sample();
        let stranger = MemberKeys::generate(&mut OsRng);
        assert_eq!(
            env.verify(&stranger.public()),
            Err(EnvelopeError::BadSignature)
        );
        assert_eq!(
            env.open(&SecretKey::random(&mut OsRng)),
            Err(EnvelopeError::Decrypt)
        );
        let _ = epoch_key;
    }

    #[test]
    fn plaintext_does_not_appear_in_envelope() {
        let keys = MemberKeys::generate(&mut OsRng);
        let epoch_key = SecretKey::random(&mut OsRng);
        let marker = b"MARKER-plaintext-7731";
        let env = Envelope::seal(
            &keys,
            header(keys.member_id()),
            &Body::Changes {
                changes: vec![marker.to_vec()],
            },
            &epoch_key,
            &mut OsRng,
        );
        assert!(!env.as_bytes().windows(marker.len()).any(|w| w == marker));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Envelope::decode(bytes);
        }
    }
}
