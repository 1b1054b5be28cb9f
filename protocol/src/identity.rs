//! A membership's identity: an Ed25519 signing key and an X25519 agreement key, made when
//! this device creates or joins a group and used in that group only, so that one person's
//! identities in two groups cannot be linked.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey as DhPublic, StaticSecret};
use zeroize::Zeroizing;

use crate::crypto::labels;
use crate::ids::MemberId;

/// The public half of a membership identity, as the group's members learn it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PublicIdentity {
    /// Ed25519 verifying key.
    pub signing: [u8; 32],
    /// X25519 public key, for lockboxes addressed to this member.
    pub agreement: [u8; 32],
}

impl std::fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicIdentity({})", self.member_id())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the public key is not a valid Ed25519 point")]
    BadKey,
    #[error("signature check failed")]
    Invalid,
}

impl PublicIdentity {
    pub fn member_id(&self) -> MemberId {
        MemberId::from_signing_key(&self.signing)
    }

    /// Checks an Ed25519 signature made by [`MemberKeys::sign`] with the same `context`.
    pub fn verify(
        &self,
        context: &[u8],
        message: &[u8],
        signature: &[u8; 64],
    ) -> Result<(), SignatureError> {
        let key = VerifyingKey::from_bytes(&self.signing).map_err(|_| SignatureError::BadKey)?;
        let sig = Signature::from_bytes(signature);
        key.verify_strict(&signed_message(context, message), &sig)
            .map_err(|_| SignatureError::Invalid)
    }

    /// Bytes of the identity in a fixed layout (signing || agreement), for transcripts.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&self.signing);
        out[32..].copy_from_slice(&self.agreement);
        out
    }

    /// The inverse of [`PublicIdentity::to_bytes`].
    pub fn from_bytes(bytes: &[u8; 64]) -> PublicIdentity {
        let mut signing = [0u8; 32];
        let mut agreement = [0u8; 32];
        signing.copy_from_slice(&bytes[..32]);
        agreement.copy_from_slice(&bytes[32..]);
        PublicIdentity { signing, agreement }
    }
}

/// Context-prefixed message: `len(context) as u8 || context || message`, so no signature
/// made for one purpose verifies for another.
fn signed_message(context: &[u8], message: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(1 + context.len() + message.len());
    m.push(u8::try_from(context.len()).expect("signature contexts are short constants"));
    m.extend_from_slice(context);
    m.extend_from_slice(message);
    m
}

/// A membership's secret keys. Both halves are wiped on drop by their crates.
#[derive(Clone)]
pub struct MemberKeys {
    signing: SigningKey,
    agreement: StaticSecret,
    /// Derived once: the X25519 public key costs a scalar multiplication, and every
    /// lockbox opened and envelope checked asks for this device's identity.
    public: PublicIdentity,
}

impl std::fmt::Debug for MemberKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemberKeys({})", self.public().member_id())
    }
}

impl MemberKeys {
    pub fn generate(rng: &mut impl CryptoRngCore) -> MemberKeys {
        MemberKeys::from_parts(
            SigningKey::generate(rng),
            StaticSecret::random_from_rng(rng),
        )
    }

    fn from_parts(signing: SigningKey, agreement: StaticSecret) -> MemberKeys {
        let public = PublicIdentity {
            signing: signing.verifying_key().to_bytes(),
            agreement: DhPublic::from(&agreement).to_bytes(),
        };
        MemberKeys {
            signing,
            agreement,
            public,
        }
    }

    /// Secret bytes for the encrypted store: signing seed || agreement secret.
    pub fn to_secret_bytes(&self) -> Zeroizing<[u8; 64]> {
        let mut out = Zeroizing::new([0u8; 64]);
        out[..32].copy_from_slice(&self.signing.to_bytes());
        out[32..].copy_from_slice(self.agreement.as_bytes());
        out
    }

    pub fn from_secret_bytes(bytes: &[u8]) -> Option<MemberKeys> {
        if bytes.len() != 64 {
            return None;
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&bytes[..32]);
        let mut dh = Zeroizing::new([0u8; 32]);
        dh.copy_from_slice(&bytes[32..]);
        Some(MemberKeys::from_parts(
            SigningKey::from_bytes(&seed),
            StaticSecret::from(*dh),
        ))
    }

    pub fn public(&self) -> PublicIdentity {
        self.public
    }

    pub fn member_id(&self) -> MemberId {
        self.public().member_id()
    }

    pub fn sign(&self, context: &[u8], message: &[u8]) -> [u8; 64] {
        self.signing
            .sign(&signed_message(context, message))
            .to_bytes()
    }

    /// X25519 with a peer's public key (used to open lockboxes addressed to us).
    pub(crate) fn agree(&self, their_public: &[u8; 32]) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(
            self.agreement
                .diffie_hellman(&DhPublic::from(*their_public))
                .to_bytes(),
        )
    }
}

/// The number two people compare face to face to know they hold each other's real keys.
///
/// Symmetric in its arguments, so both screens show the same digits: 60 digits in twelve
/// groups of five, from BLAKE3 over the two identities in sorted order.
pub fn safety_number(a: &PublicIdentity, b: &PublicIdentity) -> String {
    let (first, second) = if a.to_bytes() <= b.to_bytes() {
        (a, b)
    } else {
        (b, a)
    };
    let mut hasher = blake3::Hasher::new_derive_key(labels::SAFETY_NUMBER);
    hasher.update(&first.to_bytes());
    hasher.update(&second.to_bytes());
    let mut out = [0u8; 60];
    hasher.finalize_xof().fill(&mut out);
    out.chunks(5)
        .map(|chunk| {
            let n = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn signatures_are_bound_to_context() {
        let keys = MemberKeys::generate(&mut OsRng);
        let sig = keys.sign(labels::SIG_ENVELOPE, b"msg");
        let public = keys.public();
        assert!(public.verify(labels::SIG_ENVELOPE, b"msg", &sig).is_ok());
        assert!(public.verify(labels::SIG_LOCKBOX, b"msg", &sig).is_err());
        assert!(public.verify(labels::SIG_ENVELOPE, b"msh", &sig).is_err());
    }

    #[test]
    fn secret_bytes_round_trip() {
        let keys = MemberKeys::generate(&mut OsRng);
        let restored = MemberKeys::from_secret_bytes(&keys.to_secret_bytes()[..]).unwrap();
        assert_eq!(restored.public(), keys.public());
        assert!(MemberKeys::from_secret_bytes(&[0; 10]).is_none());
    }

    #[test]
    fn safety_number_is_symmetric_and_distinct() {
        let a = MemberKeys::generate(&mut OsRng).public();
        let b = MemberKeys::generate(&mut OsRng).public();
        let c = MemberKeys::generate(&mut OsRng).public();
        let ab = safety_number(&a, &b);
        assert_eq!(ab, safety_number(&b, &a));
        assert_ne!(ab, safety_number(&a, &c));
        assert_eq!(ab.len(), 12 * 5 + 11);
        assert!(
            ab.split(' ')
                .all(|g| g.len() == 5 && g.bytes().all(|c| c.is_ascii_digit()))
        );
    }
}
