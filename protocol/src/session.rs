//! Proving group membership to a peer without telling a non-member anything.
//!
//! Both sides send a fresh nonce. The transcript hash binds both nonces and both libp2p
//! peer ids (which Noise authenticated). Each side then sends, for every group it is in,
//! a tag: HMAC under a key derived from the group's epoch key, over the transcript and the
//! sender's side. Only a holder of the same epoch key can recognise a tag; to anyone else
//! tags are fresh random-looking bytes. For matched groups each side then signs the
//! transcript with its member key, and the other checks that key against the membership.

use crate::crypto::{self, SecretKey, labels};
use crate::identity::{DeviceKeys, PublicIdentity};
use crate::ids::GroupId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Dialer,
    Listener,
}

impl Side {
    fn byte(self) -> u8 {
        match self {
            Side::Dialer => 0,
            Side::Listener => 1,
        }
    }
    pub fn other(self) -> Side {
        match self {
            Side::Dialer => Side::Listener,
            Side::Listener => Side::Dialer,
        }
    }
}

/// The hash both sides bind their proofs to.
pub fn transcript(
    dialer_peer: &[u8],
    listener_peer: &[u8],
    dialer_nonce: &[u8; 32],
    listener_nonce: &[u8; 32],
) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(labels::SESSION_TRANSCRIPT);
    for part in [dialer_peer, listener_peer] {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(dialer_nonce);
    h.update(listener_nonce);
    *h.finalize().as_bytes()
}

/// The tag `sender` sends for a group it holds `epoch_key` of.
pub fn group_tag(
    epoch_key: &SecretKey,
    group_id: &GroupId,
    epoch: u32,
    transcript: &[u8; 32],
    sender: Side,
) -> [u8; 32] {
    let key = crypto::derive_key(
        epoch_key.expose(),
        &[
            labels::GROUP_PROOF_KEY,
            group_id.as_bytes(),
            &epoch.to_be_bytes(),
        ],
    );
    crypto::mac(&key, &[transcript, &[sender.byte()]])
}

/// Whether any of `received` equals `expected`, compared in constant time.
pub fn tag_matches(expected: &[u8; 32], received: &[[u8; 32]]) -> bool {
    received
        .iter()
        .fold(false, |found, t| found | crypto::ct_eq(expected, t))
}

fn auth_message(transcript: &[u8; 32], sender: Side, groups: &[GroupId]) -> Vec<u8> {
    let mut sorted = groups.to_vec();
    sorted.sort();
    let mut m = transcript.to_vec();
    m.push(sender.byte());
    for g in sorted {
        m.extend_from_slice(g.as_bytes());
    }
    m
}

pub fn sign_auth(
    me: &DeviceKeys,
    transcript: &[u8; 32],
    sender: Side,
    groups: &[GroupId],
) -> [u8; 64] {
    me.sign(
        labels::SIG_SESSION,
        &auth_message(transcript, sender, groups),
    )
}

pub fn verify_auth(
    identity: &PublicIdentity,
    signature: &[u8; 64],
    transcript: &[u8; 32],
    sender: Side,
    groups: &[GroupId],
) -> bool {
    identity
        .verify(
            labels::SIG_SESSION,
            &auth_message(transcript, sender, groups),
            signature,
        )
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn tags_match_only_with_the_same_key_side_and_transcript() {
        let key = SecretKey::random(&mut OsRng);
        let g = GroupId([1; 16]);
        let t = transcript(b"a", b"b", &[1; 32], &[2; 32]);
        let tag = group_tag(&key, &g, 0, &t, Side::Dialer);
        assert!(tag_matches(&tag, &[[0; 32], tag]));
        assert_ne!(tag, group_tag(&key, &g, 0, &t, Side::Listener));
        assert_ne!(
            tag,
            group_tag(&SecretKey::random(&mut OsRng), &g, 0, &t, Side::Dialer)
        );
        let t2 = transcript(b"a", b"b", &[1; 32], &[3; 32]);
        assert_ne!(tag, group_tag(&key, &g, 0, &t2, Side::Dialer));
    }

    #[test]
    fn auth_binds_side_and_groups() {
        let me = DeviceKeys::generate(&mut OsRng);
        let t = [7; 32];
        let groups = [GroupId([1; 16]), GroupId([2; 16])];
        let sig = sign_auth(&me, &t, Side::Listener, &groups);
        assert!(verify_auth(
            &me.public(),
            &sig,
            &t,
            Side::Listener,
            &[groups[1], groups[0]]
        ));
        assert!(!verify_auth(&me.public(), &sig, &t, Side::Dialer, &groups));
        assert!(!verify_auth(
            &me.public(),
            &sig,
            &t,
            Side::Listener,
            &groups[..1]
        ));
    }
}
