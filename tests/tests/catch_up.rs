//! A member who was away catches up on more history than fits in one batch.

use hearth_tests::Daemon;

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
}
