//! What an outsider or a seized disk can learn: nothing of the group's content.

use hearth_tests::{Daemon, files_containing, wait_for};
use hearthd::store::Table;

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

/// What a disk holder sees of a data directory, stopped or locked: file names, and every
/// file's size except the store's (whose total size is the one thing it may learn) and the
/// lock file's (the daemon's pid, in as many digits as it has).
fn disk_shape(dir: &std::path::Path) -> Vec<(String, Option<u64>)> {
    let mut shape: Vec<_> = hearth_tests::files_under(dir)
        .iter()
        .map(|p| {
            let name = p.strip_prefix(dir).unwrap().display().to_string();
            let size = (name != "store" && name != "hearthd.lock")
                .then(|| std::fs::metadata(p).unwrap().len());
            (name, size)
        })
        .collect();
    shape.sort();
    shape
}

/// redb's own magic: like the store's table names, it may not be readable on disk.
const REDB_MAGIC: &str = "redb";

/// A data directory with one group and one agreement, and one with three groups and
/// thirty agreements: stopped or locked, the two show the same files, the same key file,
/// and no marker, table name or id; only the store's size differs.
#[test]
fn a_disk_holder_learns_only_the_size_of_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let mut small = Daemon::start("S", &tmp.path().join("small"));
    let mut large = Daemon::start("L", &tmp.path().join("large"));
    let mut ids = Vec::new();
    let one = small.create_group("DISK-GROUP-S");
    small.json(&["agreement", "add", &one, "DISK-AGREEMENT-S"]);
    ids.push(one.clone());
    ids.push(small.member_id(&one));
    for g in 0..3 {
        let group = large.create_group(&format!("DISK-GROUP-L{g}"));
        for a in 0..10 {
            large.json(&[
                "agreement",
                "add",
                &group,
                &format!("DISK-AGREEMENT-L{g}-{a}"),
            ]);
        }
        ids.push(large.member_id(&group));
        ids.push(group);
    }
    for d in [&small, &large] {
        let out = d.cli_with_input(
            &["passphrase", "set", "--passphrase-stdin"],
            "disk holder test passphrase\n",
        );
        assert!(out.status.success(), "{out:?}");
    }

    let (small_dir, large_dir) = (small.data_dir.clone(), large.data_dir.clone());
    let check = |when: &str| {
        assert_eq!(
            disk_shape(&small_dir),
            disk_shape(&large_dir),
            "{when}: the files differ beyond the store's size"
        );
        let markers = ["DISK-GROUP", "DISK-AGREEMENT"];
        let raw: Vec<Vec<u8>> = ids.iter().map(|id| hex::decode(id).unwrap()).collect();
        let needles = markers
            .iter()
            .map(|m| m.as_bytes())
            .chain(Table::ALL.iter().map(|t| t.name().as_bytes()))
            .chain([REDB_MAGIC.as_bytes()])
            .chain(ids.iter().map(|id| id.as_bytes()))
            .chain(raw.iter().map(Vec::as_slice));
        for needle in needles {
            let hits = files_containing(tmp.path(), needle);
            assert!(
                hits.iter()
                    .all(|p| p.extension().is_some_and(|e| e == "log")),
                "{when}: {} found in {hits:?}",
                String::from_utf8_lossy(needle)
            );
        }
    };
    for d in [&small, &large] {
        assert_eq!(d.json(&["lock"])["locked"], true);
    }
    check("locked");
    small.stop();
    large.stop();
    check("stopped");
}
