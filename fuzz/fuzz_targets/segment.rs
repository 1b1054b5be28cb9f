#![no_main]
//! A member's segment (its own log restated as one automerge bundle) through
//! `Group::ingest`. The member holds its keys, so this is the hostile-member case: the
//! segment is validly signed and sealed and only its contents are hostile.
//!
//! Input: `mode u8 | n u8 | rest`.
//! - mode & 1 == 0: `rest` is the bundle as is, with `n % 16 + 1` positions ending at
//!   consecutive automerge sequence numbers;
//! - mode & 1 == 1: an honest bundle of `n % 16 + 1` agreements (texts from `rest`) the
//!   member writes next, then every byte of `rest` past the texts XORed into it; mode & 2
//!   also shifts the positions' ends by one.
//!
//! Invariants: no panic, the group stays readable, and its snapshot loads.

use hearth_fuzz::{FixedRng, fixture, fixture_group};
use hearth_protocol::doc::{GroupDocument, agreement_id};
use hearth_protocol::envelope::{Body, Envelope, Header, Span};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: std::panic::set_hook(Box::new(|_| {})), |data: &[u8]| {
    let [mode, n, rest @ ..] = data else {
        return;
    };
    let positions = u64::from(n % 16) + 1;
    let (mut group, key, _) = fixture_group();
    let f = fixture();
    let author = f.ids[1];
    let head = group.head(&author).copied();
    let (seq, prev) = head.map_or((0, [0u8; 32]), |h| (h.seq, h.hash));
    let actor = author.actor_id();
    let (ends, bundle, change_head) = if mode & 1 == 0 {
        let ends: Vec<u64> = (1..=positions).collect();
        let head = automerge::Bundle::try_from(rest)
            .ok()
            .and_then(|b| b.to_changes().ok())
            .and_then(|cs| cs.iter().max_by_key(|c| c.seq()).map(|c| c.hash().0))
            .unwrap_or([0; 32]);
        (ends, rest.to_vec(), head)
    } else {
        let mut doc = GroupDocument::load(&group.snapshot(), actor).expect("the fixture loads");
        let mut ends = Vec::new();
        let mut hashes = Vec::new();
        let (texts, noise) = rest.split_at(rest.len().min(positions as usize * 4));
        for (i, chunk) in (0..positions).zip(texts.chunks(4).chain(std::iter::repeat(&[][..]))) {
            let text = format!("{i} {}", String::from_utf8_lossy(chunk));
            let id = agreement_id(&author, i.to_le_bytes());
            let changes = doc.insert_agreement(&id, &text, 0).expect("insert");
            let shift = u64::from(mode & 2 != 0);
            ends.extend(changes.last().map(|c| c.seq() + shift));
            hashes.extend(changes.iter().map(automerge::Change::hash));
        }
        let head = hashes.last().map_or([0; 32], |h| h.0);
        let mut bundle = doc.bundle(hashes).expect("bundle of own changes");
        for (b, x) in bundle.iter_mut().zip(noise) {
            *b ^= x;
        }
        (ends, bundle, head)
    };
    let header = Header {
        version: 0,
        group_id: group.id(),
        epoch: f.epoch,
        author,
        seq: seq + positions,
        prev,
        change_head,
    };
    let span = Span { first: seq + 1, last_hash: [5; 32] };
    let mut rng = FixedRng::new(3);
    let segment = Envelope::seal_segment(
        &f.keys[1],
        header,
        span,
        &Body::Segment { ends, bundle },
        &key,
        &mut rng,
    );
    // A one-position segment is not a segment; the decoder refuses it.
    let Ok(segment) = Envelope::decode(segment.into_bytes()) else {
        return;
    };
    group.ingest(vec![segment]);
    // Reading is lenient: it must not panic, whatever was applied.
    group.read();
    if let Err(e) = GroupDocument::load(&group.snapshot(), f.ids[0].actor_id()) {
        panic!("snapshot of the group does not load: {e}");
    }
});
