//! The whole path: a facilitator invites two members by token; writes reach
//! everyone; a stopped member catches up through another member; nothing is lost across
//! restarts.

use hearth_tests::Daemon;

#[test]
fn three_members_sync_forward_and_survive_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Daemon::start("A", &tmp.path().join("a"));
    let b = Daemon::start("B", &tmp.path().join("b"));
    let mut c = Daemon::start("C", &tmp.path().join("c"));

    let created = a.json(&[
        "group",
        "create",
        "Thursday circle",
        "--purpose",
        "Walk beside each other",
    ]);
    let group = created["group_id"].as_str().unwrap().to_owned();

    // Each member writes straight after joining: a join answers once the group is writable.
    for (joiner, text) in [
        (&b, "from B: phones away"),
        (&c, "from C: speak from your own experience"),
    ] {
        let invite = a.json(&["invite", &group]);
        let token = invite["token"].as_str().unwrap();
        let joined = joiner.json(&["join", token]);
        assert_eq!(joined["group_id"], group.as_str());
        joiner.json(&["agreement", "add", &group, text]);
    }
    a.json(&[
        "agreement",
        "add",
        &group,
        "from A: what is said here stays here",
    ]);
    let first_three = [
        "from A: what is said here stays here",
        "from B: phones away",
        "from C: speak from your own experience",
    ];
    // B and C never dialled each other: C's write reaches B through A.
    for d in [&a, &b, &c] {
        d.wait_for_agreements(&group, &first_three);
    }
    let shown = c.json(&["group", "show", &group]);
    assert_eq!(shown["name"], "Thursday circle");
    assert_eq!(shown["purpose"], "Walk beside each other");
    assert_eq!(shown["members"].as_array().unwrap().len(), 3);

    // C stops; A writes; B receives it.
    c.stop();
    a.json(&["agreement", "add", &group, "from A while C was away"]);
    b.wait_for_agreements(&group, &["from A while C was away"]);

    // A stops; C comes back and can reach only B, which forwards A's write.
    a.stop();
    c.restart();
    c.json(&["peer", "add", &b.addr()]);
    c.wait_for_agreements(&group, &["from A while C was away"]);

    // Everything survives all three stopping and starting again.
    let expected_all: Vec<String> = c.agreement_texts(&group);
    assert_eq!(expected_all.len(), 4);
    let mut b = b;
    b.stop();
    c.stop();
    for d in [&mut a, &mut b, &mut c] {
        d.restart();
    }
    // A was stopped before C's catch-up but had all four already.
    for d in [&a, &b, &c] {
        assert_eq!(
            d.agreement_texts(&group),
            expected_all,
            "{} lost data",
            d.name
        );
        let g = d.json(&["group", "show", &group]);
        assert_eq!(g["members"].as_array().unwrap().len(), 3, "{}", d.name);
    }
}

/// Two members already connected through one group pick up a second group they both
/// join later, without reconnecting: their session restarts to cover it.
#[test]
fn a_group_joined_later_syncs_over_an_existing_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Daemon::start("A", &tmp.path().join("a"));
    let b = Daemon::start("B", &tmp.path().join("b"));
    let c = Daemon::start("C", &tmp.path().join("c"));

    let invite_both = |group: &str| {
        for d in [&b, &c] {
            a.invite(d, group);
        }
    };
    let first = a.create_group("First");
    invite_both(&first);
    // B and C connect to each other directly, sharing only the first group.
    c.json(&["peer", "add", &b.addr()]);
    c.json(&["agreement", "add", &first, "C in the first group"]);
    b.wait_for_agreements(&first, &["C in the first group"]);

    // Both join a second group; then its facilitator leaves, so the only route from C to B
    // for the second group is their existing connection.
    let second = a.create_group("Second");
    invite_both(&second);
    a.stop();
    c.json(&["agreement", "add", &second, "C in the second group"]);
    b.wait_for_agreements(&second, &["C in the second group"]);
}

/// A member who joins many groups of one facilitator keeps one connection to it: joining
/// used to dial afresh each time, until the per-peer connection limit refused the ninth.
#[test]
fn joining_many_groups_of_one_facilitator_reuses_the_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start("A", &tmp.path().join("a"));
    let b = Daemon::start("B", &tmp.path().join("b"));
    for i in 0..10 {
        let group = a.create_group(&format!("Group {i}"));
        a.invite(&b, &group);
    }
    assert_eq!(b.json(&["group", "list"]).as_array().unwrap().len(), 10);
    let peers = b.json(&["peer", "list"]);
    let peers = peers.as_array().unwrap();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0]["addrs"].as_array().unwrap().len(), 1, "{peers:?}");
}
