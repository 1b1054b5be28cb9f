//! Types of the local API that hearthd serves over its Unix socket (HTTP/1.1 + JSON).
//!
//! Every path is versioned under `/v1`. A client (the `hearth` CLI or any other) sends the
//! request bodies below and receives the response bodies below; on failure it receives an
//! [`ApiError`] with a non-2xx status. `{group}` in a path is a group id (hex) or a group
//! name that names exactly one group.
//!
//! | method | path                              | request              | response               |
//! |--------|-----------------------------------|----------------------|------------------------|
//! | GET    | /v1/status                        |                      | [`Status`]             |
//! | POST   | /v1/groups                        | [`CreateGroup`]      | [`GroupCreated`]       |
//! | GET    | /v1/groups                        |                      | `Vec<`[`GroupSummary`]`>` |
//! | GET    | /v1/groups/{group}                |                      | [`GroupDetail`]        |
//! | POST   | /v1/groups/{group}/agreements     | [`AddAgreement`]     | [`AgreementAdded`]     |
//! | GET    | /v1/groups/{group}/agreements     |                      | `Vec<`[`Agreement`]`>` |
//! | POST   | /v1/groups/{group}/invites        | [`CreateInvite`]     | [`InviteCreated`]      |
//! | POST   | /v1/join                          | [`Join`]             | [`Joined`]             |
//! | POST   | /v1/peers                         | [`AddPeer`]          | [`PeerAdded`]          |
//! | GET    | /v1/peers                         |                      | `Vec<`[`Peer`]`>`      |

use serde::{Deserialize, Serialize};

/// The path prefix of this version of the API.
pub const API_PREFIX: &str = "/v1";

/// Default lifetime of an invite token, in seconds (15 minutes).
pub const DEFAULT_INVITE_TTL_SECS: u64 = 15 * 60;
/// Longest lifetime an invite token may be given, in seconds (7 days).
pub const MAX_INVITE_TTL_SECS: u64 = 7 * 24 * 60 * 60;

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This device's member id (hex).
    pub member_id: String,
    /// The multiaddrs hearthd listens on, as strings.
    pub listen_addrs: Vec<String>,
    /// Number of peers connected at the moment.
    pub peers: usize,
    /// Number of groups this device belongs to.
    pub groups: usize,
}

/// `POST /v1/groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateGroup {
    pub name: String,
    #[serde(default)]
    pub purpose: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCreated {
    pub group_id: String,
}

/// One row of `GET /v1/groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSummary {
    pub group_id: String,
    pub name: String,
    pub members: usize,
}

/// A member's role in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Facilitator,
    Member,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Facilitator => "facilitator",
            Role::Member => "member",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub member_id: String,
    pub role: Role,
}

/// `GET /v1/groups/{group}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDetail {
    pub group_id: String,
    pub name: String,
    pub purpose: String,
    pub members: Vec<MemberInfo>,
    pub agreements: Vec<Agreement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agreement {
    pub id: String,
    pub text: String,
    /// Member id (hex) of the member who proposed it.
    pub author: String,
    /// When the author wrote it, seconds since the Unix epoch by the author's clock
    /// (display only: nothing orders by it).
    pub created_at: i64,
}

/// `POST /v1/groups/{group}/agreements`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddAgreement {
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgreementAdded {
    pub id: String,
}

/// `POST /v1/groups/{group}/invites`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CreateInvite {
    /// Lifetime in seconds; [`DEFAULT_INVITE_TTL_SECS`] when absent.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteCreated {
    /// The one-time token to hand to the person joining. It is a secret.
    pub token: String,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// `POST /v1/join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    pub group_id: String,
}

/// `POST /v1/peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddPeer {
    /// A multiaddr such as `/ip4/192.0.2.7/tcp/4001`, with or without a `/p2p/` suffix.
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAdded {
    pub addr: String,
}

/// One row of `GET /v1/peers`: a connected peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The peer's libp2p peer id for this session (ephemeral: it changes on each start).
    pub peer_id: String,
    pub addrs: Vec<String>,
}

/// The body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable machine-readable code, e.g. `group_not_found`.
    pub code: String,
    /// A sentence for a person: what went wrong and what to do about it.
    pub message: String,
}

impl ApiError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            error: ErrorBody {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}

/// Where the local API socket lives when no `--socket`/`HEARTH_SOCKET` is given:
/// `$XDG_RUNTIME_DIR/hearth/hearthd.sock` when a runtime directory exists, else
/// `hearthd.sock` in the data directory. Daemon and clients call this one function so they
/// always agree.
pub fn default_socket_path(
    runtime_dir: Option<&std::path::Path>,
    data_dir: &std::path::Path,
) -> std::path::PathBuf {
    match runtime_dir {
        Some(dir) => dir.join("hearth").join("hearthd.sock"),
        None => data_dir.join("hearthd.sock"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_serialises_as_snake_case_word() {
        let m = MemberInfo {
            member_id: "ab".into(),
            role: Role::Facilitator,
        };
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, r#"{"member_id":"ab","role":"facilitator"}"#);
    }

    #[test]
    fn socket_prefers_runtime_dir() {
        use std::path::Path;
        let data = Path::new("/d/hearth");
        assert_eq!(
            default_socket_path(Some(Path::new("/run/user/1")), data),
            Path::new("/run/user/1/hearth/hearthd.sock")
        );
        assert_eq!(
            default_socket_path(None, data),
            Path::new("/d/hearth/hearthd.sock")
        );
    }

    #[test]
    fn create_group_purpose_is_optional() {
        let g: CreateGroup = serde_json::from_str(r#"{"name":"Thursday circle"}"#).unwrap();
        assert_eq!(g.purpose, None);
    }
}
