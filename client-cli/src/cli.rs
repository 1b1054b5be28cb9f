//! The command line: flags, commands and their arguments (clap derive).

use std::path::PathBuf;

use clap::builder::NonEmptyStringValueParser;
use clap::{Parser, Subcommand};

use crate::duration::parse_ttl;

/// hearth: small, private peer-support groups, run from your own device.
///
/// A thin client of the local hearthd daemon, which must be running.
#[derive(Debug, Parser)]
#[command(name = "hearth", version, propagate_version = true)]
pub struct Cli {
    /// hearthd's socket [env: HEARTH_SOCKET] [default: $XDG_RUNTIME_DIR/hearth/hearthd.sock,
    /// else $HEARTH_DATA_DIR/hearthd.sock, else <data dir>/hearth/hearthd.sock]
    // HEARTH_SOCKET is read by `socket::resolve`, which treats an empty one as unset.
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Print hearthd's answer as JSON on stdout, and nothing else
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show this device's member id, addresses, connected peers and groups
    Status,
    /// Create, list and show groups
    #[command(subcommand)]
    Group(GroupCommand),
    /// Add and list a group's agreements
    #[command(subcommand)]
    Agreement(AgreementCommand),
    /// Create a one-time invite token for someone to join a group
    Invite {
        /// The group: its id or its (unique) name
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        group: String,
        /// How long the token stays valid: `900` (seconds), `90s`, `15m`, `2h`, `1d`; at
        /// most `7d` [default: 15m]
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
        ttl: Option<u64>,
    },
    /// Join a group with an invite token you were handed
    Join {
        /// The invite token, or `-` to read it from standard input (keeps it out of your
        /// shell history)
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        token: String,
    },
    /// Connect to peers and list connected ones
    #[command(subcommand)]
    Peer(PeerCommand),
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a group, with you as its facilitator
    Create {
        /// The group's name, e.g. "Thursday circle"
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
        /// What the group is for, in a sentence
        #[arg(long, value_name = "TEXT")]
        purpose: Option<String>,
    },
    /// List the groups you belong to
    List,
    /// Show a group's purpose, members and agreements
    Show {
        /// The group: its id or its (unique) name
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        group: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgreementCommand {
    /// Propose an agreement to a group (quote the text)
    Add {
        /// The group: its id or its (unique) name
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        group: String,
        /// The agreement, e.g. "What is said here stays here."
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        text: String,
    },
    /// List a group's agreements
    List {
        /// The group: its id or its (unique) name
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        group: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Dial a peer at a multiaddr, e.g. /ip4/192.0.2.7/tcp/4001
    Add {
        /// The peer's multiaddr, with or without a /p2p/ suffix
        #[arg(value_name = "MULTIADDR", value_parser = NonEmptyStringValueParser::new())]
        addr: String,
    },
    /// List connected peers
    List,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::EXIT_USAGE;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("hearth").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_before_or_after_the_command() {
        let cli = parse(&["group", "list", "--json", "--socket", "/tmp/s"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.socket.as_deref(), Some(std::path::Path::new("/tmp/s")));
        assert!(matches!(cli.command, Command::Group(GroupCommand::List)));
        assert!(parse(&["--json", "status"]).unwrap().json);
    }

    #[test]
    fn ttl_is_parsed_into_seconds() {
        let cli = parse(&["invite", "Thursday circle", "--ttl", "2h"]).unwrap();
        match cli.command {
            Command::Invite { group, ttl } => {
                assert_eq!(group, "Thursday circle");
                assert_eq!(ttl, Some(7200));
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn bad_ttl_is_a_usage_error_with_an_example() {
        let err = parse(&["invite", "g", "--ttl", "15 minutes"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(EXIT_USAGE));
        let text = err.to_string();
        assert!(text.contains("15m"), "{text}");
    }

    #[test]
    fn empty_arguments_are_usage_errors() {
        for args in [
            &["group", "show", ""][..],
            &["group", "create", ""],
            &["agreement", "add", "g", ""],
            &["join", ""],
            &["--socket", "", "status"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), i32::from(EXIT_USAGE), "{args:?}");
        }
    }
}
