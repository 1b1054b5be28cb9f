#![no_main]
//! Spoken invite codes: `SpokenCode::parse` reads what a person typed, and the code
//! exchange decodes `CodeHello` (facilitator side) and `CodeReply` (joiner side) from
//! whoever is on the network, before anything is authenticated. The same bytes go to all
//! three. Nothing may panic; a parsed code survives display → parse; a decoded message
//! has exactly the SPAKE2 length and re-encodes to an equal message; the facilitator
//! answers a hello only with a reply or `Malformed` / `OtherChannel`, and the decoy (no
//! code on the channel) answers exactly when the real code does, with a reply of the same
//! length, and never accepts a confirmation a real code refused.

use hearth_fuzz::FixedRng;
use hearth_protocol::code::{
    CodeAccepted, CodeConfirm, CodeError, CodeFacilitator, CodeHello, CodeJoiner, CodeReply,
    SPAKE_MSG_LEN, SpokenCode,
};
use libfuzzer_sys::fuzz_target;

/// The peer ids of the connection the exchange runs on.
const J: &[u8] = b"joiner peer";
const F: &[u8] = b"facilitator peer";

fn fixed_code() -> SpokenCode {
    SpokenCode::from_parts(4, [1, 2, 3]).expect("channel 4 is valid")
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(code) = SpokenCode::parse(&text) {
        assert_eq!(SpokenCode::parse(&code.to_string()), Ok(code));
    }

    // Facilitator side: a hello, then (from the remaining bytes) a confirmation.
    if let Ok((hello, rest)) = postcard::take_from_bytes::<CodeHello>(data) {
        assert_eq!(hello.spake.len(), SPAKE_MSG_LEN);
        let again: CodeHello = postcard::from_bytes(&postcard::to_stdvec(&hello).unwrap()).unwrap();
        assert_eq!(again, hello);
        let decoy = CodeFacilitator::respond_decoy(&hello, J, F, &mut FixedRng::new(3));
        match CodeFacilitator::respond(&fixed_code(), &hello, J, F, &mut FixedRng::new(1)) {
            Ok((facilitator, reply)) => {
                assert_eq!(reply.spake.len(), SPAKE_MSG_LEN);
                let (decoy, decoy_reply) =
                    decoy.expect("the decoy answers whatever a code answers");
                assert_eq!(decoy_reply.spake.len(), reply.spake.len());
                if let Ok(confirm) = postcard::from_bytes::<CodeConfirm>(rest) {
                    let _ = facilitator.finish(&confirm);
                    let _ = decoy.finish(&confirm);
                }
            }
            Err(CodeError::Malformed) => assert!(decoy.is_err()),
            Err(CodeError::OtherChannel { .. }) => {}
            Err(e) => panic!("respond failed with {e:?}"),
        }
    }

    // Joiner side: a reply to a hello made with the fixed code.
    if let Ok(reply) = postcard::from_bytes::<CodeReply>(data) {
        assert_eq!(reply.spake.len(), SPAKE_MSG_LEN);
        let again: CodeReply = postcard::from_bytes(&postcard::to_stdvec(&reply).unwrap()).unwrap();
        assert_eq!(again, reply);
        let (joiner, _hello) = CodeJoiner::start(&fixed_code(), &mut FixedRng::new(2));
        if let Ok((joiner, _confirm)) = joiner.confirm(&reply, J, F)
            && let Ok(accepted) = postcard::from_bytes::<CodeAccepted>(data)
        {
            let _ = joiner.finish(&accepted);
        }
    }
});
