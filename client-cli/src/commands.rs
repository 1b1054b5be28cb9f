//! What each command asks hearthd, and which rendering its answer gets.

use std::time::Duration;

use anyhow::{Context, Result};
use hearth_protocol::api::{
    API_PREFIX, AddAgreement, AddPeer, Agreement, AgreementAdded, CreateGroup, CreateInvite,
    GroupCreated, GroupDetail, GroupSummary, InviteCreated, Join, Joined, Leave, Left, MemberInfo,
    MemberRemoved, Peer, PeerAdded, SafetyNumber, SetRole, Status,
};
use hyper::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::cli::{AgreementCommand, Command, GroupCommand, MemberCommand, PeerCommand};
use crate::path::encode_segment;
use crate::render;

/// How long to wait for most answers: they are local reads and writes.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Joining dials the facilitator over the network and waits for its welcome, so it gets
/// longer than hearthd's own dialling needs, to see hearthd's error rather than ours.
const JOIN_TIMEOUT: Duration = Duration::from_secs(180);
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

/// The request `command` makes.
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
                name: name.clone(),
                purpose: purpose.clone(),
                my_name: my_name.clone(),
            },
        )?,
        Command::Group(GroupCommand::List) => get(path(&["groups"])),
        Command::Group(GroupCommand::Show { group }) => get(group_path(group, None)),
        Command::Agreement(AgreementCommand::Add { group, text }) => post(
            group_path(group, Some("agreements")),
            &AddAgreement { text: text.clone() },
        )?,
        Command::Agreement(AgreementCommand::List { group }) => {
            get(group_path(group, Some("agreements")))
        }
        Command::Invite { group, ttl } => post(
            group_path(group, Some("invites")),
            &CreateInvite { ttl_secs: *ttl },
        )?,
        Command::Join { token, name } => post(
            path(&["join"]),
            &Join {
                token: token.clone(),
                name: name.clone(),
            },
        )?,
        Command::Member(MemberCommand::List { group }) => get(group_path(group, Some("members"))),
        Command::Member(MemberCommand::Verify {
            group,
            member,
            confirm: false,
        }) => get(member_path(group, member, Some("safety-number"))),
        Command::Member(MemberCommand::Verify {
            group,
            member,
            confirm: true,
        }) => post(
            member_path(group, member, Some("verify")),
            &serde_json::Map::new(),
        )?,
        Command::Member(MemberCommand::Role {
            group,
            member,
            role,
        }) => put(
            member_path(group, member, Some("role")),
            &SetRole {
                role: (*role).into(),
            },
        )?,
        Command::Member(MemberCommand::Remove { group, member }) => ApiCall {
            method: Method::DELETE,
            path: member_path(group, member, None),
            body: None,
        },
        Command::Leave {
            group, keep_copy, ..
        } => post(
            group_path(group, Some("leave")),
            &Leave {
                keep_copy: *keep_copy,
            },
        )?,
        Command::Peer(PeerCommand::Add { addr }) => {
            post(path(&["peers"]), &AddPeer { addr: addr.clone() })?
        }
        Command::Peer(PeerCommand::List) => get(path(&["peers"])),
    })
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
/// since the Unix epoch.
pub fn human(command: &Command, call: &ApiCall, answer: Value, now: u64) -> Result<String> {
    let what = call.describe();
    Ok(match command {
        Command::Status => render::status(&decode::<Status>(answer, &what)?),
        Command::Group(GroupCommand::Create { name, .. }) => {
            render::group_created(name, &decode::<GroupCreated>(answer, &what)?)
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
        }) => render::safety_number(group, member, &decode::<SafetyNumber>(answer, &what)?),
        Command::Member(MemberCommand::Verify {
            group,
            member,
            confirm: true,
        }) => render::verified(group, member, &decode::<SafetyNumber>(answer, &what)?),
        Command::Member(MemberCommand::Role { group, member, .. }) => {
            render::role_set(group, member, &decode::<MemberInfo>(answer, &what)?)
        }
        Command::Member(MemberCommand::Remove { member, .. }) => {
            render::member_removed(member, &decode::<MemberRemoved>(answer, &what)?)
        }
        Command::Leave { group, .. } => render::left(group, &decode::<Left>(answer, &what)?),
        Command::Agreement(AgreementCommand::Add { group, .. }) => {
            render::agreement_added(group, &decode::<AgreementAdded>(answer, &what)?)
        }
        Command::Agreement(AgreementCommand::List { .. }) => render::agreement_list(
            &decode::<Vec<Agreement>>(answer, &what)?,
            i64::try_from(now).unwrap_or(i64::MAX),
        ),
        Command::Invite { group, .. } => {
            render::invite(group, &decode::<InviteCreated>(answer, &what)?, now)
        }
        Command::Join { .. } => render::joined(&decode::<Joined>(answer, &what)?),
        Command::Peer(PeerCommand::Add { .. }) => {
            render::peer_added(&decode::<PeerAdded>(answer, &what)?)
        }
        Command::Peer(PeerCommand::List) => render::peer_list(&decode::<Vec<Peer>>(answer, &what)?),
    })
}

/// A warning for stderr that `answer`, hearthd's answer to `command`, calls for, with or
/// without `--json`: members whose key changed since you verified someone by their name.
/// An answer of an unexpected shape gives none (`human` reports that shape itself).
pub fn warning(command: &Command, answer: &Value) -> Option<String> {
    let (group, members) = match command {
        Command::Member(MemberCommand::List { group }) => (
            group,
            serde_json::from_value::<Vec<MemberInfo>>(answer.clone()).ok()?,
        ),
        Command::Group(GroupCommand::Show { group }) => (
            group,
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
    ApiCall {
        method: Method::GET,
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
        let g = || "Thursday circle/2".to_owned();
        // A member name with a space and a character that would end the path.
        let m = || "Sam Lee?".to_owned();
        let cases = [
            (Command::Status, Method::GET, "/v1/status", None),
            (
                Command::Group(GroupCommand::Create {
                    name: "Carers".into(),
                    purpose: Some("Support".into()),
                    my_name: Some("Ana".into()),
                }),
                Method::POST,
                "/v1/groups",
                Some(json!({"name": "Carers", "purpose": "Support", "my_name": "Ana"})),
            ),
            (
                Command::Group(GroupCommand::Create {
                    name: "Carers".into(),
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
                    text: "We listen.".into(),
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
                    group: g(),
                    ttl: Some(7200),
                },
                Method::POST,
                "/v1/groups/Thursday%20circle%2F2/invites",
                Some(json!({"ttl_secs": 7200})),
            ),
            (
                Command::Invite {
                    group: "abc".into(),
                    ttl: None,
                },
                Method::POST,
                "/v1/groups/abc/invites",
                Some(json!({"ttl_secs": null})),
            ),
            (
                Command::Join {
                    token: "tok".into(),
                    name: None,
                },
                Method::POST,
                "/v1/join",
                Some(json!({"token": "tok", "name": null})),
            ),
            (
                Command::Join {
                    token: "tok".into(),
                    name: Some("Sam Lee".into()),
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
                    role: RoleArg::Facilitator,
                }),
                Method::PUT,
                "/v1/groups/Thursday%20circle%2F2/members/Sam%20Lee%3F/role",
                Some(json!({"role": "facilitator"})),
            ),
            (
                Command::Member(MemberCommand::Role {
                    group: "abc".into(),
                    member: "0123456789abcdef0123456789abcdef".into(),
                    role: RoleArg::Member,
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
            token: "t".into(),
            name: None,
        };
        assert!(timeout(&join) > timeout(&Command::Status));
        let leave = Command::Leave {
            group: "g".into(),
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
            group: "Thursday circle".into(),
        });
        let warning = warning(&list, &json!([member("Sam", true)])).unwrap();
        assert!(warning.contains("\"Sam\""), "{warning}");
        assert!(
            warning.contains(
                "hearth member verify 'Thursday circle' fedcba9876543210fedcba9876543210"
            ),
            "{warning}"
        );
        assert_eq!(super::warning(&list, &json!([member("Sam", false)])), None);
        // A malformed answer is `human`'s to report, not the warning's.
        assert_eq!(super::warning(&list, &json!({"nope": 1})), None);

        let show = Command::Group(GroupCommand::Show { group: "g".into() });
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
            group: "Thursday circle".into(),
            member: "Sam".into(),
            confirm: true,
        });
        let call = api_call(&verify).unwrap();
        let out = human(
            &verify,
            &call,
            json!({"safety_number": "12345 12345 12345 12345 12345 12345 12345 12345 12345 12345 12345 12345", "verified": true}),
            0,
        )
        .unwrap();
        assert_eq!(out, "Marked Sam as verified.\n");

        let remove = Command::Member(MemberCommand::Remove {
            group: "g".into(),
            member: "Sam".into(),
        });
        let call = api_call(&remove).unwrap();
        let out = human(
            &remove,
            &call,
            json!({"member_id": "fedcba9876543210fedcba9876543210", "epoch": 4}),
            0,
        )
        .unwrap();
        assert_eq!(
            out,
            "Removed Sam. A new key (epoch 4) now protects everything written from here on; \
             Sam cannot read it.\n"
        );

        let list = Command::Member(MemberCommand::List { group: "g".into() });
        let call = api_call(&list).unwrap();
        let out = human(&list, &call, json!([member("", false)]), 0).unwrap();
        assert!(out.starts_with("NAME"), "{out}");
        assert!(out.contains("(no name)"), "{out}");
    }

    #[test]
    fn answers_of_the_wrong_shape_are_errors_with_context() {
        let command = Command::Status;
        let call = api_call(&command).unwrap();
        let err = human(&command, &call, json!({"member_id": 7}), 0).unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("GET /v1/status"), "{message}");
        assert!(message.contains("--json"), "{message}");
    }

    #[test]
    fn answers_are_rendered_for_people() {
        let command = Command::Invite {
            group: "Carers".into(),
            ttl: None,
        };
        let call = api_call(&command).unwrap();
        let out = human(
            &command,
            &call,
            json!({"token": "T", "expires_at": 1_000 + 900}),
            1_000,
        )
        .unwrap();
        assert!(out.contains("\nT\n"), "{out}");
        assert!(out.contains("expires in 15 minutes"), "{out}");
    }
}
