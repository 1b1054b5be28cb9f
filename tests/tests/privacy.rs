//! What an outsider or a seized disk can learn: nothing of the group's content.

use hearth_tests::{Daemon, files_containing, wait_for};

#[test]
fn no_plaintext_on_disk_or_in_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Daemon::start("A", &tmp.path().join("a"));
    let mut b = Daemon::start("B", &tmp.path().join("b"));
    let name = "NAME-MARKER-b9f14e";
    let purpose = "PURPOSE-MARKER-77c1a0";
    let agreement = "AGREEMENT-MARKER-3d5e21";
    let group = a.json(&["group", "create", name, "--purpose", purpose])["group_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = a.invite(&b, &group);
    a.json(&["agreement", "add", &group, agreement]);
    b.wait_for_agreements(&group, &[agreement]);
    assert_eq!(b.json(&["group", "show", &group])["name"], name);
    let member_ids = [a.member_id(&group), b.member_id(&group)];
    a.stop();
    b.stop();

    for marker in [name, purpose, agreement] {
        let hits = files_containing(tmp.path(), marker.as_bytes());
        assert!(hits.is_empty(), "{marker} found in plaintext in {hits:?}");
    }
    // Who belongs to which group is itself a secret: neither the group id nor any member
    // id appears on disk, as raw bytes or as text.
    for id in member_ids.iter().chain([&group]) {
        let raw: Vec<u8> = (0..id.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&id[i..i + 2], 16).unwrap())
            .collect();
        let hits = files_containing(&tmp.path().join("a"), &raw);
        assert!(hits.is_empty(), "id {id} found raw in {hits:?}");
        let hits = files_containing(&tmp.path().join("b"), &raw);
        assert!(hits.is_empty(), "id {id} found raw in {hits:?}");
        let hits = files_containing(&tmp.path().join("a"), id.as_bytes());
        assert!(hits.is_empty(), "id {id} found as text in {hits:?}");
    }
    // The invite secret must not be on disk in the clear either: the token's text is not.
    let hits = files_containing(tmp.path(), token.as_bytes());
    assert!(hits.is_empty(), "invite token found in {hits:?}");
}

#[test]
fn a_non_member_gets_nothing_of_the_group() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start("A", &tmp.path().join("a"));
    let b = Daemon::start("B", &tmp.path().join("b"));
    let outsider = Daemon::start("outsider", &tmp.path().join("x"));
    let group = a.create_group("Circle");
    let token = a.invite(&b, &group);
    // The outsider has a group of its own, so it takes part in the session handshake.
    outsider.json(&["group", "create", "Other"]);

    // The outsider dials A and stays connected, but shares no group with it.
    outsider.json(&["peer", "add", &a.addr()]);
    wait_for("outsider to connect to A", || {
        (outsider.json(&["status"])["peers"].as_u64()? >= 1).then_some(())
    });
    a.json(&["agreement", "add", &group, "members only"]);
    b.wait_for_agreements(&group, &["members only"]);
    let groups = outsider.json(&["group", "list"]);
    let names: Vec<&str> = groups
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert_eq!(names, ["Other"]);
    let out = outsider.cli(&["group", "show", &group]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the outsider must not know the group"
    );

    // A used token does not let the outsider in.
    let out = outsider.cli(&["join", &token]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));
    assert_eq!(outsider.json(&["status"])["groups"], 1);
    assert_eq!(
        a.json(&["group", "show", &group])["members"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}
