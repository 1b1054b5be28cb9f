//! The primitives hearth builds on, and the label of every key use.
//!
//! Everything here wraps audited RustCrypto and dalek crates: HKDF-SHA256 for key
//! derivation, XChaCha20-Poly1305 and ChaCha20-Poly1305 for sealing, HMAC-SHA256 for
//! proofs of a shared secret, BLAKE3 for content hashes. Every derived key has its own
//! label (see [`labels`]); docs/protocol.md lists them.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_core::CryptoRngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Domain-separation labels. Each key use, hash and signature has its own.
pub mod labels {
    /// BLAKE3 derive_key context for a member id.
    pub const MEMBER_ID: &str = "hearth v1 member id";
    /// BLAKE3 derive_key context for a group id.
    pub const GROUP_ID: &str = "hearth v1 group id";
    /// BLAKE3 derive_key context for an envelope's hash.
    pub const ENVELOPE_HASH: &str = "hearth v1 envelope hash";
    /// BLAKE3 derive_key context for the safety number.
    pub const SAFETY_NUMBER: &str = "hearth v1 safety number";
    /// BLAKE3 derive_key context for the join transcript.
    pub const JOIN_TRANSCRIPT: &str = "hearth v1 join transcript";
    /// BLAKE3 derive_key context for the peer-session transcript.
    pub const SESSION_TRANSCRIPT: &str = "hearth v1 session transcript";

    /// HKDF info: the key that seals envelope bodies of one group epoch.
    pub const ENVELOPE_KEY: &[u8] = b"hearth v1 envelope key";
    /// HKDF info: the key that seals membership operations of one group epoch.
    pub const ROSTER_KEY: &[u8] = b"hearth v1 roster key";
    /// HKDF info: the key that seals an author's segments (its compacted content) of one
    /// group epoch.
    pub const SEGMENT_KEY: &[u8] = b"hearth v1 segment key";
    /// HKDF info: a commitment to an epoch key, carried in its rotation.
    pub const EPOCH_KEY_CHECK: &[u8] = b"hearth v1 epoch key check";
    /// HKDF info: the key that seals a joiner's roster keys of earlier epochs.
    pub const ROSTER_HISTORY_KEY: &[u8] = b"hearth v1 roster history key";
    /// HKDF info: the key that seals a snapshot of one group epoch.
    pub const SNAPSHOT_KEY: &[u8] = b"hearth v1 snapshot key";
    /// HKDF info: where a peer finds the reveal slot addressed to one of its memberships.
    pub const SESSION_REVEAL_LOOKUP: &[u8] = b"hearth v1 session reveal lookup";
    /// HKDF info: the key that seals a reveal slot (an identity for one member only).
    pub const SESSION_REVEAL_KEY: &[u8] = b"hearth v1 session reveal key";
    /// HKDF info: the key that seals a lockbox.
    pub const LOCKBOX_KEY: &[u8] = b"hearth v1 lockbox key";
    /// HKDF info: an invite's public lookup id.
    pub const INVITE_ID: &[u8] = b"hearth v1 invite id";
    /// HKDF info: the key that proves knowledge of an invite secret.
    pub const INVITE_MAC_KEY: &[u8] = b"hearth v1 invite mac key";
    /// HKDF info: the key that seals who asks to join (identity and name) in a join
    /// request.
    pub const JOIN_REQUEST_KEY: &[u8] = b"hearth v1 join request key";
    /// HKDF info: the short handle a facilitator sees an open invite by.
    pub const INVITE_HANDLE: &[u8] = b"hearth v1 invite handle";
    /// HKDF info: the key of the facilitator's confirmation in a spoken-code exchange.
    pub const CODE_FACILITATOR_CONFIRM_KEY: &[u8] = b"hearth v1 code facilitator confirm key";
    /// HKDF info: the key of the joiner's confirmation in a spoken-code exchange.
    pub const CODE_JOINER_CONFIRM_KEY: &[u8] = b"hearth v1 code joiner confirm key";
    /// HKDF info: the invite secret a spoken-code exchange ends in.
    pub const CODE_SECRET: &[u8] = b"hearth v1 code secret";
    /// HKDF info: the key of the joiner's binding of a spoken-code exchange to the libp2p
    /// connection it runs on.
    pub const CODE_BINDING_KEY: &[u8] = b"hearth v1 code binding key";

    /// Signature context: an envelope.
    pub const SIG_ENVELOPE: &[u8] = b"hearth v1 sig envelope";
    /// Signature context: a lockbox.
    pub const SIG_LOCKBOX: &[u8] = b"hearth v1 sig lockbox";
    /// Signature context: a peer proving its member identity in a session.
    pub const SIG_SESSION: &[u8] = b"hearth v1 sig session";
    /// Signature context: a join request.
    pub const SIG_JOIN_REQUEST: &[u8] = b"hearth v1 sig join request";
    /// Signature context: a join acceptance.
    pub const SIG_JOIN_ACCEPT: &[u8] = b"hearth v1 sig join accept";

    /// SPAKE2 identity A (the joiner) of a spoken code, followed by its channel (u16).
    pub const CODE_ID_JOINER: &[u8] = b"hearth v1 code id joiner";
    /// SPAKE2 identity B (the facilitator) of a spoken code, followed by its channel (u16).
    pub const CODE_ID_FACILITATOR: &[u8] = b"hearth v1 code id facilitator";
}

/// A 32-byte secret (epoch key, derived key). Wiped on drop; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; 32]);

impl SecretKey {
    pub fn from_bytes(bytes: [u8; 32]) -> SecretKey {
        SecretKey(bytes)
    }

    pub fn random(rng: &mut impl CryptoRngCore) -> SecretKey {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        SecretKey(bytes)
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for SecretKey {}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// HKDF-SHA256 with an empty salt: `info` parts are concatenated in order.
pub fn derive_key(ikm: &[u8], info: &[&[u8]]) -> SecretKey {
    let hk = Hkdf::<Sha256>::new(None, ikm);
    let mut out = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    hk.expand_multi_info(info, &mut out)
        .expect("32-byte HKDF output is always valid");
    SecretKey(out)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("decryption failed: wrong key, or the data was altered")]
pub struct OpenError;

pub const XNONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;

/// XChaCha20-Poly1305 with a random 192-bit nonce; returns (nonce, ciphertext).
pub fn seal(
    key: &SecretKey,
    aad: &[u8],
    plaintext: &[u8],
    rng: &mut impl CryptoRngCore,
) -> ([u8; XNONCE_LEN], Vec<u8>) {
    let mut nonce = [0u8; XNONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    let ct = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
    (nonce, ct)
}

/// Opens what [`seal`] sealed. The plaintext is wiped when dropped.
pub fn open(
    key: &SecretKey,
    aad: &[u8],
    nonce: &[u8; XNONCE_LEN],
    ciphertext: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, OpenError> {
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map(zeroize::Zeroizing::new)
        .map_err(|_| OpenError)
}

/// HMAC-SHA256 over the concatenation of `parts`.
pub fn mac(key: &SecretKey, parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key.expose())
        .expect("HMAC accepts keys of any length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Constant-time equality of two MACs or secrets.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn seal_open_round_trip_and_binds_aad() {
        let key = SecretKey::random(&mut OsRng);
        let (nonce, ct) = seal(&key, b"ad", b"hello", &mut OsRng);
        assert_eq!(&open(&key, b"ad", &nonce, &ct).unwrap()[..], b"hello");
        assert_eq!(open(&key, b"other", &nonce, &ct), Err(OpenError));
        let other = SecretKey::random(&mut OsRng);
        assert_eq!(open(&other, b"ad", &nonce, &ct), Err(OpenError));
    }

    #[test]
    fn derived_keys_differ_by_label() {
        let a = derive_key(b"ikm", &[labels::ENVELOPE_KEY]);
        let b = derive_key(b"ikm", &[labels::SNAPSHOT_KEY]);
        assert_ne!(a, b);
    }

    #[test]
    fn secret_debug_hides_bytes() {
        let key = SecretKey::from_bytes([7; 32]);
        assert_eq!(format!("{key:?}"), "SecretKey(..)");
    }
}
