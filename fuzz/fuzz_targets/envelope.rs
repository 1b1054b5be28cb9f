#![no_main]
//! `Envelope::decode` parses every envelope a peer sends (sync batches) and every one read
//! back from the store; after it, a receiver hashes, verifies and opens the envelope.
//! None of these may panic on any bytes, whatever the key or identity used.

use hearth_fuzz::{fixed_epoch_key, fixture};
use hearth_protocol::envelope::Envelope;
use hearth_protocol::identity::PublicIdentity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(env) = Envelope::decode(data.to_vec()) else {
        return;
    };
    // Decode keeps the exact bytes: they are what was signed and what is hashed.
    assert_eq!(env.as_bytes(), data);
    let _ = env.hash();
    let _ = env.verify(&fixture().publics[0]);
    // An identity from attacker bytes (often not a valid Ed25519 point).
    let mut signing = [0u8; 32];
    signing.copy_from_slice(&data[..32]);
    let mut agreement = [0u8; 32];
    agreement.copy_from_slice(&data[32..64]);
    let _ = env.verify(&PublicIdentity { signing, agreement });
    let _ = env.open(&fixed_epoch_key());
});
