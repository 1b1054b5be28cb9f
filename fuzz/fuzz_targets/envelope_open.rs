#![no_main]
//! A member holds the epoch key and its own signing key, so it can seal any plaintext as
//! an envelope body. This seals the fuzz input as a body (the harness signs it, to get
//! past AEAD and the signature) and checks that `open` — the postcard `Body` decoder and
//! its caps — and the per-change automerge parsing `Group::ingest` does never panic.

use hearth_fuzz::{FixedRng, fixed_epoch_key, fixture, seal_raw};
use hearth_protocol::doc::parse_canonical_change;
use hearth_protocol::envelope::{Body, Envelope, Header, ZERO_HASH};
use hearth_protocol::ids::GroupId;
use libfuzzer_sys::fuzz_target;

// hearth contains automerge's panics on malformed changes (catch_unwind in `doc`);
// libFuzzer's hook would abort on them even so. Keep a hook that only reports: a panic
// that escapes hearth still aborts, through libfuzzer-sys's own catch_unwind.
fuzz_target!(init: std::panic::set_hook(Box::new(|_| {})), |data: &[u8]| {
    let f = fixture();
    let header = Header {
        version: 0,
        group_id: GroupId([3; 16]),
        epoch: 0,
        author: f.ids[0],
        seq: 1,
        prev: ZERO_HASH,
        change_head: ZERO_HASH,
    };
    let sealed = seal_raw(
        &f.keys[0],
        header,
        data,
        &fixed_epoch_key(),
        &mut FixedRng::new(1),
    );
    let env = Envelope::decode(sealed.into_bytes()).expect("harness envelope decodes");
    env.verify(&f.publics[0])
        .expect("harness signature verifies");
    match env.open(&fixed_epoch_key()) {
        // Through hearth's own parser, as `Group` does: automerge's `Change::from_bytes`
        // can panic on a malformed chunk, and hearth contains that.
        Ok(Body::Changes { changes }) => {
            for c in changes {
                if let Some(change) = parse_canonical_change(c) {
                    let _ = (change.actor_id(), change.hash(), change.deps());
                }
            }
        }
        Ok(Body::Roster(op)) => {
            let _ = (op.deps.len(), op.action.lockboxes().len());
        }
        Ok(Body::Reseal { changes, .. }) => {
            for c in changes {
                let _ = parse_canonical_change(c).map(|c| c.hash());
            }
        }
        Ok(Body::ResealSegment { ends, bundle, .. }) => {
            let _ = (ends.len(), bundle.len());
        }
        // Only a segment's header may carry a segment's body.
        Ok(Body::Segment { .. }) => panic!("an ordinary envelope opened as a segment"),
        Err(_) => {}
    }
});
