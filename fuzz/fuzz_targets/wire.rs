#![no_main]
//! Every frame a peer sends on `/sync/1` and `/join/1` goes through
//! `wire::frame_len` (the 4-byte prefix, checked before allocating) and then
//! `wire::decode`, before any authentication. Neither may panic; whatever decodes must
//! re-encode to an equal message; and envelopes in a batch are decoded as the daemon does.

use hearth_protocol::envelope::Envelope;
use hearth_protocol::wire::{self, JoinMessage, MAX_FRAME_LEN, SyncMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(prefix) = data.first_chunk::<4>() {
        match wire::frame_len(*prefix) {
            Ok(len) => assert!(len <= MAX_FRAME_LEN && len == u32::from_be_bytes(*prefix) as usize),
            Err(_) => assert!(u32::from_be_bytes(*prefix) as usize > MAX_FRAME_LEN),
        }
    }
    if let Ok(msg) = wire::decode::<SyncMessage>(data) {
        let frame = wire::encode_frame(&msg);
        assert_eq!(wire::decode::<SyncMessage>(&frame[4..]), Ok(msg.clone()));
        if let SyncMessage::Envelopes { envelopes, .. } = msg {
            for e in envelopes {
                let _ = Envelope::decode(e);
            }
        }
    }
    if let Ok(msg) = wire::decode::<JoinMessage>(data) {
        let frame = wire::encode_frame(&msg);
        assert_eq!(wire::decode::<JoinMessage>(&frame[4..]), Ok(msg));
    }
});
