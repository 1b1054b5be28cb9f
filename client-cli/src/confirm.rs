//! Asking before `hearth leave`, which cannot be undone.

use std::io::{BufRead, Write};

use anyhow::{Context, Result};

use crate::error::{Declined, NeedsYes};
use crate::render::clean;

/// An answer longer than this is not a yes anyway; the cap only bounds what is read.
const MAX_ANSWER_BYTES: u64 = 1024;

/// How `hearth leave` gets the go-ahead.
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
pub fn consent(yes: bool, json: bool, stdin_is_terminal: bool) -> Consent {
    if yes {
        Consent::Given
    } else if json {
        Consent::Refused(NeedsYes {
            why: "--json never asks questions",
        })
    } else if !stdin_is_terminal {
        Consent::Refused(NeedsYes {
            why: "standard input is not a terminal, so hearth cannot ask you to confirm",
        })
    } else {
        Consent::Ask
    }
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

/// Writes `question` to `prompt` (stderr in real use) and reads one line from `input`.
/// Succeeds only on `y` or `yes` (any case, surrounding spaces ignored); anything else,
/// including end of input, is a [`Declined`].
pub fn ask(question: &str, input: impl BufRead, mut prompt: impl Write) -> Result<()> {
    let _ = write!(prompt, "{question}");
    let _ = prompt.flush();
    let mut line = String::new();
    input
        .take(MAX_ANSWER_BYTES)
        .read_line(&mut line)
        .context("reading your answer from standard input")?;
    let answer = line.trim();
    if answer.eq_ignore_ascii_case("y") || answer.eq_ignore_ascii_case("yes") {
        Ok(())
    } else {
        Err(Declined.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{EXIT_FAILURE, EXIT_USAGE, exit_code};

    #[test]
    fn yes_wins_then_json_and_pipes_refuse_then_terminals_ask() {
        assert_eq!(consent(true, true, false), Consent::Given);
        assert_eq!(consent(true, false, true), Consent::Given);
        assert!(matches!(consent(false, true, true), Consent::Refused(_)));
        assert!(matches!(consent(false, false, false), Consent::Refused(_)));
        assert_eq!(consent(false, false, true), Consent::Ask);
    }

    #[test]
    fn refusal_is_a_usage_error_that_names_the_way_out() {
        let Consent::Refused(refusal) = consent(false, true, false) else {
            panic!("not refused");
        };
        let err = anyhow::Error::new(refusal);
        assert_eq!(exit_code(&err), EXIT_USAGE);
        let message = err.to_string();
        assert!(message.contains("--yes"), "{message}");
        assert!(message.contains("--json"), "{message}");
    }

    #[test]
    fn only_y_or_yes_goes_ahead() {
        let mut prompt = Vec::new();
        for answer in ["y\n", "Y\n", " yes \n", "YES"] {
            assert!(
                ask("Q? ", answer.as_bytes(), &mut prompt).is_ok(),
                "{answer:?}"
            );
        }
        for answer in ["", "\n", "n\n", "no\n", "yess\n", "sure\n", "y es\n"] {
            let err = ask("Q? ", answer.as_bytes(), &mut prompt).unwrap_err();
            assert_eq!(exit_code(&err), EXIT_FAILURE, "{answer:?}");
            assert!(err.is::<Declined>(), "{answer:?}");
        }
        assert!(String::from_utf8(prompt).unwrap().starts_with("Q? Q? "));
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
