#![no_main]
//! `InviteToken::decode` parses text a person pasted (possibly from a stranger). It must
//! not panic on any UTF-8, and a token it accepts must survive encode → decode unchanged.

use hearth_protocol::invite::InviteToken;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(token) = InviteToken::decode(text) {
        assert_eq!(InviteToken::decode(&token.encode()), Ok(token));
    }
});
