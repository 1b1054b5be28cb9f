//! Random and derived identifiers: member ids and group ids.
//!
//! Both are 16 bytes, shown as 32 lowercase hex digits. A member id is derived from the
//! member's Ed25519 public key; a group id from its creator's key and a random nonce, so
//! the group id itself names the one key allowed to have created it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::crypto::labels;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{what} must be 32 hex digits (16 bytes), got {got:?}")]
pub struct IdParseError {
    what: &'static str,
    got: String,
}

macro_rules! id_type {
    ($name:ident, $what:literal) => {
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut out = [0u8; 16];
                hex::decode_to_slice(s, &mut out).map_err(|_| IdParseError {
                    what: $what,
                    got: s.chars().take(64).collect(),
                })?;
                Ok($name(out))
            }
        }
    };
}

id_type!(MemberId, "a member id");
id_type!(GroupId, "a group id");

impl MemberId {
    /// The member id of an Ed25519 public key.
    pub fn from_signing_key(public: &[u8; 32]) -> MemberId {
        let hash = blake3::derive_key(labels::MEMBER_ID, public);
        let mut id = [0u8; 16];
        id.copy_from_slice(&hash[..16]);
        MemberId(id)
    }

    /// The automerge actor id this member writes with: fixed, so that every change a
    /// member makes is attributable to it and checkable against its signed envelopes.
    pub fn actor_id(&self) -> automerge::ActorId {
        automerge::ActorId::from(&self.0[..])
    }
}

impl GroupId {
    /// The group id of a group created by the holder of `creator_signing_key` with `nonce`.
    pub fn derive(creator_signing_key: &[u8; 32], nonce: &[u8; 16]) -> GroupId {
        let mut input = [0u8; 48];
        input[..32].copy_from_slice(creator_signing_key);
        input[32..].copy_from_slice(nonce);
        let hash = blake3::derive_key(labels::GROUP_ID, &input);
        let mut id = [0u8; 16];
        id.copy_from_slice(&hash[..16]);
        GroupId(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn member_id_depends_on_key() {
        assert_ne!(
            MemberId::from_signing_key(&[1; 32]),
            MemberId::from_signing_key(&[2; 32])
        );
    }

    #[test]
    fn parse_rejects_wrong_length_and_non_hex() {
        assert!("abc".parse::<GroupId>().is_err());
        assert!("zz".repeat(16).parse::<GroupId>().is_err());
    }

    proptest! {
        #[test]
        fn hex_round_trips(bytes in any::<[u8; 16]>()) {
            let id = MemberId(bytes);
            prop_assert_eq!(id.to_hex().parse::<MemberId>().unwrap(), id);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<GroupId>();
        }
    }
}
