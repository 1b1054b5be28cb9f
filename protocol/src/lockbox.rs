//! Lockboxes: an epoch key delivered to one member.
//!
//! The sender makes an ephemeral X25519 key, agrees with the recipient's X25519 key,
//! derives a one-time key with HKDF (context: group id, epoch, both public keys) and seals
//! the epoch key with ChaCha20-Poly1305 under a zero nonce (safe: the key is never reused).
//! The sender signs the whole lockbox, so a recipient knows which member handed it the key.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey as DhPublic, StaticSecret};
use zeroize::Zeroizing;

use crate::crypto::{self, SecretKey, labels};
use crate::identity::{MemberKeys, PublicIdentity};
use crate::ids::{GroupId, MemberId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lockbox {
    pub group_id: GroupId,
    pub epoch: u32,
    pub sender: MemberId,
    pub recipient: MemberId,
    pub ephemeral: [u8; 32],
    /// 32-byte epoch key + 16-byte tag.
    pub ciphertext: Vec<u8>,
    #[serde(with = "serde_big_array")]
    pub signature: [u8; 64],
}

/// serde supports arrays up to 32 natively; signatures are 64 bytes.
pub(crate) mod serde_big_array {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let v: &[u8] = Deserialize::deserialize(d)?;
        v.try_into()
            .map_err(|_| serde::de::Error::invalid_length(v.len(), &"64 bytes"))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LockboxError {
    #[error("lockbox is addressed to another member")]
    NotForUs,
    #[error("lockbox signature does not verify")]
    BadSignature,
    #[error("lockbox does not open with our key")]
    Decrypt,
}

/// Below this many lockboxes per thread, starting a thread costs more than it saves.
const LOCKBOXES_PER_THREAD: usize = 8;

impl Lockbox {
    pub fn seal(
        sender: &MemberKeys,
        recipient: &PublicIdentity,
        group_id: GroupId,
        epoch: u32,
        epoch_key: &SecretKey,
        rng: &mut impl CryptoRngCore,
    ) -> Lockbox {
        let eph = StaticSecret::random_from_rng(&mut *rng);
        Lockbox::seal_with(sender, recipient, group_id, epoch, epoch_key, &eph)
    }

    /// Seals `epoch_key` for each recipient, in order, spread over the machine's cores. A
    /// rotation seals one lockbox per member (two scalar multiplications and a signature
    /// each), and every member waits for all of them before it can write again.
    pub fn seal_all(
        sender: &MemberKeys,
        recipients: &[PublicIdentity],
        group_id: GroupId,
        epoch: u32,
        epoch_key: &SecretKey,
        rng: &mut impl CryptoRngCore,
    ) -> Vec<Lockbox> {
        // The one-time keys are drawn here, in order, so only the arithmetic moves to
        // other threads. They are wiped when `jobs` is dropped.
        let jobs: Vec<(&PublicIdentity, StaticSecret)> = recipients
            .iter()
            .map(|to| (to, StaticSecret::random_from_rng(&mut *rng)))
            .collect();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(jobs.len().div_ceil(LOCKBOXES_PER_THREAD))
            .max(1);
        let per_thread = jobs.len().div_ceil(threads).max(1);
        let seal_batch = |batch: &[(&PublicIdentity, StaticSecret)]| -> Vec<Lockbox> {
            batch
                .iter()
                .map(|(to, eph)| Lockbox::seal_with(sender, to, group_id, epoch, epoch_key, eph))
                .collect()
        };
        std::thread::scope(|scope| {
            let mut batches = jobs.chunks(per_thread);
            let first = batches.next();
            let others: Vec<_> = batches
                .map(|batch| {
                    let thread =
                        std::thread::Builder::new().spawn_scoped(scope, move || seal_batch(batch));
                    (batch, thread)
                })
                .collect();
            let mut sealed = first.map(seal_batch).unwrap_or_default();
            for (batch, thread) in others {
                sealed.extend(match thread {
                    Ok(thread) => thread
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                    // No thread to be had: sealed here instead, still in order.
                    Err(_) => seal_batch(batch),
                });
            }
            sealed
        })
    }

    /// `eph` is the lockbox's one-time key, used for this lockbox only.
    fn seal_with(
        sender: &MemberKeys,
        recipient: &PublicIdentity,
        group_id: GroupId,
        epoch: u32,
        epoch_key: &SecretKey,
        eph: &StaticSecret,
    ) -> Lockbox {
        let eph_public = DhPublic::from(eph).to_bytes();
        let shared = Zeroizing::new(
            eph.diffie_hellman(&DhPublic::from(recipient.agreement))
                .to_bytes(),
        );
        let key = box_key(&shared, &group_id, epoch, &eph_public, &recipient.agreement);
        let mut lockbox = Lockbox {
            group_id,
            epoch,
            sender: sender.member_id(),
            recipient: recipient.member_id(),
            ephemeral: eph_public,
            ciphertext: Vec::new(),
            signature: [0; 64],
        };
        lockbox.ciphertext = ChaCha20Poly1305::new(key.expose().into())
            .encrypt(
                &Nonce::default(),
                Payload {
                    msg: epoch_key.expose(),
                    aad: &lockbox.aad(),
                },
            )
            .expect("ChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        lockbox.signature = sender.sign(labels::SIG_LOCKBOX, &lockbox.signed_bytes());
        lockbox
    }

    /// Checks the sender's signature, then opens the lockbox with our keys.
    pub fn open(
        &self,
        me: &MemberKeys,
        sender: &PublicIdentity,
    ) -> Result<SecretKey, LockboxError> {
        if self.recipient != me.member_id() {
            return Err(LockboxError::NotForUs);
        }
        if sender.member_id() != self.sender {
            return Err(LockboxError::BadSignature);
        }
        sender
            .verify(labels::SIG_LOCKBOX, &self.signed_bytes(), &self.signature)
            .map_err(|_| LockboxError::BadSignature)?;
        let shared = me.agree(&self.ephemeral);
        let key = box_key(
            &shared,
            &self.group_id,
            self.epoch,
            &self.ephemeral,
            &me.public().agreement,
        );
        let plain = ChaCha20Poly1305::new(key.expose().into())
            .decrypt(
                &Nonce::default(),
                Payload {
                    msg: &self.ciphertext,
                    aad: &self.aad(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| LockboxError::Decrypt)?;
        let bytes: [u8; 32] = plain[..].try_into().map_err(|_| LockboxError::Decrypt)?;
        Ok(SecretKey::from_bytes(bytes))
    }

    fn aad(&self) -> Vec<u8> {
        let mut ad = Vec::with_capacity(16 + 4 + 16 + 16);
        ad.extend_from_slice(self.group_id.as_bytes());
        ad.extend_from_slice(&self.epoch.to_be_bytes());
        ad.extend_from_slice(self.sender.as_bytes());
        ad.extend_from_slice(self.recipient.as_bytes());
        ad
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut m = self.aad();
        m.extend_from_slice(&self.ephemeral);
        m.extend_from_slice(&self.ciphertext);
        m
    }
}

fn box_key(
    shared: &[u8; 32],
    group_id: &GroupId,
    epoch: u32,
    ephemeral: &[u8; 32],
    recipient: &[u8; 32],
) -> SecretKey {
    crypto::derive_key(
        shared,
        &[
            labels::LOCKBOX_KEY,
            group_id.as_bytes(),
            &epoch.to_be_bytes(),
            ephemeral,
            recipient,
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn recipient_opens_others_cannot() {
        let alice = MemberKeys::generate(&mut OsRng);
        let bob = MemberKeys::generate(&mut OsRng);
        let eve = MemberKeys::generate(&mut OsRng);
        let key = SecretKey::random(&mut OsRng);
        let bx = Lockbox::seal(&alice, &bob.public(), GroupId([1; 16]), 0, &key, &mut OsRng);
        assert_eq!(bx.open(&bob, &alice.public()).unwrap(), key);
        assert_eq!(bx.open(&eve, &alice.public()), Err(LockboxError::NotForUs));
        assert_eq!(
            bx.open(&bob, &eve.public()),
            Err(LockboxError::BadSignature)
        );
    }

    #[test]
    fn sealing_for_many_gives_each_recipient_its_own_lockbox_in_order() {
        let alice = MemberKeys::generate(&mut OsRng);
        let key = SecretKey::random(&mut OsRng);
        // Sizes around the thread split: none, one, one short of a batch, several batches.
        for n in [0, 1, LOCKBOXES_PER_THREAD - 1, 3 * LOCKBOXES_PER_THREAD + 1] {
            let devices: Vec<MemberKeys> =
                (0..n).map(|_| MemberKeys::generate(&mut OsRng)).collect();
            let recipients: Vec<PublicIdentity> = devices.iter().map(|d| d.public()).collect();
            let boxes =
                Lockbox::seal_all(&alice, &recipients, GroupId([2; 16]), 7, &key, &mut OsRng);
            assert_eq!(boxes.len(), n);
            for (bx, device) in boxes.iter().zip(&devices) {
                assert_eq!(bx.recipient, device.member_id());
                assert_eq!(bx.open(device, &alice.public()).unwrap(), key);
            }
            let ephemerals: std::collections::BTreeSet<_> =
                boxes.iter().map(|b| b.ephemeral).collect();
            assert_eq!(ephemerals.len(), n, "each lockbox has its own one-time key");
        }
    }

    #[test]
    fn tampered_lockbox_is_rejected() {
        let alice = MemberKeys::generate(&mut OsRng);
        let bob = MemberKeys::generate(&mut OsRng);
        let key = SecretKey::random(&mut OsRng);
        let mut bx = Lockbox::seal(&alice, &bob.public(), GroupId([1; 16]), 0, &key, &mut OsRng);
        bx.epoch = 1;
        assert_eq!(
            bx.open(&bob, &alice.public()),
            Err(LockboxError::BadSignature)
        );
    }
}
