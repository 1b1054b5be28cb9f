//! Values that must stay out of shell history and the process list: group names, purposes,
//! agreement texts, member names, invite tokens, spoken codes and passphrases.
//!
//! Each such argument of a command can be given three ways:
//!
//! - on the command line, as before (scripts and the end-to-end tests do);
//! - as `-`: read from standard input to its end (at most [`MAX_STDIN_BYTES`], UTF-8,
//!   trailing whitespace dropped, not empty, one line unless the value is a text). At most
//!   one argument of a command can be `-`, since standard input can be read only once;
//! - left out: asked for on the terminal when standard input is one (secrets without
//!   echo), and otherwise a usage error that says how to give it.
//!
//! Passphrases are never taken from the command line: they are asked for without echo, or
//! read as whole lines from standard input (`--passphrase-stdin`), of which only the line
//! ending is dropped, so that the same passphrase comes out of both.
//!
//! The terminal and standard input are behind [`Console`], so the rules are tested
//! without either.

use std::io::{self, BufRead, IsTerminal, Read, Write};

use anyhow::{Context, Result, anyhow};
use hearth_protocol::api::Passphrase;
use zeroize::Zeroizing;

use crate::error::Usage;

/// The most read from standard input for one command. The longest value hearthd takes is
/// an agreement (4,000 characters, at most 16 KB of UTF-8); this only bounds the read.
pub const MAX_STDIN_BYTES: usize = 64 * 1024;

/// The argument that stands for "read it from standard input".
pub const STDIN: &str = "-";

/// Said after every refusal here: the command stopped before its request.
const NOTHING_SENT: &str = "Nothing was sent to hearthd.";

/// One argument that can come from standard input or the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// How the usage line names it: `GROUP`, `--purpose`.
    pub arg: &'static str,
    /// What it is, in plain words: "group name".
    pub what: &'static str,
    /// The question on the terminal.
    pub prompt: &'static str,
    /// Asked for without echo (tokens and codes).
    pub secret: bool,
    /// May be more than one line (texts); a name or a token may not.
    pub multiline: bool,
}

impl Field {
    const fn line(arg: &'static str, what: &'static str, prompt: &'static str) -> Field {
        Field {
            arg,
            what,
            prompt,
            secret: false,
            multiline: false,
        }
    }

    /// How to give this field on standard input, as a message says it.
    fn stdin_form(&self) -> String {
        if self.arg.starts_with("--") {
            format!("`{} -`", self.arg)
        } else {
            format!("`-` in place of {}", self.arg)
        }
    }
}

/// The group a command is about: its id or its name.
pub const GROUP: Field = Field::line("GROUP", "group name", "Group name: ");
/// The name of a group being created.
pub const NEW_GROUP: Field =
    Field::line("NAME", "name of the new group", "Name of the new group: ");
/// What a group is for.
pub const PURPOSE: Field = Field {
    multiline: true,
    ..Field::line(
        "--purpose",
        "purpose",
        "What the group is for, in a sentence: ",
    )
};
/// The creator's own name in a new group.
pub const MY_NAME: Field = Field::line(
    "--my-name",
    "name the members will see you by",
    "Your name, as the group's members will see it: ",
);
/// The joiner's own name.
pub const JOIN_NAME: Field = Field {
    arg: "--name",
    ..MY_NAME
};
/// An agreement's text.
pub const AGREEMENT: Field = Field {
    multiline: true,
    ..Field::line("TEXT", "agreement text", "Agreement text: ")
};
/// A member: their name or member id.
pub const MEMBER: Field = Field::line("MEMBER", "member's name", "Member's name (or member id): ");
/// An invite token or spoken code.
pub const TOKEN: Field = Field {
    secret: true,
    ..Field::line(
        "TOKEN|CODE",
        "invite token or code",
        "Paste the invite token or type the code (it is not shown), then press Enter: ",
    )
};

/// Where a command keeps one [`Field`]'s value.
#[derive(Debug)]
pub enum Slot<'a> {
    /// A value the command needs: `None` (left out) means ask for it.
    Needed(&'a mut Option<String>),
    /// An option the command can do without: `None` means not given, `Some(None)` (the
    /// option without a value) means ask for it.
    Optional(&'a mut Option<Option<String>>),
}

/// Where a slot's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The command line has it (or, for an option, it is not wanted).
    Given,
    /// `-`.
    Stdin,
    /// Left out: ask on the terminal.
    Ask,
}

impl Slot<'_> {
    fn source(&self) -> Source {
        let value = match self {
            Slot::Needed(None) | Slot::Optional(Some(None)) => return Source::Ask,
            Slot::Optional(None) => return Source::Given,
            Slot::Needed(Some(value)) | Slot::Optional(Some(Some(value))) => value,
        };
        if value == STDIN {
            Source::Stdin
        } else {
            Source::Given
        }
    }

    fn set(&mut self, value: String) {
        match self {
            Slot::Needed(slot) => **slot = Some(value),
            Slot::Optional(slot) => **slot = Some(Some(value)),
        }
    }
}

/// Standard input, the terminal and stderr, as the rules here use them.
pub trait Console {
    fn stdin_is_terminal(&self) -> bool;
    /// Standard input to its end, or its first `MAX_STDIN_BYTES + 1` bytes (see
    /// [`read_capped`]).
    fn read_stdin(&mut self) -> io::Result<Vec<u8>>;
    /// Writes `prompt` to stderr and reads one line from the terminal, shown as typed.
    fn ask(&mut self, prompt: &str) -> io::Result<String>;
    /// Writes `prompt` to stderr and reads one line from the terminal, not shown.
    fn ask_hidden(&mut self, prompt: &str) -> io::Result<String>;
    /// Writes `text` to stderr.
    fn say(&mut self, text: &str);
}

/// The real standard input, terminal and stderr.
pub struct Terminal;

impl Console for Terminal {
    fn stdin_is_terminal(&self) -> bool {
        io::stdin().is_terminal()
    }

    fn read_stdin(&mut self) -> io::Result<Vec<u8>> {
        read_capped(io::stdin().lock(), MAX_STDIN_BYTES)
    }

    fn ask(&mut self, prompt: &str) -> io::Result<String> {
        self.say(prompt);
        let mut line = String::new();
        io::stdin()
            .lock()
            .take(MAX_STDIN_BYTES as u64)
            .read_line(&mut line)?;
        Ok(line)
    }

    fn ask_hidden(&mut self, prompt: &str) -> io::Result<String> {
        self.say(prompt);
        // rpassword reads the controlling terminal with echo off (and turns it back on,
        // also on Ctrl-C). Ctrl-D on an empty line is an empty answer, refused as such.
        match rpassword::read_password() {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(String::new()),
            answer => answer,
        }
    }

    fn say(&mut self, text: &str) {
        // Nothing sensible to do if stderr is gone.
        let mut stderr = io::stderr().lock();
        let _ = stderr.write_all(text.as_bytes());
        let _ = stderr.flush();
    }
}

/// Reads `input` to its end, but never more than `cap + 1` bytes (one more than allowed,
/// so that too much is told from just enough), into a buffer allocated once.
pub fn read_capped(input: impl Read, cap: usize) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(cap.saturating_add(1));
    input
        .take(u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The value `bytes`, all of standard input, gives `field`: UTF-8, at most
/// [`MAX_STDIN_BYTES`], trailing whitespace (the final newline) dropped, not empty, and one
/// line unless the field is a text.
pub fn value(bytes: &[u8], field: &Field) -> Result<String, Usage> {
    let what = field.what;
    if bytes.len() > MAX_STDIN_BYTES {
        return Err(Usage(format!(
            "the {what} on standard input is longer than {} KiB. {NOTHING_SENT}",
            MAX_STDIN_BYTES / 1024
        )));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| {
        Usage(format!(
            "the {what} on standard input is not UTF-8 text. {NOTHING_SENT}"
        ))
    })?;
    let text = text.trim_end();
    if text.is_empty() {
        return Err(Usage(format!(
            "standard input was empty: no {what} was given. {NOTHING_SENT}"
        )));
    }
    if !field.multiline && text.contains(['\n', '\r']) {
        return Err(Usage(format!(
            "the {what} on standard input is more than one line; it must be one. \
             {NOTHING_SENT}"
        )));
    }
    Ok(text.to_owned())
}

/// The value an answer typed at `field`'s prompt gives it: trailing whitespace (the
/// newline) dropped, and not empty.
pub fn answer(line: &str, field: &Field) -> Result<String, Usage> {
    let text = line.trim_end();
    if text.is_empty() {
        return Err(Usage(format!(
            "no {} was given. {NOTHING_SENT}",
            field.what
        )));
    }
    Ok(text.to_owned())
}

/// Fills every slot of a command that is `-` or left out, in order, from standard input or
/// the terminal; a slot given on the command line is left as it is.
///
/// Refused as usage errors, before anything is read: more than one `-`, and a value to ask
/// for when standard input is not a terminal.
pub fn resolve(fields: Vec<(Field, Slot<'_>)>, console: &mut impl Console) -> Result<()> {
    let from_stdin: Vec<&str> = fields
        .iter()
        .filter(|(_, slot)| slot.source() == Source::Stdin)
        .map(|(field, _)| field.arg)
        .collect();
    if from_stdin.len() > 1 {
        let (last, first) = from_stdin.split_last().unwrap_or((&"", &[]));
        let (both, other) = if first.len() == 1 {
            ("both", "the other")
        } else {
            ("all", "the others")
        };
        return Err(Usage(format!(
            "{} and {last} are {both} `-`, but standard input can be read only once: give `-` \
             for one of them at most, and leave {other} out to be asked on the terminal. \
             {NOTHING_SENT}",
            first.join(", ")
        ))
        .into());
    }
    if !console.stdin_is_terminal()
        && let Some((field, _)) = fields.iter().find(|(_, slot)| slot.source() == Source::Ask)
    {
        return Err(missing(field).into());
    }
    for (field, mut slot) in fields {
        let value = match slot.source() {
            Source::Given => continue,
            Source::Stdin => {
                if console.stdin_is_terminal() {
                    console.say(&format!(
                        "Reading the {} from standard input: type it, then press Enter and \
                         Ctrl-D.\n",
                        field.what
                    ));
                }
                let bytes = console
                    .read_stdin()
                    .with_context(|| format!("reading the {} from standard input", field.what))?;
                value(&bytes, &field)?
            }
            Source::Ask => {
                let line = if field.secret {
                    console.ask_hidden(field.prompt)
                } else {
                    console.ask(field.prompt)
                };
                let line = line.map_err(|e| not_read(e, field.what))?;
                answer(&line, &field)?
            }
        };
        slot.set(value);
    }
    Ok(())
}

/// The refusal for `field`, left out where hearth cannot ask for it.
fn missing(field: &Field) -> Usage {
    Usage(format!(
        "the {} ({}) is missing, and standard input is not a terminal, so hearth cannot ask \
         for it. Give {} to read it from standard input, or run the command in a terminal to \
         be asked for it. {NOTHING_SENT}",
        field.what,
        field.arg,
        field.stdin_form()
    ))
}

/// An answer that could not be read: text that is not UTF-8 is the user's to fix.
fn not_read(e: io::Error, what: &str) -> anyhow::Error {
    if e.kind() == io::ErrorKind::InvalidData {
        Usage(format!(
            "the {what} you typed is not UTF-8 text. {NOTHING_SENT}"
        ))
        .into()
    } else {
        anyhow!(e).context(format!("reading the {what} from the terminal"))
    }
}

/// One passphrase a command asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secret {
    /// What it is: "current passphrase".
    pub what: &'static str,
    pub prompt: &'static str,
    /// Asked a second time, which must match: for a passphrase being set.
    pub again: Option<&'static str>,
}

/// The passphrase that unlocks hearthd.
pub const PASSPHRASE: Secret = Secret {
    what: "passphrase",
    prompt: "Passphrase: ",
    again: None,
};
/// The passphrase in use, to change or remove it.
pub const CURRENT_PASSPHRASE: Secret = Secret {
    what: "current passphrase",
    prompt: "Current passphrase: ",
    again: None,
};
/// A passphrase being set.
pub const NEW_PASSPHRASE: Secret = Secret {
    what: "new passphrase",
    prompt: "New passphrase: ",
    again: Some("The new passphrase again: "),
};
/// The duress passphrase being set.
pub const DURESS_PASSPHRASE: Secret = Secret {
    what: "duress passphrase",
    prompt: "Duress passphrase: ",
    again: Some("The duress passphrase again: "),
};

/// The passphrases `secrets`, in order: asked for without echo on a terminal (each that is
/// being set twice), or with `from_stdin` and standard input not a terminal, one a line
/// from standard input (see [`passphrase_lines`]). On a terminal `from_stdin` changes
/// nothing, since lines typed there would show.
pub fn passphrases(
    secrets: &[Secret],
    from_stdin: bool,
    console: &mut impl Console,
) -> Result<Vec<Passphrase>> {
    if console.stdin_is_terminal() {
        return secrets
            .iter()
            .map(|secret| ask_passphrase(secret, console))
            .collect();
    }
    if !from_stdin {
        return Err(Usage(format!(
            "hearth asks for the {} on a terminal, without showing it, and standard input is \
             not a terminal. Run the command in a terminal, or give {} on standard input \
             with --passphrase-stdin. A passphrase is never taken as an argument. \
             {NOTHING_SENT}",
            secrets.first().map_or("passphrase", |s| s.what),
            lines_wanted(secrets),
        ))
        .into());
    }
    let bytes = Zeroizing::new(
        console
            .read_stdin()
            .context("reading the passphrase from standard input")?,
    );
    Ok(passphrase_lines(&bytes, secrets)?)
}

/// "one line: the passphrase", "2 lines: the current passphrase, then the new passphrase".
fn lines_wanted(secrets: &[Secret]) -> String {
    let whats: Vec<String> = secrets.iter().map(|s| format!("the {}", s.what)).collect();
    match whats.len() {
        1 => format!("one line: {}", whats[0]),
        n => format!("{n} lines: {}", whats.join(", then ")),
    }
}

/// The passphrases `secrets` from `bytes`, all of standard input: one a line, each line's
/// ending (`\n` or `\r\n`) dropped and nothing else, so that spaces are part of the
/// passphrase as they are at the prompt. Exactly as many lines as `secrets`, none empty.
/// Messages never quote what was read.
pub fn passphrase_lines(bytes: &[u8], secrets: &[Secret]) -> Result<Vec<Passphrase>, Usage> {
    let wanted = || lines_wanted(secrets);
    if bytes.len() > MAX_STDIN_BYTES {
        return Err(Usage(format!(
            "standard input is longer than {} KiB; --passphrase-stdin reads {}. {NOTHING_SENT}",
            MAX_STDIN_BYTES / 1024,
            wanted()
        )));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| {
        Usage(format!(
            "standard input is not UTF-8 text; --passphrase-stdin reads {}. {NOTHING_SENT}",
            wanted()
        ))
    })?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let lines: Vec<&str> = text
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .collect();
    if text.is_empty() || lines.len() != secrets.len() {
        let found = match lines.len() {
            _ if text.is_empty() => "was empty".to_owned(),
            1 => "has 1 line".to_owned(),
            n => format!("has {n} lines"),
        };
        return Err(Usage(format!(
            "standard input {found}, but --passphrase-stdin reads {}. {NOTHING_SENT}",
            wanted()
        )));
    }
    lines
        .iter()
        .zip(secrets)
        .map(|(line, secret)| {
            if line.is_empty() {
                Err(Usage(format!(
                    "the {} on standard input is empty. {NOTHING_SENT}",
                    secret.what
                )))
            } else {
                Ok(Passphrase::new((*line).to_owned()))
            }
        })
        .collect()
}

/// Asks for `secret` without echo, twice when it is being set.
fn ask_passphrase(secret: &Secret, console: &mut impl Console) -> Result<Passphrase> {
    let read = |console: &mut dyn FnMut() -> io::Result<String>| -> Result<Passphrase> {
        let line = Zeroizing::new(console().map_err(|e| not_read(e, secret.what))?);
        let line = line.strip_suffix('\n').unwrap_or(&line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            return Err(Usage(format!("no {} was given. {NOTHING_SENT}", secret.what)).into());
        }
        Ok(Passphrase::new(line.to_owned()))
    };
    let first = read(&mut || console.ask_hidden(secret.prompt))?;
    if let Some(again) = secret.again {
        let second = read(&mut || console.ask_hidden(again))?;
        if first != second {
            return Err(anyhow!(
                "the {} was not the same the second time. {NOTHING_SENT} Try again.",
                secret.what
            ));
        }
    }
    Ok(first)
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::error::{EXIT_FAILURE, EXIT_USAGE, exit_code};
    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// A console that plays back answers and records what it was asked.
    #[derive(Default)]
    pub struct Scripted {
        pub terminal: bool,
        pub stdin: Vec<u8>,
        pub stdin_reads: usize,
        pub answers: VecDeque<String>,
        /// Every prompt and message, each marked `shown:` or `hidden:` or `said:`.
        pub log: Vec<String>,
    }

    impl Scripted {
        pub fn terminal(answers: &[&str]) -> Scripted {
            Scripted {
                terminal: true,
                answers: answers.iter().map(|a| (*a).to_owned()).collect(),
                ..Scripted::default()
            }
        }

        pub fn piped(stdin: &[u8]) -> Scripted {
            Scripted {
                stdin: stdin.to_vec(),
                ..Scripted::default()
            }
        }

        fn next(&mut self) -> io::Result<String> {
            self.answers
                .pop_front()
                .ok_or_else(|| io::Error::other("asked more than scripted"))
        }
    }

    impl Console for Scripted {
        fn stdin_is_terminal(&self) -> bool {
            self.terminal
        }

        fn read_stdin(&mut self) -> io::Result<Vec<u8>> {
            self.stdin_reads += 1;
            read_capped(&std::mem::take(&mut self.stdin)[..], MAX_STDIN_BYTES)
        }

        fn ask(&mut self, prompt: &str) -> io::Result<String> {
            self.log.push(format!("shown:{prompt}"));
            self.next()
        }

        fn ask_hidden(&mut self, prompt: &str) -> io::Result<String> {
            self.log.push(format!("hidden:{prompt}"));
            self.next()
        }

        fn say(&mut self, text: &str) {
            self.log.push(format!("said:{text}"));
        }
    }

    fn needed(value: Option<&str>) -> Option<String> {
        value.map(str::to_owned)
    }

    #[test]
    fn given_values_are_left_alone_and_nothing_is_read() {
        let (mut group, mut text) = (needed(Some("g")), needed(Some("t")));
        let mut purpose = None;
        let mut console = Scripted::piped(b"unused");
        resolve(
            vec![
                (GROUP, Slot::Needed(&mut group)),
                (AGREEMENT, Slot::Needed(&mut text)),
                (PURPOSE, Slot::Optional(&mut purpose)),
            ],
            &mut console,
        )
        .unwrap();
        assert_eq!((group.as_deref(), text.as_deref()), (Some("g"), Some("t")));
        assert_eq!(purpose, None, "an option not given stays not given");
        assert_eq!(console.stdin_reads, 0);
        assert!(console.log.is_empty());
    }

    #[test]
    fn a_dash_reads_standard_input_once() {
        let (mut group, mut text) = (needed(Some("g")), needed(Some("-")));
        let mut console = Scripted::piped(b"We listen.\nWe do not fix.\n\n");
        resolve(
            vec![
                (GROUP, Slot::Needed(&mut group)),
                (AGREEMENT, Slot::Needed(&mut text)),
            ],
            &mut console,
        )
        .unwrap();
        assert_eq!(text.as_deref(), Some("We listen.\nWe do not fix."));
        assert_eq!(console.stdin_reads, 1);
        assert!(console.log.is_empty(), "no hint when stdin is a pipe");

        let mut purpose = Some(Some("-".to_owned()));
        let mut console = Scripted::piped(b"Peer support\n");
        resolve(vec![(PURPOSE, Slot::Optional(&mut purpose))], &mut console).unwrap();
        assert_eq!(purpose, Some(Some("Peer support".to_owned())));
    }

    #[test]
    fn two_dashes_are_a_usage_error_before_anything_is_read() {
        let (mut group, mut member) = (needed(Some("-")), needed(Some("-")));
        let mut console = Scripted::piped(b"g\n");
        let err = resolve(
            vec![
                (GROUP, Slot::Needed(&mut group)),
                (MEMBER, Slot::Needed(&mut member)),
            ],
            &mut console,
        )
        .unwrap_err();
        assert_eq!(exit_code(&err), EXIT_USAGE);
        let message = err.to_string();
        assert!(
            message.starts_with(
                "GROUP and MEMBER are both `-`, but standard input can be read only once"
            ),
            "{message}"
        );
        assert_eq!(console.stdin_reads, 0);

        let mut name = Some(Some("-".to_owned()));
        let (mut group, mut member) = (needed(Some("-")), needed(Some("-")));
        let err = resolve(
            vec![
                (GROUP, Slot::Needed(&mut group)),
                (MEMBER, Slot::Needed(&mut member)),
                (JOIN_NAME, Slot::Optional(&mut name)),
            ],
            &mut Scripted::piped(b""),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("GROUP, MEMBER and --name are all `-`"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_value_without_a_terminal_names_it_and_both_ways() {
        let (mut group, mut text) = (needed(Some("-")), None);
        let mut console = Scripted::piped(b"g\n");
        let err = resolve(
            vec![
                (GROUP, Slot::Needed(&mut group)),
                (AGREEMENT, Slot::Needed(&mut text)),
            ],
            &mut console,
        )
        .unwrap_err();
        assert_eq!(exit_code(&err), EXIT_USAGE);
        assert_eq!(
            err.to_string(),
            "the agreement text (TEXT) is missing, and standard input is not a terminal, so \
             hearth cannot ask for it. Give `-` in place of TEXT to read it from standard \
             input, or run the command in a terminal to be asked for it. Nothing was sent to \
             hearthd."
        );
        assert_eq!(console.stdin_reads, 0, "refused before reading");

        let mut purpose = Some(None);
        let err = resolve(
            vec![(PURPOSE, Slot::Optional(&mut purpose))],
            &mut Scripted::piped(b""),
        )
        .unwrap_err();
        assert!(err.to_string().contains("Give `--purpose -`"), "{err}");
    }

    #[test]
    fn a_terminal_is_asked_group_first_secrets_hidden() {
        let (mut group, mut text) = (None, None);
        let mut console = Scripted::terminal(&["Thursday circle\n", "We listen.  \n"]);
        resolve(
            vec![
                (GROUP, Slot::Needed(&mut group)),
                (AGREEMENT, Slot::Needed(&mut text)),
            ],
            &mut console,
        )
        .unwrap();
        assert_eq!(group.as_deref(), Some("Thursday circle"));
        assert_eq!(text.as_deref(), Some("We listen."));
        assert_eq!(
            console.log,
            ["shown:Group name: ", "shown:Agreement text: "]
        );

        let (mut token, mut name) = (None, Some(None));
        let mut console = Scripted::terminal(&["hearth1-abc", "Sam\n"]);
        resolve(
            vec![
                (TOKEN, Slot::Needed(&mut token)),
                (JOIN_NAME, Slot::Optional(&mut name)),
            ],
            &mut console,
        )
        .unwrap();
        assert_eq!(token.as_deref(), Some("hearth1-abc"));
        assert_eq!(name, Some(Some("Sam".to_owned())));
        assert!(console.log[0].starts_with("hidden:Paste the invite token"));
        assert!(console.log[1].starts_with("shown:Your name"));
    }

    #[test]
    fn a_dash_on_a_terminal_says_how_to_end_it_then_the_rest_is_asked() {
        let (mut group, mut text) = (needed(Some("-")), None);
        let mut console = Scripted {
            stdin: b"g\n".to_vec(),
            ..Scripted::terminal(&["t\n"])
        };
        resolve(
            vec![
                (GROUP, Slot::Needed(&mut group)),
                (AGREEMENT, Slot::Needed(&mut text)),
            ],
            &mut console,
        )
        .unwrap();
        assert_eq!((group.as_deref(), text.as_deref()), (Some("g"), Some("t")));
        assert_eq!(
            console.log,
            [
                "said:Reading the group name from standard input: type it, then press Enter \
                 and Ctrl-D.\n",
                "shown:Agreement text: "
            ]
        );
    }

    #[test]
    fn an_empty_answer_is_a_usage_error() {
        for answers in [&["\n"][..], &["   \n"], &[""]] {
            let mut group = None;
            let err = resolve(
                vec![(GROUP, Slot::Needed(&mut group))],
                &mut Scripted::terminal(answers),
            )
            .unwrap_err();
            assert_eq!(exit_code(&err), EXIT_USAGE);
            assert_eq!(
                err.to_string(),
                "no group name was given. Nothing was sent to hearthd."
            );
        }
    }

    #[test]
    fn the_value_rules() {
        let ok = |bytes: &[u8], field| value(bytes, &field).unwrap();
        assert_eq!(ok(b"Thursday circle\n", GROUP), "Thursday circle");
        assert_eq!(ok(b"Thursday circle\r\n", GROUP), "Thursday circle");
        assert_eq!(ok(b"Thursday circle", GROUP), "Thursday circle");
        assert_eq!(
            ok(b"  Sam \t\n\n", MEMBER),
            "  Sam",
            "only the end is trimmed"
        );
        assert_eq!(ok(b"One.\nTwo.\n", AGREEMENT), "One.\nTwo.");
        assert_eq!(ok("Caf\u{e9}\n".as_bytes(), GROUP), "Caf\u{e9}");
        let err = |bytes: &[u8], field| value(bytes, &field).unwrap_err().0;
        assert!(err(b"", GROUP).starts_with("standard input was empty: no group name"));
        assert!(err(b" \n\t\n", GROUP).starts_with("standard input was empty"));
        assert!(err(b"a\nb\n", GROUP).contains("more than one line"));
        assert!(err(b"a\rb", TOKEN).contains("more than one line"));
        assert!(err(b"\xff\xfe\n", GROUP).contains("not UTF-8"));
        let long = vec![b'a'; MAX_STDIN_BYTES + 1];
        assert!(err(&long, AGREEMENT).contains("longer than 64 KiB"));
        assert_eq!(ok(&long[1..], AGREEMENT).len(), MAX_STDIN_BYTES);
    }

    #[test]
    fn the_answer_rules() {
        assert_eq!(answer("Sam Lee \n", &MEMBER).unwrap(), "Sam Lee");
        assert_eq!(answer(" Sam", &MEMBER).unwrap(), " Sam");
        assert!(answer("\r\n", &MEMBER).is_err());
    }

    #[test]
    fn every_prompt_says_what_it_asks_for_and_ends_in_a_space() {
        for field in [
            GROUP, NEW_GROUP, PURPOSE, MY_NAME, JOIN_NAME, AGREEMENT, MEMBER, TOKEN,
        ] {
            assert!(field.prompt.ends_with(": "), "{field:?}");
            assert!(!field.what.is_empty());
        }
        const { assert!(TOKEN.secret && !GROUP.secret && !MEMBER.secret) };
        const { assert!(AGREEMENT.multiline && PURPOSE.multiline && !GROUP.multiline) };
    }

    fn exposed(passphrases: Vec<Passphrase>) -> Vec<String> {
        passphrases.iter().map(|p| p.expose().to_owned()).collect()
    }

    #[test]
    fn passphrases_are_asked_hidden_and_a_new_one_twice() {
        let mut console = Scripted::terminal(&["old one", "new one", "new one"]);
        let got = passphrases(&[CURRENT_PASSPHRASE, NEW_PASSPHRASE], false, &mut console).unwrap();
        assert_eq!(exposed(got), ["old one", "new one"]);
        assert_eq!(
            console.log,
            [
                "hidden:Current passphrase: ",
                "hidden:New passphrase: ",
                "hidden:The new passphrase again: "
            ]
        );
        // On a terminal --passphrase-stdin changes nothing: lines typed there would show.
        let mut console = Scripted::terminal(&["p "]);
        let got = passphrases(&[PASSPHRASE], true, &mut console).unwrap();
        assert_eq!(exposed(got), ["p "], "spaces are part of a passphrase");
        assert_eq!(console.stdin_reads, 0);
    }

    #[test]
    fn a_passphrase_typed_differently_the_second_time_is_refused() {
        let mut console = Scripted::terminal(&["one", "other"]);
        let err = passphrases(&[NEW_PASSPHRASE], false, &mut console).unwrap_err();
        assert_eq!(exit_code(&err), EXIT_FAILURE);
        let message = err.to_string();
        assert!(
            message.contains("not the same the second time"),
            "{message}"
        );
        assert!(!message.contains("one") || !message.contains("other"));

        let err = passphrases(&[PASSPHRASE], false, &mut Scripted::terminal(&[""])).unwrap_err();
        assert_eq!(exit_code(&err), EXIT_USAGE);
    }

    #[test]
    fn passphrases_without_a_terminal_need_passphrase_stdin() {
        let mut console = Scripted::piped(b"secret\n");
        let err = passphrases(&[PASSPHRASE], false, &mut console).unwrap_err();
        assert_eq!(exit_code(&err), EXIT_USAGE);
        let message = err.to_string();
        assert!(message.contains("--passphrase-stdin"), "{message}");
        assert!(message.contains("one line: the passphrase"), "{message}");
        assert_eq!(console.stdin_reads, 0);

        let mut console = Scripted::piped(b"old\r\nnew  \n");
        let got =
            passphrases(&[CURRENT_PASSPHRASE, DURESS_PASSPHRASE], true, &mut console).unwrap();
        assert_eq!(exposed(got), ["old", "new  "]);
        assert!(console.log.is_empty());
    }

    #[test]
    fn the_passphrase_line_rules() {
        let two = [CURRENT_PASSPHRASE, NEW_PASSPHRASE];
        let ok =
            |bytes: &[u8], secrets: &[Secret]| exposed(passphrase_lines(bytes, secrets).unwrap());
        assert_eq!(ok(b"a", &[PASSPHRASE]), ["a"]);
        assert_eq!(ok(b"a\n", &[PASSPHRASE]), ["a"]);
        assert_eq!(ok(b" a \r\n", &[PASSPHRASE]), [" a "]);
        assert_eq!(ok(b"a\nb", &two), ["a", "b"]);
        assert_eq!(ok(b"a\nb\n", &two), ["a", "b"]);
        let err =
            |bytes: &[u8], secrets: &[Secret]| passphrase_lines(bytes, secrets).unwrap_err().0;
        assert!(err(b"", &[PASSPHRASE]).starts_with("standard input was empty, but"));
        assert!(err(b"\n", &[PASSPHRASE]).starts_with("standard input was empty"));
        assert!(err(b"a\n\n", &[PASSPHRASE]).starts_with("standard input has 2 lines"));
        assert_eq!(
            err(b"a\n", &two),
            "standard input has 1 line, but --passphrase-stdin reads 2 lines: the current \
             passphrase, then the new passphrase. Nothing was sent to hearthd."
        );
        assert!(err(b"\nb\n", &two).contains("the current passphrase on standard input is empty"));
        assert!(err(b"\xff\n", &[PASSPHRASE]).contains("not UTF-8"));
        assert!(err(&vec![b'a'; MAX_STDIN_BYTES + 1], &[PASSPHRASE]).contains("64 KiB"));
        // A message never quotes the passphrase.
        assert!(!err(b"hunter2\nx\ny", &two).contains("hunter2"));
    }

    proptest! {
        #[test]
        fn any_bytes_give_a_value_or_a_usage_error(bytes in proptest::collection::vec(any::<u8>(), 0..2048), multiline: bool) {
            let field = Field { multiline, ..GROUP };
            let read = read_capped(&bytes[..], MAX_STDIN_BYTES).unwrap();
            prop_assert_eq!(&read, &bytes);
            match value(&read, &field) {
                Ok(text) => {
                    prop_assert!(!text.is_empty());
                    prop_assert_eq!(text.trim_end(), text.as_str());
                    prop_assert!(bytes.starts_with(text.as_bytes()));
                    prop_assert!(std::str::from_utf8(&bytes[text.len()..]).unwrap().trim().is_empty());
                    prop_assert!(multiline || !text.contains(['\n', '\r']));
                }
                Err(Usage(message)) => prop_assert!(message.ends_with("Nothing was sent to hearthd.")),
            }
            let _ = passphrase_lines(&read, &[CURRENT_PASSPHRASE, NEW_PASSPHRASE]);
        }

        #[test]
        fn text_with_trailing_whitespace_comes_back_without_it(
            text in "[^\\s]([^\\r\\n]{0,40}[^\\s])?",
            tail in "[ \\t\\r\\n]{0,8}",
        ) {
            let bytes = format!("{text}{tail}");
            prop_assert_eq!(value(bytes.as_bytes(), &GROUP).unwrap(), text);
        }

        #[test]
        fn reading_stops_one_byte_past_the_cap(len in 0usize..5000, cap in 0usize..4096) {
            let input = vec![b'x'; len];
            let read = read_capped(&input[..], cap).unwrap();
            prop_assert_eq!(read.len(), len.min(cap + 1));
            prop_assert!(read.capacity() <= cap + 1 || read.capacity() == read.len());
        }

        #[test]
        fn passphrase_lines_round_trip(
            lines in proptest::collection::vec("[^\\r\\n]{1,30}", 2),
            crlf: bool,
            final_newline: bool,
        ) {
            let end = if crlf { "\r\n" } else { "\n" };
            let mut text = lines.join(end);
            if final_newline {
                text.push_str(end);
            }
            let got = exposed(passphrase_lines(text.as_bytes(), &[CURRENT_PASSPHRASE, NEW_PASSPHRASE]).unwrap());
            prop_assert_eq!(got, lines);
        }
    }
}
