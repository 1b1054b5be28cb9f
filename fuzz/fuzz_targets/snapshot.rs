#![no_main]
//! A joiner receives a sealed snapshot from the inviting facilitator, opens it with
//! `group::open_snapshot`, loads it with `GroupDocument::load` (automerge parsing) and
//! reads it; later it saves it again to serve its own joiners. A facilitator can make
//! the plaintext anything, so the bytes go to `load` directly (with automerge chunk
//! checksums repaired, as a hostile sender would compute them). Nothing may panic, and a
//! document that loaded must load again after `save`.

use hearth_fuzz::{fix_chunk_checksums, fixed_epoch_key};
use hearth_protocol::doc::GroupDocument;
use hearth_protocol::group::open_snapshot;
use hearth_protocol::ids::{GroupId, MemberId};
use libfuzzer_sys::fuzz_target;

// hearth contains automerge's panics on malformed input (catch_unwind in `doc`); libFuzzer's
// hook would abort on them even so. Keep a hook that only reports: a panic that escapes
// hearth still aborts, through libfuzzer-sys's own catch_unwind around this target.
fuzz_target!(init: std::panic::set_hook(Box::new(|_| {})), |data: &[u8]| {
    let _ = open_snapshot(&fixed_epoch_key(), &GroupId([3; 16]), 0, data);
    let mut bytes = data.to_vec();
    fix_chunk_checksums(&mut bytes);
    let actor = MemberId([5; 16]).actor_id();
    let Ok(mut doc) = GroupDocument::load(&bytes, actor.clone()) else {
        return;
    };
    let _ = doc.read();
    let saved = doc.save();
    if let Err(e) = GroupDocument::load(&saved, actor) {
        panic!("a loaded snapshot does not load again after save: {e}");
    }
});
