//! A shared, lost or seized laptop: a passphrase-protected daemon starts locked and serves
//! nothing but status, unlock and panic; locking (by hand or after idling) leaves no key
//! and no group content in its memory; panic leaves nothing anything on the machine can
//! open, even when interrupted; a duress passphrase leaves what looks like a fresh install.

use std::path::Path;

use hearth_tests::{Daemon, Launch, files_under, find_in_memory};
use hearthd::vault::{Opened, Vault};
use serde_json::{Value, json};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

const PASS: &str = "correct horse battery";
const DURESS: &str = "all is well at home";

/// `hearth passphrase set --passphrase-stdin`, as a script would.
fn set_passphrase(d: &Daemon, passphrase: &str) {
    let out = d.cli_with_input(
        &["passphrase", "set", "--passphrase-stdin"],
        &format!("{passphrase}\n"),
    );
    assert!(out.status.success(), "setting the passphrase: {out:?}");
}

/// `hearth unlock --passphrase-stdin`: its exit code and JSON answer (or what it said).
fn unlock(d: &Daemon, passphrase: &str) -> (Option<i32>, Value) {
    let out = d.cli_with_input(
        &["unlock", "--passphrase-stdin"],
        &format!("{passphrase}\n"),
    );
    let said = if out.status.success() {
        &out.stdout
    } else {
        &out.stderr
    };
    let answer = serde_json::from_slice(said)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(said).into_owned()));
    (out.status.code(), answer)
}

fn lock(d: &Daemon) {
    let body = d.json(&["lock"]);
    assert_eq!(body["locked"], true, "{body}");
}

/// A group with one agreement whose text is `marker`.
fn group_with(d: &Daemon, marker: &str) -> String {
    let group = d.create_group("Circle");
    d.json(&["agreement", "add", &group, marker]);
    group
}

/// Every file under `dir` with its bytes, to tell whether anything changed.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = files_under(dir)
        .into_iter()
        .filter(|p| !p.ends_with("hearthd.lock"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_default();
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

/// The storage key and every key derived from it, read with the passphrase.
fn key_material(dir: &Path, passphrase: &str) -> Vec<Vec<u8>> {
    let vault = Vault::new(dir);
    let Opened::Storage(key) = vault
        .unlock(&hearth_protocol::api::Passphrase::new(
            passphrase.to_owned(),
        ))
        .expect("the passphrase opens the key file")
    else {
        panic!("the passphrase is the duress one");
    };
    let mut out = vec![key.expose().to_vec()];
    out.extend(
        hearthd::store::derived_keys(&key, dir)
            .iter()
            .map(|k| k.to_vec()),
    );
    out
}

#[test]
fn a_protected_daemon_restarts_locked_and_serves_only_status_unlock_and_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start("D", &tmp.path().join("d"));
    let group = group_with(&d, "LOCKED-MARKER-be7d");
    set_passphrase(&d, PASS);
    d.stop();
    d.restart();

    let status = d.api_get("/v1/status");
    assert_eq!(status["locked"], true, "{status}");
    assert_eq!(status["passphrase"], true, "{status}");
    assert!(
        status.get("groups").is_none(),
        "a locked daemon counts no groups: {status}"
    );

    let refused = [
        ("GET", "/v1/groups".to_owned(), None),
        (
            "POST",
            "/v1/groups".to_owned(),
            Some(json!({ "name": "Other" })),
        ),
        ("GET", format!("/v1/groups/{group}/agreements"), None),
        ("GET", "/v1/peers".to_owned(), None),
        ("GET", "/v1/events".to_owned(), None),
        (
            "POST",
            "/v1/join".to_owned(),
            Some(json!({ "invite": "x" })),
        ),
        ("POST", "/v1/lock".to_owned(), None),
        (
            "PUT",
            "/v1/passphrase".to_owned(),
            Some(json!({ "passphrase": "another one here" })),
        ),
    ];
    for (method, path, body) in &refused {
        let (code, answer) = d.api(method, path, body.as_ref());
        if *method == "POST" && path == "/v1/lock" {
            // Locking a locked daemon is no error, and changes nothing.
            assert_eq!(code, 200, "{method} {path}: {answer}");
            continue;
        }
        assert_eq!(code, 423, "{method} {path}: {answer}");
        assert_eq!(
            answer["error"]["code"], "locked",
            "{method} {path}: {answer}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("hearth unlock"),
            "{answer}"
        );
    }

    // The CLI says so with exit code 4 and the way out.
    let out = d.cli(&["group", "list"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("hearth unlock"),
        "{out:?}"
    );

    let before = snapshot(&d.data_dir);
    let (code, answer) = unlock(&d, "not the passphrase");
    assert_eq!(code, Some(1), "{answer}");
    let (status, answer) = d.api(
        "POST",
        "/v1/unlock",
        Some(&json!({ "passphrase": "not it either" })),
    );
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["error"]["code"], "wrong_passphrase", "{answer}");
    assert_eq!(d.api_get("/v1/status")["locked"], true);
    assert!(
        snapshot(&d.data_dir) == before,
        "a wrong passphrase changed files"
    );

    let (code, answer) = unlock(&d, PASS);
    assert_eq!(code, Some(0), "{answer}");
    assert_eq!(answer["locked"], false, "{answer}");
    assert_eq!(d.agreement_texts(&group), vec!["LOCKED-MARKER-be7d"]);
}

#[test]
fn repeated_wrong_passphrases_are_slowed_down() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start("D", &tmp.path().join("d"));
    set_passphrase(&d, PASS);
    lock(&d);
    let tries = |passphrase: &str| {
        d.api(
            "POST",
            "/v1/unlock",
            Some(&json!({ "passphrase": passphrase })),
        )
    };
    let codes: Vec<u16> = (0..4).map(|_| tries("wrong guess here").0).collect();
    assert_eq!(
        codes,
        vec![401, 401, 401, 429],
        "three free tries, then a wait"
    );
    // Even the right passphrase waits its turn, and the CLI passes the wait on.
    let (code, answer) = unlock(&d, PASS);
    assert_eq!(code, Some(1), "{answer}");
    assert!(answer.to_string().contains("wait"), "{answer}");
}

/// Locks `d` with `lock_it`, checking first that the scan finds what it looks for while
/// unlocked (so it can fail), then that nothing is left after.
fn no_key_or_content_left_after(d: &Daemon, lock_it: impl FnOnce(&Daemon)) {
    if !is_root() {
        // hearthd forbids other processes of its user to read its memory (PR_SET_DUMPABLE).
        eprintln!("SKIPPED a memory scan: reading hearthd's memory needs root");
        return;
    }
    let marker = "MEMORY-MARKER-6f1c2a9e0d";
    let group = group_with(d, marker);
    set_passphrase(d, PASS);
    assert_eq!(d.agreement_texts(&group), vec![marker]);
    let mut keys = key_material(&d.data_dir, PASS);
    // An open invite's secret is a key too.
    let token = d.json(&["invite", &group])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret = hearth_protocol::invite::InviteToken::decode(&token)
        .expect("a token")
        .secret;
    keys.push(secret.to_vec());
    let pid = d.pid().expect("running");
    let mut needles: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    needles.push(marker.as_bytes());
    let unlocked = find_in_memory(pid, &needles);
    assert!(
        unlocked.iter().any(|(i, _)| *i == needles.len() - 1),
        "the scan does not even find the marker in the unlocked daemon"
    );
    assert!(
        unlocked.iter().any(|(i, _)| *i < keys.len()),
        "the scan does not even find a storage key in the unlocked daemon"
    );

    lock_it(d);
    let left = find_in_memory(pid, &needles);
    assert!(
        left.is_empty(),
        "after locking, the daemon's memory still holds (needle index, address): {left:x?} \
         (indexes below {} are keys, {} is the marker)",
        keys.len(),
        keys.len()
    );
}

#[test]
fn locking_leaves_no_key_and_no_content_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start("D", &tmp.path().join("d"));
    no_key_or_content_left_after(&d, lock);
}

#[test]
fn auto_lock_leaves_no_key_and_no_content_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let mut launch = Launch::default();
    launch
        .net_args
        .extend(["--auto-lock".to_owned(), "3s".to_owned()]);
    let d = Daemon::start_with("D", &tmp.path().join("d"), launch);
    assert_eq!(d.api_get("/v1/status")["auto_lock_secs"], 3);
    no_key_or_content_left_after(&d, |d| {
        // Status does not count as use, so asking does not hold the lock off.
        hearth_tests::wait_for("auto-lock", || {
            (d.api_get("/v1/status")["locked"] == true).then_some(())
        });
    });
}

#[test]
fn panic_destroys_everything_and_exits_whether_locked_or_not() {
    for protected in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = Daemon::start("D", &tmp.path().join("d"));
        group_with(&d, "PANIC-MARKER-0a9");
        if protected {
            set_passphrase(&d, PASS);
            d.stop();
            // Someone made the key file read-only: panic must destroy it all the same.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                d.data_dir.join("keys"),
                std::fs::Permissions::from_mode(0o400),
            )
            .unwrap();
            d.restart();
            assert_eq!(d.api_get("/v1/status")["locked"], true);
        }
        let answer = d.json(&["panic", "--yes"]);
        assert_eq!(answer["destroyed"], true, "{answer}");
        let status = d.wait_for_exit();
        assert!(status.success(), "panic exits cleanly: {status}");
        let left = files_under(&d.data_dir);
        assert!(left.is_empty(), "panic left {left:?}");
        assert!(!d.data_dir.exists(), "panic left the data directory");
        assert!(!d.socket.exists(), "panic left the socket");
    }
}

#[test]
fn a_duress_passphrase_leaves_what_looks_like_a_fresh_install() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start("D", &tmp.path().join("d"));
    group_with(&d, "DURESS-MARKER-4c1");
    set_passphrase(&d, PASS);
    let out = d.cli_with_input(
        &["passphrase", "duress", "--passphrase-stdin"],
        &format!("{PASS}\n{DURESS}\n"),
    );
    assert!(out.status.success(), "{out:?}");
    d.stop();
    d.restart();

    let (code, answer) = unlock(&d, DURESS);
    assert_eq!(
        code,
        Some(0),
        "the duress passphrase unlocks like any other: {answer}"
    );
    assert_eq!(answer["locked"], false, "{answer}");
    assert_eq!(answer["groups"], 0, "{answer}");
    assert_eq!(d.api_get("/v1/groups"), json!([]));
    lock(&d);
    let (code, answer) = unlock(&d, PASS);
    assert_eq!(
        code,
        Some(1),
        "the real passphrase opens nothing now: {answer}"
    );
    assert_eq!(unlock(&d, DURESS).0, Some(0));
    assert_eq!(d.api_get("/v1/groups"), json!([]));

    // Side by side with a fresh install locked by a passphrase: the same files, and a key
    // file of the same size.
    let mut fresh = Daemon::start("F", &tmp.path().join("fresh"));
    set_passphrase(&fresh, DURESS);
    d.stop();
    fresh.stop();
    let names = |dir: &Path| -> Vec<(String, Option<u64>)> {
        let mut v: Vec<_> = files_under(dir)
            .iter()
            .map(|p| {
                let name = p.strip_prefix(dir).unwrap().display().to_string();
                let size = (name == "keys").then(|| std::fs::metadata(p).unwrap().len());
                (name, size)
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&d.data_dir), names(&fresh.data_dir));
}

/// Panic killed between its steps (strace kills hearthd as it removes its second file,
/// just after the key file is gone): what is left opens with nothing left on the machine,
/// and a restarted daemon refuses it rather than starting afresh beside it.
#[test]
fn an_interrupted_panic_leaves_nothing_readable() {
    if !is_root() {
        eprintln!(
            "SKIPPED an_interrupted_panic_leaves_nothing_readable: tracing hearthd needs root \
             (it forbids other processes of its user to attach)"
        );
        return;
    }
    if std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_err()
    {
        eprintln!(
            "SKIPPED an_interrupted_panic_leaves_nothing_readable: strace is not installed \
             (apt-get install strace)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start("D", &tmp.path().join("d"));
    group_with(&d, "INTERRUPTED-MARKER-71d");
    set_passphrase(&d, PASS);
    let keys = key_material(&d.data_dir, PASS);
    let pid = d.pid().unwrap();
    let mut strace = std::process::Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=unlink,unlinkat"])
        .args(["-e", "inject=unlink,unlinkat:signal=SIGKILL:when=2"])
        .args(["-p", &pid.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("strace starts");
    // strace has attached once the process shows a tracer.
    hearth_tests::wait_for("strace to attach", || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .any(|l| l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0"))
            .then_some(())
    });
    let _ = d.api("POST", "/v1/panic", None);
    let status = d.wait_for_exit();
    let _ = strace.wait();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "killed mid-panic: {status}"
    );

    let left = files_under(&d.data_dir);
    assert!(
        left.iter().any(|p| !p.ends_with("hearthd.lock")),
        "the panic was not interrupted before the data went: {left:?}"
    );
    assert!(
        !d.data_dir.join("keys").exists(),
        "the key file survived: {left:?}"
    );
    for key in &keys {
        let holding = hearth_tests::files_containing(&d.data_dir, key);
        assert!(holding.is_empty(), "a key is still in {holding:?}");
    }
    let restarted = std::process::Command::new(hearth_tests::bin("hearthd"))
        .arg("--data-dir")
        .arg(&d.data_dir)
        .arg("--socket")
        .arg(tmp.path().join("again.sock"))
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&restarted.stderr);
    assert!(
        !restarted.status.success(),
        "started beside unreadable data: {said}"
    );
    assert!(said.contains("missing"), "{said}");
}

/// Peers remember where a member's daemon listens; a lock must not move it.
#[test]
fn unlocking_again_listens_where_it_did() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start("D", &tmp.path().join("d"));
    set_passphrase(&d, PASS);
    let before = d.addr();
    lock(&d);
    assert_eq!(unlock(&d, PASS).0, Some(0));
    assert_eq!(d.addr(), before);
}

/// A panic with an event stream open and a command waiting (a facilitator's `hearth invite
/// --code` waits up to an hour) still ends hearthd at once, holding nothing.
#[test]
fn panic_exits_at_once_even_with_streams_and_waiting_commands_open() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start("D", &tmp.path().join("d"));
    let group = group_with(&d, "PANIC-STREAM-MARKER");
    let mut events = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    events
        .write_all(b"GET /v1/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    events.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let code = d.json(&["invite", &group, "--code", "--no-wait"])["code"]
        .as_str()
        .unwrap()
        .split('-')
        .next()
        .unwrap()
        .to_owned();
    let mut waiting = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    write!(
        waiting,
        "GET /v1/groups/{group}/codes/{code}?wait=600 HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));

    let answer = d.json(&["panic", "--yes"]);
    assert_eq!(answer["destroyed"], true, "{answer}");
    let status = d.wait_for_exit();
    assert!(status.success(), "{status}");
    assert!(!d.data_dir.exists(), "panic left the data directory");
}

/// Setting the first passphrase moves the store to a new storage key: the key file from
/// before (the key in the clear, as a backup or snapshot may keep it) opens nothing stored
/// afterwards. Changing the passphrase wraps the same key again, as documented.
#[test]
fn setting_a_passphrase_leaves_the_earlier_key_file_useless() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start("D", &tmp.path().join("d"));
    let group = group_with(&d, "REKEY-MARKER-1");
    let plain = std::fs::read(d.data_dir.join("keys")).unwrap();
    set_passphrase(&d, PASS);
    d.json(&["agreement", "add", &group, "REKEY-MARKER-2"]);
    assert_eq!(
        d.agreement_texts(&group),
        vec!["REKEY-MARKER-1", "REKEY-MARKER-2"]
    );
    let now = key_material(&d.data_dir, PASS)[0].clone();
    let out = d.cli_with_input(
        &["passphrase", "change", "--passphrase-stdin"],
        &format!("{PASS}\nbattery staple horse\n"),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(key_material(&d.data_dir, "battery staple horse")[0], now);
    d.stop();

    // The earlier key file, put back beside the store as it is now, opens nothing.
    let earlier = tmp.path().join("earlier");
    std::fs::create_dir_all(&earlier).unwrap();
    std::fs::copy(d.data_dir.join("store"), earlier.join("store")).unwrap();
    std::fs::write(earlier.join("keys"), &plain).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(earlier.join("keys"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let Some(hearthd::vault::KeyFile::Plain(key)) = Vault::new(&earlier).read().unwrap() else {
        panic!("the first key file held the key in the clear");
    };
    assert_ne!(key.expose().to_vec(), now, "the storage key did not change");
    let dir = std::sync::Arc::new(hearthd::store::DataDir::open(&earlier).unwrap());
    assert!(
        hearthd::store::Store::open(dir, &key).is_err(),
        "the earlier key file still opens the store"
    );
}

/// Every answer closes its connection: a kept-alive one would hold the last request (a
/// passphrase, a text) in its buffers after the daemon locks.
#[test]
fn every_answer_closes_its_connection() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start("D", &tmp.path().join("d"));
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    // Returns only because the daemon closes the connection.
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.to_ascii_lowercase().contains("connection: close"),
        "{out}"
    );
}

/// Removing the passphrase puts the key back in the clear, and hearthd says so: it no
/// longer claims a passphrase, and refuses to lock (the key file would open it again).
#[test]
fn removing_the_passphrase_is_reflected_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start("D", &tmp.path().join("d"));
    set_passphrase(&d, PASS);
    assert_eq!(d.json(&["status"])["passphrase"], true);
    let out = d.cli_with_input(
        &["passphrase", "remove", "--passphrase-stdin", "--yes"],
        &format!("{PASS}\n"),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(d.json(&["status"])["passphrase"], false);
    let out = d.cli(&["lock"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(d.json(&["status"])["locked"], false);
}
