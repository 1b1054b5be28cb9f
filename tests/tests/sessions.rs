//! Sync sessions across membership changes, with real daemons on loopback: a removal
//! renews no session, the removed member's session goes on carrying the groups it is still
//! in, and it never receives what is written in the group it was removed from.

use hearth_tests::{Daemon, wait_for};

fn member_count(d: &Daemon, group: &str) -> usize {
    d.json(&["member", "list", group])
        .as_array()
        .expect("a list")
        .len()
}

/// Sessions this daemon has seen end since it started (its log says so at info level).
fn sessions_ended(d: &Daemon) -> usize {
    d.log().matches("sync session ended").count()
}

#[test]
fn a_removal_keeps_sessions_open_and_the_removed_member_gets_nothing_more() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start("A", &tmp.path().join("a"));
    let b = Daemon::start("B", &tmp.path().join("b"));
    let c = Daemon::start("C", &tmp.path().join("c"));
    // Two groups, both with all three; A facilitates both.
    let kept = a.create_group("Kept");
    let cut = a.create_group("Cut");
    for group in [&kept, &cut] {
        a.invite(&b, group);
        a.invite(&c, group);
    }
    for d in [&a, &b, &c] {
        wait_for("everyone to see three members of both groups", || {
            (member_count(d, &kept) == 3 && member_count(d, &cut) == 3).then_some(())
        });
    }
    // A round trip in each direction: every session a join renewed has been reopened.
    c.json(&["agreement", "add", &kept, "from C before"]);
    b.wait_for_agreements(&kept, &["from C before"]);
    a.json(&["agreement", "add", &cut, "before the removal"]);
    c.wait_for_agreements(&cut, &["before the removal"]);
    let ended = [&a, &b, &c].map(sessions_ended);

    // A removes C from one group only.
    let removed = a.json(&["member", "remove", &cut, &c.member_id(&cut)]);
    let new_epoch = removed["epoch"].as_u64().unwrap();
    for d in [&a, &b] {
        wait_for("A and B to see C removed", || {
            (member_count(d, &cut) == 2).then_some(())
        });
    }
    wait_for("B to write under the new epoch", || {
        let groups = b.json(&["group", "list"]);
        groups
            .as_array()?
            .iter()
            .any(|g| g["group_id"] == cut.as_str() && g["epoch"].as_u64() == Some(new_epoch))
            .then_some(())
    });
    let secret = "MARKER-after-the-removal-7730";
    a.json(&["agreement", "add", &cut, secret]);
    b.json(&["agreement", "add", &cut, "B after the removal"]);
    a.json(&["agreement", "add", &kept, "A after the removal"]);
    c.json(&["agreement", "add", &kept, "C after the removal"]);

    // The group C is still in goes on syncing both ways, over the same sessions.
    c.wait_for_agreements(&kept, &["A after the removal"]);
    b.wait_for_agreements(&kept, &["C after the removal"]);
    b.wait_for_agreements(&cut, &[secret]);
    a.wait_for_agreements(&cut, &["B after the removal"]);
    // C is still connected to A over a session that carries the other group, yet nothing
    // written in the group it was removed from reaches it.
    let shown = c.agreement_texts(&cut);
    assert!(
        !shown
            .iter()
            .any(|t| t == secret || t == "B after the removal"),
        "C shows {shown:?}"
    );
    assert_eq!(
        [&a, &b, &c].map(sessions_ended),
        ended,
        "a session ended over the removal\nA's log:\n{}\nC's log:\n{}",
        a.log(),
        c.log()
    );
}
