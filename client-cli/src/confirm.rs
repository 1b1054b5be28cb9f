//! Asking before what cannot be undone: `hearth leave`, `hearth panic`, and removing the
//! passphrase (which leaves the storage key readable in a file).

use std::io::{BufRead, Write};

use anyhow::{Context, Result};

use crate::error::{Declined, NeedsYes};
use crate::render::clean;

/// An answer longer than this is not a yes anyway; the cap only bounds what is read.
const MAX_ANSWER_BYTES: u64 = 1024;

/// A command that asks before it goes ahead, as its refusal names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    /// What it does, e.g. "leaving a group cannot be undone".
    pub what: &'static str,
    /// Its verb after "Add --yes to", e.g. "leave".
    pub verb: &'static str,
}

pub const LEAVE: Action = Action {
    what: "leaving a group cannot be undone",
    verb: "leave",
};

pub const PANIC: Action = Action {
    what: "panic destroys every key and all of hearth's data on this device",
    verb: "panic",
};

pub const REMOVE_PASSPHRASE: Action = Action {
    what: "without a passphrase, the storage key sits in a file that anyone who copies \
           hearthd's data directory can read",
    verb: "remove it",
};

/// How `action` gets the go-ahead.
#[derive(Debug, PartialEq, Eq)]
pub enum Consent {
    /// `--yes` was given.
    Given,
    /// Ask on the terminal.
    Ask,
    /// hearth cannot ask, and `--yes` was not given: refuse.
    Refused(NeedsYes),
}

/// The rule: `--yes` goes ahead; otherwise hearth asks, but only when it can, i.e. without
/// `--json` (whose output is for programs) and with standard input a terminal. Anything
/// else is refused rather than taken as a yes.
pub fn consent(action: Action, yes: bool, json: bool, stdin_is_terminal: bool) -> Consent {
    let refuse = |why| {
        Consent::Refused(NeedsYes {
            what: action.what,
            why,
            verb: action.verb,
        })
    };
    if yes {
        Consent::Given
    } else if json {
        refuse("--json never asks questions")
    } else if !stdin_is_terminal {
        refuse("standard input is not a terminal, so hearth cannot ask you to confirm")
    } else {
        Consent::Ask
    }
}

/// What an answer must be to count as yes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Yes {
    /// `y` or `yes`, any case.
    YOrYes,
    /// Only the whole word `yes`, any case: for what one stray keystroke must not start.
    Word,
}

/// The question `hearth leave GROUP` asks.
pub fn leave_question(group: &str, keep_copy: bool) -> String {
    let group = clean(group);
    if keep_copy {
        format!(
            "Leave \"{group}\"? You will keep a read-only copy on this device, but you will \
             need a new invite to take part again. [y/N] "
        )
    } else {
        format!(
            "Leave \"{group}\"? Your copy of the group on this device will be destroyed. [y/N] "
        )
    }
}

/// The question `hearth panic` asks.
pub const PANIC_QUESTION: &str = "Destroy every key and all of hearth's data on this device, \
     and stop hearthd? This cannot be undone. Type yes to go ahead: ";

/// The question `hearth passphrase remove` asks.
pub const REMOVE_PASSPHRASE_QUESTION: &str = "Remove the passphrase? The storage key will then \
     sit in a file in hearthd's data directory, and anyone who copies that directory can read \
     your groups. [y/N] ";

/// Writes `question` to `prompt` (stderr in real use) and reads one line from `input`.
/// Succeeds only on a yes (see [`Yes`]; surrounding spaces ignored); anything else,
/// including end of input, is a [`Declined`] that says `declined`.
pub fn ask(
    question: &str,
    yes: Yes,
    declined: &'static str,
    input: impl BufRead,
    mut prompt: impl Write,
) -> Result<()> {
    let _ = write!(prompt, "{question}");
    let _ = prompt.flush();
    let mut line = String::new();
    input
        .take(MAX_ANSWER_BYTES)
        .read_line(&mut line)
        .context("reading your answer from standard input")?;
    check(&line, yes, declined)
}

/// Whether `answer`, a line typed at a question, is a yes (see [`Yes`]; surrounding
/// spaces ignored); anything else is a [`Declined`] that says `declined`.
pub fn check(answer: &str, yes: Yes, declined: &'static str) -> Result<()> {
    let answer = answer.trim();
    let accepted = answer.eq_ignore_ascii_case("yes")
        || (yes == Yes::YOrYes && answer.eq_ignore_ascii_case("y"));
    if accepted {
        Ok(())
    } else {
        Err(Declined(declined).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{EXIT_FAILURE, EXIT_USAGE, exit_code};

    #[test]
    fn yes_wins_then_json_and_pipes_refuse_then_terminals_ask() {
        for action in [LEAVE, PANIC, REMOVE_PASSPHRASE] {
            assert_eq!(consent(action, true, true, false), Consent::Given);
            assert_eq!(consent(action, true, false, true), Consent::Given);
            assert!(matches!(
                consent(action, false, true, true),
                Consent::Refused(_)
            ));
            assert!(matches!(
                consent(action, false, false, false),
                Consent::Refused(_)
            ));
            assert_eq!(consent(action, false, false, true), Consent::Ask);
        }
    }

    #[test]
    fn refusal_is_a_usage_error_that_names_the_way_out() {
        let Consent::Refused(refusal) = consent(LEAVE, false, true, false) else {
            panic!("not refused");
        };
        let err = anyhow::Error::new(refusal);
        assert_eq!(exit_code(&err), EXIT_USAGE);
        assert_eq!(
            err.to_string(),
            "leaving a group cannot be undone, and --json never asks questions. Add --yes to \
             leave without being asked. Nothing was sent to hearthd."
        );
        let Consent::Refused(refusal) = consent(PANIC, false, false, false) else {
            panic!("not refused");
        };
        let message = refusal.to_string();
        assert!(message.contains("not a terminal"), "{message}");
        assert!(message.contains("Add --yes to panic"), "{message}");
    }

    #[test]
    fn only_y_or_yes_goes_ahead() {
        let mut prompt = Vec::new();
        for answer in ["y\n", "Y\n", " yes \n", "YES"] {
            assert!(
                ask(
                    "Q? ",
                    Yes::YOrYes,
                    "not leaving.",
                    answer.as_bytes(),
                    &mut prompt
                )
                .is_ok(),
                "{answer:?}"
            );
        }
        for answer in ["", "\n", "n\n", "no\n", "yess\n", "sure\n", "y es\n"] {
            let err = ask(
                "Q? ",
                Yes::YOrYes,
                "not leaving.",
                answer.as_bytes(),
                &mut prompt,
            )
            .unwrap_err();
            assert_eq!(exit_code(&err), EXIT_FAILURE, "{answer:?}");
            assert!(err.is::<Declined>(), "{answer:?}");
            assert_eq!(err.to_string(), "not leaving. Nothing was sent to hearthd.");
        }
        assert!(String::from_utf8(prompt).unwrap().starts_with("Q? Q? "));
    }

    #[test]
    fn a_word_question_wants_the_whole_word() {
        for answer in ["yes\n", " YES \n", "Yes"] {
            assert!(ask("Q? ", Yes::Word, "no.", answer.as_bytes(), Vec::new()).is_ok());
        }
        for answer in ["y\n", "Y\n", "ye\n", "", "yes please\n"] {
            let err = ask("Q? ", Yes::Word, "no.", answer.as_bytes(), Vec::new()).unwrap_err();
            assert!(err.is::<Declined>(), "{answer:?}");
        }
    }

    #[test]
    fn the_question_says_what_happens_to_the_copy() {
        let destroy = leave_question("Thursday circle", false);
        assert_eq!(
            destroy,
            "Leave \"Thursday circle\"? Your copy of the group on this device will be \
             destroyed. [y/N] "
        );
        let keep = leave_question("Thursday circle", true);
        assert!(keep.contains("read-only copy"), "{keep}");
        assert!(keep.ends_with("[y/N] "), "{keep}");
        assert!(!leave_question("\u{1b}[2J", false).contains('\u{1b}'));
    }
}
