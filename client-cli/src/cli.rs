//! The command line: flags, commands and their arguments (clap derive).

use std::path::PathBuf;

use clap::builder::NonEmptyStringValueParser;
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use hearth_protocol::api::Role;

use crate::duration::{check_code_ttl, parse_ttl};

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

impl Cli {
    /// Parses the command line, including the checks clap's declarations cannot express.
    pub fn parse_checked<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Cli::try_parse_from(args)?.check()
    }

    /// The checks that depend on several arguments at once: `--ttl` with `--code` is held to
    /// a spoken code's shorter limit. Failures are clap usage errors (exit 2).
    fn check(self) -> Result<Cli, clap::Error> {
        if let Command::Invite {
            ttl: Some(ttl),
            code: true,
            ..
        } = &self.command
            && let Err(message) = check_code_ttl(*ttl)
        {
            let mut root = Cli::command();
            // Gives the subcommand its full name (`hearth invite`) for the usage line.
            root.build();
            let error = match root.find_subcommand_mut("invite") {
                Some(invite) => invite.error(ErrorKind::ValueValidation, message),
                None => root.error(ErrorKind::ValueValidation, message),
            };
            return Err(error);
        }
        Ok(self)
    }
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
    /// Create a one-time invite for someone to join a group: a token to hand over, or with
    /// --code a short code to say aloud to someone in the same room. `hearth invite list
    /// GROUP` and `hearth invite withdraw GROUP ID` show and withdraw the open ones, and
    /// `hearth invite approve GROUP NUMBER` lets in someone who used a code. A group named
    /// `list`, `withdraw` or `approve` is named by its id here
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Invite {
        #[command(subcommand)]
        manage: Option<InviteCommand>,
        /// The group: its id or its (unique) name
        #[arg(value_parser = NonEmptyStringValueParser::new(), required = true)]
        group: Option<String>,
        /// How long the invite stays valid: `900` (seconds), `90s`, `15m`, `2h`, `1d`. A token:
        /// at most `7d` [default: 15m]. A code: at most `1h` [default: 10m]
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
        ttl: Option<u64>,
        /// Make a spoken code instead of a token, for someone in the same room (on the same
        /// local network): a few words to read aloud, that work once. hearth then waits
        /// until they join
        #[arg(long)]
        code: bool,
        /// With --code: print the code and return at once, without waiting for them to join
        #[arg(long, requires = "code")]
        no_wait: bool,
        /// Do not show the token as a QR code (it is shown only on a terminal, never with
        /// --json)
        #[arg(long, conflicts_with = "code")]
        no_qr: bool,
    },
    /// Join a group with an invite token you were handed, or a code you were told
    Join {
        /// The invite token (`hearth1-…`) or the spoken code (e.g. `4-lantern-orchard-meadow`),
        /// or `-` to read it from standard input (keeps it out of your shell history)
        #[arg(value_name = "TOKEN|CODE", value_parser = NonEmptyStringValueParser::new())]
        token: String,
        /// The name the group's members will see you by, e.g. "Sam"
        #[arg(long, value_name = "NAME", value_parser = NonEmptyStringValueParser::new())]
        name: Option<String>,
    },
    /// List a group's members, compare safety numbers, change roles, remove members
    #[command(subcommand)]
    Member(MemberCommand),
    /// Leave a group: the other members are told, and your copy on this device is destroyed
    Leave {
        /// The group: its id or its (unique) name
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        group: String,
        /// Keep a read-only copy of the group on this device instead of destroying it
        #[arg(long)]
        keep_copy: bool,
        /// Do not ask for confirmation (required with --json, or when standard input is
        /// not a terminal)
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Connect to peers and list connected ones
    #[command(subcommand)]
    Peer(PeerCommand),
}

/// `hearth invite list|withdraw|approve`: the open invites of a group.
#[derive(Debug, Subcommand)]
pub enum InviteCommand {
    /// List a group's open invites (tokens and spoken codes) and when each expires; the
    /// secrets themselves are not shown again
    List {
        /// The group: its id or its (unique) name
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        group: String,
    },
    /// Let in (or with --deny turn away) the person whose device matched a spoken code and
    /// now waits for your approval (`hearth invite GROUP --code` asks you itself on a
    /// terminal; this is for `--no-wait`, `--json` and scripts)
    Approve {
        /// The group: its id or its (unique) name
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        group: String,
        /// The code's number (the first part of the code)
        #[arg(value_parser = clap::value_parser!(u16).range(1..=999))]
        number: u16,
        /// Turn them away instead: nobody joins, and the code is used up
        #[arg(long)]
        deny: bool,
        /// Decide only if this is the member id of the person waiting (as `hearth invite
        /// GROUP --code --json` or the API showed it)
        #[arg(long, value_name = "MEMBER_ID")]
        member: Option<String>,
    },
    /// Withdraw an open invite, so that nobody can join with it any more
    Withdraw {
        /// The group: its id or its (unique) name
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        group: String,
        /// The invite's id, as `hearth invite list` shows it: 8 hex digits for a token, the
        /// number for a spoken code
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        id: String,
    },
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
        /// The name the group's members will see you by, e.g. "Ana"
        #[arg(long, value_name = "NAME", value_parser = NonEmptyStringValueParser::new())]
        my_name: Option<String>,
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
pub enum MemberCommand {
    /// List a group's members: name, role, whether you verified them, when they joined
    List {
        /// The group: its id or its (unique) name
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        group: String,
    },
    /// Show the safety number you share with a member, to compare face to face; with
    /// --confirm, mark them verified
    Verify {
        /// The group: its id or its (unique) name
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        group: String,
        /// The member: their member id or their name, when exactly one member has it
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        member: String,
        /// The digits matched on both screens: mark the member verified
        #[arg(long)]
        confirm: bool,
    },
    /// Make a member a facilitator, or a plain member again (facilitators only)
    Role {
        /// The group: its id or its (unique) name
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        group: String,
        /// The member: their member id or their name, when exactly one member has it
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        member: String,
        /// The new role
        #[arg(value_enum)]
        role: RoleArg,
    },
    /// Remove a member from a group; a new key then protects what is written next
    /// (facilitators only)
    Remove {
        /// The group: its id or its (unique) name
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        group: String,
        /// The member: their member id or their name, when exactly one member has it
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        member: String,
    },
}

/// A role as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Can invite, remove members and change roles
    Facilitator,
    /// Takes part; cannot invite or remove
    Member,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::Facilitator => Role::Facilitator,
            RoleArg::Member => Role::Member,
        }
    }
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
        Cli::parse_checked(std::iter::once("hearth").chain(args.iter().copied()))
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
            Command::Invite {
                group,
                ttl,
                code,
                no_wait,
                no_qr,
                manage: None,
            } => {
                assert_eq!(group.as_deref(), Some("Thursday circle"));
                assert_eq!(ttl, Some(7200));
                assert_eq!((code, no_wait, no_qr), (false, false, false));
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn invite_list_and_withdraw_parse() {
        match parse(&["invite", "list", "Thursday circle"])
            .unwrap()
            .command
        {
            Command::Invite {
                manage: Some(InviteCommand::List { group }),
                group: None,
                ..
            } => assert_eq!(group, "Thursday circle"),
            other => panic!("parsed as {other:?}"),
        }
        match parse(&["invite", "withdraw", "g", "3f9a0c12"])
            .unwrap()
            .command
        {
            Command::Invite {
                manage: Some(InviteCommand::Withdraw { group, id }),
                ..
            } => assert_eq!((group.as_str(), id.as_str()), ("g", "3f9a0c12")),
            other => panic!("parsed as {other:?}"),
        }
        for args in [
            &["invite"][..],
            &["invite", "list"],
            &["invite", "withdraw", "g"],
            &["invite", "withdraw", "g", ""],
            &["invite", "list", "g", "--code"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn invite_approve_parses() {
        match parse(&["invite", "approve", "g", "4", "--member", "ab12"])
            .unwrap()
            .command
        {
            Command::Invite {
                manage:
                    Some(InviteCommand::Approve {
                        group,
                        number,
                        deny,
                        member,
                    }),
                ..
            } => assert_eq!(
                (group.as_str(), number, deny, member.as_deref()),
                ("g", 4, false, Some("ab12"))
            ),
            other => panic!("{other:?}"),
        }
        for args in [
            &["invite", "approve", "g"][..],
            &["invite", "approve", "g", "0"],
            &["invite", "approve", "g", "1000"],
            &["invite", "approve", "g", "x"],
        ] {
            assert_eq!(parse(args).unwrap_err().exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn invite_code_flags_parse() {
        match parse(&["invite", "g", "--code", "--ttl", "30m", "--no-wait"])
            .unwrap()
            .command
        {
            Command::Invite {
                ttl,
                code,
                no_wait,
                no_qr,
                ..
            } => assert_eq!((ttl, code, no_wait, no_qr), (Some(1800), true, true, false)),
            other => panic!("parsed as {other:?}"),
        }
        match parse(&["--json", "invite", "g", "--no-qr"])
            .unwrap()
            .command
        {
            Command::Invite { code, no_qr, .. } => assert_eq!((code, no_qr), (false, true)),
            other => panic!("parsed as {other:?}"),
        }
        // An hour is the most a code may live; a token may live a week.
        assert!(parse(&["invite", "g", "--code", "--ttl", "1h"]).is_ok());
        assert!(parse(&["invite", "g", "--code", "--ttl", "3600"]).is_ok());
        assert!(parse(&["invite", "g", "--ttl", "7d"]).is_ok());
    }

    #[test]
    fn a_code_ttl_over_an_hour_is_a_usage_error() {
        for ttl in ["2h", "61m", "3601", "7d"] {
            let err = parse(&["invite", "g", "--code", "--ttl", ttl]).unwrap_err();
            assert_eq!(err.exit_code(), i32::from(EXIT_USAGE), "{ttl}");
            let text = err.to_string();
            assert!(text.contains("at most 1h"), "{text}");
            assert!(text.contains("leave out --code"), "{text}");
            assert!(text.contains("hearth invite"), "usage line: {text}");
        }
        // Order does not matter.
        let err = parse(&["invite", "--ttl", "2h", "g", "--code"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(EXIT_USAGE));
        // Beyond a token's limit, the token's message still comes first.
        let err = parse(&["invite", "g", "--code", "--ttl", "8d"]).unwrap_err();
        assert!(err.to_string().contains("7d"), "{err}");
    }

    #[test]
    fn no_wait_needs_code_and_no_qr_excludes_it() {
        for args in [
            &["invite", "g", "--no-wait"][..],
            &["invite", "g", "--code", "--no-qr"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), i32::from(EXIT_USAGE), "{args:?}");
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
    fn member_commands_parse() {
        let cli = parse(&[
            "member",
            "role",
            "Thursday circle",
            "Sam Lee",
            "facilitator",
        ])
        .unwrap();
        match cli.command {
            Command::Member(MemberCommand::Role {
                group,
                member,
                role,
            }) => {
                assert_eq!(
                    (group.as_str(), member.as_str()),
                    ("Thursday circle", "Sam Lee")
                );
                assert_eq!(role, RoleArg::Facilitator);
                assert_eq!(Role::from(role), Role::Facilitator);
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = parse(&["member", "verify", "g", "Sam", "--confirm"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Member(MemberCommand::Verify { confirm: true, .. })
        ));
        let cli = parse(&["member", "verify", "g", "Sam"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Member(MemberCommand::Verify { confirm: false, .. })
        ));
        assert!(matches!(
            parse(&["member", "remove", "g", "Sam"]).unwrap().command,
            Command::Member(MemberCommand::Remove { .. })
        ));
        assert!(matches!(
            parse(&["member", "list", "g"]).unwrap().command,
            Command::Member(MemberCommand::List { .. })
        ));
    }

    #[test]
    fn a_role_other_than_facilitator_or_member_is_a_usage_error() {
        for bad in ["admin", "Facilitator ", "", "owner"] {
            let err = parse(&["member", "role", "g", "Sam", bad]).unwrap_err();
            assert_eq!(err.exit_code(), i32::from(EXIT_USAGE), "{bad:?}");
            let text = err.to_string();
            assert!(
                text.contains("facilitator") && text.contains("member"),
                "{text}"
            );
        }
        let err = parse(&["member", "role", "g", "Sam"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(EXIT_USAGE));
    }

    #[test]
    fn names_and_leave_flags_parse() {
        match parse(&["group", "create", "Carers", "--my-name", "Ana"])
            .unwrap()
            .command
        {
            Command::Group(GroupCommand::Create { my_name, .. }) => {
                assert_eq!(my_name.as_deref(), Some("Ana"));
            }
            other => panic!("parsed as {other:?}"),
        }
        match parse(&["join", "-", "--name", "Sam Lee"]).unwrap().command {
            Command::Join { token, name } => {
                assert_eq!(token, "-");
                assert_eq!(name.as_deref(), Some("Sam Lee"));
            }
            other => panic!("parsed as {other:?}"),
        }
        match parse(&["leave", "g", "--keep-copy", "--yes"])
            .unwrap()
            .command
        {
            Command::Leave {
                group,
                keep_copy,
                yes,
            } => assert_eq!((group.as_str(), keep_copy, yes), ("g", true, true)),
            other => panic!("parsed as {other:?}"),
        }
        match parse(&["--json", "leave", "g", "-y"]).unwrap().command {
            Command::Leave { keep_copy, yes, .. } => assert_eq!((keep_copy, yes), (false, true)),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn empty_arguments_are_usage_errors() {
        for args in [
            &["group", "show", ""][..],
            &["group", "create", ""],
            &["agreement", "add", "g", ""],
            &["join", ""],
            &["join", "t", "--name", ""],
            &["group", "create", "g", "--my-name", ""],
            &["member", "list", ""],
            &["member", "verify", "g", ""],
            &["member", "remove", "", "Sam"],
            &["leave", ""],
            &["--socket", "", "status"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), i32::from(EXIT_USAGE), "{args:?}");
        }
    }
}
