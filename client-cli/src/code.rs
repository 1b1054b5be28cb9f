//! `hearth invite GROUP --code`: after the code is shown, wait until it is used or expires,
//! and let the facilitator approve the person whose device matched it.
//!
//! The waiting is a loop of long polls (`GET /v1/groups/{group}/codes/{channel}?wait=SECS`):
//! hearthd answers as soon as the code is no longer `open` (or a code attempt was refused
//! meanwhile), or when the wait runs out. While a join is under way (`joining`,
//! `awaiting_approval`) hearthd answers at once and the loop asks again every second. The
//! loop is written against a [`Waiter`] that makes the requests, tells the time and talks
//! to the person, so it is tested without a socket or a terminal.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use hearth_protocol::api::{
    CODE_APPROVAL_SECS, CodeCreated, CodeState, CodeStatus, MAX_CODE_WAIT_SECS,
};
use serde_json::Value;

use crate::render::{clean, suggested};

/// Added to the code's remaining lifetime in each wait, so that hearthd's answer to the
/// last one already says `expired` rather than `open`.
pub const GRACE_SECS: u64 = 5;
/// How much longer than the wait it asked hearthd for the client waits for an answer.
pub const CLIENT_SLACK: Duration = Duration::from_secs(10);
/// A code hearthd still calls `open` this long after it expired (or a join still under
/// way this long after hearthd's hold should have ended) is reported as an error rather
/// than waited on for ever.
const LATE_SECS: u64 = 60;
/// At most this many answers in a row that change nothing while the code is open; a
/// hearthd that answers every wait at once, with `open`, is an error too. Two or three
/// suffice: the first wait covers the whole lifetime. Answers that bring news (another
/// refused attempt) do not count.
const MAX_IDLE_ROUNDS: u32 = 100;
/// Warnings about attempts are combined: at most one this often (and one at the end with
/// the totals, if they grew since).
pub const WARN_EVERY_SECS: u64 = 30;

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

/// What the wait loop needs from the world.
pub trait Waiter {
    /// Seconds since the Unix epoch.
    fn now(&mut self) -> u64;
    /// One request asking hearthd to wait up to `wait` seconds; its answer.
    fn ask(&mut self, wait: u64) -> Result<Value>;
    /// Waits a moment before asking again about a join under way.
    fn pause(&mut self);
    /// Tells the person that code attempts were refused or wrong guesses checked:
    /// `other` attempts with other numbers, `wrong` wrong guesses at this code (totals).
    fn warn(&mut self, other: u32, wrong: u32);
    /// Someone's device matched the code and waits for the facilitator's approval
    /// (`status` says who): ask the person, or tell them how to decide. Called once per
    /// person waiting.
    fn decide(&mut self, status: &CodeStatus) -> Result<()>;
}

/// Asks about the code until it has come to something (joined, declined, burnt,
/// expired...), and returns the last answer, both as hearthd sent it (for `--json`) and
/// decoded. Errors from the waiter end the loop as they are.
pub fn wait_until_used(created: &CodeCreated, w: &mut impl Waiter) -> Result<(Value, CodeStatus)> {
    let mut last = None;
    let mut idle = 0u32;
    let mut reported = (0u32, 0u32);
    let mut reported_at: Option<u64> = None;
    let mut decided_for: Option<Option<String>> = None;
    let mut held_since: Option<u64> = None;
    loop {
        let now = w.now();
        let answer = w.ask(wait_secs(created.expires_at, now))?;
        let status: CodeStatus = serde_json::from_value(answer.clone()).context(
            "hearthd's answer about the code does not have the shape this hearth expects \
             (are hearth and hearthd the same version?)",
        )?;
        let now = w.now();
        let key = (status.state, status.other_attempts, status.wrong_attempts);
        idle = if last == Some(key) { idle + 1 } else { 0 };
        last = Some(key);
        let counts = (status.other_attempts, status.wrong_attempts);
        let grew = counts.0 > reported.0 || counts.1 > reported.1;
        if !status.state.pending() {
            if grew {
                w.warn(counts.0, counts.1);
            }
            return Ok((answer, status));
        }
        if grew && reported_at.is_none_or(|t| now >= t.saturating_add(WARN_EVERY_SECS)) {
            w.warn(counts.0, counts.1);
            reported = counts;
            reported_at = Some(now);
        }
        match status.state {
            CodeState::Joining | CodeState::AwaitingApproval => {
                let since = *held_since.get_or_insert(now);
                if now > since + CODE_APPROVAL_SECS + LATE_SECS {
                    bail!(
                        "hearthd still says a join with the code is under way, long after it \
                         should have ended; stopped waiting. Check with `hearth member list` \
                         whether the person joined"
                    );
                }
                if status.state == CodeState::AwaitingApproval
                    && decided_for.as_ref() != Some(&status.member_id)
                {
                    decided_for = Some(status.member_id.clone());
                    w.decide(&status)?;
                }
                w.pause();
            }
            _ => {
                if idle >= MAX_IDLE_ROUNDS || now >= created.expires_at.saturating_add(LATE_SECS) {
                    bail!(
                        "hearthd still says the code is open although it expired at {} (UTC); \
                         stopped waiting. Check with `hearth member list` whether the person \
                         joined",
                        crate::render::utc(i64::try_from(created.expires_at).unwrap_or(i64::MAX))
                    );
                }
            }
        }
    }
}

/// The warning `hearth invite --code` prints (on stderr) while it waits: `other` code
/// attempts with other numbers refused on this device, `wrong` wrong guesses at this code,
/// since it was made.
pub fn attempts_warning(other: u32, wrong: u32) -> String {
    let times = |n: u32| {
        if n == 1 {
            "once".to_owned()
        } else {
            format!("{n} times")
        }
    };
    let mut parts = Vec::new();
    if wrong > 0 {
        parts.push(format!(
            "this code was tried with wrong words {} so far (the third wrong try from \
             different devices uses it up)",
            times(wrong)
        ));
    }
    if other > 0 {
        parts.push(format!(
            "a code with another number was tried on this device {} so far",
            times(other)
        ));
    }
    format!(
        "hearth: warning: {}. If nobody nearby is joining another group right now, someone \
         may be trying codes: let in only the person you gave the code to, and compare \
         safety numbers.",
        parts.join("; and ")
    )
}

/// The question `hearth invite --code` asks on a terminal when someone's device matched
/// the code, and the hint it prints elsewhere.
pub fn approval_question(group: &str, channel: u16, status: &CodeStatus) -> String {
    let who = match status.name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => format!("\"{}\"", clean(name)),
        _ => "someone who gave no name".to_owned(),
    };
    let number = status
        .safety_number
        .as_deref()
        .map(|n| {
            format!(
                " Safety number (compare it with them once they are in): {}.",
                clean(n)
            )
        })
        .unwrap_or_default();
    let _ = (group, channel);
    format!(
        "A device that knows the code asks to join as {who}.{number} Let them in only if it is \
         the person you gave the code to and their device says it is waiting for you. Let \
         them in? [y/N] "
    )
}

/// What `hearth invite --code` prints when it cannot ask (no terminal, or `--json`).
pub fn approval_hint(group: &str, channel: u16, status: &CodeStatus) -> String {
    let who = match status.name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => format!("\"{}\"", clean(name)),
        _ => "someone who gave no name".to_owned(),
    };
    let group = clean(&suggested(&[group]));
    let member = status
        .member_id
        .as_deref()
        .map(|m| format!(" --member {}", clean(m)))
        .unwrap_or_default();
    format!(
        "hearth: a device that knows the code asks to join as {who}. Nobody is let in \
         without your approval: hearth invite approve{group} {channel}{member} (or add \
         --deny to turn them away; they are turned away by themselves after {} minutes).",
        CODE_APPROVAL_SECS / 60
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
    let again = format!("hearth invite{} --code", suggested(&[group]));
    let (state, message) = match status.state {
        CodeState::Joined => return Ok(joined(group, status)),
        CodeState::WrongCode => (
            CodeState::WrongCode,
            format!(
                "The code was tried with the wrong words too often, so it no longer works. \
                 Make a new one: {again}"
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
        CodeState::Declined => (
            CodeState::Declined,
            format!(
                "Nobody was let in: the join was turned away, or not approved in time. The \
                 code is used up. Make a new one: {again}"
            ),
        ),
        state @ (CodeState::Open | CodeState::Joining | CodeState::AwaitingApproval) => (
            state,
            format!(
                "The code is still {}; hearthd stopped waiting early. Make a new one: {again}",
                state.as_str().replace('_', " ")
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
    match status.member_id.as_deref() {
        Some(id) => format!(
            "{who} joined \"{shown}\" (member {}). Compare safety numbers, face to face: \
             hearth member verify{}\n",
            clean(id),
            clean(&suggested(&[group, id]))
        ),
        None => format!(
            "{who} joined \"{shown}\". See them with `hearth member list{}`, then compare \
             safety numbers, face to face: hearth member verify\n",
            clean(&suggested(&[group]))
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{EXIT_FAILURE, exit_code};
    use serde_json::json;

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

    /// A waiter with canned answers and a clock that each request moves forward by
    /// `elapsed` seconds (at most the wait asked for).
    struct Canned {
        clock: u64,
        elapsed: u64,
        answers: std::vec::IntoIter<Value>,
        waits: Vec<u64>,
        warned: Vec<(u32, u32)>,
        decided: Vec<CodeStatus>,
        pauses: u32,
    }

    impl Canned {
        fn new(start: u64, answers: Vec<Value>, elapsed: u64) -> Canned {
            Canned {
                clock: start,
                elapsed,
                answers: answers.into_iter(),
                waits: Vec::new(),
                warned: Vec::new(),
                decided: Vec::new(),
                pauses: 0,
            }
        }
    }

    impl Waiter for Canned {
        fn now(&mut self) -> u64 {
            self.clock
        }
        fn ask(&mut self, wait: u64) -> Result<Value> {
            self.waits.push(wait);
            self.clock += self.elapsed.min(wait);
            self.answers.next().context("asked once too often")
        }
        fn pause(&mut self) {
            self.pauses += 1;
            self.clock += 1;
        }
        fn warn(&mut self, other: u32, wrong: u32) {
            self.warned.push((other, wrong));
        }
        fn decide(&mut self, status: &CodeStatus) -> Result<()> {
            self.decided.push(status.clone());
            Ok(())
        }
    }

    /// Runs the loop against canned answers. Returns the result and the waits asked for.
    fn run(
        expires_at: u64,
        start: u64,
        answers: Vec<Value>,
        elapsed: u64,
    ) -> (Result<(Value, CodeStatus)>, Vec<u64>) {
        let mut w = Canned::new(start, answers, elapsed);
        let result = wait_until_used(&created(expires_at), &mut w);
        (result, w.waits)
    }

    #[test]
    fn attempts_are_reported_combined_and_the_wait_goes_on() {
        let answers = vec![
            json!({"state": "open", "other_attempts": 1}),
            json!({"state": "open", "other_attempts": 1}),
            json!({"state": "open", "other_attempts": 3}),
            json!({"state": "joined", "member_id": ID, "name": "Sam", "other_attempts": 3}),
        ];
        let mut w = Canned::new(1_000, answers, 0);
        let (_, status) = wait_until_used(&created(1_600), &mut w).unwrap();
        assert_eq!(status.state, CodeState::Joined);
        // The first at once; the rest within the same half minute combined, at the end.
        assert_eq!(w.warned, [(1, 0), (3, 0)]);
        assert!(attempts_warning(1, 0).contains("once so far"));
        assert!(attempts_warning(3, 0).contains("3 times"));
        assert!(attempts_warning(0, 2).contains("wrong words 2 times"));
        let both = attempts_warning(4, 1);
        assert!(
            both.contains("wrong words once") && both.contains("4 times"),
            "{both}"
        );
    }

    /// Many probes on other numbers, each ending a wait round at once, neither end the
    /// wait with a false error nor flood the screen with warnings.
    #[test]
    fn a_hundred_probes_neither_end_the_wait_nor_flood_the_screen() {
        let mut answers: Vec<Value> = (1..=250)
            .map(|n| json!({"state": "open", "other_attempts": n}))
            .collect();
        answers.push(
            json!({"state": "joined", "member_id": ID, "name": "Sam", "other_attempts": 250}),
        );
        // A probe every 2 seconds.
        let mut w = Canned::new(1_000, answers, 2);
        let (_, status) = wait_until_used(&created(1_600), &mut w).unwrap();
        assert_eq!(status.state, CodeState::Joined);
        assert!(w.warned.len() <= 20, "{} warnings", w.warned.len());
        assert_eq!(w.warned.last(), Some(&(250, 0)));
    }

    /// A matched code's join is held for approval: the loop asks the person once, waits
    /// while the join is under way, and ends with what was decided.
    #[test]
    fn a_join_held_for_approval_is_asked_about_once() {
        let held = json!({"state": "awaiting_approval", "member_id": ID, "name": "Sam",
                          "safety_number": "12345 67890"});
        let answers = vec![
            open(),
            json!({"state": "joining"}),
            held.clone(),
            held.clone(),
            held,
            json!({"state": "joined", "member_id": ID, "name": "Sam"}),
        ];
        let mut w = Canned::new(1_000, answers, 0);
        let (_, status) = wait_until_used(&created(1_600), &mut w).unwrap();
        assert_eq!(status.state, CodeState::Joined);
        assert_eq!(w.decided.len(), 1);
        assert_eq!(w.decided[0].safety_number.as_deref(), Some("12345 67890"));
        assert!(w.pauses >= 4);
        let declined = json!({"state": "declined"});
        let (result, _) = run(1_600, 1_000, vec![declined], 0);
        let err = outcome("g", &result.unwrap().1).unwrap_err();
        assert_eq!(
            err.downcast_ref::<CodeNotUsed>().unwrap().state,
            CodeState::Declined
        );
        let text = approval_hint("g", 4, &w.decided[0]);
        assert!(
            text.contains(&format!("hearth invite approve 4 --member {ID}")),
            "{text}"
        );
        assert!(approval_question("g", 4, &w.decided[0]).contains("[y/N]"));
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
                 face: hearth member verify\n"
            )
        );
        // A group named by its id is named again: ids are no secret.
        let group = "0123456789abcdef0123456789abcdef";
        assert!(
            outcome(group, &status)
                .unwrap()
                .ends_with(&format!("hearth member verify {group} {ID}\n"))
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
        assert!(text.ends_with("hearth member verify\n"), "{text}");
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
            "The code was tried with the wrong words too often, so it no longer works. Make a \
             new one: hearth invite --code"
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
            "The code expired unused. Make a new one: hearth invite --code"
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
        assert_eq!(waits.len(), MAX_IDLE_ROUNDS as usize + 1);
    }

    #[test]
    fn errors_and_malformed_answers_end_the_wait() {
        let (result, _) = run(1_600, 1_000, vec![json!({"state": "gone"})], 1);
        let message = format!("{:#}", result.unwrap_err());
        assert!(message.contains("does not have the shape"), "{message}");

        struct Gone;
        impl Waiter for Gone {
            fn now(&mut self) -> u64 {
                0
            }
            fn ask(&mut self, _: u64) -> Result<Value> {
                bail!("socket gone")
            }
            fn pause(&mut self) {}
            fn warn(&mut self, _: u32, _: u32) {}
            fn decide(&mut self, _: &CodeStatus) -> Result<()> {
                Ok(())
            }
        }
        let err = wait_until_used(&created(600), &mut Gone).unwrap_err();
        assert_eq!(err.to_string(), "socket gone");
    }

    #[test]
    fn names_and_ids_from_the_daemon_are_cleaned() {
        let status = CodeStatus {
            state: CodeState::Joined,
            member_id: Some("ab\u{1b}[2J".into()),
            name: Some("Sam\u{202e}".into()),
            safety_number: None,
            other_attempts: 0,
            wrong_attempts: 0,
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
                    safety_number: None,
                    other_attempts: 0,
                    wrong_attempts: 0,
                }
            )
            .unwrap_err()
            .to_string()
            .contains('\u{1b}')
        );
    }
}
