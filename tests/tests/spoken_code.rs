//! Joining by spoken code, between daemons in separate network namespaces on a private
//! bridge: the joiner's daemon finds the facilitator's over mDNS, with no address given.
//! The facilitator's daemon holds the join until the facilitator approves it; a declined
//! join lets nobody in. One wrong guess does not burn the code (the right code still
//! works afterwards), and an expired code fails. The joiner asks every daemon it meets at
//! once, and a daemon without the code answers exactly like one with it, so every failure
//! to find the code reads "did not match".
//!
//! Needs root and iproute2; skips (with the reason printed) where the test network cannot
//! be made.

use hearth_tests::netns::TestNet;
use hearth_tests::{Daemon, wait_for};
use serde_json::Value;

/// Makes a spoken code for `group` on `d` and returns it, without waiting for its use.
fn code(d: &Daemon, group: &str, ttl: &str) -> Value {
    d.json(&["invite", group, "--code", "--no-wait", "--ttl", ttl])
}

/// The same code with its last word replaced by another word of the list.
fn with_wrong_last_word(code: &str) -> String {
    let words = hearth_protocol::code::word_list();
    let (head, last) = code.rsplit_once('-').unwrap();
    let other = words.iter().find(|w| **w != last).unwrap();
    format!("{head}-{other}")
}

fn peers(d: &Daemon) -> usize {
    d.try_json(&["peer", "list"])
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0)
}

#[test]
fn join_by_spoken_code_over_mdns_and_a_wrong_or_expired_code_fails() {
    let Some(net) = TestNet::new(3).expect("making the test network") else {
        eprintln!("SKIPPED spoken_code: the test network cannot be made here (see above)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let f = net.start_daemon(0, "F", &dir.path().join("f"));
    let j = net.start_daemon(1, "J", &dir.path().join("j"));
    let k = net.start_daemon(2, "K", &dir.path().join("k"));
    let group = f.json(&["group", "create", "Circle", "--my-name", "Fran"])["group_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for("the daemons to meet over mDNS", || {
        (peers(&f) >= 2 && peers(&j) >= 1 && peers(&k) >= 1).then_some(())
    });

    // The right code: J joins, with no address or token handed over.
    let spoken = code(&f, &group, "10m");
    let text = spoken["code"].as_str().unwrap();
    let joined = f.approve_code_join(&j, &group, text, "Jo").unwrap();
    assert_eq!(joined["group_id"], group.as_str());
    assert_eq!(j.member_names(&group), ["Fran", "Jo"]);
    j.json(&["agreement", "add", &group, "joined by code"]);
    f.wait_for_agreements(&group, &["joined by code"]);
    // Single use: the same code again is refused. A used code looks like no code at all
    // (every daemon answers every channel alike), so the joiner hears "did not match".
    let again = k
        .try_json(&["join", text])
        .expect_err("a used code must not join");
    assert!(again.contains("did not match"), "{again}");

    // One wrong guess does not burn the code: the right one still finds it afterwards,
    // from another device. Declined by the facilitator, it lets nobody in.
    let spoken = code(&f, &group, "10m");
    let text = spoken["code"].as_str().unwrap().to_owned();
    let wrong = j.try_json(&["join", &with_wrong_last_word(&text)]);
    let err = wrong.expect_err("a wrong code must not join");
    assert!(err.contains("did not match"), "{err}");
    let channel = spoken["channel"].as_u64().unwrap().to_string();
    let declined = std::thread::scope(|scope| {
        let joining = scope.spawn(|| k.try_json(&["join", &text, "--name", "Kit"]));
        wait_for("the join to wait for approval", || {
            let status = f.api_get(&format!("/v1/groups/{group}/codes/{channel}"));
            (status["state"] == "awaiting_approval").then_some(())
        });
        f.json(&["invite", "approve", &group, &channel, "--deny"]);
        joining.join().unwrap()
    });
    let declined = declined.expect_err("a declined join must not join");
    assert!(declined.contains("did not let you in"), "{declined}");
    assert!(k.json(&["group", "list"]).as_array().unwrap().is_empty());

    // An expired code fails.
    let spoken = code(&f, &group, "1s");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        k.try_json(&["join", spoken["code"].as_str().unwrap()])
            .is_err()
    );
    assert!(k.json(&["group", "list"]).as_array().unwrap().is_empty());
    let names = f.json(&["member", "list", &group]);
    assert_eq!(names.as_array().unwrap().len(), 2);
}
