//! What someone who shares the laptop finds in hearthd's logs. At the default level: no
//! address, no peer id, no member id and no group id, after a join and a sync. At debug
//! (hearthd's own lines), peer ids only shortened.

use hearth_tests::{Daemon, Launch};

struct Seen {
    /// Every peer id either daemon reported for the other.
    peer_ids: Vec<String>,
    member_ids: Vec<String>,
    group: String,
    /// Every address either daemon listens on, and its IP alone.
    addrs: Vec<String>,
}

/// Two daemons logging as `filter` says: F creates a group, J joins by token, both write
/// and each sees the other's agreement.
fn join_and_sync(filter: &str) -> (Daemon, Daemon, Seen) {
    let tmp = tempfile::tempdir().unwrap();
    let launch = Launch {
        log_filter: filter.to_owned(),
        ..Launch::default()
    };
    let f = Daemon::start_with("F", &tmp.path().join("f"), launch.clone());
    let j = Daemon::start_with("J", &tmp.path().join("j"), launch);
    let group = f.create_group("Circle");
    f.invite(&j, &group);
    f.json(&["agreement", "add", &group, "from F"]);
    j.json(&["agreement", "add", &group, "from J"]);
    f.wait_for_agreements(&group, &["from J"]);
    j.wait_for_agreements(&group, &["from F"]);
    let mut peer_ids = Vec::new();
    let mut addrs = vec!["127.0.0.1".to_owned()];
    for d in [&f, &j] {
        for p in d.json(&["peer", "list"]).as_array().unwrap() {
            peer_ids.push(p["peer_id"].as_str().unwrap().to_owned());
            for a in p["addrs"].as_array().unwrap() {
                addrs.push(a.as_str().unwrap().to_owned());
            }
        }
        for a in d.json(&["status"])["listen_addrs"].as_array().unwrap() {
            addrs.push(a.as_str().unwrap().to_owned());
        }
    }
    assert!(!peer_ids.is_empty(), "F and J saw no peer");
    let member_ids = vec![f.member_id(&group), j.member_id(&group)];
    // Keep the temp dir alive with the daemons: leak it for the test's duration.
    std::mem::forget(tmp);
    let seen = Seen {
        peer_ids,
        member_ids,
        group,
        addrs,
    };
    (f, j, seen)
}

#[test]
fn the_default_log_names_no_address_and_no_id() {
    let (mut f, mut j, seen) = join_and_sync("");
    f.stop();
    j.stop();
    for d in [&f, &j] {
        let log = d.log();
        assert!(log.contains("hearthd ready"), "{}'s log:\n{log}", d.name);
        let ids = seen.peer_ids.iter().chain(&seen.member_ids);
        for needle in ids.chain(&seen.addrs).chain([&seen.group]) {
            assert!(
                !log.contains(needle.as_str()),
                "{}'s log holds {needle}:\n{log}",
                d.name
            );
        }
        // Nor anything shaped like a libp2p peer id or a multiaddr.
        assert!(!log.contains("12D3Koo"), "{}'s log:\n{log}", d.name);
        assert!(!log.contains("/ip4/"), "{}'s log:\n{log}", d.name);
    }
}

#[test]
fn at_debug_peer_ids_are_shortened() {
    let (mut f, mut j, seen) = join_and_sync("hearthd=debug");
    f.stop();
    j.stop();
    for d in [&f, &j] {
        let log = d.log();
        assert!(
            log.contains("session handshake done"),
            "{}'s log:\n{log}",
            d.name
        );
        for id in &seen.peer_ids {
            assert!(
                !log.contains(id.as_str()),
                "{}'s log holds {id}:\n{log}",
                d.name
            );
            let tail = &id[id.len() - 6..];
            assert!(
                log.contains(tail),
                "{}'s log does not name {id} even shortened",
                d.name
            );
        }
        for id in seen.member_ids.iter().chain([&seen.group]) {
            assert!(
                !log.contains(id.as_str()),
                "{}'s log holds {id}:\n{log}",
                d.name
            );
        }
    }
}

/// Everything either daemon logs at trace level, its libraries' lines included, through a
/// token join, a sync both ways, a spoken code, and setting, using and changing
/// passphrases: no name, text, passphrase, token, code, key, or full group or member id.
#[test]
fn at_trace_no_text_name_secret_or_full_id() {
    let tmp = tempfile::tempdir().unwrap();
    let launch = Launch {
        log_filter: "trace".to_owned(),
        ..Launch::default()
    };
    let mut f = Daemon::start_with("F", &tmp.path().join("f"), launch.clone());
    let mut j = Daemon::start_with("J", &tmp.path().join("j"), launch);
    let (code, created) = f.api(
        "POST",
        "/v1/groups",
        Some(&serde_json::json!({
            "name": "TRACEGROUP-a1b2",
            "purpose": "TRACEPURPOSE-c3d4",
            "my_name": "TRACEFRAN-e5f6",
        })),
    );
    assert_eq!(code, 200, "{created}");
    let group = created["group_id"].as_str().unwrap().to_owned();
    let token = f.json(&["invite", &group])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    j.json(&["join", &token, "--name", "TRACEJO-0718"]);
    f.json(&["agreement", "add", &group, "TRACEAGREE-F-29"]);
    j.json(&["agreement", "add", &group, "TRACEAGREE-J-3a"]);
    f.wait_for_agreements(&group, &["TRACEAGREE-J-3a"]);
    j.wait_for_agreements(&group, &["TRACEAGREE-F-29"]);
    let spoken = f.json(&["invite", &group, "--code", "--no-wait"])["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let member_ids = [f.member_id(&group), j.member_id(&group)];

    let body = |v: serde_json::Value| Some(v);
    let calls = [
        (
            "PUT",
            "/v1/passphrase",
            body(serde_json::json!({ "passphrase": "TRACEPASS-4b5c6d" })),
        ),
        (
            "PUT",
            "/v1/passphrase/duress",
            body(
                serde_json::json!({ "current": "TRACEPASS-4b5c6d", "duress": "TRACEDURESS-7e8f9a" }),
            ),
        ),
        ("POST", "/v1/lock", None),
        (
            "POST",
            "/v1/unlock",
            body(serde_json::json!({ "passphrase": "TRACEWRONG-1c2d3e" })),
        ),
        (
            "POST",
            "/v1/unlock",
            body(serde_json::json!({ "passphrase": "TRACEPASS-4b5c6d" })),
        ),
    ];
    for (method, path, request) in &calls {
        f.api(method, path, request.as_ref());
    }
    assert_eq!(f.api_get("/v1/status")["locked"], false);
    let storage = {
        let vault = hearthd::vault::Vault::new(&f.data_dir);
        let hearthd::vault::Opened::Storage(key) = vault
            .unlock(&hearth_protocol::api::Passphrase::new(
                "TRACEPASS-4b5c6d".to_owned(),
            ))
            .unwrap()
        else {
            panic!("the passphrase is the duress one")
        };
        hex::encode(key.expose())
    };
    f.stop();
    j.stop();

    let secret = token.rsplit(['-', '_', '.']).next().unwrap().to_owned();
    let mut needles = vec![
        "TRACEGROUP",
        "TRACEPURPOSE",
        "TRACEFRAN",
        "TRACEJO",
        "TRACEAGREE",
        "TRACEPASS",
        "TRACEDURESS",
        "TRACEWRONG",
        token.as_str(),
        secret.as_str(),
        spoken.as_str(),
        group.as_str(),
        storage.as_str(),
    ];
    needles.extend(member_ids.iter().map(String::as_str));
    for d in [&f, &j] {
        let log = d.log();
        assert!(
            log.lines().count() > 100,
            "{} logged little at trace; the scan would prove nothing:\n{log}",
            d.name
        );
        for needle in &needles {
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                panic!("{}'s trace log holds {needle}: {line}", d.name);
            }
        }
    }
}
