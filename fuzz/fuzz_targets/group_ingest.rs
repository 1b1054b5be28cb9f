#![no_main]
//! Stateful: batches of envelopes from peers and members go through `Group::ingest`, the
//! only path by which anything received changes a group. Input is a list of records
//! (`hearth_fuzz::records`: flags u8 | len u16 BE | payload):
//!
//! - flags & 3 == 0: payload is raw envelope bytes, decoded as off the wire;
//! - flags & 3 == 1 / 2 / 3: payload is a body plaintext sealed and signed by the creator /
//!   a plain member / a non-member, continuing that author's hash chain (a member holds
//!   its keys, so this is the hostile-member case and reaches membership and automerge);
//!   0x04 breaks the chain, 0x08 skips a seq, 0x10 uses an epoch with no key, 0x20 sets a
//!   wrong change_head; sealed under the current epoch's key (the roster key if the
//!   payload decodes as a membership operation);
//! - 0x80 ends the batch (ingest now).
//!
//! Invariants: no panic, and the group stays readable and its snapshot loadable.

use hearth_fuzz::{FixedRng, fixture, fixture_group, honest_change_head, records, seal_raw};
use hearth_protocol::doc::GroupDocument;
use hearth_protocol::envelope::{Envelope, Hash, Header, ZERO_HASH};
use hearth_protocol::group::Group;
use libfuzzer_sys::fuzz_target;

fn check(group: &Group) {
    // Reading is lenient: it must not panic, whatever was applied.
    group.read();
}

// hearth contains automerge's panics on malformed input (catch_unwind in `doc`); libFuzzer's
// hook would abort on them even so. Keep a hook that only reports: a panic that escapes
// hearth still aborts, through libfuzzer-sys's own catch_unwind around this target.
fuzz_target!(init: std::panic::set_hook(Box::new(|_| {})), |data: &[u8]| {
    let (mut group, key, _) = fixture_group();
    let mut rng = FixedRng::new(2);
    let f = fixture();
    // (seq, hash, change_head) each author's next sealed envelope continues from.
    let mut chain: Vec<(u64, Hash, Hash)> = f
        .ids
        .iter()
        .map(|id| {
            group.head(id).map_or((0, ZERO_HASH, ZERO_HASH), |h| {
                (h.seq, h.hash, h.change_head)
            })
        })
        .collect();
    let mut batch: Vec<Envelope> = Vec::new();
    for (flags, payload) in records(data) {
        match flags & 3 {
            0 => batch.extend(Envelope::decode(payload.to_vec()).ok()),
            n => {
                let i = n as usize - 1;
                let (seq, prev, head) = chain[i];
                let mut change_head = honest_change_head(payload, head);
                if flags & 0x20 != 0 {
                    change_head[0] ^= 1;
                }
                let header = Header {
                    version: 0,
                    group_id: group.id(),
                    epoch: if flags & 0x10 != 0 { f.epoch + 7 } else { f.epoch },
                    author: f.ids[i],
                    seq: seq + 1 + u64::from(flags & 0x08 != 0),
                    prev: if flags & 0x04 != 0 { [0xaa; 32] } else { prev },
                    change_head,
                };
                let env = seal_raw(&f.keys[i], header, payload, &key, &mut rng);
                chain[i] = (header.seq, env.hash(), change_head);
                batch.push(env);
            }
        }
        if flags & 0x80 != 0 {
            group.ingest(std::mem::take(&mut batch));
            check(&group);
        }
    }
    group.ingest(batch);
    check(&group);
    let actor = f.ids[1].actor_id();
    if let Err(e) = GroupDocument::load(&group.snapshot(), actor) {
        panic!("snapshot of the group does not load: {e}");
    }
});
