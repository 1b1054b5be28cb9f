//! The failures the CLI tells apart, and the exit code each maps to.

use std::io;
use std::path::{Path, PathBuf};

/// Any failure not listed below: an API error, a malformed answer, a timeout.
pub const EXIT_FAILURE: u8 = 1;
/// A usage error. clap reports its own with this code; hearth's own are [`Usage`] and
/// [`NeedsYes`].
pub const EXIT_USAGE: u8 = 2;
/// hearthd could not be reached: nothing was sent to it.
pub const EXIT_UNREACHABLE: u8 = 3;
/// hearthd is locked: it refused the request with 423 until someone runs `hearth unlock`.
pub const EXIT_LOCKED: u8 = 4;

/// hearthd could not be reached at its socket.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(.socket, .cause))]
pub struct Unreachable {
    pub socket: PathBuf,
    // Not a `#[source]`: the message already says what the OS said, in words.
    pub cause: io::Error,
}

const HOW_TO_START: &str = "Start it with `hearthd` (or `cargo run --release -p hearthd`), \
     or point --socket/HEARTH_SOCKET at its socket.";

fn describe(socket: &Path, cause: &io::Error) -> String {
    let path = socket.display();
    match cause.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => {
            format!("hearthd is not running (no socket at {path}). {HOW_TO_START}")
        }
        io::ErrorKind::ConnectionRefused => format!(
            "hearthd is not running (the socket at {path} refuses connections; \
             it is probably left over from an earlier run). {HOW_TO_START}"
        ),
        io::ErrorKind::PermissionDenied => format!(
            "permission denied opening hearthd's socket at {path}. hearthd serves only the \
             user it runs as: run hearth as that user, or point --socket/HEARTH_SOCKET at \
             your own hearthd's socket."
        ),
        _ => format!(
            "cannot connect to hearthd at {path}: {cause}. Check that hearthd is running, \
             or point --socket/HEARTH_SOCKET at its socket."
        ),
    }
}

/// hearthd answered with a non-2xx status and an [`hearth_protocol::api::ApiError`] body.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiFailure {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiFailure {
    /// Whether hearthd refused the request because it is locked.
    pub fn is_locked(&self) -> bool {
        self.status == 423 || self.code == hearth_protocol::api::ERROR_LOCKED
    }
}

/// A usage error hearth finds itself (clap reports its own): a value missing where hearth
/// cannot ask for it, two arguments that both want standard input, an empty value. Nothing
/// was sent to hearthd.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// A command that cannot be undone (or weakens protection), without `--yes`, where hearth
/// cannot ask for confirmation: a usage error.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what}, and {why}. Add --yes to {verb} without being asked. Nothing was sent to hearthd.")]
pub struct NeedsYes {
    /// What the command does that needs a yes, e.g. "leaving a group cannot be undone".
    pub what: &'static str,
    /// Why hearth cannot ask.
    pub why: &'static str,
    /// The command's verb, e.g. "leave".
    pub verb: &'static str,
}

/// The user did not answer yes to a question: the message says what was not done.
#[derive(Debug, thiserror::Error)]
#[error("{0} Nothing was sent to hearthd.")]
pub struct Declined(pub &'static str);

/// The process exit code for a failure.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|cause| cause.is::<Unreachable>()) {
        EXIT_UNREACHABLE
    } else if err
        .chain()
        .any(|cause| cause.is::<NeedsYes>() || cause.is::<Usage>())
    {
        EXIT_USAGE
    } else if err
        .chain()
        .filter_map(|cause| cause.downcast_ref::<ApiFailure>())
        .any(ApiFailure::is_locked)
    {
        EXIT_LOCKED
    } else {
        EXIT_FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    fn unreachable(kind: io::ErrorKind) -> Unreachable {
        Unreachable {
            socket: PathBuf::from("/run/user/1000/hearth/hearthd.sock"),
            cause: io::Error::from(kind),
        }
    }

    #[test]
    fn unreachable_maps_to_3_however_it_is_wrapped() {
        let bare = anyhow::Error::new(unreachable(io::ErrorKind::NotFound));
        assert_eq!(exit_code(&bare), EXIT_UNREACHABLE);
        let wrapped = Err::<(), _>(unreachable(io::ErrorKind::ConnectionRefused))
            .context("listing groups")
            .unwrap_err();
        assert_eq!(exit_code(&wrapped), EXIT_UNREACHABLE);
    }

    #[test]
    fn api_failures_and_everything_else_map_to_1() {
        let api = anyhow::Error::new(ApiFailure {
            status: 404,
            code: "group_not_found".into(),
            message: "No group is called \"x\".".into(),
        });
        assert_eq!(exit_code(&api), EXIT_FAILURE);
        assert_eq!(api.to_string(), "No group is called \"x\".");
        assert_eq!(exit_code(&anyhow::anyhow!("malformed")), EXIT_FAILURE);
    }

    #[test]
    fn usage_errors_map_to_2_and_a_locked_daemon_to_4() {
        let usage = Err::<(), _>(Usage("GROUP is missing".into()))
            .context("reading the arguments")
            .unwrap_err();
        assert_eq!(exit_code(&usage), EXIT_USAGE);
        let locked = |status, code: &str| {
            anyhow::Error::new(ApiFailure {
                status,
                code: code.into(),
                message: "hearthd is locked. Unlock it with `hearth unlock`.".into(),
            })
        };
        assert_eq!(exit_code(&locked(423, "locked")), EXIT_LOCKED);
        // Either sign is enough: the status, or the code behind a proxy that changed it.
        assert_eq!(exit_code(&locked(423, "other")), EXIT_LOCKED);
        assert_eq!(exit_code(&locked(409, "locked")), EXIT_LOCKED);
        let wrapped = Err::<(), _>(locked(423, "locked"))
            .context("waiting for the code")
            .unwrap_err();
        assert_eq!(exit_code(&wrapped), EXIT_LOCKED);
        assert_eq!(exit_code(&locked(401, "wrong_passphrase")), EXIT_FAILURE);
    }

    #[test]
    fn unreachable_messages_name_the_socket_and_the_way_out() {
        let missing = unreachable(io::ErrorKind::NotFound).to_string();
        assert!(missing.starts_with(
            "hearthd is not running (no socket at /run/user/1000/hearth/hearthd.sock)."
        ));
        assert!(missing.contains("`hearthd`"));
        assert!(missing.contains("--socket/HEARTH_SOCKET"));

        let refused = unreachable(io::ErrorKind::ConnectionRefused).to_string();
        assert!(refused.contains("refuses connections"));
        assert!(refused.contains("Start it with"));

        let denied = unreachable(io::ErrorKind::PermissionDenied).to_string();
        assert!(denied.contains("permission denied"));

        let other = unreachable(io::ErrorKind::InvalidInput).to_string();
        assert!(other.contains("cannot connect to hearthd at /run/user/1000"));
    }
}
