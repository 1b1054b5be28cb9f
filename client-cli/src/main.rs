//! `hearth`: the command-line client of hearthd's local API.
//!
//! This file is the edge: parse the command line, find the socket, make one call, print the
//! answer (JSON or text for people) and turn failures into `hearth: …` and an exit code.

mod cli;
mod client;
mod commands;
mod confirm;
mod duration;
mod error;
mod path;
mod render;
mod socket;

use std::io::{self, BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser as _;

use crate::cli::{Cli, Command};
use crate::client::Client;
use crate::confirm::Consent;

/// An invite token is well under this; the cap only bounds what `join -` reads.
const MAX_TOKEN_BYTES: u64 = 64 * 1024;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
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
    if let Command::Join { token, .. } = &mut cli.command
        && token == "-"
    {
        let prompt = io::stdin().is_terminal();
        *token = read_token(io::stdin().lock(), prompt)?;
    }
    if let Command::Leave {
        group,
        keep_copy,
        yes,
    } = &cli.command
    {
        match confirm::consent(*yes, cli.json, io::stdin().is_terminal()) {
            Consent::Given => {}
            // The question goes to stderr, like every prompt.
            Consent::Ask => confirm::ask(
                &confirm::leave_question(group, *keep_copy),
                io::stdin().lock(),
                io::stderr().lock(),
            )?,
            Consent::Refused(refusal) => return Err(refusal.into()),
        }
    }
    let socket = socket::resolve_from_env(cli.socket.take())?;
    let call = commands::api_call(&cli.command)?;
    let client = Client::new(socket, commands::timeout(&cli.command));

    // One request at a time: a current-thread runtime is all the transport needs.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("starting the async runtime")?;
    let answer =
        runtime.block_on(client.call(call.method.clone(), &call.path, call.body.as_ref()))?;

    let warning = commands::warning(&cli.command, &answer);
    let output = if cli.json {
        let mut json = serde_json::to_string_pretty(&answer).context("encoding the answer")?;
        json.push('\n');
        json
    } else {
        commands::human(&cli.command, &call, answer, now_secs())?
    };
    let mut stdout = io::stdout().lock();
    let written = match stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush())
    {
        // The reader went away (`hearth group list | head -1`): the work is done, say nothing.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        written => written.context("writing to stdout"),
    };
    // After the output, so it is the last thing on the screen; with `--json` too, as it
    // goes to stderr. Nothing sensible to do if stderr is gone.
    if let Some(warning) = warning {
        let _ = io::stderr().lock().write_all(warning.as_bytes());
    }
    written
}

/// Reads an invite token from `input`, for `hearth join -`: one line, surrounding
/// whitespace ignored. Keeps the secret out of shell history and the process list.
fn read_token(input: impl BufRead, prompt: bool) -> Result<String> {
    if prompt {
        // The prompt goes to stderr so it never mixes with `--json` output.
        let _ = write!(
            io::stderr().lock(),
            "Paste the invite token, then press Enter: "
        );
    }
    let mut line = String::new();
    input
        .take(MAX_TOKEN_BYTES)
        .read_line(&mut line)
        .context("reading the invite token from standard input")?;
    let token = line.trim();
    if token.is_empty() {
        bail!("no invite token on standard input");
    }
    Ok(token.to_owned())
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

    #[test]
    fn token_is_the_first_line_trimmed() {
        let token = read_token(&b"  hearth-invite-abc \nsecond line\n"[..], false).unwrap();
        assert_eq!(token, "hearth-invite-abc");
    }

    #[test]
    fn missing_token_is_an_error() {
        assert!(read_token(&b""[..], false).is_err());
        assert!(read_token(&b"   \n"[..], false).is_err());
    }
}
