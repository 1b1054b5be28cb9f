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
//! | GET    | /v1/groups/{group}/agreements/{id} |                     | [`Agreement`]          |
//! | POST   | /v1/groups/{group}/invites        | [`CreateInvite`]     | [`InviteCreated`]      |
//! | GET    | /v1/groups/{group}/members        |                      | `Vec<`[`MemberInfo`]`>` |
//! | GET    | /v1/groups/{group}/members/{member}/safety-number | | [`SafetyNumber`]   |
//! | POST   | /v1/groups/{group}/members/{member}/verify |             | [`SafetyNumber`]       |
//! | PUT    | /v1/groups/{group}/members/{member}/role | [`SetRole`]  | [`MemberInfo`]         |
//! | DELETE | /v1/groups/{group}/members/{member} |                    | [`MemberRemoved`]      |
//! | POST   | /v1/groups/{group}/leave          | [`Leave`]            | [`Left`]               |
//! | GET    | /v1/groups/{group}/invites        |                      | [`InviteList`]         |
//! | DELETE | /v1/groups/{group}/invites/{id}   |                      | [`InviteWithdrawn`]    |
//! | POST   | /v1/groups/{group}/codes          | [`CreateCode`]       | [`CodeCreated`]        |
//! | GET    | /v1/groups/{group}/codes/{channel}?wait=SECS |           | [`CodeStatus`]         |
//! | POST   | /v1/groups/{group}/codes/{channel}/approval | [`CodeApproval`] | [`CodeStatus`]   |
//! | POST   | /v1/join                          | [`Join`]             | [`Joined`]             |
//! | POST   | /v1/peers                         | [`AddPeer`]          | [`PeerAdded`]          |
//! | GET    | /v1/peers                         |                      | `Vec<`[`Peer`]`>`      |
//! | GET    | /v1/events                        |                      | server-sent events     |
//! | POST   | /v1/unlock                        | [`Unlock`]           | [`Status`]             |
//! | POST   | /v1/lock                          |                      | [`Status`]             |
//! | POST   | /v1/panic                         |                      | [`Panicked`]           |
//! | PUT    | /v1/passphrase                    | [`SetPassphrase`]    | [`Status`]             |
//! | DELETE | /v1/passphrase                    | [`RemovePassphrase`] | [`Status`]             |
//! | PUT    | /v1/passphrase/duress             | [`SetDuress`]        | [`Status`]             |
//!
//! While hearthd is locked it answers only `status`, `unlock` and `panic`; every other
//! request fails with status 423 and the error code [`ERROR_LOCKED`].
//!
//! `GET /v1/events` is a stream of server-sent events (`text/event-stream`), so a client
//! can show changes as they happen instead of asking again and again: an event named
//! [`EVENT_GROUP_CHANGED`] with a [`GroupChanged`] as its data each time a group's content
//! or membership changes on this device, and one named [`EVENT_RESYNC`] (no data) when the
//! client fell behind and should read again whatever it shows.

use serde::{Deserialize, Serialize};

/// The path prefix of this version of the API.
pub const API_PREFIX: &str = "/v1";

/// Default lifetime of an invite token, in seconds (15 minutes).
pub const DEFAULT_INVITE_TTL_SECS: u64 = 15 * 60;
/// Default lifetime of a spoken invite code, in seconds (10 minutes).
pub const DEFAULT_CODE_TTL_SECS: u64 = 10 * 60;
/// Longest lifetime a spoken invite code may be given, in seconds (1 hour): it is meant
/// for the room the facilitator and the new member are in.
pub const MAX_CODE_TTL_SECS: u64 = 60 * 60;
/// How long the facilitator's daemon holds a join by spoken code for the facilitator's
/// approval, in seconds, before turning it away.
pub const CODE_APPROVAL_SECS: u64 = 5 * 60;
/// Longest a client may ask `GET .../codes/{channel}` to wait, in seconds.
pub const MAX_CODE_WAIT_SECS: u64 = 60 * 60;
/// Longest lifetime an invite token may be given, in seconds (7 days).
pub const MAX_INVITE_TTL_SECS: u64 = 7 * 24 * 60 * 60;

/// `GET /v1/status`. While locked, hearthd knows nothing of its groups or network, so
/// only `locked`, `passphrase` and `auto_lock_secs` are present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Whether hearthd is locked: it holds no key and answers only status, unlock, panic.
    #[serde(default)]
    pub locked: bool,
    /// Whether a passphrase protects the store (without one, the storage key sits in a
    /// key file in the data directory).
    #[serde(default)]
    pub passphrase: bool,
    /// hearthd locks itself after this many seconds without a request (`--auto-lock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_lock_secs: Option<u64>,
    /// The multiaddrs hearthd listens on, as strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_addrs: Option<Vec<String>>,
    /// Number of peers connected at the moment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<usize>,
    /// Number of groups this device belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<usize>,
}

/// The error code of every request a locked hearthd refuses (HTTP status 423).
pub const ERROR_LOCKED: &str = "locked";
/// The error code of a passphrase that opens nothing (HTTP status 401).
pub const ERROR_WRONG_PASSPHRASE: &str = "wrong_passphrase";
/// The error code of an unlock tried again too soon after wrong ones (HTTP status 429).
pub const ERROR_SLOW_DOWN: &str = "slow_down";

/// A passphrase in a request body: wiped from memory when dropped, and never shown by
/// `Debug`.
#[derive(
    Clone, PartialEq, Eq, Serialize, Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop,
)]
#[serde(transparent)]
pub struct Passphrase(String);

impl Passphrase {
    pub fn new(text: String) -> Self {
        Passphrase(text)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

/// `POST /v1/unlock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unlock {
    pub passphrase: Passphrase,
}

/// `PUT /v1/passphrase`: sets the first passphrase (no `current`), or changes it
/// (`current` is the one in use). Only the small wrapped key is rewritten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetPassphrase {
    #[serde(default)]
    pub current: Option<Passphrase>,
    pub passphrase: Passphrase,
}

/// `DELETE /v1/passphrase`: the storage key goes back to a key file; any duress
/// passphrase goes with the passphrase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovePassphrase {
    pub current: Passphrase,
}

/// `PUT /v1/passphrase/duress`: a second passphrase that, given to `unlock`, destroys
/// everything and leaves what looks like a fresh install locked by it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetDuress {
    pub current: Passphrase,
    pub duress: Passphrase,
}

/// `POST /v1/panic`: sent just before hearthd exits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Panicked {
    /// Always true: the keys were destroyed, then the data.
    pub destroyed: bool,
}

/// `POST /v1/groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateGroup {
    pub name: String,
    #[serde(default)]
    pub purpose: Option<String>,
    /// The name the creator is shown by to the members.
    #[serde(default)]
    pub my_name: Option<String>,
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
    /// The key epoch this device writes under (each admission and removal starts a new
    /// one); `None` while it does not yet hold the current epoch's key.
    pub epoch: Option<u32>,
}

/// Name of the event `GET /v1/events` sends when a group changed.
pub const EVENT_GROUP_CHANGED: &str = "group_changed";
/// Name of the event `GET /v1/events` sends when the client missed events.
pub const EVENT_RESYNC: &str = "resync";

/// Data of a [`EVENT_GROUP_CHANGED`] event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupChanged {
    pub group_id: String,
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
    /// The name the member asked to be shown by (may be empty).
    pub name: String,
    pub role: Role,
    /// Whether this device's user compared safety numbers with them face to face.
    pub verified: bool,
    /// When they were admitted, seconds since the Unix epoch by the admitting
    /// facilitator's clock (display only); 0 for the group's creator.
    pub joined_at: i64,
    /// Whether this is this device.
    pub you: bool,
    /// A verified member who went by the same name has left or been removed, and this one
    /// has a different key: compare safety numbers again before trusting it.
    pub key_changed: bool,
}

/// `GET /v1/groups/{group}/members/{member}/safety-number` and `.../verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafetyNumber {
    /// Sixty digits in twelve groups of five; the same on both members' screens.
    pub safety_number: String,
    pub verified: bool,
}

/// `PUT /v1/groups/{group}/members/{member}/role`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRole {
    pub role: Role,
}

/// `DELETE /v1/groups/{group}/members/{member}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRemoved {
    pub member_id: String,
    /// The epoch started without them.
    pub epoch: u32,
}

/// `POST /v1/groups/{group}/leave`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Leave {
    /// Keep this device's copy of the group (read-only) instead of destroying it.
    #[serde(default)]
    pub keep_copy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Left {
    /// Whether another member's daemon confirmed it received the departure before this
    /// device stopped taking part (if not, a facilitator should remove this device).
    pub delivered: bool,
    /// Whether this device kept its copy of the group.
    pub kept_copy: bool,
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
    /// Member id (hex) of the member who proposed it: the author of the change that made
    /// the record (docs/protocol.md, "Who may change what").
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

/// `POST /v1/groups/{group}/codes`: a spoken invite code for someone in the same room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CreateCode {
    /// Lifetime in seconds; [`DEFAULT_CODE_TTL_SECS`] when absent.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeCreated {
    /// The code to say aloud, e.g. `4-lantern-orchard-meadow`. It is a secret.
    pub code: String,
    /// Its number, which names it in `GET .../codes/{channel}`.
    pub channel: u16,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// What became of a spoken code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeState {
    /// Nobody has used it yet.
    Open,
    /// Someone's device matched the code; its join request is awaited. The code admits
    /// no other exchange.
    Joining,
    /// Someone's device matched the code and asked to join: `name`, `member_id` and
    /// `safety_number` say who. They are let in only when the facilitator approves
    /// (`POST .../codes/{channel}/approval`).
    AwaitingApproval,
    /// Someone joined with it.
    Joined,
    /// Someone tried it with the wrong words too often: it is burnt.
    WrongCode,
    /// It expired unused.
    Expired,
    /// The code matched, but the joiner's device did not finish joining (it went away or
    /// timed out): it is used up.
    Failed,
    /// The facilitator declined the join held for approval, or did not answer in time:
    /// nobody was let in, and the code is used up.
    Declined,
    /// A facilitator withdrew it (`hearth invite withdraw`).
    Withdrawn,
}

impl CodeState {
    /// The state as it is spelt in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            CodeState::Open => "open",
            CodeState::Joining => "joining",
            CodeState::AwaitingApproval => "awaiting_approval",
            CodeState::Joined => "joined",
            CodeState::WrongCode => "wrong_code",
            CodeState::Expired => "expired",
            CodeState::Failed => "failed",
            CodeState::Declined => "declined",
            CodeState::Withdrawn => "withdrawn",
        }
    }

    /// Whether the code can still come to something (nobody waiting on it should stop).
    pub fn pending(self) -> bool {
        matches!(
            self,
            CodeState::Open | CodeState::Joining | CodeState::AwaitingApproval
        )
    }
}

/// `GET /v1/groups/{group}/codes/{channel}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeStatus {
    pub state: CodeState,
    /// Who asks to join (`awaiting_approval`) or joined (`joined`, `declined`).
    #[serde(default)]
    pub member_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// With `awaiting_approval`: the safety number of the facilitator and the person
    /// asking, to compare face to face.
    #[serde(default)]
    pub safety_number: Option<String>,
    /// Code attempts with other numbers that this daemon refused while this code was open
    /// (another facilitator's joiner nearby, or someone trying numbers). They do not touch
    /// this code.
    #[serde(default)]
    pub other_attempts: u32,
    /// Wrong guesses checked against this code (from different sources; the third burns
    /// it).
    #[serde(default)]
    pub wrong_attempts: u32,
}

/// `POST /v1/groups/{group}/codes/{channel}/approval`: the facilitator's answer to a join
/// held for approval. Answered with the [`CodeStatus`] as it was decided on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeApproval {
    /// `true` lets the person in, `false` turns them away.
    pub approve: bool,
    /// If given, the decision applies only if this is the member id of the person
    /// waiting (so a script approves exactly the person it showed).
    #[serde(default)]
    pub member_id: Option<String>,
}

/// Which kind of invite an [`OpenInvite`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InviteKind {
    Token,
    Code,
}

/// `GET /v1/groups/{group}/invites`: one open invite. Neither the token nor the code's
/// words are shown again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenInvite {
    /// What names it in `DELETE .../invites/{id}`: for a token, a handle of 8 hex digits
    /// (derived from its secret under a label of its own, so it reveals nothing of it);
    /// for a spoken code, its number.
    pub id: String,
    pub kind: InviteKind,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// `GET /v1/groups/{group}/invites`: a group's open invites, soonest to expire first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteList {
    pub group_id: String,
    pub group_name: String,
    pub invites: Vec<OpenInvite>,
}

/// `DELETE /v1/groups/{group}/invites/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteWithdrawn {
    pub group_id: String,
    pub group_name: String,
    pub id: String,
    pub kind: InviteKind,
}

/// `POST /v1/join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    /// An invite token (`hearth1-...`) or a spoken code (`4-lantern-orchard-meadow`).
    pub token: String,
    /// The name to be shown by to the group.
    #[serde(default)]
    pub name: Option<String>,
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
            name: "Sam".into(),
            role: Role::Facilitator,
            verified: false,
            joined_at: 5,
            you: true,
            key_changed: false,
        };
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            json,
            r#"{"member_id":"ab","name":"Sam","role":"facilitator","verified":false,"joined_at":5,"you":true,"key_changed":false}"#
        );
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
