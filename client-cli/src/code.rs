//! `hearth invite GROUP --code`: after the code is shown, wait until it is used or expires.
//!
//! The waiting is a loop of long polls (`GET /v1/groups/{group}/codes/{channel}?wait=SECS`):
//! hearthd answers as soon as the code is no longer `open`, or when the wait runs out. The
//! loop is written against a function that makes one request, so it is tested without a
//! socket.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use hearth_protocol::api::{CodeCreated, CodeState, CodeStatus, MAX_CODE_WAIT_SECS};
use serde_json::Value;

use crate::render::{clean, shell_word};

/// Added to the code's remaining lifetime in each wait, so that hearthd's answer to the
/// last one already says `expired` rather than `open`.
pub const GRACE_SECS: u64 = 5;
/// How much longer than the wait it asked hearthd for the client waits for an answer.
pub const CLIENT_SLACK: Duration = Duration::from_secs(10);
/// A code hearthd still calls `open` this long after it expired is reported as an error
/// rather than waited on for ever.
const LATE_SECS: u64 = 60;
/// At most this many requests; a hearthd that answers every wait at once, with `open`,
/// is an error too. Two or three suffice: the first wait covers the whole lifetime.
const MAX_ROUNDS: u32 = 100;

/// How long to ask hearthd to wait, in seconds, for a code expiring at `expires_at`, at
/// `now` (both seconds since the Unix epoch): the rest of its life and a little more.
pub fn wait_secs(expires_at: u64, now: u64) -> u64 {
    expires_at
        .saturating_sub(now)
        .saturating_add(GRACE_SECS)
        .min(MAX_CODE_WAIT_SECS)
}

/// The client's timeout for a request that asks hearthd to wait `wait` seconds.
pub fn client_timeout(wait: u64) -> Duration {
    Duration::from_secs(wait) + CLIENT_SLACK
}

/// Asks about the code until it is no longer open, and returns the last answer, both as
/// hearthd sent it (for `--json`) and decoded.
///
/// `ask(wait)` makes one request asking hearthd to wait up to `wait` seconds and returns
/// its answer; `now()` is the time in seconds since the Unix epoch. Errors from `ask` end
/// the loop as they are.
///
/// hearthd also answers early when a code attempt with another number was refused while
/// the code is open; `on_attempts(n)` is then called with the new total before asking again.
pub fn wait_until_used(
    created: &CodeCreated,
    mut now: impl FnMut() -> u64,
    mut ask: impl FnMut(u64) -> Result<Value>,
    mut on_attempts: impl FnMut(u32),
) -> Result<(Value, CodeStatus)> {
    let mut seen = 0;
    for _ in 0..MAX_ROUNDS {
        let answer = ask(wait_secs(created.expires_at, now()))?;
        let status: CodeStatus = serde_json::from_value(answer.clone()).context(
            "hearthd's answer about the code does not have the shape this hearth expects \
             (are hearth and hearthd the same version?)",
        )?;
        if status.other_attempts > seen {
            seen = status.other_attempts;
            on_attempts(seen);
        }
        if status.state != CodeState::Open {
            return Ok((answer, status));
        }
        if now() >= created.expires_at.saturating_add(LATE_SECS) {
            break;
        }
    }
    bail!(
        "hearthd still says the code is open although it expired at {} (UTC); stopped \
         waiting. Check with `hearth member list` whether the person joined",
        crate::render::utc(i64::try_from(created.expires_at).unwrap_or(i64::MAX))
    )
}

/// The warning `hearth invite --code` prints (on stderr) while it waits, when hearthd has
/// refused `count` code attempts with other numbers since the code was made.
pub fn other_attempts_warning(count: u32) -> String {
    let times = if count == 1 {
        "once".to_owned()
    } else {
        format!("{count} times")
    };
    format!(
        "hearth: warning: a code with another number was tried on this device ({times} so \
         far). Your code still works. If nobody nearby is joining another group right now, \
         someone may be trying codes: watch who joins, and compare safety numbers."
    )
}

/// The code was not used to join: someone got the words wrong, or it expired.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CodeNotUsed {
    pub state: CodeState,
    message: String,
}

/// What `hearth invite GROUP --code` says once the code is no longer open: the text for
/// stdout when someone joined, else a [`CodeNotUsed`] (exit 1). `group` is as the user
/// typed it.
pub fn outcome(group: &str, status: &CodeStatus) -> Result<String> {
    let again = format!("hearth invite {} --code", shell_word(group));
    let (state, message) = match status.state {
        CodeState::Joined => return Ok(joined(group, status)),
        CodeState::WrongCode => (
            CodeState::WrongCode,
            format!(
                "Someone tried the code with the wrong words, so it no longer works. Make a \
                 new one: {again}"
            ),
        ),
        CodeState::Expired => (
            CodeState::Expired,
            format!("The code expired unused. Make a new one: {again}"),
        ),
        CodeState::Failed => (
            CodeState::Failed,
            format!(
                "The code matched, but the other device did not finish joining, so the code \
                 is used up. Make a new one: {again}"
            ),
        ),
        CodeState::Withdrawn => (
            CodeState::Withdrawn,
            format!("The code was withdrawn, so it no longer works. Make a new one: {again}"),
        ),
        CodeState::Open => (
            CodeState::Open,
            format!(
                "The code is still open; hearthd stopped waiting early. Make a new one: {again}"
            ),
        ),
    };
    Err(CodeNotUsed {
        state,
        message: clean(&message),
    }
    .into())
}

/// `Sam joined "Thursday circle" (member 0123…). Compare safety numbers, …`.
fn joined(group: &str, status: &CodeStatus) -> String {
    let who = match status.name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => clean(name),
        _ => "Someone (no name given)".to_owned(),
    };
    let shown = clean(group);
    let group = clean(&shell_word(group));
    match status.member_id.as_deref() {
        Some(id) => {
            let id = clean(id);
            format!(
                "{who} joined \"{shown}\" (member {id}). Compare safety numbers, face to \
                 face: hearth member verify {group} {id}\n"
            )
        }
        None => format!(
            "{who} joined \"{shown}\". See them with `hearth member list {group}`, then \
             compare safety numbers, face to face: hearth member verify {group} MEMBER\n"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{EXIT_FAILURE, exit_code};
    use serde_json::json;
    use std::cell::Cell;

    const ID: &str = "fedcba9876543210fedcba9876543210";

    fn created(expires_at: u64) -> CodeCreated {
        CodeCreated {
            code: "4-lantern-orchard-meadow".into(),
            channel: 4,
            expires_at,
        }
    }

    fn open() -> Value {
        json!({"state": "open"})
    }

    /// Runs the loop against canned answers, with a clock that `ask` moves forward by
    /// `elapsed` seconds per request. Returns the result and the waits asked for.
    fn run(
        expires_at: u64,
        start: u64,
        answers: Vec<Value>,
        elapsed: u64,
    ) -> (Result<(Value, CodeStatus)>, Vec<u64>) {
        let clock = Cell::new(start);
        let mut answers = answers.into_iter();
        let mut waits = Vec::new();
        let result = wait_until_used(
            &created(expires_at),
            || clock.get(),
            |wait| {
                waits.push(wait);
                clock.set(clock.get() + elapsed.min(wait));
                answers.next().context("asked once too often")
            },
            |_| {},
        );
        (result, waits)
    }

    #[test]
    fn attempts_with_other_numbers_are_reported_once_each_and_the_wait_goes_on() {
        let answers = vec![
            json!({"state": "open", "other_attempts": 1}),
            json!({"state": "open", "other_attempts": 1}),
            json!({"state": "open", "other_attempts": 3}),
            json!({"state": "joined", "member_id": ID, "name": "Sam", "other_attempts": 3}),
        ];
        let mut answers = answers.into_iter();
        let mut reported = Vec::new();
        let (_, status) = wait_until_used(
            &created(1_600),
            || 1_000,
            |_| answers.next().context("asked once too often"),
            |n| reported.push(n),
        )
        .unwrap();
        assert_eq!(status.state, CodeState::Joined);
        assert_eq!(reported, [1, 3]);
        assert!(other_attempts_warning(1).contains("once so far"));
        assert!(other_attempts_warning(3).contains("3 times"));
        assert!(other_attempts_warning(1).contains("Your code still works"));
    }

    #[test]
    fn waits_cover_the_rest_of_the_code_life_and_a_little_more() {
        assert_eq!(wait_secs(1_600, 1_000), 600 + GRACE_SECS);
        assert_eq!(wait_secs(1_000, 1_000), GRACE_SECS);
        assert_eq!(wait_secs(1_000, 5_000), GRACE_SECS);
        assert_eq!(wait_secs(u64::MAX, 0), MAX_CODE_WAIT_SECS);
        assert!(client_timeout(600) > Duration::from_secs(600));
    }

    #[test]
    fn joined_ends_the_wait_with_a_message_and_exit_0() {
        let answer = json!({"state": "joined", "member_id": ID, "name": "Sam", "extra": 1});
        let (result, waits) = run(1_600, 1_000, vec![answer.clone()], 30);
        let (raw, status) = result.unwrap();
        // The raw answer is kept whole for --json.
        assert_eq!(raw, answer);
        assert_eq!(waits, vec![605]);
        assert_eq!(
            outcome("Thursday circle", &status).unwrap(),
            format!(
                "Sam joined \"Thursday circle\" (member {ID}). Compare safety numbers, face to \
                 face: hearth member verify 'Thursday circle' {ID}\n"
            )
        );
    }

    #[test]
    fn open_answers_are_asked_again_with_what_is_left() {
        let answers = vec![
            open(),
            open(),
            json!({"state": "joined", "member_id": ID, "name": null}),
        ];
        let (result, waits) = run(1_600, 1_000, answers, 100);
        let (_, status) = result.unwrap();
        assert_eq!(waits, vec![605, 505, 405]);
        let text = outcome("g", &status).unwrap();
        assert!(
            text.starts_with("Someone (no name given) joined \"g\""),
            "{text}"
        );
        assert!(
            text.contains(&format!("hearth member verify g {ID}")),
            "{text}"
        );
    }

    #[test]
    fn wrong_words_end_the_wait_with_exit_1() {
        let (result, _) = run(
            1_600,
            1_000,
            vec![open(), json!({"state": "wrong_code"})],
            5,
        );
        let (_, status) = result.unwrap();
        assert_eq!(status.state, CodeState::WrongCode);
        let err = outcome("Thursday circle", &status).unwrap_err();
        assert_eq!(exit_code(&err), EXIT_FAILURE);
        assert_eq!(
            err.to_string(),
            "Someone tried the code with the wrong words, so it no longer works. Make a new \
             one: hearth invite 'Thursday circle' --code"
        );
        assert_eq!(
            err.downcast_ref::<CodeNotUsed>().unwrap().state,
            CodeState::WrongCode
        );
    }

    #[test]
    fn expiry_ends_the_wait_with_exit_1() {
        // hearthd waits the whole lifetime, then says open once more and expired after.
        let answers = vec![open(), json!({"state": "expired"})];
        let (result, waits) = run(1_600, 1_000, answers, 10_000);
        assert_eq!(waits, vec![605, GRACE_SECS]);
        let (_, status) = result.unwrap();
        let err = outcome("g", &status).unwrap_err();
        assert_eq!(exit_code(&err), EXIT_FAILURE);
        assert_eq!(
            err.to_string(),
            "The code expired unused. Make a new one: hearth invite g --code"
        );
    }

    #[test]
    fn a_code_open_long_after_expiry_is_an_error_not_a_hang() {
        let (result, waits) = run(1_600, 1_000, vec![open(); 1000], 10_000);
        let err = result.unwrap_err();
        assert!(
            err.to_string().contains("still says the code is open"),
            "{err}"
        );
        // The whole lifetime, then short waits for at most a minute past the expiry.
        assert_eq!(waits[0], 605);
        assert!(waits[1..].iter().all(|&w| w == GRACE_SECS), "{waits:?}");
        assert!(
            waits.len() <= 2 + (LATE_SECS / GRACE_SECS) as usize,
            "{waits:?}"
        );

        // Nor does a hearthd that answers at once, for ever, keep hearth busy for ever.
        let (result, waits) = run(1_600, 1_000, vec![open(); 1000], 0);
        assert!(result.is_err());
        assert_eq!(waits.len(), MAX_ROUNDS as usize);
    }

    #[test]
    fn errors_and_malformed_answers_end_the_wait() {
        let (result, _) = run(1_600, 1_000, vec![json!({"state": "gone"})], 1);
        let message = format!("{:#}", result.unwrap_err());
        assert!(message.contains("does not have the shape"), "{message}");

        let clock = Cell::new(0);
        let err = wait_until_used(
            &created(600),
            || clock.get(),
            |_| bail!("socket gone"),
            |_| {},
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "socket gone");
    }

    #[test]
    fn names_and_ids_from_the_daemon_are_cleaned() {
        let status = CodeStatus {
            state: CodeState::Joined,
            member_id: Some("ab\u{1b}[2J".into()),
            name: Some("Sam\u{202e}".into()),
            other_attempts: 0,
        };
        let text = outcome("g", &status).unwrap();
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{202e}'),
            "{text:?}"
        );
        assert!(
            !outcome(
                "g\u{1b}",
                &CodeStatus {
                    state: CodeState::Expired,
                    member_id: None,
                    name: None,
                    other_attempts: 0,
                }
            )
            .unwrap_err()
            .to_string()
            .contains('\u{1b}')
        );
    }
}
