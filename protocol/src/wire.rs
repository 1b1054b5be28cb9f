//! Peer wire messages and their framing, with bounded decoding.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of a postcard-encoded
//! message. Lengths over [`MAX_FRAME_LEN`] are refused before anything is allocated, and
//! every list in a decoded message is checked against its cap before use.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::code::{CodeAccepted, CodeConfirm, CodeHello, CodeReply};
use crate::envelope::Hash;
use crate::ids::{GroupId, MemberId};
use crate::invite::{JoinAccept, JoinRequest};
use crate::session::SLOT_LEN;

/// Version of the peer protocol spoken on `/sync/1` and `/join/2` (the join stream's name
/// carries its own version).
pub const WIRE_VERSION: u8 = 2;
/// Largest frame accepted (an envelope is at most 1 MiB; a batch is cut before 4 MiB).
pub const MAX_FRAME_LEN: usize = 4 << 20;
/// Most envelopes in one batch.
pub const MAX_BATCH_ENVELOPES: usize = 512;
/// Byte budget a sender keeps each batch under, leaving room for framing.
pub const BATCH_BYTE_BUDGET: usize = 3 << 20;
/// Most reveal slots one peer may offer (a power of two; see `session`).
pub const MAX_REVEAL_SLOTS: usize = 1024;
/// Most authors in one version vector.
pub const MAX_VV_ENTRIES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VvEntry {
    pub author: MemberId,
    pub seq: u64,
    pub hash: Hash,
}

/// Messages of a sync session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMessage {
    /// First message each way: protocol version, a fresh nonce and the sender's X25519
    /// key for this session.
    Hello {
        version: u8,
        nonce: [u8; 32],
        key: [u8; 32],
    },
    /// Second: the sender's identity in each group, sealed for each member it counts as
    /// current there (see `session`), padded with random slots.
    Reveal {
        #[serde(deserialize_with = "bounded::vec::<_, _, MAX_REVEAL_SLOTS>")]
        slots: Vec<RevealSlot>,
    },
    /// The sender's version vector for one group.
    Have {
        group_id: GroupId,
        #[serde(deserialize_with = "bounded::vec::<_, _, MAX_VV_ENTRIES>")]
        heads: Vec<VvEntry>,
    },
    /// Envelopes the receiver lacks (each author's in sequence order).
    Envelopes {
        group_id: GroupId,
        #[serde(deserialize_with = "bounded::vec::<_, _, MAX_BATCH_ENVELOPES>")]
        envelopes: Vec<Vec<u8>>,
    },
    /// To a peer that is no longer a member in the sender's view: "send me your own log
    /// after this envelope, and nothing else". It tells the peer nothing of the group
    /// beyond its own log, and lets the sender learn acts of the peer that may undo the
    /// peer's removal (concurrent removals).
    HaveOwn {
        group_id: GroupId,
        seq: u64,
        hash: Hash,
    },
}

/// Largest frame of the session handshake (hello, reveal slots).
pub const MAX_HANDSHAKE_FRAME_LEN: usize = 256 << 10;
/// Largest frame of a join request or spoken-code step.
pub const MAX_JOIN_FRAME_LEN: usize = 16 << 10;

/// One reveal slot: fixed length, so decoding allocates nothing a peer chooses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevealSlot(pub [u8; SLOT_LEN]);

impl Serialize for RevealSlot {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for RevealSlot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RevealSlot, D::Error> {
        let v: &[u8] = Deserialize::deserialize(d)?;
        v.try_into()
            .map(RevealSlot)
            .map_err(|_| serde::de::Error::invalid_length(v.len(), &"a reveal slot"))
    }
}

/// Lists decoded with a hard cap, enforced while decoding: a hostile peer cannot make us
/// build a list longer than the cap, whatever length it announces.
mod bounded {
    use std::marker::PhantomData;

    use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};

    pub fn vec<'de, D, T, const MAX: usize>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        struct Bounded<T, const MAX: usize>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for Bounded<T, MAX> {
            type Value = Vec<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a list of at most {MAX} elements")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                let announced = seq.size_hint().unwrap_or(0);
                if announced > MAX {
                    return Err(A::Error::custom(format!("more than {MAX} elements")));
                }
                let mut out = Vec::with_capacity(announced);
                while let Some(item) = seq.next_element()? {
                    if out.len() == MAX {
                        return Err(A::Error::custom(format!("more than {MAX} elements")));
                    }
                    out.push(item);
                }
                Ok(out)
            }
        }

        d.deserialize_seq(Bounded::<T, MAX>(PhantomData))
    }
}

/// Messages of the join protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinMessage {
    Request(JoinRequest),
    Accept(Box<JoinAccept>),
    /// Deliberately vague: a guesser learns nothing about which invites exist.
    Reject,
    /// A spoken-code join starts with the PAKE (`code`), whose secret then serves as the
    /// invite secret of an ordinary `Request`/`Accept` on the same stream.
    CodeHello(CodeHello),
    CodeReply(CodeReply),
    CodeConfirm(CodeConfirm),
    /// The joiner's confirmation matched: the facilitator's confirmation. (A mismatch, on
    /// any channel, with or without a code there, is answered `Reject`.)
    CodeAccepted(CodeAccepted),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    FrameTooLarge(usize),
    #[error("message is malformed")]
    Malformed,
    #[error("message carries {count} {what}, more than the limit of {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("peer speaks wire version {0}; this build speaks {WIRE_VERSION}")]
    Version(u8),
}

/// Encodes a message as one frame (length prefix included).
pub fn encode_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = postcard::to_stdvec(msg).expect("serialising an in-memory message cannot fail");
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The length announced by a frame's 4-byte prefix, refused if over the limit.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(WireError::FrameTooLarge(len));
    }
    Ok(len)
}

/// Messages that check their own caps after decoding.
pub trait Bounded {
    fn check_bounds(&self) -> Result<(), WireError>;
}

fn cap(what: &'static str, count: usize, max: usize) -> Result<(), WireError> {
    if count > max {
        return Err(WireError::TooMany { what, count, max });
    }
    Ok(())
}

impl Bounded for SyncMessage {
    fn check_bounds(&self) -> Result<(), WireError> {
        match self {
            SyncMessage::Hello { version, .. } if *version != WIRE_VERSION => {
                Err(WireError::Version(*version))
            }
            SyncMessage::Reveal { slots } => cap("reveal slots", slots.len(), MAX_REVEAL_SLOTS),
            SyncMessage::Have { heads, .. } => cap("log heads", heads.len(), MAX_VV_ENTRIES),
            SyncMessage::Envelopes { envelopes, .. } => {
                cap("envelopes", envelopes.len(), MAX_BATCH_ENVELOPES)
            }
            _ => Ok(()),
        }
    }
}

impl Bounded for JoinMessage {
    fn check_bounds(&self) -> Result<(), WireError> {
        Ok(())
    }
}

/// Decodes one frame's body (without its length prefix) and checks its caps. Lists are
/// capped while decoding; `check_bounds` re-checks what decoding cannot (the version).
pub fn decode<T: DeserializeOwned + Bounded>(body: &[u8]) -> Result<T, WireError> {
    if body.len() > MAX_FRAME_LEN {
        return Err(WireError::FrameTooLarge(body.len()));
    }
    let msg: T = postcard::from_bytes(body).map_err(|_| WireError::Malformed)?;
    msg.check_bounds()?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frame_round_trip() {
        let msg = SyncMessage::Hello {
            version: WIRE_VERSION,
            nonce: [5; 32],
            key: [6; 32],
        };
        let frame = encode_frame(&msg);
        let len = frame_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode::<SyncMessage>(&frame[4..]).unwrap(), msg);
    }

    #[test]
    fn oversized_frames_and_lists_are_refused() {
        assert!(frame_len((MAX_FRAME_LEN as u32 + 1).to_be_bytes()).is_err());
        let msg = SyncMessage::Envelopes {
            group_id: GroupId([0; 16]),
            envelopes: vec![vec![]; MAX_BATCH_ENVELOPES + 1],
        };
        assert_eq!(
            decode::<SyncMessage>(&encode_frame(&msg)[4..]),
            Err(WireError::Malformed)
        );
    }

    #[test]
    fn an_announced_list_longer_than_its_cap_is_refused_before_it_is_built() {
        // Envelopes variant (3), group id, a length of 4 million, and as many empty
        // entries as the frame allows: refused while decoding, not after building them.
        let mut body = vec![3u8];
        body.extend_from_slice(&[0; 16]);
        body.extend_from_slice(&[0x80, 0x92, 0xf4, 0x01]); // varint 4_000_000
        body.extend(std::iter::repeat_n(0u8, MAX_FRAME_LEN - 32));
        assert_eq!(decode::<SyncMessage>(&body), Err(WireError::Malformed));
    }

    #[test]
    fn a_version_vector_longer_than_its_cap_is_refused_while_decoding() {
        let entry = VvEntry {
            author: MemberId([1; 16]),
            seq: 1,
            hash: [2; 32],
        };
        let msg = SyncMessage::Have {
            group_id: GroupId([0; 16]),
            heads: vec![entry; MAX_VV_ENTRIES + 1],
        };
        assert_eq!(
            decode::<SyncMessage>(&encode_frame(&msg)[4..]),
            Err(WireError::Malformed)
        );
    }

    #[test]
    fn reveal_slots_decode_only_at_their_exact_length() {
        let msg = SyncMessage::Reveal {
            slots: vec![RevealSlot([7; SLOT_LEN]); 3],
        };
        assert_eq!(decode::<SyncMessage>(&encode_frame(&msg)[4..]), Ok(msg));
        // Variant 1, one slot announced one byte short.
        let mut body = vec![1u8, 1];
        body.extend_from_slice(&[(SLOT_LEN - 1) as u8, 1]); // varint 159
        body.extend(std::iter::repeat_n(0u8, SLOT_LEN - 1));
        assert_eq!(decode::<SyncMessage>(&body), Err(WireError::Malformed));
    }

    #[test]
    fn other_versions_are_refused() {
        let msg = SyncMessage::Hello {
            version: 9,
            nonce: [0; 32],
            key: [0; 32],
        };
        assert_eq!(
            decode::<SyncMessage>(&encode_frame(&msg)[4..]),
            Err(WireError::Version(9))
        );
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode::<SyncMessage>(&bytes);
            let _ = decode::<JoinMessage>(&bytes);
        }
    }
}
