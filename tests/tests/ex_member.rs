//! What a former member learns by meeting the group's daemons: nothing. It still holds the
//! group's old keys and its own identity in it, but the members it meets reveal no identity
//! to it and share nothing with it, so it cannot tell whose device it has met, or that the
//! device is in the group at all. A current member meeting them the same way syncs.

use hearth_tests::{Daemon, wait_for};

fn member_count(d: &Daemon, group: &str) -> usize {
    d.json(&["member", "list", group])
        .as_array()
        .expect("a list")
        .len()
}

/// Handshakes this daemon completed since it started, by how many groups they shared.
fn handshakes(d: &Daemon) -> (usize, usize) {
    let log = d.log();
    let done: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("session handshake done"))
        .collect();
    let nothing = done.iter().filter(|l| l.contains("shared=0")).count();
    (nothing, done.len() - nothing)
}

#[test]
fn a_removed_member_meeting_members_learns_nothing_while_a_member_syncs() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start("A", &tmp.path().join("a"));
    let mut b = Daemon::start("B", &tmp.path().join("b"));
    let mut r = Daemon::start("R", &tmp.path().join("r"));
    let group = a.create_group("Circle");
    a.invite(&b, &group);
    a.invite(&r, &group);
    for d in [&a, &b, &r] {
        wait_for("everyone to see three members", || {
            (member_count(d, &group) == 3).then_some(())
        });
    }
    let r_id = r.member_id(&group);

    // R is away when A removes it, so its daemon never hears of the removal: it still
    // counts A and B as members and holds every key it had.
    r.stop();
    b.stop();
    a.json(&["member", "remove", &group, &r_id]);
    assert_eq!(member_count(&a, &group), 2);
    let secret = "MARKER-after-the-removal-51c9";
    a.json(&["agreement", "add", &group, secret]);

    // B comes back and meets A the same way R will: it shares the group and syncs.
    b.restart();
    b.json(&["peer", "add", &a.addr()]);
    b.wait_for_agreements(&group, &[secret]);
    assert!(handshakes(&b).1 >= 1, "B's log:\n{}", b.log());

    // R comes back and dials both members.
    r.restart();
    r.json(&["peer", "add", &a.addr()]);
    r.json(&["peer", "add", &b.addr()]);
    wait_for("R to finish a handshake with each member", || {
        (handshakes(&r).0 >= 2).then_some(())
    });
    let (nothing, shared) = handshakes(&r);
    assert_eq!(
        shared,
        0,
        "R shared the group with a member ({nothing} handshakes shared nothing)\nR's log:\n{}",
        r.log()
    );
    assert!(!r.log().contains("sync session established"));
    // It believes it is still in the group, and reads nothing written after its removal.
    assert_eq!(member_count(&r, &group), 3);
    assert!(!r.agreement_texts(&group).iter().any(|t| t == secret));
}
