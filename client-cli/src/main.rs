//! `hearth`: the command-line client of hearthd's local API.
//!
//! This file is the edge: parse the command line, find the socket, make one call, print the
//! answer (JSON or text for people) and turn failures into `hearth: …` and an exit code.
//! `hearth invite --code` then goes on asking until the code is used (see `code`).

mod cli;
mod code;
mod commands;
mod confirm;
mod duration;
mod input;
mod path;
mod qr;
mod render;
mod socket;

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use hearth_protocol::api::CodeCreated;
use serde::Deserialize as _;

use crate::cli::{Cli, Command};
use crate::client::Client;
// The transport and its errors live in the library, shared with other Rust clients.
pub(crate) use hearth::{client, error};

fn main() -> ExitCode {
    let cli = match Cli::parse_checked(std::env::args_os()) {
        Ok(cli) => cli,
        // clap words its own usage errors (and --help/--version output).
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(error::EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Nothing sensible to do if stderr is gone too.
            let _ = writeln!(io::stderr().lock(), "hearth: {err:#}");
            ExitCode::from(error::exit_code(&err))
        }
    }
}

fn run(mut cli: Cli) -> Result<()> {
    // First, so that nobody types a passphrase for a hearth that has no socket to send it to.
    let socket = socket::resolve_from_env(cli.socket.take())?;
    // Values given as `-` or left out, passphrases and confirmations; prompts go to stderr.
    commands::prepare(&mut cli.command, cli.json, &mut input::Terminal)?;
    let call = commands::api_call(&cli.command)?;
    if let Command::Join {
        token: Some(token), ..
    } = &cli.command
        && !token.starts_with("hearth1-")
        && io::stderr().is_terminal()
    {
        // A join by spoken code waits for the facilitator to let this device in: say so,
        // since their screen tells them to look for it here.
        eprintln!(
            "Looking for the facilitator's device nearby. Once it is found, this device waits \
             for the facilitator to let you in (up to 5 minutes)…"
        );
    }
    let client = Client::new(socket.clone(), commands::timeout(&cli.command));

    // One request at a time: a current-thread runtime is all the transport needs.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("starting the async runtime")?;
    let answer = runtime
        .block_on(client.call(call.method.clone(), &call.path, call.body.as_ref()))
        .map_err(|err| commands::explain(&cli.command, err))?;

    // What `invite --code` waits on, read before the answer is consumed by the output.
    let waits = match commands::waits_for_code(&cli.command) {
        Some(group) => Some((
            group,
            CodeCreated::deserialize(&answer).with_context(|| {
                format!(
                    "hearthd's answer to {} does not have the shape this hearth expects",
                    call.describe()
                )
            })?,
        )),
        None => None,
    };
    let warning = commands::warning(&cli.command, &answer);
    let output = if cli.json {
        commands::json(&cli.command, &answer)?
    } else {
        let qr = commands::shows_qr(&cli.command, cli.json, io::stdout().is_terminal());
        commands::human(&cli.command, &call, answer, now_secs(), qr)?
    };
    let written = write_out(&mut io::stdout(), &output);
    // After the output, so it is the last thing on the screen; with `--json` too, as it
    // goes to stderr. Nothing sensible to do if stderr is gone.
    if let Some(warning) = warning {
        let _ = io::stderr().lock().write_all(warning.as_bytes());
    }
    match (written?, waits) {
        (Written::All, Some((group, created))) => wait_for_code(
            &runtime,
            &socket,
            group,
            &created,
            cli.json,
            &mut io::stdout(),
            now_secs,
        ),
        // Nobody reads the output any more, so nobody is waiting to hear the outcome.
        (Written::ReaderGone, _) | (_, None) => Ok(()),
    }
}

/// Whether the output reached its reader.
enum Written {
    All,
    /// The reader went away (`hearth group list | head -1`).
    ReaderGone,
}

/// Writes `output` to `out` (stdout) and flushes it.
fn write_out(out: &mut impl Write, output: &str) -> Result<Written> {
    match out.write_all(output.as_bytes()).and_then(|()| out.flush()) {
        // The work is done: say nothing.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Written::ReaderGone),
        written => written.map(|()| Written::All).context("writing to stdout"),
    }
}

/// `hearth invite GROUP --code`, once the code is shown: waits until it is used or expires,
/// asking the facilitator to approve whoever's device matched it, then prints the outcome
/// (with `--json`, hearthd's last answer as a second JSON line). Exits with 0 when
/// someone joined, else with 1. `out` is stdout; `now` the clock.
fn wait_for_code(
    runtime: &tokio::runtime::Runtime,
    socket: &std::path::Path,
    group: &str,
    created: &CodeCreated,
    json: bool,
    out: &mut impl Write,
    now: impl FnMut() -> u64,
) -> Result<()> {
    let mut waiter = CliWaiter {
        runtime,
        socket,
        group,
        channel: created.channel,
        // The question is asked only on a terminal, and never with --json (whose output
        // is for programs): otherwise the way to decide is printed instead.
        ask: !json && io::stdin().is_terminal(),
        now,
    };
    let (answer, status) = code::wait_until_used(created, &mut waiter)?;
    let outcome = code::outcome(group, &status);
    if json {
        let mut line = serde_json::to_string(&answer).context("encoding the answer")?;
        line.push('\n');
        write_out(out, &line)?;
        // A code that was not used is still a failure: `hearth: …` on stderr, exit 1.
        outcome.map(drop)
    } else {
        write_out(out, &outcome?)?;
        Ok(())
    }
}

/// The CLI's side of [`code::wait_until_used`]: requests over the socket, messages on
/// stderr (with or without --json: the JSON lines on stdout stay as documented).
struct CliWaiter<'a, N> {
    runtime: &'a tokio::runtime::Runtime,
    socket: &'a std::path::Path,
    group: &'a str,
    channel: u16,
    ask: bool,
    now: N,
}

impl<N: FnMut() -> u64> code::Waiter for CliWaiter<'_, N> {
    fn now(&mut self) -> u64 {
        (self.now)()
    }

    fn ask(&mut self, wait: u64) -> Result<serde_json::Value> {
        let call = commands::code_status_call(self.group, self.channel, wait);
        let client = Client::new(self.socket.to_owned(), code::client_timeout(wait));
        self.runtime
            .block_on(client.call(call.method, &call.path, None))
    }

    fn pause(&mut self) {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }

    fn warn(&mut self, other: u32, wrong: u32) {
        let _ = writeln!(
            io::stderr().lock(),
            "{}",
            code::attempts_warning(other, wrong)
        );
    }

    fn decide(&mut self, status: &hearth_protocol::api::CodeStatus) -> Result<()> {
        if !self.ask {
            let hint = code::approval_hint(self.group, self.channel, status);
            let _ = writeln!(io::stderr().lock(), "{hint}");
            return Ok(());
        }
        let question = code::approval_question(self.group, self.channel, status);
        let approve = match confirm::ask(
            &question,
            confirm::Yes::YOrYes,
            "not letting them in.",
            io::stdin().lock(),
            io::stderr().lock(),
        ) {
            Ok(()) => true,
            Err(e) if e.downcast_ref::<error::Declined>().is_some() => false,
            Err(e) => return Err(e),
        };
        let call = commands::code_approval_call(
            self.group,
            self.channel,
            approve,
            status.member_id.as_deref(),
        )?;
        let client = Client::new(self.socket.to_owned(), commands::TIMEOUT);
        self.runtime
            .block_on(client.call(call.method, &call.path, call.body.as_ref()))?;
        Ok(())
    }
}

/// Seconds since the Unix epoch; a clock before 1970 counts as 1970 rather than failing.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper::body::{Bytes, Incoming};
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::path::Path;
    use std::sync::{Arc, Mutex, mpsc};

    /// Serves `answers` (each with status 200), one per request in order, on `socket`, from
    /// a thread of its own; reports each request's method and path with query.
    fn scripted(socket: &Path, answers: &[&'static str]) -> mpsc::Receiver<String> {
        let listener = std::os::unix::net::UnixListener::bind(socket).expect("bind test socket");
        listener.set_nonblocking(true).unwrap();
        let answers = Arc::new(Mutex::new(answers.iter().copied().collect::<VecDeque<_>>()));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::UnixListener::from_std(listener).unwrap();
                while let Ok((stream, _)) = listener.accept().await {
                    let (answers, tx) = (answers.clone(), tx.clone());
                    let service = service_fn(move |req: Request<Incoming>| {
                        let _ = tx.send(format!("{} {}", req.method(), req.uri()));
                        let answer = answers.lock().unwrap().pop_front().unwrap_or("{}");
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(answer)))) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            });
        });
        rx
    }

    /// Runs the wait for code 4 of "Thursday circle", expiring at 1600, at a clock stopped
    /// at 1000, against `answers`. Returns the result, stdout and the requests made.
    fn wait(json: bool, answers: &[&'static str]) -> (Result<()>, String, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("hearthd.sock");
        let seen = scripted(&socket, answers);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let created = CodeCreated {
            code: "4-lantern-orchard-meadow".into(),
            channel: 4,
            expires_at: 1_600,
        };
        let mut out = Vec::new();
        let result = wait_for_code(
            &runtime,
            &socket,
            "Thursday circle",
            &created,
            json,
            &mut out,
            || 1_000,
        );
        (
            result,
            String::from_utf8(out).unwrap(),
            seen.try_iter().collect(),
        )
    }

    const JOINED: &str =
        r#"{"state":"joined","member_id":"fedcba9876543210fedcba9876543210","name":"Sam"}"#;

    #[test]
    fn the_wait_long_polls_until_someone_joins() {
        let (result, out, seen) = wait(false, &[r#"{"state":"open"}"#, JOINED]);
        result.unwrap();
        let path = "/v1/groups/Thursday%20circle/codes/4?wait=605";
        assert_eq!(seen, vec![format!("GET {path}"), format!("GET {path}")]);
        assert_eq!(
            out,
            "Sam joined \"Thursday circle\" (member fedcba9876543210fedcba9876543210). \
             Compare safety numbers, face to face: hearth member verify\n"
        );
    }

    #[test]
    fn an_unused_code_exits_1_with_the_reason_on_stderr() {
        for (answer, reason) in [
            (r#"{"state":"wrong_code"}"#, "wrong words"),
            (r#"{"state":"expired"}"#, "expired unused"),
        ] {
            let (result, out, seen) = wait(false, &[answer]);
            let err = result.unwrap_err();
            assert_eq!(error::exit_code(&err), error::EXIT_FAILURE);
            assert!(err.to_string().contains(reason), "{err}");
            assert!(
                err.to_string()
                    .contains("Make a new one: hearth invite --code")
            );
            assert_eq!(out, "", "the reason goes to stderr, as every error");
            assert_eq!(seen.len(), 1);
        }
    }

    #[test]
    fn with_json_the_last_answer_is_the_second_line() {
        let (result, out, _) = wait(true, &[JOINED]);
        result.unwrap();
        assert!(out.ends_with('\n') && out.lines().count() == 1, "{out}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&out).unwrap(),
            serde_json::from_str::<serde_json::Value>(JOINED).unwrap()
        );

        let (result, out, _) = wait(true, &[r#"{"state":"expired","member_id":null}"#]);
        assert_eq!(error::exit_code(&result.unwrap_err()), error::EXIT_FAILURE);
        assert_eq!(out, "{\"member_id\":null,\"state\":\"expired\"}\n");
    }

    #[test]
    fn a_lost_daemon_ends_the_wait_with_exit_3() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let created = CodeCreated {
            code: "4-lantern-orchard-meadow".into(),
            channel: 4,
            expires_at: 1_600,
        };
        let err = wait_for_code(
            &runtime,
            &dir.path().join("gone.sock"),
            "g",
            &created,
            false,
            &mut Vec::new(),
            || 1_000,
        )
        .unwrap_err();
        assert_eq!(error::exit_code(&err), error::EXIT_UNREACHABLE);
    }
}
