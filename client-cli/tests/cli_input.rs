//! The real `hearth` binary against a stand-in hearthd on a Unix socket: values given as
//! `-` on standard input, values left out without a terminal, values asked for on a
//! pseudo-terminal (secrets without echo), and the lock, unlock, panic and passphrase
//! commands with their exit codes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// One request the stand-in hearthd received: method, path, and body (JSON, or `null`
/// when empty).
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: String,
    path: String,
    body: Value,
}

/// A stand-in hearthd: answers `METHOD /path` from a table, anything else with 404.
struct FakeDaemon {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeDaemon {
    fn start(routes: &[(&str, &str, u16, Value)]) -> FakeDaemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("hearthd.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let routes: Arc<Vec<(String, String, u16, Value)>> = Arc::new(
            routes
                .iter()
                .map(|(m, p, s, b)| ((*m).to_owned(), (*p).to_owned(), *s, b.clone()))
                .collect(),
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::UnixListener::from_std(listener).unwrap();
                while let Ok((stream, _)) = listener.accept().await {
                    let (routes, record) = (routes.clone(), record.clone());
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (routes, record) = (routes.clone(), record.clone());
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().to_string();
                            let bytes = req.into_body().collect().await?.to_bytes();
                            let body = if bytes.is_empty() {
                                Value::Null
                            } else {
                                serde_json::from_slice(&bytes).unwrap_or(Value::Null)
                            };
                            record.lock().unwrap().push(Seen {
                                method: method.clone(),
                                path: path.clone(),
                                body,
                            });
                            let (status, answer) = routes
                                .iter()
                                .find(|(m, p, _, _)| *m == method && *p == path)
                                .map(|(_, _, s, b)| (*s, b.clone()))
                                .unwrap_or((
                                    404,
                                    json!({"error": {"code": "not_found", "message": "no route"}}),
                                ));
                            let mut response =
                                Response::new(Full::new(Bytes::from(answer.to_string())));
                            *response.status_mut() = StatusCode::from_u16(status).unwrap();
                            Ok::<_, hyper::Error>(response)
                        }
                    });
                    tokio::spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        FakeDaemon {
            _dir: dir,
            socket,
            seen,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Runs `hearth --socket S ARGS` with `stdin` piped in (so it is not a terminal).
    fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = hearth(&self.socket, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        // hearth may exit without reading (a usage error): a broken pipe is fine.
        let _ = input.write_all(stdin);
        drop(input);
        child.wait_with_output().unwrap()
    }
}

fn hearth(socket: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hearth"));
    command.arg("--socket").arg(socket).args(args);
    command
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn post(path: &str, body: Value) -> Seen {
    Seen {
        method: "POST".into(),
        path: path.into(),
        body,
    }
}

const ADDED: (&str, &str, u16, &str) = ("POST", "/v1/groups/Thursday%20circle/agreements", 200, "");

fn agreement_added() -> Value {
    json!({"id": "9f8e", "author": "0123", "created_at": 1})
}

fn status(locked: bool) -> Value {
    if locked {
        json!({"locked": true, "passphrase": true})
    } else {
        json!({"locked": false, "passphrase": true, "listen_addrs": [], "peers": 0, "groups": 1})
    }
}

#[test]
fn a_dash_reads_the_value_from_standard_input() {
    let daemon = FakeDaemon::start(&[(ADDED.0, ADDED.1, 200, agreement_added())]);
    let output = daemon.run(
        &[
            "--json",
            "agreement",
            "add",
            "-",
            "We listen.\nWe do not fix.",
        ],
        b"Thursday circle\n",
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let output = daemon.run(
        &["agreement", "add", "Thursday circle", "-"],
        "We listen.\nWe do not fix.\n\n".as_bytes(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let path = ADDED.1;
    let text = json!({"text": "We listen.\nWe do not fix."});
    assert_eq!(
        daemon.seen(),
        [post(path, text.clone()), post(path, text)],
        "the same request either way"
    );
}

#[test]
fn a_token_and_a_name_from_standard_input() {
    let daemon = FakeDaemon::start(&[("POST", "/v1/join", 200, json!({"group_id": "0123"}))]);
    let output = daemon.run(&["--json", "join", "-", "--name", "Sam"], b"hearth1-abc\n");
    assert!(output.status.success(), "{}", stderr(&output));
    let output = daemon.run(
        &["--json", "join", "hearth1-abc", "--name", "-"],
        b"Sam Lee\n",
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        daemon.seen(),
        [
            post("/v1/join", json!({"token": "hearth1-abc", "name": "Sam"})),
            post(
                "/v1/join",
                json!({"token": "hearth1-abc", "name": "Sam Lee"})
            ),
        ]
    );
    assert_eq!(stdout(&output), "{\n  \"group_id\": \"0123\"\n}\n");
}

#[test]
fn a_value_left_out_without_a_terminal_is_a_usage_error_that_says_how() {
    let daemon = FakeDaemon::start(&[]);
    for (args, names) in [
        (&["group", "show"][..], "the group name (GROUP) is missing"),
        (
            &["agreement", "add", "g"],
            "the agreement text (TEXT) is missing",
        ),
        (
            &["join"],
            "the invite token or code (TOKEN|CODE) is missing",
        ),
        (
            &["member", "remove", "g"],
            "the member's name (MEMBER) is missing",
        ),
        (
            &["member", "role", "facilitator"],
            "the group name (GROUP) is missing",
        ),
        (
            &["group", "create", "g", "--purpose"],
            "the purpose (--purpose) is missing",
        ),
    ] {
        let output = daemon.run(args, b"");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let message = stderr(&output);
        assert!(message.starts_with("hearth: "), "{message}");
        assert!(message.contains(names), "{args:?}: {message}");
        assert!(message.contains("standard input"), "{message}");
        assert!(message.contains("in a terminal"), "{message}");
        assert!(message.contains("-`"), "{message}");
        assert_eq!(stdout(&output), "");
    }
    assert_eq!(daemon.seen(), [], "nothing was sent");
}

#[test]
fn two_dashes_and_empty_or_oversized_input_are_usage_errors() {
    let daemon = FakeDaemon::start(&[]);
    let output = daemon.run(&["agreement", "add", "-", "-"], b"g\n");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output)
            .contains("GROUP and TEXT are both `-`, but standard input can be read only once"),
        "{}",
        stderr(&output)
    );
    let output = daemon.run(&["group", "show", "-"], b"  \n");
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("standard input was empty"));
    let output = daemon.run(&["group", "show", "-"], b"one\ntwo\n");
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("more than one line"));
    let big = vec![b'a'; 64 * 1024 + 1];
    let output = daemon.run(&["agreement", "add", "g", "-"], &big);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("longer than 64 KiB"));
    assert_eq!(daemon.seen(), []);
}

#[test]
fn unlock_reads_one_line_and_says_what_happened() {
    let daemon = FakeDaemon::start(&[("POST", "/v1/unlock", 200, status(false))]);
    let output = daemon.run(&["unlock", "--passphrase-stdin"], b"correct horse \n");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "Unlocked. hearthd is syncing again.\n");
    assert_eq!(
        daemon.seen(),
        [post("/v1/unlock", json!({"passphrase": "correct horse "}))]
    );

    // Without --passphrase-stdin and without a terminal there is nobody to ask.
    let output = daemon.run(&["unlock"], b"correct horse\n");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--passphrase-stdin"),
        "{}",
        stderr(&output)
    );
    assert_eq!(daemon.seen().len(), 1, "nothing more was sent");
    // A passphrase is never an argument.
    let output = daemon.run(&["unlock", "hunter2"], b"");
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn a_wrong_passphrase_and_too_many_tries_exit_1() {
    let daemon = FakeDaemon::start(&[(
        "POST",
        "/v1/unlock",
        401,
        json!({"error": {"code": "wrong_passphrase", "message": "wrong passphrase"}}),
    )]);
    let output = daemon.run(&["unlock", "--passphrase-stdin"], b"nope\n");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "hearth: That passphrase is not right; nothing changed. Try again.\n"
    );
    let daemon = FakeDaemon::start(&[(
        "POST",
        "/v1/unlock",
        429,
        json!({"error": {"code": "slow_down", "message": "Too many wrong passphrases: wait 30 seconds."}}),
    )]);
    let output = daemon.run(&["unlock", "--passphrase-stdin"], b"nope\n");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "hearth: Too many wrong passphrases: wait 30 seconds.\n"
    );
}

#[test]
fn a_locked_daemon_exits_4_with_its_message_and_status_shows_it() {
    let locked = json!({"error": {"code": "locked", "message": "hearthd is locked. Unlock it with `hearth unlock`."}});
    let daemon = FakeDaemon::start(&[
        ("GET", "/v1/groups", 423, locked.clone()),
        ("POST", "/v1/groups/g/agreements", 423, locked),
        ("GET", "/v1/status", 200, status(true)),
    ]);
    let output = daemon.run(&["group", "list"], b"");
    assert_eq!(output.status.code(), Some(4));
    assert_eq!(
        stderr(&output),
        "hearth: hearthd is locked. Unlock it with `hearth unlock`.\n"
    );
    let output = daemon.run(&["--json", "agreement", "add", "g", "-"], b"text\n");
    assert_eq!(output.status.code(), Some(4));
    assert_eq!(stdout(&output), "");

    let output = daemon.run(&["status"], b"");
    assert!(output.status.success());
    assert!(
        stdout(&output).starts_with("hearthd is locked"),
        "{}",
        stdout(&output)
    );
    let output = daemon.run(&["--json", "status"], b"");
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed, status(true), "--json prints the Status as it is");
}

#[test]
fn lock_and_panic() {
    let daemon = FakeDaemon::start(&[
        ("POST", "/v1/lock", 200, status(true)),
        ("POST", "/v1/panic", 200, json!({"destroyed": true})),
    ]);
    let output = daemon.run(&["lock"], b"");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "Locked: hearthd dropped every key and stopped syncing. Unlock it with `hearth unlock`.\n"
    );
    // Without --yes and without a terminal, panic refuses and sends nothing.
    for args in [&["panic"][..], &["--json", "panic"]] {
        let output = daemon.run(args, b"yes\n");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&output).contains("Add --yes to panic"),
            "{}",
            stderr(&output)
        );
    }
    assert_eq!(daemon.seen().len(), 1);
    let output = daemon.run(&["panic", "--yes"], b"");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).lines().count(), 1, "{}", stdout(&output));
    let output = daemon.run(&["--json", "panic", "-y"], b"");
    assert_eq!(
        serde_json::from_slice::<Value>(&output.stdout).unwrap(),
        json!({"destroyed": true})
    );
    let seen = daemon.seen();
    assert_eq!(seen[0], post("/v1/lock", Value::Null));
    assert_eq!(seen[1], post("/v1/panic", Value::Null));
}

#[test]
fn passphrase_commands_read_their_lines() {
    let daemon = FakeDaemon::start(&[
        ("PUT", "/v1/passphrase", 200, status(false)),
        ("DELETE", "/v1/passphrase", 200, status(false)),
        ("PUT", "/v1/passphrase/duress", 200, status(false)),
    ]);
    let run = |args: &[&str], stdin: &[u8]| {
        let output = daemon.run(args, stdin);
        (output.status.code(), stdout(&output), stderr(&output))
    };
    let (code, out, err) = run(&["passphrase", "set", "--passphrase-stdin"], b"first\n");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("`hearth unlock` needs it"), "{out}");
    let (code, _, err) = run(
        &["passphrase", "change", "--passphrase-stdin"],
        b"first\nsecond\n",
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = run(
        &["passphrase", "duress", "--passphrase-stdin"],
        b"second\nburn\n",
    );
    assert_eq!(code, Some(0), "{err}");
    // The duress passphrase must differ from the passphrase.
    let (code, _, err) = run(
        &["passphrase", "duress", "--passphrase-stdin"],
        b"same\nsame\n",
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("must differ"), "{err}");
    // Removing wants a yes, which a pipe cannot give.
    let (code, _, err) = run(&["passphrase", "remove", "--passphrase-stdin"], b"second\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("anyone who copies"), "{err}");
    let (code, out, err) = run(
        &["passphrase", "remove", "--passphrase-stdin", "--yes"],
        b"second\n",
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("anyone who copies that directory can read your groups"),
        "{out}"
    );
    // The wrong number of lines.
    let (code, _, err) = run(
        &["passphrase", "change", "--passphrase-stdin"],
        b"only one\n",
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("2 lines"), "{err}");

    let put = |path: &str, body| Seen {
        method: "PUT".into(),
        path: path.into(),
        body,
    };
    assert_eq!(
        daemon.seen(),
        [
            put(
                "/v1/passphrase",
                json!({"current": null, "passphrase": "first"})
            ),
            put(
                "/v1/passphrase",
                json!({"current": "first", "passphrase": "second"})
            ),
            put(
                "/v1/passphrase/duress",
                json!({"current": "second", "duress": "burn"})
            ),
            Seen {
                method: "DELETE".into(),
                path: "/v1/passphrase".into(),
                body: json!({"current": "second"}),
            },
        ]
    );
}

/// The parent's side of a pseudo-terminal that a `hearth` runs in.
struct Pty {
    master: std::fs::File,
    /// Everything the child wrote to the terminal so far.
    screen: Arc<Mutex<Vec<u8>>>,
}

impl Pty {
    /// Runs `command` with a new pseudo-terminal as its controlling terminal, standard
    /// input and stderr (stdout stays piped). `None` where no pseudo-terminal can be had.
    fn spawn(mut command: Command) -> Option<(Pty, std::process::Child)> {
        use std::os::fd::{FromRawFd, OwnedFd};
        use std::os::unix::process::CommandExt;
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two descriptors into the integers given.
        let opened = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if opened != 0 {
            return None;
        }
        // SAFETY: both were just opened and are owned here alone.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        command
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::piped());
        // SAFETY: only async-signal-safe calls between fork and exec. The new session makes
        // the pseudo-terminal (standard input) the child's controlling terminal, so that
        // /dev/tty, which rpassword reads, is it and never the terminal running the tests.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().ok()?;
        drop(slave);
        let master = std::fs::File::from(master);
        let screen = Arc::new(Mutex::new(Vec::new()));
        let (mut reader, record) = (master.try_clone().unwrap(), screen.clone());
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 1024];
            // Ends with an error (EIO) once the child has closed the terminal.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                record.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Some((Pty { master, screen }, child))
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    /// Waits until the screen shows `text` after what it showed at `from` bytes, and
    /// returns where that text ends.
    fn wait_for(&self, text: &str, from: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if let Some(at) = screen.get(from..).and_then(|rest| rest.find(text)) {
                return from + at + text.len();
            }
            assert!(
                Instant::now() < deadline,
                "waited for {text:?}; the screen: {screen:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn type_line(&mut self, line: &str) {
        self.master.write_all(line.as_bytes()).unwrap();
        self.master.write_all(b"\r").unwrap();
    }
}

#[test]
fn on_a_terminal_hearth_asks_group_first_then_the_text() {
    let daemon = FakeDaemon::start(&[(ADDED.0, ADDED.1, 200, agreement_added())]);
    let Some((mut pty, child)) = Pty::spawn(hearth(&daemon.socket, &["agreement", "add"])) else {
        eprintln!("no pseudo-terminal here: skipped");
        return;
    };
    let at = pty.wait_for("Group name: ", 0);
    pty.type_line("Thursday circle");
    pty.wait_for("Agreement text: ", at);
    pty.type_line("We listen.");
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", pty.screen());
    assert_eq!(
        daemon.seen(),
        [post(ADDED.1, json!({"text": "We listen."}))]
    );
    assert!(
        stdout(&output).contains("Thursday circle"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn on_a_terminal_a_token_and_a_passphrase_are_not_shown() {
    let daemon = FakeDaemon::start(&[
        ("POST", "/v1/join", 200, json!({"group_id": "0123"})),
        ("PUT", "/v1/passphrase", 200, status(false)),
    ]);
    let Some((mut pty, child)) = Pty::spawn(hearth(&daemon.socket, &["join", "--name"])) else {
        eprintln!("no pseudo-terminal here: skipped");
        return;
    };
    let at = pty.wait_for("press Enter: ", 0);
    pty.type_line("hearth1-topsecret");
    pty.wait_for("Your name, as the group's members will see it: ", at);
    pty.type_line("Sam");
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", pty.screen());
    // The name's echo comes after the token's would have.
    pty.wait_for("Sam", at);
    let screen = pty.screen();
    assert!(
        !screen.contains("topsecret"),
        "the token was echoed: {screen:?}"
    );
    assert_eq!(
        daemon.seen(),
        [post(
            "/v1/join",
            json!({"token": "hearth1-topsecret", "name": "Sam"})
        )]
    );

    // A new passphrase is asked twice, without echo.
    let Some((mut pty, child)) = Pty::spawn(hearth(&daemon.socket, &["passphrase", "set"])) else {
        return;
    };
    let at = pty.wait_for("New passphrase: ", 0);
    pty.type_line("pass phrase one");
    // The first one's echo would come before the second question.
    pty.wait_for("The new passphrase again: ", at);
    assert!(!pty.screen().contains("phrase one"), "{}", pty.screen());
    pty.type_line("pass phrase one");
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", pty.screen());
    assert_eq!(
        daemon.seen()[1].body,
        json!({"current": null, "passphrase": "pass phrase one"})
    );
}

#[test]
fn on_a_terminal_panic_wants_the_word_yes() {
    let daemon = FakeDaemon::start(&[("POST", "/v1/panic", 200, json!({"destroyed": true}))]);
    let Some((mut pty, child)) = Pty::spawn(hearth(&daemon.socket, &["panic"])) else {
        eprintln!("no pseudo-terminal here: skipped");
        return;
    };
    pty.wait_for("Type yes to go ahead: ", 0);
    pty.type_line("y");
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", pty.screen());
    pty.wait_for("hearth: not destroying anything: you did not type yes.", 0);
    assert_eq!(daemon.seen(), []);
}
