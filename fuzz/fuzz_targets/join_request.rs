#![no_main]
//! A join request comes from whoever dialled the facilitator, before anything is
//! authenticated; its sealed body (who asks) is split, opened and decoded by
//! `JoinRequest::verify`. Nothing may panic, and no request made without the invite
//! secret may verify.

use hearth_protocol::invite::JoinRequest;
use hearth_protocol::wire::{self, JoinMessage};
use libfuzzer_sys::fuzz_target;

const SECRET: [u8; 32] = [7; 32];

fuzz_target!(|data: &[u8]| {
    if let Ok(JoinMessage::Request(request)) = wire::decode::<JoinMessage>(data) {
        check(&request);
    }
    if let Ok(request) = postcard::from_bytes::<JoinRequest>(data) {
        check(&request);
    }
});

fn check(request: &JoinRequest) {
    // The fuzzer cannot forge the AEAD tag, the HMAC and the signature together.
    assert!(request.verify(&SECRET, b"peer-j", b"peer-f").is_none());
}
