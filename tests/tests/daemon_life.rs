//! The daemon as one process: one per data dir, clean shutdown, nothing acknowledged lost.

use hearth_tests::{Daemon, bin};

#[test]
fn acknowledged_writes_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Daemon::start("A", &tmp.path().join("a"));
    let group = a.create_group("Circle");
    let texts: Vec<String> = (0..20).map(|i| format!("agreement {i:02}")).collect();
    for t in &texts {
        a.json(&["agreement", "add", &group, t]);
    }
    a.kill();
    a.restart();
    assert_eq!(a.agreement_texts(&group), texts);
}

/// Starts hearthd on `data_dir` and `socket`, expects it to refuse, and returns its stderr.
fn second_daemon_refusal(data_dir: &std::path::Path, socket: &std::path::Path) -> String {
    let out = std::process::Command::new(bin("hearthd"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--socket")
        .arg(socket)
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a second hearthd started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_second_daemon_on_the_same_data_dir_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start("A", &tmp.path().join("a"));
    let err = second_daemon_refusal(&a.data_dir, &tmp.path().join("other.sock"));
    assert!(err.contains("already"), "unhelpful refusal: {err}");
    // The first daemon is unaffected.
    a.json(&["status"]);
}

#[test]
fn a_second_daemon_on_a_live_socket_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start("A", &tmp.path().join("a"));
    let err = second_daemon_refusal(&tmp.path().join("b"), &a.socket);
    assert!(err.contains("already serving"), "unhelpful refusal: {err}");
    a.json(&["status"]);
}

#[test]
fn socket_and_store_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start("A", &tmp.path().join("a"));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&a.socket), 0o600);
    assert_eq!(mode(&a.data_dir), 0o700);
    assert_eq!(mode(&a.data_dir.join("keys")), 0o600);
    assert_eq!(mode(&a.data_dir.join("store")), 0o600);
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start("A", &tmp.path().join("a"));
    let out = a.cli(&["join", "hearth1-notreallyatoken"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("damaged"));
    let out = a.cli(&["group", "show", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let out = a.cli(&["group", "create", "   "]);
    assert_eq!(out.status.code(), Some(1));
    let out = a.cli(&["peer", "add", "not-a-multiaddr"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(a.json(&["status"])["groups"], 0);
    assert!(out.stdout.is_empty(), "errors must not print on stdout");
}
