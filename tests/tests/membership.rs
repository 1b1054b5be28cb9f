//! Membership with real daemons on loopback: joining by token with names, safety numbers
//! that match on both screens, roles, removal (the removed daemon holds only the old epoch
//! and cannot read what follows), leaving (the local copy is destroyed), and two
//! facilitators removing each other while apart.

use std::path::Path;

use hearth_protocol::envelope::Body;
use hearth_protocol::ids::GroupId;
use hearth_tests::{Daemon, wait_for};
use hearthd::node::Node;
use hearthd::store::Store;
use serde_json::Value;

fn members(d: &Daemon, group: &str) -> Vec<Value> {
    d.json(&["member", "list", group])
        .as_array()
        .expect("a list")
        .clone()
}

fn join_as(facilitator: &Daemon, joiner: &Daemon, group: &str, name: &str) {
    let token = facilitator.json(&["invite", group])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    joiner.json(&["join", &token, "--name", name]);
}

/// Everything a stopped daemon's disk holds of `group`, opened with its own keys: the
/// epochs it can read, and the plaintext of every envelope it can open.
fn what_the_disk_reveals(data_dir: &Path, group: &str) -> (Vec<u32>, Vec<String>) {
    let node =
        Node::open(Store::open_unprotected(data_dir).expect("store opens")).expect("node opens");
    let id: GroupId = group.parse().unwrap();
    node.with_slot(&id, |s| {
        let readable = s.group.readable_epochs();
        let keys: Vec<(u32, hearth_protocol::crypto::SecretKey)> =
            s.group.epoch_keys().map(|(e, k)| (e, k.clone())).collect();
        let mut plaintexts = Vec::new();
        for env in s
            .group
            .missing_for(&Default::default(), usize::MAX, usize::MAX)
        {
            for (epoch, key) in &keys {
                if *epoch != env.header().epoch {
                    continue;
                }
                if let Ok(body) = env.open(key) {
                    plaintexts.push(match body {
                        Body::Changes { changes } | Body::Reseal { changes, .. } => changes
                            .iter()
                            .map(|c| String::from_utf8_lossy(c).into_owned())
                            .collect::<Vec<_>>()
                            .join(""),
                        Body::Roster(op) => format!("{op:?}"),
                        // A bundle compresses its columns: read its changes' operations.
                        Body::Segment { bundle, .. } | Body::ResealSegment { bundle, .. } => {
                            automerge::Bundle::try_from(&bundle[..])
                                .ok()
                                .and_then(|b| b.to_changes().ok())
                                .map(|cs| {
                                    let ops: Vec<_> = cs.iter().map(|c| c.decode()).collect();
                                    format!("{ops:?}")
                                })
                                .unwrap_or_else(|| "an undecodable segment".to_owned())
                        }
                    });
                }
            }
        }
        plaintexts.push(format!("{:?}", s.group.read()));
        Ok((readable, plaintexts))
    })
    .expect("the group is on disk")
}

#[test]
fn names_safety_numbers_roles_and_removal() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start("A", &tmp.path().join("a"));
    let b = Daemon::start("B", &tmp.path().join("b"));
    let mut c = Daemon::start("C", &tmp.path().join("c"));
    let group = a.json(&["group", "create", "Circle", "--my-name", "Ana"])["group_id"]
        .as_str()
        .unwrap()
        .to_owned();
    join_as(&a, &b, &group, "Ben");
    join_as(&a, &c, &group, "Cam");
    let everyone = ["Ana", "Ben", "Cam"];
    for d in [&a, &b, &c] {
        wait_for("everyone to see three members", || {
            (d.member_names(&group) == everyone).then_some(())
        });
    }

    // The same digits on both screens; confirming marks the member verified here only.
    let on_a = a.json(&["member", "verify", &group, "Ben"]);
    let on_b = b.json(&["member", "verify", &group, "Ana"]);
    assert_eq!(on_a["safety_number"], on_b["safety_number"]);
    assert_eq!(on_a["verified"], false);
    assert_eq!(
        a.json(&["member", "verify", &group, "Ben", "--confirm"])["verified"],
        true
    );
    let ben_on_a = members(&a, &group)
        .into_iter()
        .find(|m| m["name"] == "Ben")
        .unwrap();
    assert_eq!(ben_on_a["verified"], true);
    assert_eq!(ben_on_a["role"], "member");
    assert_ne!(
        on_a["safety_number"],
        c.json(&["member", "verify", &group, "Ana"])["safety_number"]
    );

    // A makes Ben a co-facilitator; everyone sees it.
    a.json(&["member", "role", &group, "Ben", "facilitator"]);
    for d in [&b, &c] {
        wait_for("B and C to see Ben as facilitator", || {
            members(d, &group)
                .iter()
                .any(|m| m["name"] == "Ben" && m["role"] == "facilitator")
                .then_some(())
        });
    }
    // A plain member cannot remove anyone.
    assert!(c.try_json(&["member", "remove", &group, "Ben"]).is_err());

    // Ben removes Cam. Cam's daemon is told nothing; A and Ben write on.
    let c_id = c.member_id(&group);
    let removed = b.json(&["member", "remove", &group, "Cam"]);
    assert_eq!(removed["member_id"], c_id.as_str());
    let new_epoch = removed["epoch"].as_u64().unwrap() as u32;
    for d in [&a, &b] {
        wait_for("the removal to reach A and B", || {
            (d.member_names(&group) == ["Ana", "Ben"]).then_some(())
        });
    }
    let marker = "MARKER-written-after-removal-5521";
    a.json(&["agreement", "add", &group, marker]);
    b.wait_for_agreements(&group, &[marker]);
    // C is still running and connected to A: give the marker every chance to leak.
    b.json(&[
        "agreement",
        "add",
        &group,
        "a second write after the removal",
    ]);
    a.wait_for_agreements(&group, &["a second write after the removal"]);
    assert!(!c.agreement_texts(&group).iter().any(|t| t == marker));

    // On C's disk: only old epochs, and nothing it can open holds the marker.
    c.stop();
    let (readable, plaintexts) = what_the_disk_reveals(&c.data_dir, &group);
    assert!(!readable.is_empty());
    assert!(
        readable.iter().all(|e| *e < new_epoch),
        "C holds epochs {readable:?}, the removal started {new_epoch}"
    );
    assert!(!plaintexts.iter().any(|p| p.contains(marker)));
}

#[test]
fn leaving_destroys_the_local_copy_unless_asked_to_keep_it() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start("A", &tmp.path().join("a"));
    let mut b = Daemon::start("B", &tmp.path().join("b"));
    let c = Daemon::start("C", &tmp.path().join("c"));
    let group = a.create_group("Circle");
    join_as(&a, &b, &group, "Ben");
    join_as(&a, &c, &group, "Cam");
    b.json(&["agreement", "add", &group, "MARKER-before-leaving-8812"]);
    a.wait_for_agreements(&group, &["MARKER-before-leaving-8812"]);

    let left = b.json(&["leave", &group, "--yes"]);
    assert_eq!(
        left["delivered"],
        true,
        "B's log:\n{}\nA's log:\n{}\nC's log:\n{}",
        b.log(),
        a.log(),
        c.log()
    );
    assert_eq!(left["kept_copy"], false);
    assert!(b.json(&["group", "list"]).as_array().unwrap().is_empty());
    wait_for("A to see Ben gone", || {
        (a.member_names(&group) == ["", "Cam"]).then_some(())
    });
    // The group is writable after the departure (a new epoch without B).
    a.json(&["agreement", "add", &group, "after Ben left"]);
    c.wait_for_agreements(&group, &["after Ben left"]);

    // Nothing of the group survives a restart, and its records are gone from the store.
    b.stop();
    b.restart();
    assert!(b.json(&["group", "list"]).as_array().unwrap().is_empty());
    b.stop();
    // The group's own storage key is destroyed, so nothing left in freed pages opens.
    let node = Node::open(Store::open_unprotected(&b.data_dir).unwrap()).unwrap();
    assert_eq!(
        node.store().group_keys(),
        0,
        "a group's key outlived the group"
    );
    assert_eq!(node.group_count(), 0);
    for table in [
        hearthd::store::Table::Groups,
        hearthd::store::Table::Envelopes,
        hearthd::store::Table::EpochKeys,
    ] {
        assert!(
            node.store().scan(table, &[]).unwrap().is_empty(),
            "{table:?}"
        );
    }

    // With --keep-copy the group stays, readable but no longer writable.
    let kept = c.json(&["leave", &group, "--yes", "--keep-copy"]);
    assert_eq!(kept["kept_copy"], true);
    assert!(
        c.agreement_texts(&group)
            .iter()
            .any(|t| t == "after Ben left")
    );
    assert!(
        c.try_json(&["agreement", "add", &group, "after leaving"])
            .is_err()
    );
}

/// Two facilitators remove each other while apart. The removal of the senior one (Ana)
/// reaches Max first, so Max never again shares the group with Ana's device itself (a
/// device reveals nothing to a peer it counts as removed); Ana's counter-removal reaches
/// Max through Nia, who was with Ana, and the senior facilitator's removal wins on every
/// device.
#[test]
fn two_facilitators_removing_each_other_apart_converge() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Daemon::start("A", &tmp.path().join("a"));
    let mut f = Daemon::start("F", &tmp.path().join("f"));
    let m = Daemon::start("M", &tmp.path().join("m"));
    let mut n = Daemon::start("N", &tmp.path().join("n"));
    let group = a.json(&["group", "create", "Circle", "--my-name", "Ana"])["group_id"]
        .as_str()
        .unwrap()
        .to_owned();
    join_as(&a, &f, &group, "Fay");
    join_as(&a, &m, &group, "Max");
    join_as(&a, &n, &group, "Nia");
    a.json(&["member", "role", &group, "Fay", "facilitator"]);
    for d in [&f, &m, &n] {
        wait_for("Fay to be a facilitator everywhere", || {
            members(d, &group)
                .iter()
                .any(|x| x["name"] == "Fay" && x["role"] == "facilitator")
                .then_some(())
        });
    }

    // Apart: with A and N stopped, Fay removes Ana (M hears of it).
    a.stop();
    n.stop();
    f.json(&["peer", "add", &m.addr()]);
    f.json(&["member", "remove", &group, "Ana"]);
    wait_for("M to see Ana removed", || {
        (m.member_names(&group) == ["Fay", "Max", "Nia"]).then_some(())
    });
    // With F stopped, A comes back with N and removes Fay.
    f.stop();
    a.restart();
    n.restart();
    n.json(&["peer", "add", &a.addr()]);
    a.json(&["member", "remove", &group, "Fay"]);
    wait_for("N to see Fay removed", || {
        (n.member_names(&group) == ["Ana", "Max", "Nia"]).then_some(())
    });
    // N meets M: the senior facilitator's removal wins on every device.
    n.json(&["peer", "add", &m.addr()]);
    a.json(&["peer", "add", &m.addr()]);
    for d in [&a, &m, &n] {
        wait_for("A, M and N to agree", || {
            (d.member_names(&group) == ["Ana", "Max", "Nia"]).then_some(())
        });
    }
    a.json(&["agreement", "add", &group, "after the dispute"]);
    m.wait_for_agreements(&group, &["after the dispute"]);
}
