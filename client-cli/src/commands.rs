//! What each command asks hearthd, and which rendering its answer gets.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use hearth_protocol::api::{
    self, API_PREFIX, AddAgreement, AddPeer, Agreement, AgreementAdded, CodeApproval, CodeCreated,
    CodeStatus, CreateCode, CreateGroup, CreateInvite, GroupCreated, GroupDetail, GroupSummary,
    InviteCreated, InviteList, InviteWithdrawn, Join, Joined, Leave, Left, MemberInfo,
    MemberRemoved, Panicked, Passphrase, Peer, PeerAdded, RemovePassphrase, SafetyNumber,
    SetDuress, SetPassphrase, SetRole, Status, Unlock,
};
use hyper::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::cli::{
    AgreementCommand, Command, GroupCommand, InviteCommand, MemberCommand, PassphraseCommand,
    PeerCommand,
};
use crate::confirm::{self, Consent, Yes};
use crate::error::ApiFailure;
use crate::input::{self, Console, Secret};
use crate::path::encode_segment;
use crate::render;

/// How long to wait for most answers: they are local reads and writes.
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// Joining dials the facilitator over the network and waits for its welcome, so it gets
/// longer than hearthd's own steps need, to see hearthd's error rather than ours. With a
/// spoken code, hearthd first searches the local network for up to 20 s and gives each
/// daemon it finds up to 15 s to answer; then the join takes up to 30 s and the first sync
/// up to 20 s. Token joins dial for up to 10 s per address instead of searching.
/// A join by spoken code waits for the facilitator's approval (up to
/// `CODE_APPROVAL_SECS`) after finding their device (up to 20 s), and then for the
/// admission to arrive.
const JOIN_TIMEOUT: Duration = Duration::from_secs(hearth_protocol::api::CODE_APPROVAL_SECS + 120);
/// Leaving waits up to 15 s for another member's device to confirm it has the departure,
/// then destroys the copy. Giving up early would cut that short, so wait well past it.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(120);

/// One request to the local API.
#[derive(Debug, PartialEq)]
pub struct ApiCall {
    pub method: Method,
    pub path: String,
    pub body: Option<Value>,
}

impl ApiCall {
    /// `METHOD /path`, for messages.
    pub fn describe(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// What the duress passphrase does, said on the terminal before it is asked for.
pub const DURESS_EXPLANATION: &str = "A duress passphrase is for when someone forces you to \
     unlock hearth: given to `hearth unlock`, it destroys every key and all of hearth's data on \
     this device instead, and leaves what looks like a fresh hearth, locked by it. Choose one \
     that differs from your passphrase.\n";

/// Everything `command` needs before its request that the command line did not give:
/// values that are `-` or left out (see `input`), passphrases, and a yes for what cannot
/// be undone. Usage errors (nothing sent) come before anything is read or asked.
pub fn prepare(command: &mut Command, json: bool, console: &mut impl Console) -> Result<()> {
    // Whether to ask for a yes; a refusal comes before anything is read.
    let consent = match command {
        Command::Leave { yes, .. } => Some((confirm::LEAVE, *yes)),
        Command::Panic { yes } => Some((confirm::PANIC, *yes)),
        Command::Passphrase(PassphraseCommand::Remove { yes, .. }) => {
            Some((confirm::REMOVE_PASSPHRASE, *yes))
        }
        _ => None,
    }
    .map(|(action, yes)| confirm::consent(action, yes, json, console.stdin_is_terminal()));
    if let Some(Consent::Refused(refusal)) = consent {
        return Err(refusal.into());
    }
    input::resolve(command.inputs(), console)?;
    if consent == Some(Consent::Ask) {
        let (question, yes, declined) = match command {
            Command::Leave {
                group, keep_copy, ..
            } => (
                confirm::leave_question(arg(group)?, *keep_copy),
                Yes::YOrYes,
                "not leaving: you did not answer y.",
            ),
            Command::Panic { .. } => (
                confirm::PANIC_QUESTION.to_owned(),
                Yes::Word,
                "not destroying anything: you did not type yes.",
            ),
            _ => (
                confirm::REMOVE_PASSPHRASE_QUESTION.to_owned(),
                Yes::YOrYes,
                "keeping the passphrase: you did not answer y.",
            ),
        };
        let answer = console
            .ask(&question)
            .context("reading your answer from standard input")?;
        confirm::check(&answer, yes, declined)?;
    }
    let mut read = |secrets: &[Secret], from_stdin: bool| {
        input::passphrases(secrets, from_stdin, console).map(|got| got.into_iter())
    };
    match command {
        Command::Unlock {
            passphrase_stdin,
            passphrase,
        } => {
            *passphrase = read(&[input::PASSPHRASE], *passphrase_stdin)?.next();
        }
        Command::Passphrase(PassphraseCommand::Set {
            passphrase_stdin,
            new,
        }) => {
            *new = read(&[input::NEW_PASSPHRASE], *passphrase_stdin)?.next();
        }
        Command::Passphrase(PassphraseCommand::Change {
            passphrase_stdin,
            current,
            new,
        }) => {
            let mut got = read(
                &[input::CURRENT_PASSPHRASE, input::NEW_PASSPHRASE],
                *passphrase_stdin,
            )?;
            (*current, *new) = (got.next(), got.next());
        }
        Command::Passphrase(PassphraseCommand::Remove {
            passphrase_stdin,
            current,
            ..
        }) => {
            *current = read(&[input::CURRENT_PASSPHRASE], *passphrase_stdin)?.next();
        }
        Command::Passphrase(PassphraseCommand::Duress {
            passphrase_stdin,
            current,
            duress,
        }) => {
            if console.stdin_is_terminal() {
                console.say(DURESS_EXPLANATION);
            }
            let mut got = input::passphrases(
                &[input::CURRENT_PASSPHRASE, input::DURESS_PASSPHRASE],
                *passphrase_stdin,
                console,
            )?
            .into_iter();
            (*current, *duress) = (got.next(), got.next());
            if current.is_some() && current == duress {
                bail!(
                    "the duress passphrase must differ from your passphrase: given to `hearth \
                     unlock`, it destroys everything. Nothing was sent to hearthd."
                );
            }
        }
        _ => {}
    }
    Ok(())
}

/// A value that `prepare` has filled in.
fn arg(value: &Option<String>) -> Result<&str> {
    value
        .as_deref()
        .ok_or_else(|| anyhow!("a value the command needs was not read (a bug in hearth)"))
}

/// A passphrase that `prepare` has filled in.
fn secret(value: &Option<Passphrase>) -> Result<Passphrase> {
    value
        .clone()
        .ok_or_else(|| anyhow!("a passphrase the command needs was not read (a bug in hearth)"))
}

/// The request `command` makes, once `prepare` has filled it in.
pub fn api_call(command: &Command) -> Result<ApiCall> {
    Ok(match command {
        Command::Status => get(path(&["status"])),
        Command::Group(GroupCommand::Create {
            name,
            purpose,
            my_name,
        }) => post(
            path(&["groups"]),
            &CreateGroup {
                name: arg(name)?.to_owned(),
                purpose: purpose.clone().flatten(),
                my_name: my_name.clone().flatten(),
            },
        )?,
        Command::Group(GroupCommand::List) => get(path(&["groups"])),
        Command::Group(GroupCommand::Show { group }) => get(group_path(arg(group)?, None)),
        Command::Agreement(AgreementCommand::Add { group, text }) => post(
            group_path(arg(group)?, Some("agreements")),
            &AddAgreement {
                text: arg(text)?.to_owned(),
            },
        )?,
        Command::Agreement(AgreementCommand::List { group }) => {
            get(group_path(arg(group)?, Some("agreements")))
        }
        Command::Invite {
            manage: Some(InviteCommand::List { group }),
            ..
        } => get(group_path(arg(group)?, Some("invites"))),
        Command::Invite {
            manage: Some(InviteCommand::Withdraw { group, id }),
            ..
        } => ApiCall {
            method: Method::DELETE,
            path: format!(
                "{}/{}",
                group_path(arg(group)?, Some("invites")),
                encode_segment(id)
            ),
            body: None,
        },
        Command::Invite {
            manage:
                Some(InviteCommand::Approve {
                    group,
                    number,
                    deny,
                    member,
                }),
            ..
        } => code_approval_call(arg(group)?, *number, !deny, member.as_deref())?,
        Command::Invite {
            group,
            ttl,
            code: false,
            ..
        } => post(
            group_path(arg(group)?, Some("invites")),
            &CreateInvite { ttl_secs: *ttl },
        )?,
        Command::Invite {
            group,
            ttl,
            code: true,
            ..
        } => post(
            group_path(arg(group)?, Some("codes")),
            &CreateCode { ttl_secs: *ttl },
        )?,
        Command::Join { token, name } => post(
            path(&["join"]),
            &Join {
                token: arg(token)?.to_owned(),
                name: name.clone().flatten(),
            },
        )?,
        Command::Member(MemberCommand::List { group }) => {
            get(group_path(arg(group)?, Some("members")))
        }
        Command::Member(MemberCommand::Verify {
            group,
            member,
            confirm: false,
        }) => get(member_path(
            arg(group)?,
            arg(member)?,
            Some("safety-number"),
        )),
        Command::Member(MemberCommand::Verify {
            group,
            member,
            confirm: true,
        }) => post(
            member_path(arg(group)?, arg(member)?, Some("verify")),
            &serde_json::Map::new(),
        )?,
        Command::Member(MemberCommand::Role {
            group,
            member,
            role,
            ..
        }) => put(
            member_path(arg(group)?, arg(member)?, Some("role")),
            &SetRole {
                role: role
                    .ok_or_else(|| anyhow!("the role was not read (a bug in hearth)"))?
                    .into(),
            },
        )?,
        Command::Member(MemberCommand::Remove { group, member }) => ApiCall {
            method: Method::DELETE,
            path: member_path(arg(group)?, arg(member)?, None),
            body: None,
        },
        Command::Leave {
            group, keep_copy, ..
        } => post(
            group_path(arg(group)?, Some("leave")),
            &Leave {
                keep_copy: *keep_copy,
            },
        )?,
        Command::Peer(PeerCommand::Add { addr }) => {
            post(path(&["peers"]), &AddPeer { addr: addr.clone() })?
        }
        Command::Peer(PeerCommand::List) => get(path(&["peers"])),
        Command::Unlock { passphrase, .. } => post(
            path(&["unlock"]),
            &Unlock {
                passphrase: secret(passphrase)?,
            },
        )?,
        Command::Lock => bare(Method::POST, path(&["lock"])),
        Command::Panic { .. } => bare(Method::POST, path(&["panic"])),
        Command::Passphrase(PassphraseCommand::Set { new, .. }) => put(
            path(&["passphrase"]),
            &SetPassphrase {
                current: None,
                passphrase: secret(new)?,
            },
        )?,
        Command::Passphrase(PassphraseCommand::Change { current, new, .. }) => put(
            path(&["passphrase"]),
            &SetPassphrase {
                current: Some(secret(current)?),
                passphrase: secret(new)?,
            },
        )?,
        Command::Passphrase(PassphraseCommand::Remove { current, .. }) => with_body(
            Method::DELETE,
            path(&["passphrase"]),
            &RemovePassphrase {
                current: secret(current)?,
            },
        )?,
        Command::Passphrase(PassphraseCommand::Duress {
            current, duress, ..
        }) => put(
            path(&["passphrase", "duress"]),
            &SetDuress {
                current: secret(current)?,
                duress: secret(duress)?,
            },
        )?,
    })
}

/// `err`, hearthd's refusal of `command`, in the words of the command: a wrong passphrase
/// says which one was wrong and that nothing changed. Other errors pass unchanged.
pub fn explain(command: &Command, err: anyhow::Error) -> anyhow::Error {
    let Some(failure) = err.downcast_ref::<ApiFailure>() else {
        return err;
    };
    if failure.code != api::ERROR_WRONG_PASSPHRASE {
        return err;
    }
    let message = match command {
        Command::Unlock { .. } => "That passphrase is not right; nothing changed. Try again.",
        Command::Passphrase(
            PassphraseCommand::Change { .. }
            | PassphraseCommand::Remove { .. }
            | PassphraseCommand::Duress { .. },
        ) => "That is not the current passphrase; nothing changed. Try again.",
        _ => return err,
    };
    ApiFailure {
        status: failure.status,
        code: failure.code.clone(),
        message: message.to_owned(),
    }
    .into()
}

/// The request that asks about spoken code `channel` of `group`, waiting up to `wait`
/// seconds for it to be used or to expire.
pub fn code_status_call(group: &str, channel: u16, wait: u64) -> ApiCall {
    get(format!(
        "{}?wait={wait}",
        group_path(group, Some(&format!("codes/{channel}")))
    ))
}

/// The request that approves (or declines) the join held on spoken code `channel` of
/// `group`, if the person waiting is `member` (when given).
pub fn code_approval_call(
    group: &str,
    channel: u16,
    approve: bool,
    member: Option<&str>,
) -> Result<ApiCall> {
    post(
        group_path(group, Some(&format!("codes/{channel}/approval"))),
        &CodeApproval {
            approve,
            member_id: member.map(str::to_owned),
        },
    )
}

/// The group whose spoken code hearth waits on after showing it: `invite --code` without
/// `--no-wait`.
pub fn waits_for_code(command: &Command) -> Option<&str> {
    match command {
        Command::Invite {
            manage: None,
            group,
            code: true,
            no_wait: false,
            ..
        } => group.as_deref(),
        _ => None,
    }
}

/// Whether the answer to `command` shows an invite token as a QR code: only for a token
/// (not a spoken code), without `--no-qr`, without `--json`, and only when stdout is a
/// terminal (a QR code in a file or a pipe is just noise).
pub fn shows_qr(command: &Command, json: bool, stdout_is_terminal: bool) -> bool {
    matches!(
        command,
        Command::Invite {
            manage: None,
            code: false,
            no_qr: false,
            ..
        }
    ) && !json
        && stdout_is_terminal
}

/// `answer` as `--json` prints it: one pretty-printed document, except for `invite --code`,
/// whose output is JSON lines (the code now, what became of it later), one compact
/// document a line.
pub fn json(command: &Command, answer: &Value) -> Result<String> {
    let mut json = if matches!(
        command,
        Command::Invite {
            manage: None,
            code: true,
            ..
        }
    ) {
        serde_json::to_string(answer)
    } else {
        serde_json::to_string_pretty(answer)
    }
    .context("encoding the answer")?;
    json.push('\n');
    Ok(json)
}

/// How long `command` waits for hearthd's answer.
pub fn timeout(command: &Command) -> Duration {
    match command {
        Command::Join { .. } => JOIN_TIMEOUT,
        Command::Leave { .. } => LEAVE_TIMEOUT,
        _ => TIMEOUT,
    }
}

/// The text for people that shows `answer`, hearthd's answer to `call`. `now` is seconds
/// since the Unix epoch; `qr` says whether to draw an invite token as a QR code too (see
/// [`shows_qr`]).
pub fn human(
    command: &Command,
    call: &ApiCall,
    answer: Value,
    now: u64,
    qr: bool,
) -> Result<String> {
    let what = call.describe();
    Ok(match command {
        Command::Status => render::status(&decode::<Status>(answer, &what)?),
        Command::Group(GroupCommand::Create { name, .. }) => {
            render::group_created(arg(name)?, &decode::<GroupCreated>(answer, &what)?)
        }
        Command::Group(GroupCommand::List) => {
            render::group_list(&decode::<Vec<GroupSummary>>(answer, &what)?)
        }
        Command::Group(GroupCommand::Show { .. }) => {
            render::group_detail(&decode::<GroupDetail>(answer, &what)?)
        }
        Command::Member(MemberCommand::List { .. }) => {
            render::member_list(&decode::<Vec<MemberInfo>>(answer, &what)?)
        }
        Command::Member(MemberCommand::Verify {
            group,
            member,
            confirm: false,
        }) => render::safety_number(
            arg(group)?,
            arg(member)?,
            &decode::<SafetyNumber>(answer, &what)?,
        ),
        Command::Member(MemberCommand::Verify {
            group,
            member,
            confirm: true,
        }) => render::verified(
            arg(group)?,
            arg(member)?,
            &decode::<SafetyNumber>(answer, &what)?,
        ),
        Command::Member(MemberCommand::Role { group, member, .. }) => render::role_set(
            arg(group)?,
            arg(member)?,
            &decode::<MemberInfo>(answer, &what)?,
        ),
        Command::Member(MemberCommand::Remove { member, .. }) => {
            render::member_removed(arg(member)?, &decode::<MemberRemoved>(answer, &what)?)
        }
        Command::Leave { group, .. } => render::left(arg(group)?, &decode::<Left>(answer, &what)?),
        Command::Agreement(AgreementCommand::Add { group, .. }) => {
            render::agreement_added(arg(group)?, &decode::<AgreementAdded>(answer, &what)?)
        }
        Command::Agreement(AgreementCommand::List { .. }) => render::agreement_list(
            &decode::<Vec<Agreement>>(answer, &what)?,
            i64::try_from(now).unwrap_or(i64::MAX),
        ),
        Command::Invite {
            manage: Some(InviteCommand::List { .. }),
            ..
        } => render::invite_list(&decode::<InviteList>(answer, &what)?, now),
        Command::Invite {
            manage: Some(InviteCommand::Withdraw { .. }),
            ..
        } => render::invite_withdrawn(&decode::<InviteWithdrawn>(answer, &what)?),
        Command::Invite {
            manage: Some(InviteCommand::Approve { group, deny, .. }),
            ..
        } => render::code_decided(arg(group)?, !deny, &decode::<CodeStatus>(answer, &what)?),
        Command::Invite {
            group, code: false, ..
        } => render::invite(
            arg(group)?,
            &decode::<InviteCreated>(answer, &what)?,
            now,
            qr,
        ),
        Command::Invite {
            group,
            code: true,
            no_wait,
            ..
        } => render::code(
            arg(group)?,
            &decode::<CodeCreated>(answer, &what)?,
            now,
            !no_wait,
        ),
        Command::Join { .. } => render::joined(&decode::<Joined>(answer, &what)?),
        Command::Peer(PeerCommand::Add { .. }) => {
            render::peer_added(&decode::<PeerAdded>(answer, &what)?)
        }
        Command::Peer(PeerCommand::List) => render::peer_list(&decode::<Vec<Peer>>(answer, &what)?),
        Command::Unlock { .. } => render::unlocked(&decode::<Status>(answer, &what)?),
        Command::Lock => render::locked(&decode::<Status>(answer, &what)?),
        Command::Panic { .. } => {
            let panicked = decode::<Panicked>(answer, &what)?;
            if !panicked.destroyed {
                bail!(
                    "hearthd answered that it did not destroy its keys and data; check with \
                     `hearth status`, and stop hearthd if you must"
                );
            }
            render::panicked()
        }
        Command::Passphrase(passphrase) => {
            // The answer is the new status; what changed is the command's to say.
            decode::<Status>(answer, &what)?;
            match passphrase {
                PassphraseCommand::Set { .. } => render::PASSPHRASE_SET,
                PassphraseCommand::Change { .. } => render::PASSPHRASE_CHANGED,
                PassphraseCommand::Remove { .. } => render::PASSPHRASE_REMOVED,
                PassphraseCommand::Duress { .. } => render::DURESS_SET,
            }
            .to_owned()
        }
    })
}

/// A warning for stderr that `answer`, hearthd's answer to `command`, calls for, with or
/// without `--json`: members whose key changed since you verified someone by their name.
/// An answer of an unexpected shape gives none (`human` reports that shape itself).
pub fn warning(command: &Command, answer: &Value) -> Option<String> {
    let (group, members) = match command {
        Command::Member(MemberCommand::List { group }) => (
            group.as_deref()?,
            serde_json::from_value::<Vec<MemberInfo>>(answer.clone()).ok()?,
        ),
        Command::Group(GroupCommand::Show { group }) => (
            group.as_deref()?,
            serde_json::from_value::<GroupDetail>(answer.clone())
                .ok()?
                .members,
        ),
        _ => return None,
    };
    render::key_changed_warning(group, &members)
}

fn decode<T: DeserializeOwned>(answer: Value, what: &str) -> Result<T> {
    serde_json::from_value(answer).with_context(|| {
        format!(
            "hearthd's answer to {what} does not have the shape this hearth expects \
             (are hearth and hearthd the same version? `--json` shows the raw answer)"
        )
    })
}

/// `/v1/<segments…>`, for fixed segments only.
fn path(segments: &[&str]) -> String {
    let mut path = API_PREFIX.to_owned();
    for segment in segments {
        path.push('/');
        path.push_str(segment);
    }
    path
}

/// `/v1/groups/{group}[/<tail>]`, with the user's group id or name encoded.
fn group_path(group: &str, tail: Option<&str>) -> String {
    let mut path = path(&["groups", &encode_segment(group)]);
    if let Some(tail) = tail {
        path.push('/');
        path.push_str(tail);
    }
    path
}

/// `/v1/groups/{group}/members/{member}[/<tail>]`, with both encoded.
fn member_path(group: &str, member: &str, tail: Option<&str>) -> String {
    let mut path = group_path(group, Some("members"));
    path.push('/');
    path.push_str(&encode_segment(member));
    if let Some(tail) = tail {
        path.push('/');
        path.push_str(tail);
    }
    path
}

fn get(path: String) -> ApiCall {
    bare(Method::GET, path)
}

/// A request without a body.
fn bare(method: Method, path: String) -> ApiCall {
    ApiCall {
        method,
        path,
        body: None,
    }
}

fn post(path: String, body: &impl Serialize) -> Result<ApiCall> {
    with_body(Method::POST, path, body)
}

fn put(path: String, body: &impl Serialize) -> Result<ApiCall> {
    with_body(Method::PUT, path, body)
}

fn with_body(method: Method, path: String, body: &impl Serialize) -> Result<ApiCall> {
    let body =
        serde_json::to_value(body).with_context(|| format!("encoding the body of {path}"))?;
    Ok(ApiCall {
        method,
        path,
        body: Some(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::RoleArg;
    use serde_json::json;

    fn call(command: Command) -> (Method, String, Option<Value>) {
        let call = api_call(&command).unwrap();
        (call.method, call.path, call.body)
    }

    #[test]
    fn every_command_maps_to_its_route() {
        let g = || Some("Thursday circle/2".to_owned());
        // A member name with a space and a character that would end the path.
        let m = || Some("Sam Lee?".to_owned());
        let cases = [
            (Command::Status, Method::GET, "/v1/status", None),
            (
                Command::Group(GroupCommand::Create {
                    name: Some("Carers".into()),
                    purpose: Some(Some("Support".into())),
                    my_name: Some(Some("Ana".into())),
                }),
                Method::POST,
                "/v1/groups",
                Some(json!({"name": "Carers", "purpose": "Support", "my_name": "Ana"})),
            ),
            (
                Command::Group(GroupCommand::Create {
                    name: Some("Carers".into()),
                    purpose: None,
                    my_name: None,
                }),
                Method::POST,
                "/v1/groups",
                Some(json!({"name": "Carers", "purpose": null, "my_name": null})),
            ),
            (
                Command::Group(GroupCommand::List),
                Method::GET,
                "/v1/groups",
                None,
            ),
            (
                Command::Group(GroupCommand::Show { group: g() }),
                Method::GET,
                "/v1/groups/Thursday%20circle%2F2",
                None,
            ),
            (
                Command::Agreement(AgreementCommand::Add {
                    group: g(),
                    text: Some("We listen.".into()),
                }),
                Method::POST,
                "/v1/groups/Thursday%20circle%2F2/agreements",
                Some(json!({"text": "We listen."})),
            ),
            (
                Command::Agreement(AgreementCommand::List { group: g() }),
                Method::GET,
                "/v1/groups/Thursday%20circle%2F2/agreements",
                None,
            ),
            (
                Command::Invite {
                    manage: None,
                    group: g(),
                    ttl: Some(7200),
                    code: false,
                    no_wait: false,
                    no_qr: false,
                },
                Method::POST,
                "/v1/groups/Thursday%20circle%2F2/invites",
                Some(json!({"ttl_secs": 7200})),
            ),
            (
                Command::Invite {
                    manage: None,
                    group: Some("abc".into()),
                    ttl: None,
                    code: false,
                    no_wait: false,
                    no_qr: true,
                },
                Method::POST,
                "/v1/groups/abc/invites",
                Some(json!({"ttl_secs": null})),
            ),
            (
                Command::Invite {
                    manage: Some(InviteCommand::List { group: g() }),
                    group: None,
                    ttl: None,
                    code: false,
                    no_wait: false,
                    no_qr: false,
                },
                Method::GET,
                "/v1/groups/Thursday%20circle%2F2/invites",
                None,
            ),
            (
                Command::Invite {
                    manage: Some(InviteCommand::Withdraw {
                        group: g(),
                        id: "3f9a/0c12".into(),
                    }),
                    group: None,
                    ttl: None,
                    code: false,
                    no_wait: false,
                    no_qr: false,
                },
                Method::DELETE,
                "/v1/groups/Thursday%20circle%2F2/invites/3f9a%2F0c12",
                None,
            ),
            (
                invite_code("Thursday circle/2", Some(1800), false),
                Method::POST,
                "/v1/groups/Thursday%20circle%2F2/codes",
                Some(json!({"ttl_secs": 1800})),
            ),
            (
                invite_code("abc", None, true),
                Method::POST,
                "/v1/groups/abc/codes",
                Some(json!({"ttl_secs": null})),
            ),
            (
                Command::Join {
                    token: Some("tok".into()),
                    name: None,
                },
                Method::POST,
                "/v1/join",
                Some(json!({"token": "tok", "name": null})),
            ),
            (
                Command::Join {
                    token: Some("tok".into()),
                    name: Some(Some("Sam Lee".into())),
                },
                Method::POST,
                "/v1/join",
                Some(json!({"token": "tok", "name": "Sam Lee"})),
            ),
            (
                Command::Member(MemberCommand::List { group: g() }),
                Method::GET,
                "/v1/groups/Thursday%20circle%2F2/members",
                None,
            ),
            (
                Command::Member(MemberCommand::Verify {
                    group: g(),
                    member: m(),
                    confirm: false,
                }),
                Method::GET,
                "/v1/groups/Thursday%20circle%2F2/members/Sam%20Lee%3F/safety-number",
                None,
            ),
            (
                Command::Member(MemberCommand::Verify {
                    group: g(),
                    member: m(),
                    confirm: true,
                }),
                Method::POST,
                "/v1/groups/Thursday%20circle%2F2/members/Sam%20Lee%3F/verify",
                Some(json!({})),
            ),
            (
                Command::Member(MemberCommand::Role {
                    group: g(),
                    member: m(),
                    role: Some(RoleArg::Facilitator),
                    words: Vec::new(),
                }),
                Method::PUT,
                "/v1/groups/Thursday%20circle%2F2/members/Sam%20Lee%3F/role",
                Some(json!({"role": "facilitator"})),
            ),
            (
                Command::Member(MemberCommand::Role {
                    group: Some("abc".into()),
                    member: Some("0123456789abcdef0123456789abcdef".into()),
                    role: Some(RoleArg::Member),
                    words: Vec::new(),
                }),
                Method::PUT,
                "/v1/groups/abc/members/0123456789abcdef0123456789abcdef/role",
                Some(json!({"role": "member"})),
            ),
            (
                Command::Member(MemberCommand::Remove {
                    group: g(),
                    member: m(),
                }),
                Method::DELETE,
                "/v1/groups/Thursday%20circle%2F2/members/Sam%20Lee%3F",
                None,
            ),
            (
                Command::Leave {
                    group: g(),
                    keep_copy: false,
                    yes: true,
                },
                Method::POST,
                "/v1/groups/Thursday%20circle%2F2/leave",
                Some(json!({"keep_copy": false})),
            ),
            (
                Command::Leave {
                    group: g(),
                    keep_copy: true,
                    yes: false,
                },
                Method::POST,
                "/v1/groups/Thursday%20circle%2F2/leave",
                Some(json!({"keep_copy": true})),
            ),
            (
                Command::Peer(PeerCommand::Add {
                    addr: "/ip4/192.0.2.7/tcp/4001".into(),
                }),
                Method::POST,
                "/v1/peers",
                Some(json!({"addr": "/ip4/192.0.2.7/tcp/4001"})),
            ),
            (
                Command::Peer(PeerCommand::List),
                Method::GET,
                "/v1/peers",
                None,
            ),
        ];
        for (command, method, path, body) in cases {
            let label = format!("{command:?}");
            assert_eq!(call(command), (method, path.to_owned(), body), "{label}");
        }
    }

    #[test]
    fn join_and_leave_wait_longer_than_the_rest() {
        let join = Command::Join {
            token: Some("t".into()),
            name: None,
        };
        assert!(timeout(&join) > timeout(&Command::Status));
        let leave = Command::Leave {
            group: Some("g".into()),
            keep_copy: false,
            yes: true,
        };
        // hearthd waits up to 15 s for the departure to be delivered.
        assert!(timeout(&leave) >= Duration::from_secs(4 * 15));
        assert!(timeout(&leave) > timeout(&Command::Status));
    }

    fn member(name: &str, key_changed: bool) -> Value {
        json!({
            "member_id": "fedcba9876543210fedcba9876543210",
            "name": name,
            "role": "member",
            "verified": false,
            "joined_at": 1_767_225_600,
            "you": false,
            "key_changed": key_changed,
        })
    }

    #[test]
    fn member_list_and_group_show_warn_about_changed_keys() {
        let list = Command::Member(MemberCommand::List {
            group: Some("Thursday circle".into()),
        });
        let warning = warning(&list, &json!([member("Sam", true)])).unwrap();
        assert!(warning.contains("\"Sam\""), "{warning}");
        assert!(
            warning.ends_with("face to face: hearth member verify\n"),
            "{warning}"
        );
        assert_eq!(super::warning(&list, &json!([member("Sam", false)])), None);
        // A malformed answer is `human`'s to report, not the warning's.
        assert_eq!(super::warning(&list, &json!({"nope": 1})), None);

        let show = Command::Group(GroupCommand::Show {
            group: Some("g".into()),
        });
        let detail = json!({
            "group_id": "0123456789abcdef0123456789abcdef",
            "name": "g",
            "purpose": "",
            "members": [member("Sam", true)],
            "agreements": [],
        });
        assert!(super::warning(&show, &detail).is_some());
        assert_eq!(super::warning(&Command::Status, &detail), None);
    }

    #[test]
    fn member_answers_are_rendered_for_people() {
        let verify = Command::Member(MemberCommand::Verify {
            group: Some("Thursday circle".into()),
            member: Some("Sam".into()),
            confirm: true,
        });
        let call = api_call(&verify).unwrap();
        let out = human(
            &verify,
            &call,
            json!({"safety_number": "12345 12345 12345 12345 12345 12345 12345 12345 12345 12345 12345 12345", "verified": true}),
            0, false,
        )
        .unwrap();
        assert_eq!(out, "Marked Sam as verified.\n");

        let remove = Command::Member(MemberCommand::Remove {
            group: Some("g".into()),
            member: Some("Sam".into()),
        });
        let call = api_call(&remove).unwrap();
        let out = human(
            &remove,
            &call,
            json!({"member_id": "fedcba9876543210fedcba9876543210", "epoch": 4}),
            0,
            false,
        )
        .unwrap();
        assert_eq!(
            out,
            "Removed Sam. A new key (epoch 4) now protects everything written from here on; \
             Sam cannot read it.\n"
        );

        let list = Command::Member(MemberCommand::List {
            group: Some("g".into()),
        });
        let call = api_call(&list).unwrap();
        let out = human(&list, &call, json!([member("", false)]), 0, false).unwrap();
        assert!(out.starts_with("NAME"), "{out}");
        assert!(out.contains("(no name)"), "{out}");
    }

    #[test]
    fn answers_of_the_wrong_shape_are_errors_with_context() {
        let command = Command::Status;
        let call = api_call(&command).unwrap();
        let err = human(&command, &call, json!({"locked": "no"}), 0, false).unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("GET /v1/status"), "{message}");
        assert!(message.contains("--json"), "{message}");
    }

    fn invite_token(group: &str, no_qr: bool) -> Command {
        Command::Invite {
            manage: None,
            group: Some(group.into()),
            ttl: None,
            code: false,
            no_wait: false,
            no_qr,
        }
    }

    fn invite_code(group: &str, ttl: Option<u64>, no_wait: bool) -> Command {
        Command::Invite {
            manage: None,
            group: Some(group.into()),
            ttl,
            code: true,
            no_wait,
            no_qr: false,
        }
    }

    #[test]
    fn answers_are_rendered_for_people() {
        let command = invite_token("Carers", false);
        let call = api_call(&command).unwrap();
        let out = human(
            &command,
            &call,
            json!({"token": "T", "expires_at": 1_000 + 900}),
            1_000,
            false,
        )
        .unwrap();
        assert!(out.contains("\nT\n"), "{out}");
        assert!(out.contains("expires in 15 minutes"), "{out}");
    }

    #[test]
    fn code_status_is_a_long_poll_on_the_channel() {
        let call = code_status_call("Thursday circle/2", 4, 605);
        assert_eq!(
            (call.method, call.path.as_str(), call.body),
            (
                Method::GET,
                "/v1/groups/Thursday%20circle%2F2/codes/4?wait=605",
                None
            )
        );
        assert_eq!(
            code_status_call("abc", 65535, 0).path,
            "/v1/groups/abc/codes/65535?wait=0"
        );
    }

    #[test]
    fn only_invite_code_without_no_wait_waits() {
        assert_eq!(waits_for_code(&invite_code("g", None, false)), Some("g"));
        assert_eq!(waits_for_code(&invite_code("g", None, true)), None);
        assert_eq!(waits_for_code(&invite_token("g", false)), None);
        assert_eq!(waits_for_code(&Command::Status), None);
    }

    #[test]
    fn qr_codes_are_for_tokens_on_a_terminal_without_json_or_no_qr() {
        let token = invite_token("g", false);
        assert!(shows_qr(&token, false, true));
        assert!(!shows_qr(&token, true, true), "--json");
        assert!(!shows_qr(&token, false, false), "piped");
        assert!(!shows_qr(&invite_token("g", true), false, true), "--no-qr");
        assert!(
            !shows_qr(&invite_code("g", None, false), false, true),
            "--code"
        );
        assert!(!shows_qr(&Command::Status, false, true));
    }

    /// A token of the usual length.
    fn token_answer() -> Value {
        let token = format!("hearth1-{}", "abcdefghijklmnopqrstuvwxyz234567".repeat(10));
        json!({"token": token, "expires_at": 1_900})
    }

    #[test]
    fn the_qr_code_follows_the_token_only_when_asked_for() {
        let command = invite_token("g", false);
        let call = api_call(&command).unwrap();
        let with = human(&command, &call, token_answer(), 1_000, true).unwrap();
        let without = human(&command, &call, token_answer(), 1_000, false).unwrap();
        let token = token_answer()["token"].as_str().unwrap().to_owned();
        for out in [&with, &without] {
            assert!(out.lines().any(|l| l == token), "{out}");
        }
        let qr = |out: &str| out.contains('\u{2580}') || out.contains('\u{1b}');
        assert!(qr(&with), "{with}");
        assert!(!qr(&without), "{without}");
        // The token comes first, then the picture, then the expiry and the warning.
        let token_at = with.find(&token).unwrap();
        let picture_at = with.find('\u{1b}').unwrap();
        let expiry_at = with.find("It expires in 15 minutes.").unwrap();
        assert!(token_at < picture_at && picture_at < expiry_at, "{with}");
        assert!(
            with.trim_end()
                .ends_with("Whoever holds it can join the group.")
        );
    }

    #[test]
    fn json_is_pretty_except_for_code_lines() {
        let answer = json!({"code": "4-lantern-orchard-meadow", "channel": 4, "expires_at": 1_600});
        let line = json(&invite_code("g", None, false), &answer).unwrap();
        assert_eq!(
            line,
            "{\"channel\":4,\"code\":\"4-lantern-orchard-meadow\",\"expires_at\":1600}\n"
        );
        assert_eq!(line.lines().count(), 1);
        let pretty = json(&invite_token("g", false), &token_answer()).unwrap();
        assert!(pretty.lines().count() > 1, "{pretty}");
        assert!(pretty.ends_with("}\n"));
        // No QR code in JSON, whatever the flags.
        assert!(!pretty.contains('\u{1b}') && !pretty.contains('\u{2580}'));
    }

    #[test]
    fn the_code_screen_says_it_aloud_and_whether_hearth_waits() {
        let answer = json!({"code": "4-lantern-orchard-meadow", "channel": 4, "expires_at": 1_600});
        let waiting = invite_code("Thursday circle", None, false);
        let call = api_call(&waiting).unwrap();
        let out = human(&waiting, &call, answer.clone(), 1_000, true).unwrap();
        assert_eq!(
            out,
            "Say this code to the person joining \"Thursday circle\" (it works once, for 10 \
             minutes):\n\
             \n\
             \x20   4-lantern-orchard-meadow\n\
             \n\
             They run `hearth join` and type the code when it asks.\n\
             Waiting for their device... You will be asked to let them in. (Ctrl-C stops \
             waiting; the code stays valid until it expires)\n"
        );
        let no_wait = invite_code("Thursday circle", None, true);
        let out = human(&no_wait, &call, answer, 1_000, true).unwrap();
        assert!(!out.contains("Waiting"), "{out}");
        assert!(
            out.ends_with(
                "The code stays valid until it expires. When their device has found yours, it \
                 waits for you to let them in: hearth invite approve 4\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn joining_waits_long_enough_for_a_code_search() {
        let join = Command::Join {
            token: Some("4-lantern-orchard-meadow".into()),
            name: None,
        };
        // Search 20 s, one daemon's answer 15 s, the join 30 s, the first sync 20 s: twice
        // that, so hearthd's own error arrives first.
        assert!(timeout(&join) >= Duration::from_secs(2 * (20 + 15 + 30 + 20)));
    }
}
