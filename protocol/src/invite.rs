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
use crate::envelope::Hash;
use crate::group::{Access, KeyGrant};
use crate::identity::{MemberKeys, PublicIdentity};
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

/// An invite token. Its `secret` is wiped when the token is dropped.
#[derive(
    Clone, PartialEq, Eq, Serialize, Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop,
)]
pub struct InviteToken {
    #[zeroize(skip)]
    pub group_id: GroupId,
    #[zeroize(skip)]
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
    #[error("the membership keys in the answer do not open")]
    RosterKeys,
}

impl std::fmt::Debug for InviteToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InviteToken")
            .field("group_id", &self.group_id)
            .field("facilitator", &self.facilitator)
            .field("expires_at", &self.expires_at)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
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

/// The key that seals a join request's identity and name: only a holder of the invite
/// secret (the facilitator's daemon) reads who is asking to join.
fn join_request_key(secret: &[u8; 32]) -> SecretKey {
    crypto::derive_key(secret, &[labels::JOIN_REQUEST_KEY])
}

/// A short handle by which a facilitator names an open invite (`hearth invite list`,
/// `withdraw`): 4 bytes under a label of its own, so showing it reveals nothing of the
/// secret and cannot be used to find or burn the invite (its lookup id is another
/// derivation). Shown as 8 lowercase hex digits.
pub fn invite_handle(secret: &[u8; 32]) -> String {
    let k = crypto::derive_key(secret, &[labels::INVITE_HANDLE]);
    hex::encode(&k.expose()[..4])
}

/// Associated data of a sealed join request: the invite id and both connection peer ids,
/// so a sealed body cannot be moved to another request or connection.
fn join_request_aad(invite_id: &[u8; 16], joiner_peer: &[u8], facilitator_peer: &[u8]) -> Vec<u8> {
    let mut aad = invite_id.to_vec();
    for part in [joiner_peer, facilitator_peer] {
        aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
        aad.extend_from_slice(part);
    }
    aad
}

/// Length of a join request's sealed plaintext: the identity (64 bytes), the postcard
/// length of the name and a name of at most [`crate::membership::MAX_NAME_LEN`]
/// characters (4 bytes each at most), padded with zeros to this length so the sealed
/// size says nothing of the name.
const REQUEST_BODY_LEN: usize = 64 + 2 + 4 * crate::membership::MAX_NAME_LEN;

/// Longest sealed body of a join request: a nonce, the padded body and the AEAD tag. A
/// request made by this version is always exactly this long.
pub const MAX_SEALED_REQUEST_LEN: usize = crypto::XNONCE_LEN + REQUEST_BODY_LEN + crypto::TAG_LEN;

/// What a join request carries sealed.
#[derive(Serialize, Deserialize)]
struct RequestBody {
    identity: PublicIdentity,
    name: String,
}

/// Who asks to join, as the facilitator reads it from a request it verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joiner {
    /// The invite the request was made with.
    pub invite_id: [u8; 16],
    pub identity: PublicIdentity,
    /// The name the joiner asks to be shown by (may be empty).
    pub name: String,
}

/// What both sides of a join bind their proofs to.
fn join_transcript(
    invite_id: &[u8; 16],
    joiner_peer: &[u8],
    facilitator_peer: &[u8],
    joiner: &PublicIdentity,
    name: &str,
) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(labels::JOIN_TRANSCRIPT);
    h.update(invite_id);
    for part in [joiner_peer, facilitator_peer, name.as_bytes()] {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(&joiner.to_bytes());
    *h.finalize().as_bytes()
}

/// A join request. Who asks (identity and name) travels sealed under a key derived from
/// the invite secret, so that someone between joiner and facilitator who lacks the secret
/// (the token names no transport peer id) learns only the invite id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub invite_id: [u8; 16],
    /// `nonce || XChaCha20-Poly1305(join request key, postcard {identity, name},
    /// aad = invite_id || u64 len || pid_J || u64 len || pid_F)`.
    pub sealed: Vec<u8>,
    /// HMAC under the invite's MAC key over the transcript.
    pub proof: [u8; 32],
    #[serde(with = "serde_big_array")]
    pub signature: [u8; 64],
}

impl JoinRequest {
    pub fn new(
        me: &MemberKeys,
        token: &InviteToken,
        name: &str,
        joiner_peer: &[u8],
        facilitator_peer: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> JoinRequest {
        JoinRequest::with_secret(me, &token.secret, name, joiner_peer, facilitator_peer, rng)
    }

    /// A request proving knowledge of an invite secret however it was agreed (a token,
    /// or a spoken-code exchange).
    pub fn with_secret(
        me: &MemberKeys,
        secret: &[u8; 32],
        name: &str,
        joiner_peer: &[u8],
        facilitator_peer: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> JoinRequest {
        let id = invite_id(secret);
        let identity = me.public();
        let t = join_transcript(&id, joiner_peer, facilitator_peer, &identity, name);
        let mut body = zeroize::Zeroizing::new(
            postcard::to_stdvec(&RequestBody {
                identity,
                name: name.to_owned(),
            })
            .expect("serialising in memory cannot fail"),
        );
        // Padded to one length whatever the name (a longer name is refused by the
        // facilitator anyway; it is sent unpadded rather than cut).
        if body.len() < REQUEST_BODY_LEN {
            body.resize(REQUEST_BODY_LEN, 0);
        }
        let aad = join_request_aad(&id, joiner_peer, facilitator_peer);
        let (nonce, ct) = crypto::seal(&join_request_key(secret), &aad, &body, rng);
        JoinRequest {
            invite_id: id,
            sealed: [nonce.as_slice(), &ct].concat(),
            proof: crypto::mac(&invite_mac_key(secret), &[b"request", &t]),
            signature: me.sign(labels::SIG_JOIN_REQUEST, &t),
        }
    }

    /// The facilitator's check, given the secret of the invite named by `invite_id`:
    /// opens who is asking and checks the proof of the secret and the joiner's signature.
    /// `None` if anything fails (the caller burns the invite).
    pub fn verify(
        &self,
        secret: &[u8; 32],
        joiner_peer: &[u8],
        facilitator_peer: &[u8],
    ) -> Option<Joiner> {
        if self.sealed.len() > MAX_SEALED_REQUEST_LEN
            || !crypto::ct_eq(&self.invite_id, &invite_id(secret))
        {
            return None;
        }
        let (nonce, ct) = self.sealed.split_at_checked(crypto::XNONCE_LEN)?;
        let nonce: [u8; crypto::XNONCE_LEN] = nonce.try_into().ok()?;
        let aad = join_request_aad(&self.invite_id, joiner_peer, facilitator_peer);
        let plain = crypto::open(&join_request_key(secret), &aad, &nonce, ct).ok()?;
        let (body, padding) = postcard::take_from_bytes::<RequestBody>(&plain).ok()?;
        if padding.iter().any(|&b| b != 0) {
            return None;
        }
        let t = join_transcript(
            &self.invite_id,
            joiner_peer,
            facilitator_peer,
            &body.identity,
            &body.name,
        );
        let expected = crypto::mac(&invite_mac_key(secret), &[b"request", &t]);
        let proven = crypto::ct_eq(&expected, &self.proof)
            && body
                .identity
                .verify(labels::SIG_JOIN_REQUEST, &t, &self.signature)
                .is_ok();
        proven.then_some(Joiner {
            invite_id: self.invite_id,
            identity: body.identity,
            name: body.name,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAccept {
    pub info: GroupInfo,
    pub facilitator: PublicIdentity,
    /// The epoch the joiner's admission started, and the envelope hash of that admission.
    pub epoch: u32,
    pub rotation: Hash,
    pub lockbox: Lockbox,
    /// The roster keys of every earlier epoch the facilitator holds, sealed under the
    /// epoch's roster-history key: the joiner can follow the group's membership from its
    /// start, but read none of its earlier content.
    pub sealed_roster_keys: Vec<u8>,
    /// The document, sealed under the epoch's snapshot key.
    pub sealed_snapshot: Vec<u8>,
    pub proof: [u8; 32],
    #[serde(with = "serde_big_array")]
    pub signature: [u8; 64],
}

/// What a joiner takes away from a verified answer.
pub struct Welcome {
    pub info: GroupInfo,
    /// The new epoch's key first, then the roster keys of earlier epochs.
    pub grants: Vec<KeyGrant>,
    pub snapshot: zeroize::Zeroizing<Vec<u8>>,
}

/// What the facilitator's daemon hands a joiner, taken from the group at admission.
pub struct Admission {
    pub info: GroupInfo,
    pub epoch: u32,
    /// Envelope hash of the add that started `epoch`.
    pub rotation: Hash,
    pub epoch_key: SecretKey,
    pub roster_history: Vec<(u32, Option<Hash>, SecretKey)>,
    pub snapshot: zeroize::Zeroizing<Vec<u8>>,
}

impl Admission {
    /// What the joiner takes away from this admission: the same as a verified
    /// [`JoinAccept`] gives it.
    pub fn welcome(&self) -> Welcome {
        let mut grants = vec![KeyGrant {
            epoch: self.epoch,
            rotation: Some(self.rotation),
            access: Access::Full(self.epoch_key.clone()),
        }];
        grants.extend(self.roster_history.iter().map(|(e, r, k)| KeyGrant {
            epoch: *e,
            rotation: *r,
            access: Access::Roster(k.clone()),
        }));
        Welcome {
            info: self.info,
            grants,
            snapshot: self.snapshot.clone(),
        }
    }
}

/// One earlier epoch's roster key, as carried to a joiner.
#[derive(Serialize, Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
struct RosterKeyEntry {
    epoch: u32,
    rotation: Option<Hash>,
    key: [u8; 32],
}

/// Most earlier epochs a join answer may carry roster keys of.
pub const MAX_ROSTER_KEYS: usize = 4096;

fn roster_history_key(epoch_key: &SecretKey, group_id: &GroupId, epoch: u32) -> SecretKey {
    crypto::derive_key(
        epoch_key.expose(),
        &[
            labels::ROSTER_HISTORY_KEY,
            group_id.as_bytes(),
            &epoch.to_be_bytes(),
        ],
    )
}

impl JoinAccept {
    pub fn new(
        facilitator: &MemberKeys,
        joiner: &Joiner,
        secret: &[u8; 32],
        admission: &Admission,
        joiner_peer: &[u8],
        facilitator_peer: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> JoinAccept {
        let Admission {
            info,
            epoch,
            rotation,
            epoch_key,
            roster_history,
            snapshot,
        } = admission;
        let (info, epoch) = (*info, *epoch);
        let lockbox = Lockbox::seal(
            facilitator,
            &joiner.identity,
            info.group_id,
            epoch,
            epoch_key,
            rng,
        );
        let entries: Vec<RosterKeyEntry> = roster_history
            .iter()
            .map(|(e, r, k)| RosterKeyEntry {
                epoch: *e,
                rotation: *r,
                key: *k.expose(),
            })
            .collect();
        let plain = zeroize::Zeroizing::new(
            postcard::to_stdvec(&entries).expect("serialising in memory cannot fail"),
        );
        let history_key = roster_history_key(epoch_key, &info.group_id, epoch);
        let (nonce, ct) = crypto::seal(&history_key, info.group_id.as_bytes(), &plain, rng);
        let sealed_roster_keys = [nonce.as_slice(), &ct].concat();
        let sealed_snapshot =
            crate::group::seal_snapshot(epoch_key, &info.group_id, epoch, snapshot, rng);
        let mut accept = JoinAccept {
            info,
            facilitator: facilitator.public(),
            epoch,
            rotation: *rotation,
            lockbox,
            sealed_roster_keys,
            sealed_snapshot,
            proof: [0; 32],
            signature: [0; 64],
        };
        let t = join_transcript(
            &joiner.invite_id,
            joiner_peer,
            facilitator_peer,
            &joiner.identity,
            &joiner.name,
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
            &self.rotation,
            &self.lockbox,
            &self.sealed_roster_keys,
            &self.sealed_snapshot,
        );
        let bytes = postcard::to_stdvec(&content).expect("serialising in memory cannot fail");
        *blake3::hash(&bytes).as_bytes()
    }

    /// The joiner's check of an answer after a spoken-code exchange: the code names no
    /// group or facilitator, so they are taken from the answer, whose proof under the
    /// exchange's secret shows it came from the daemon that held the code.
    pub fn verify_code(
        &self,
        me: &MemberKeys,
        secret: &[u8; 32],
        name: &str,
        joiner_peer: &[u8],
        facilitator_peer: &[u8],
    ) -> Result<Welcome, InviteError> {
        let token = InviteToken {
            group_id: self.info.group_id,
            facilitator: self.facilitator.member_id(),
            secret: *secret,
            expires_at: 0,
            addrs: Vec::new(),
        };
        self.verify(me, &token, name, joiner_peer, facilitator_peer)
    }

    /// The joiner's check of the answer against the token it used.
    pub fn verify(
        &self,
        me: &MemberKeys,
        token: &InviteToken,
        name: &str,
        joiner_peer: &[u8],
        facilitator_peer: &[u8],
    ) -> Result<Welcome, InviteError> {
        let t = join_transcript(
            &token.invite_id(),
            joiner_peer,
            facilitator_peer,
            &me.public(),
            name,
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
        let history_key = roster_history_key(&epoch_key, &self.info.group_id, self.epoch);
        let (nonce, ct) = self
            .sealed_roster_keys
            .split_at_checked(crate::crypto::XNONCE_LEN)
            .ok_or(InviteError::RosterKeys)?;
        let nonce: [u8; crate::crypto::XNONCE_LEN] =
            nonce.try_into().map_err(|_| InviteError::RosterKeys)?;
        let plain = crypto::open(&history_key, self.info.group_id.as_bytes(), &nonce, ct)
            .map_err(|_| InviteError::RosterKeys)?;
        let entries: Vec<RosterKeyEntry> =
            postcard::from_bytes(&plain).map_err(|_| InviteError::RosterKeys)?;
        if entries.len() > MAX_ROSTER_KEYS {
            return Err(InviteError::RosterKeys);
        }
        let mut grants = vec![KeyGrant {
            epoch: self.epoch,
            rotation: Some(self.rotation),
            access: Access::Full(epoch_key),
        }];
        grants.extend(entries.iter().map(|e| KeyGrant {
            epoch: e.epoch,
            rotation: e.rotation,
            access: Access::Roster(SecretKey::from_bytes(e.key)),
        }));
        Ok(Welcome {
            info: self.info,
            grants,
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

    fn token_for(group: &Group, facilitator: &MemberKeys) -> InviteToken {
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
        let a = MemberKeys::generate(&mut OsRng);
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
        let a = MemberKeys::generate(&mut OsRng);
        let b = MemberKeys::generate(&mut OsRng);
        let (mut g, _, _) = Group::create(&a, "Circle", "Support", &mut OsRng).unwrap();
        let token = token_for(&g, &a);
        let req = JoinRequest::new(&b, &token, "Sam", b"peer-b", b"peer-a", &mut OsRng);
        let joiner = req.verify(&token.secret, b"peer-b", b"peer-a").unwrap();
        assert_eq!(joiner.identity, b.public());
        assert_eq!(joiner.name, "Sam");
        // Relayed through another connection: the peer ids differ, so it fails.
        assert!(req.verify(&token.secret, b"peer-x", b"peer-a").is_none());
        assert!(req.verify(&[0; 32], b"peer-b", b"peer-a").is_none());
        // A sealed body moved to another request (another name or identity) fails too.
        let other = JoinRequest::new(&a, &token, "Someone else", b"peer-b", b"peer-a", &mut OsRng);
        let mut swapped = req.clone();
        swapped.sealed = other.sealed.clone();
        assert!(
            swapped
                .verify(&token.secret, b"peer-b", b"peer-a")
                .is_none()
        );
        let mut flipped = req.clone();
        flipped.sealed[30] ^= 1;
        assert!(
            flipped
                .verify(&token.secret, b"peer-b", b"peer-a")
                .is_none()
        );
        let written = g
            .add_member(joiner.identity, Role::Member, &joiner.name, 0, &mut OsRng)
            .unwrap();
        let (epoch, key) = g.current_epoch();
        let key = key.unwrap().clone();
        let admission = Admission {
            info: *g.info(),
            epoch,
            rotation: written.own.hash(),
            epoch_key: key.clone(),
            roster_history: g.roster_history(),
            snapshot: zeroize::Zeroizing::new(g.snapshot()),
        };
        let accept = JoinAccept::new(
            &a,
            &joiner,
            &token.secret,
            &admission,
            b"peer-b",
            b"peer-a",
            &mut OsRng,
        );
        let welcome = accept
            .verify(&b, &token, "Sam", b"peer-b", b"peer-a")
            .unwrap();
        assert!(matches!(&welcome.grants[0].access, Access::Full(k) if *k == key));
        assert_eq!(welcome.grants.len(), 1 + admission.roster_history.len());
        assert!(
            welcome.grants[1..]
                .iter()
                .all(|g| matches!(g.access, Access::Roster(_)))
        );
        assert_eq!(&welcome.snapshot[..], &admission.snapshot[..]);
        // An answer from someone who does not know the secret is refused.
        let mut other = token.clone();
        other.secret = [1; 32];
        assert!(matches!(
            accept.verify(&b, &other, "Sam", b"peer-b", b"peer-a"),
            Err(InviteError::BadProof)
        ));
    }

    /// Someone between joiner and facilitator without the invite secret (the token names
    /// no transport peer id) must not learn who is joining: neither the name nor the
    /// identity appears in the request's bytes.
    #[test]
    fn a_join_request_hides_who_asks_from_whoever_lacks_the_secret() {
        let a = MemberKeys::generate(&mut OsRng);
        let b = MemberKeys::generate(&mut OsRng);
        let (g, _, _) = Group::create(&a, "Circle", "", &mut OsRng).unwrap();
        let token = token_for(&g, &a);
        let name = "Samira-NAME-MARKER";
        let req = JoinRequest::new(&b, &token, name, b"peer-b", b"peer-a", &mut OsRng);
        let bytes = postcard::to_stdvec(&crate::wire::JoinMessage::Request(req.clone())).unwrap();
        let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(!contains(name.as_bytes()), "the name travels in the clear");
        let id = b.public();
        assert!(
            !contains(&id.signing),
            "the signing key travels in the clear"
        );
        assert!(
            !contains(&id.agreement),
            "the agreement key travels in the clear"
        );
        assert!(!contains(b.member_id().as_bytes()));
        // Only the secret opens it.
        assert!(req.verify(&token.secret, b"peer-b", b"peer-a").is_some());
        // A name of the longest allowed length, in 4-byte characters, still fits the cap.
        let long = "\u{1F600}".repeat(crate::membership::MAX_NAME_LEN);
        let req = JoinRequest::new(&b, &token, &long, b"peer-b", b"peer-a", &mut OsRng);
        assert!(req.sealed.len() <= MAX_SEALED_REQUEST_LEN);
        assert_eq!(
            req.verify(&token.secret, b"peer-b", b"peer-a")
                .unwrap()
                .name,
            long
        );
    }

    /// The sealed request is as long whatever the name (even none), so its size says
    /// nothing of who asks.
    #[test]
    fn a_join_request_is_one_length_whatever_the_name() {
        let a = MemberKeys::generate(&mut OsRng);
        let b = MemberKeys::generate(&mut OsRng);
        let (g, _, _) = Group::create(&a, "Circle", "", &mut OsRng).unwrap();
        let token = token_for(&g, &a);
        let long = "\u{1F600}".repeat(crate::membership::MAX_NAME_LEN);
        for name in ["", "Jo", "Samira Okonkwo-Lindqvist", long.as_str()] {
            let req = JoinRequest::new(&b, &token, name, b"peer-b", b"peer-a", &mut OsRng);
            assert_eq!(req.sealed.len(), MAX_SEALED_REQUEST_LEN, "{name:?}");
            let joiner = req.verify(&token.secret, b"peer-b", b"peer-a").unwrap();
            assert_eq!(joiner.name, name);
        }
    }

    /// A request must name the invite its secret belongs to: one sealed and proven with
    /// the right secret but carrying another invite id is refused.
    #[test]
    fn a_join_request_must_name_the_invite_of_its_secret() {
        let a = MemberKeys::generate(&mut OsRng);
        let b = MemberKeys::generate(&mut OsRng);
        let (g, _, _) = Group::create(&a, "Circle", "", &mut OsRng).unwrap();
        let token = token_for(&g, &a);
        let other_id = [7u8; 16];
        // Made as `with_secret` makes it, but under another id.
        let identity = b.public();
        let t = join_transcript(&other_id, b"peer-b", b"peer-a", &identity, "Jo");
        let mut body = postcard::to_stdvec(&RequestBody {
            identity,
            name: "Jo".into(),
        })
        .unwrap();
        body.resize(REQUEST_BODY_LEN, 0);
        let aad = join_request_aad(&other_id, b"peer-b", b"peer-a");
        let (nonce, ct) = crypto::seal(&join_request_key(&token.secret), &aad, &body, &mut OsRng);
        let req = JoinRequest {
            invite_id: other_id,
            sealed: [nonce.as_slice(), &ct].concat(),
            proof: crypto::mac(&invite_mac_key(&token.secret), &[b"request", &t]),
            signature: b.sign(labels::SIG_JOIN_REQUEST, &t),
        };
        assert!(req.verify(&token.secret, b"peer-b", b"peer-a").is_none());
    }

    #[test]
    fn tokens_do_not_print_their_secret_and_handles_differ_from_ids() {
        let a = MemberKeys::generate(&mut OsRng);
        let (g, _, _) = Group::create(&a, "Circle", "", &mut OsRng).unwrap();
        let mut token = token_for(&g, &a);
        token.secret = [0xab; 32];
        assert!(!format!("{token:?}").contains("171"), "{token:?}");
        assert!(!format!("{token:?}").to_lowercase().contains("abab"));
        let handle = invite_handle(&token.secret);
        assert_eq!(handle.len(), 8);
        assert!(!hex::encode(token.invite_id()).contains(&handle));
    }

    proptest! {
        #[test]
        fn token_decode_never_panics(s in "\\PC{0,300}") {
            let _ = InviteToken::decode(&s);
            let _ = InviteToken::decode(&format!("{TOKEN_PREFIX}{s}"));
        }
    }
}
