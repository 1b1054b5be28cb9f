//! A member who was away catches up on more history than fits in one batch.

use hearth_protocol::ids::GroupId;
use hearth_tests::Daemon;
use hearthd::node::Node;
use hearthd::store::Store;
use std::path::Path;

/// How many of `author`'s log positions a stopped daemon's store holds in segments, and
/// how many items (envelopes and segments) it holds of that log in all.
fn segments_on_disk(data_dir: &Path, group: &str, author: &str) -> (u64, usize) {
    let node =
        Node::open(Store::open_unprotected(data_dir).expect("store opens")).expect("node opens");
    let id: GroupId = group.parse().unwrap();
    node.with_slot(&id, |s| {
        let items: Vec<_> = s
            .group
            .missing_for(&Default::default(), usize::MAX, usize::MAX)
            .into_iter()
            .filter(|e| e.header().author.to_hex() == author)
            .collect();
        let restated = items
            .iter()
            .filter_map(|e| e.span().map(|span| e.header().seq - span.first + 1))
            .sum();
        Ok((restated, items.len()))
    })
    .expect("the group is on disk")
}

#[test]
fn offline_member_catches_up_across_many_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start("A", &tmp.path().join("a"));
    let mut b = Daemon::start("B", &tmp.path().join("b"));
    let group = a.create_group("Circle");
    a.invite(&b, &group);
    b.stop();

    // More envelopes than one batch carries (512), so the session must send several.
    let count = 540;
    for i in 0..count {
        a.json(&["agreement", "add", &group, &format!("note {i:04}")]);
    }
    b.restart();
    b.json(&["peer", "add", &a.addr()]);
    let last = format!("note {:04}", count - 1);
    b.wait_for_agreements(&group, &[last.as_str(), "note 0000"]);
    assert_eq!(b.agreement_texts(&group), a.agreement_texts(&group));
    assert_eq!(b.agreement_texts(&group).len(), count);

    // A restated its log as segments, and B received and kept them: a killed B loses
    // nothing, and both stores hold far fewer items than A wrote envelopes.
    b.kill();
    b.restart();
    assert_eq!(b.agreement_texts(&group), a.agreement_texts(&group));
    let author = a.member_id(&group);
    let mut a = a;
    a.stop();
    b.stop();
    for dir in [tmp.path().join("a"), tmp.path().join("b")] {
        let (restated, items) = segments_on_disk(&dir, &group, &author);
        assert!(
            restated >= 400,
            "{restated} positions in segments in {}",
            dir.display()
        );
        assert!(items < 120, "{items} items of A's log in {}", dir.display());
    }
}
