//! Invitations by token, and the join handshake they authorise.
//!
//! The facilitator's daemon makes a one-time secret; the token carries it with the group
//! id, the facilitator's member id, an expiry and addresses to dial. The joiner proves
//! knowledge of the secret (HMAC) and of its own keys (signature) over a transcript bound
//! to both libp2p peer ids of the connection, so a request cannot be relayed elsewhere.
//! The facilitator answers with the group's root, a lockbox holding the epoch key and a
//! sealed snapshot, proving knowledge of the same secret and signing the answer.

use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};

use crate::crypto::{self, SecretKey, labels};
use crate::identity::{DeviceKeys, PublicIdentity};
use crate::ids::{GroupId, MemberId};
use crate::lockbox::{Lockbox, serde_big_array};
use crate::membership::GroupInfo;

/// Text tokens start with this, so a pasted token is recognisable and versioned.
pub const TOKEN_PREFIX: &str = "hearth1-";
/// Longest token text accepted.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Most addresses a token may carry, and the longest each may be.
pub const MAX_TOKEN_ADDRS: usize = 16;
pub const MAX_ADDR_LEN: usize = 256;
/// Largest sealed snapshot a joiner accepts in one join answer.
pub const MAX_SNAPSHOT_LEN: usize = 3 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteToken {
    pub group_id: GroupId,
    pub facilitator: MemberId,
    pub secret: [u8; 32],
    /// Seconds since the Unix epoch.
    pub expires_at: u64,
    /// Multiaddrs of the facilitator's daemon, as strings.
    pub addrs: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InviteError {
    #[error("this is not a hearth invite token (it should start with \"{TOKEN_PREFIX}\")")]
    NotAToken,
    #[error("the invite token is damaged or incomplete; ask for it again and copy all of it")]
    Damaged,
    #[error("the invite token carries too many or too long addresses")]
    TooLarge,
    #[error("the invite has expired; ask the facilitator for a new one")]
    Expired,
    #[error("the facilitator's answer did not prove knowledge of the invite")]
    BadProof,
    #[error("the answer came from a different member than the invite names")]
    WrongFacilitator,
    #[error("the answer is for a different group than the invite names")]
    WrongGroup,
    #[error("the lockbox in the answer does not open: {0}")]
    Lockbox(#[from] crate::lockbox::LockboxError),
    #[error("the snapshot in the answer does not open")]
    Snapshot,
}

impl InviteToken {
    pub fn encode(&self) -> String {
        let bytes = postcard::to_stdvec(self).expect("serialising a token cannot fail");
        format!(
            "{TOKEN_PREFIX}{}",
            data_encoding::BASE32_NOPAD.encode(&bytes).to_lowercase()
        )
    }

    /// Parses a token a person pasted. Surrounding white space is ignored.
    pub fn decode(text: &str) -> Result<InviteToken, InviteError> {
        let text = text.trim();
        if text.len() > MAX_TOKEN_LEN {
            return Err(InviteError::TooLarge);
        }
        let body = text
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(InviteError::NotAToken)?;
        let bytes = data_encoding::BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| InviteError::Damaged)?;
        let token: InviteToken = postcard::from_bytes(&bytes).map_err(|_| InviteError::Damaged)?;
        if token.addrs.len() > MAX_TOKEN_ADDRS || token.addrs.iter().any(|a| a.len() > MAX_ADDR_LEN)
        {
            return Err(InviteError::TooLarge);
        }
        Ok(token)
    }

    pub fn invite_id(&self) -> [u8; 16] {
        invite_id(&self.secret)
    }
}

/// The public handle of an invite, by which the facilitator's daemon finds its record.
pub fn invite_id(secret: &[u8; 32]) -> [u8; 16] {
    let k = crypto::derive_key(secret, &[labels::INVITE_ID]);
    let mut id = [0u8; 16];
    id.copy_from_slice(&k.expose()[..16]);
    id
}

fn invite_mac_key(secret: &[u8; 32]) -> SecretKey {
    crypto::derive_key(secret, &[labels::INVITE_MAC_KEY])
}

/// What both sides of a join bind their proofs to.
fn join_transcript(
    invite_id: &[u8; 16],
    joiner_peer: &[u8],
    facilitator_peer: &[u8],
    joiner: &PublicIdentity,
) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(labels::JOIN_TRANSCRIPT);
    h.update(invite_id);
    for part in [joiner_peer, facilitator_peer] {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(&joiner.to_bytes());
    *h.finalize().as_bytes()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub invite_id: [u8; 16],
    pub identity: PublicIdentity,
    /// HMAC under the invite's MAC key over the transcript.
    pub proof: [u8; 32],
    #[serde(with = "serde_big_array")]
    pub signature: [u8; 64],
}

impl JoinRequest {
    pub fn new(
        me: &DeviceKeys,
        token: &InviteToken,
        joiner_peer: &[u8],
        facilitator_peer: &[u8],
    ) -> JoinRequest {
        let id = token.invite_id();
        let identity = me.public();
        let t = join_transcript(&id, joiner_peer, facilitator_peer, &identity);
        JoinRequest {
            invite_id: id,
            identity,
            proof: crypto::mac(&invite_mac_key(&token.secret), &[b"request", &t]),
            signature: me.sign(labels::SIG_JOIN_REQUEST, &t),
        }
    }

    /// The facilitator's check, given the secret of the invite named by `invite_id`.
    pub fn verify(&self, secret: &[u8; 32], joiner_peer: &[u8], facilitator_peer: &[u8]) -> bool {
        let t = join_transcript(
            &self.invite_id,
            joiner_peer,
            facilitator_peer,
            &self.identity,
        );
        let expected = crypto::mac(&invite_mac_key(secret), &[b"request", &t]);
        crypto::ct_eq(&expected, &self.proof)
            && self
                .identity
                .verify(labels::SIG_JOIN_REQUEST, &t, &self.signature)
                .is_ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAccept {
    pub info: GroupInfo,
    pub facilitator: PublicIdentity,
    pub epoch: u32,
    pub lockbox: Lockbox,
    /// The document, sealed under the epoch's snapshot key.
    pub sealed_snapshot: Vec<u8>,
    pub proof: [u8; 32],
    #[serde(with = "serde_big_array")]
    pub signature: [u8; 64],
}

/// What a joiner takes away from a verified answer.
pub struct Welcome {
    pub info: GroupInfo,
    pub epoch: u32,
    pub epoch_key: SecretKey,
    pub snapshot: zeroize::Zeroizing<Vec<u8>>,
}

impl JoinAccept {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        facilitator: &DeviceKeys,
        request: &JoinRequest,
        secret: &[u8; 32],
        info: GroupInfo,
        epoch: u32,
        epoch_key: &SecretKey,
        snapshot: &[u8],
        joiner_peer: &[u8],
        facilitator_peer: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> JoinAccept {
        let lockbox = Lockbox::seal(
            facilitator,
            &request.identity,
            info.group_id,
            epoch,
            epoch_key,
            rng,
        );
        let sealed_snapshot =
            crate::group::seal_snapshot(epoch_key, &info.group_id, epoch, snapshot, rng);
        let mut accept = JoinAccept {
            info,
            facilitator: facilitator.public(),
            epoch,
            lockbox,
            sealed_snapshot,
            proof: [0; 32],
            signature: [0; 64],
        };
        let t = join_transcript(
            &request.invite_id,
            joiner_peer,
            facilitator_peer,
            &request.identity,
        );
        let c = accept.content_hash();
        accept.proof = crypto::mac(&invite_mac_key(secret), &[b"accept", &t, &c]);
        accept.signature = facilitator.sign(labels::SIG_JOIN_ACCEPT, &[t, c].concat());
        accept
    }

    fn content_hash(&self) -> [u8; 32] {
        let content = (
            &self.info,
            &self.facilitator,
            self.epoch,
            &self.lockbox,
            &self.sealed_snapshot,
        );
        let bytes = postcard::to_stdvec(&content).expect("serialising in memory cannot fail");
        *blake3::hash(&bytes).as_bytes()
    }

    /// The joiner's check of the answer against the token it used.
    pub fn verify(
        &self,
        me: &DeviceKeys,
        token: &InviteToken,
        joiner_peer: &[u8],
        facilitator_peer: &[u8],
    ) -> Result<Welcome, InviteError> {
        let t = join_transcript(
            &token.invite_id(),
            joiner_peer,
            facilitator_peer,
            &me.public(),
        );
        let c = self.content_hash();
        let expected = crypto::mac(&invite_mac_key(&token.secret), &[b"accept", &t, &c]);
        if !crypto::ct_eq(&expected, &self.proof) {
            return Err(InviteError::BadProof);
        }
        if self.facilitator.member_id() != token.facilitator {
            return Err(InviteError::WrongFacilitator);
        }
        self.facilitator
            .verify(labels::SIG_JOIN_ACCEPT, &[t, c].concat(), &self.signature)
            .map_err(|_| InviteError::BadProof)?;
        if self.info.group_id != token.group_id || !self.info.is_authentic() {
            return Err(InviteError::WrongGroup);
        }
        if self.lockbox.group_id != self.info.group_id || self.lockbox.epoch != self.epoch {
            return Err(InviteError::WrongGroup);
        }
        if self.sealed_snapshot.len() > MAX_SNAPSHOT_LEN {
            return Err(InviteError::Snapshot);
        }
        let epoch_key = self.lockbox.open(me, &self.facilitator)?;
        let snapshot = crate::group::open_snapshot(
            &epoch_key,
            &self.info.group_id,
            self.epoch,
            &self.sealed_snapshot,
        )
        .map_err(|_| InviteError::Snapshot)?;
        Ok(Welcome {
            info: self.info,
            epoch: self.epoch,
            epoch_key,
            snapshot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Role;
    use crate::group::Group;
    use proptest::prelude::*;
    use rand_core::OsRng;

    fn token_for(group: &Group, facilitator: &DeviceKeys) -> InviteToken {
        let mut secret = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut OsRng, &mut secret);
        InviteToken {
            group_id: group.id(),
            facilitator: facilitator.member_id(),
            secret,
            expires_at: 1_900_000_000,
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        }
    }

    #[test]
    fn token_text_round_trips() {
        let a = DeviceKeys::generate(&mut OsRng);
        let (g, _, _) = Group::create(&a, "Circle", "", &mut OsRng).unwrap();
        let token = token_for(&g, &a);
        let text = token.encode();
        assert!(text.starts_with(TOKEN_PREFIX));
        assert_eq!(InviteToken::decode(&format!("  {text}\n")).unwrap(), token);
        assert_eq!(InviteToken::decode("hello"), Err(InviteError::NotAToken));
        assert_eq!(
            InviteToken::decode(&text[..text.len() - 5]),
            Err(InviteError::Damaged)
        );
    }

    #[test]
    fn full_join_handshake() {
        let a = DeviceKeys::generate(&mut OsRng);
        let b = DeviceKeys::generate(&mut OsRng);
        let (mut g, key, _) = Group::create(&a, "Circle", "Support", &mut OsRng).unwrap();
        let token = token_for(&g, &a);
        let req = JoinRequest::new(&b, &token, b"peer-b", b"peer-a");
        assert!(req.verify(&token.secret, b"peer-b", b"peer-a"));
        // Relayed through another connection: the peer ids differ, so it fails.
        assert!(!req.verify(&token.secret, b"peer-x", b"peer-a"));
        assert!(!req.verify(&[0; 32], b"peer-b", b"peer-a"));
        g.add_member(&a, req.identity, Role::Member, &mut OsRng)
            .unwrap();
        let snapshot = g.snapshot();
        let accept = JoinAccept::new(
            &a,
            &req,
            &token.secret,
            *g.info(),
            0,
            &key,
            &snapshot,
            b"peer-b",
            b"peer-a",
            &mut OsRng,
        );
        let welcome = accept.verify(&b, &token, b"peer-b", b"peer-a").unwrap();
        assert_eq!(welcome.epoch_key, key);
        assert_eq!(&welcome.snapshot[..], &snapshot[..]);
        // An answer from someone who does not know the secret is refused.
        let mut other = token.clone();
        other.secret = [1; 32];
        assert!(matches!(
            accept.verify(&b, &other, b"peer-b", b"peer-a"),
            Err(InviteError::BadProof)
        ));
    }

    proptest! {
        #[test]
        fn token_decode_never_panics(s in "\\PC{0,300}") {
            let _ = InviteToken::decode(&s);
            let _ = InviteToken::decode(&format!("{TOKEN_PREFIX}{s}"));
        }
    }
}
