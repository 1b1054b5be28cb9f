//! The local API for clients that follow changes: the event stream, one agreement by id,
//! and the epoch each device writes under.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use hearth_tests::{Daemon, PATIENCE, wait_for};

/// Sends `GET path` on hearthd's socket and returns the stream, positioned after the
/// answer's headers, and the status line.
fn get(socket: &Path, path: &str) -> (BufReader<UnixStream>, String) {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    (reader, status)
}

fn get_body(socket: &Path, path: &str) -> (String, String) {
    let (mut reader, status) = get(socket, path);
    let mut body = String::new();
    reader.read_to_string(&mut body).unwrap();
    (status, body)
}

#[test]
fn a_client_follows_changes_and_reads_one_agreement() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start("A", &tmp.path().join("a"));
    let b = Daemon::start("B", &tmp.path().join("b"));
    let group = a.create_group("Circle");
    a.invite(&b, &group);

    let (mut events, status) = get(&b.socket, "/v1/events");
    assert!(status.contains(" 200 "), "{status}");
    let added = a.json(&["agreement", "add", &group, "We start on time."]);
    let id = added["id"].as_str().unwrap().to_owned();

    // The stream names the group that changed (keep-alive comments may come first).
    events
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let mut line = String::new();
        assert!(
            events.read_line(&mut line).unwrap() > 0,
            "stream ended: {seen:?}"
        );
        seen.push(line.clone());
        if line.starts_with("data:") && line.contains(&group) {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.trim() == "event: group_changed"),
        "{seen:?}"
    );

    // The agreement by id, once B has it; an unknown id is a 404 that says what to do.
    let path = format!("/v1/groups/{group}/agreements/{id}");
    let body = wait_for("B to show the agreement", || {
        let (status, body) = get_body(&b.socket, &path);
        status.contains(" 200 ").then_some(body)
    });
    let shown: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(shown["text"], "We start on time.");
    assert_eq!(shown["id"], id.as_str());
    let (status, body) = get_body(&b.socket, &format!("/v1/groups/{group}/agreements/0011"));
    assert!(status.contains(" 404 "), "{status}");
    assert!(body.contains("agreement_not_found"), "{body}");
    assert!(body.contains("hearth agreement list"), "{body}");

    // Both write under the epoch B's admission started.
    let epoch_of = |d: &Daemon| d.json(&["group", "list"])[0]["epoch"].clone();
    assert!(epoch_of(&a).as_u64().is_some_and(|e| e >= 1));
    assert_eq!(epoch_of(&a), epoch_of(&b));
}

#[test]
fn a_daemon_asked_to_stop_ends_the_event_streams_it_serves_and_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Daemon::start("A", &tmp.path().join("a"));
    let (mut events, status) = get(&a.socket, "/v1/events");
    assert!(status.contains(" 200 "), "{status}");

    // This client keeps reading; the daemon must still stop, not wait for it to leave.
    // Both waits run beside the test so that a daemon that never stops fails it.
    let (ended, end_seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = ended.send(events.read_to_string(&mut rest).map(|_| rest));
    });
    let (stopped, stop_seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        a.stop();
        let _ = stopped.send(());
    });
    end_seen
        .recv_timeout(PATIENCE)
        .expect("the daemon ends the event stream when it stops")
        .expect("the event stream ends cleanly");
    stop_seen
        .recv_timeout(PATIENCE)
        .expect("hearthd stops while a client follows its events");
}
