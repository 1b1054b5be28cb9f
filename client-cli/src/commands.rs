//! What each command asks hearthd, and which rendering its answer gets.

use std::time::Duration;

use anyhow::{Context, Result};
use hearth_protocol::api::{
    API_PREFIX, AddAgreement, AddPeer, Agreement, AgreementAdded, CreateGroup, CreateInvite,
    GroupCreated, GroupDetail, GroupSummary, InviteCreated, Join, Joined, Peer, PeerAdded, Status,
};
use hyper::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::cli::{AgreementCommand, Command, GroupCommand, PeerCommand};
use crate::path::encode_segment;
use crate::render;

/// How long to wait for most answers: they are local reads and writes.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Joining dials the facilitator over the network and waits for its welcome, so it gets
/// longer than hearthd's own dialling needs, to see hearthd's error rather than ours.
const JOIN_TIMEOUT: Duration = Duration::from_secs(180);

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
        Command::Group(GroupCommand::Create { name, purpose }) => post(
            path(&["groups"]),
            &CreateGroup {
                name: name.clone(),
                purpose: purpose.clone(),
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
        Command::Join { token } => post(
            path(&["join"]),
            &Join {
                token: token.clone(),
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

fn get(path: String) -> ApiCall {
    ApiCall {
        method: Method::GET,
        path,
        body: None,
    }
}

fn post(path: String, body: &impl Serialize) -> Result<ApiCall> {
    let body =
        serde_json::to_value(body).with_context(|| format!("encoding the body of {path}"))?;
    Ok(ApiCall {
        method: Method::POST,
        path,
        body: Some(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(command: Command) -> (Method, String, Option<Value>) {
        let call = api_call(&command).unwrap();
        (call.method, call.path, call.body)
    }

    #[test]
    fn every_command_maps_to_its_route() {
        let g = || "Thursday circle/2".to_owned();
        let cases = [
            (Command::Status, Method::GET, "/v1/status", None),
            (
                Command::Group(GroupCommand::Create {
                    name: "Carers".into(),
                    purpose: Some("Support".into()),
                }),
                Method::POST,
                "/v1/groups",
                Some(json!({"name": "Carers", "purpose": "Support"})),
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
                },
                Method::POST,
                "/v1/join",
                Some(json!({"token": "tok"})),
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
    fn join_waits_longer_than_the_rest() {
        assert!(timeout(&Command::Join { token: "t".into() }) > timeout(&Command::Status));
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
