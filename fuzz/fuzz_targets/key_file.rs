//! The key file (`keys`) as a disk holder or a crash might leave it: parsing arbitrary
//! bytes never panics, and a wrapped file that asks for a small Argon2id cost is opened
//! with a passphrase taken from the input, which never panics either.
//!
//! Input: `mode u8 || passphrase (12 bytes) || file`. Mode 0 parses the file as it is;
//! any other mode first appends the checksum the format ends with (BLAKE3, unkeyed: anyone
//! who can write the disk can compute it), so the fuzzer reaches past it.
#![no_main]

use hearth_protocol::api::Passphrase;
use hearthd::vault::KeyFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (passphrase, body) = rest.split_at(rest.len().min(12));
    let mut file = body.to_vec();
    if mode != 0 {
        file.extend_from_slice(&blake3::hash(body).as_bytes()[..16]);
    }
    let Some(parsed) = KeyFile::parse(&file) else {
        return;
    };
    // Only costs a fuzzer can afford: real files ask for 256 MiB a try.
    if parsed
        .params()
        .is_some_and(|p| p.m_cost_kib <= 64 && p.t_cost <= 2 && p.p_cost <= 2)
    {
        let text = String::from_utf8_lossy(passphrase).into_owned();
        let _ = parsed.open(&Passphrase::new(text));
    }
});
