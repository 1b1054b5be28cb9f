//! The command line: flags, commands and their arguments (clap derive).

use std::path::PathBuf;

use clap::builder::NonEmptyStringValueParser;
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use hearth_protocol::api::{Passphrase, Role};

use crate::duration::{check_code_ttl, parse_ttl};
use crate::input::{self, Field, Slot};

// The help of the arguments that can be `-` or left out (see `input`).
const GROUP_HELP: &str = "The group: its id or its (unique) name. `-` reads it from standard \
     input; left out, hearth asks for it";
const MEMBER_HELP: &str = "The member: their member id or their name, when exactly one member \
     has it. `-` reads it from standard input; left out, hearth asks for it";

/// hearth: small, private peer-support groups, run from your own device.
///
/// A thin client of the local hearthd daemon, which must be running.
///
/// Leave out a group name, text, member name, invite token or code and hearth asks for it
/// (tokens and codes without echo), or give `-` to read it from standard input: either
/// keeps it out of your shell's history and the process list.
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
    fn check(mut self) -> Result<Cli, clap::Error> {
        if let Command::Member(MemberCommand::Role {
            words,
            group,
            member,
            role,
        }) = &mut self.command
        {
            let error = |kind, message: String| {
                let mut root = Cli::command();
                root.build();
                match root
                    .find_subcommand_mut("member")
                    .and_then(|m| m.find_subcommand_mut("role"))
                {
                    Some(sub) => sub.error(kind, message),
                    None => root.error(kind, message),
                }
            };
            let mut words = std::mem::take(words).into_iter();
            let last = words.next_back().unwrap_or_default();
            *role = Some(RoleArg::from_str(&last, false).map_err(|_| {
                error(
                    ErrorKind::InvalidValue,
                    format!(
                        "invalid value '{last}' for '<ROLE>': the role is `facilitator` or \
                         `member`, and comes last"
                    ),
                )
            })?);
            *group = words.next();
            *member = words.next();
            if [&*group, &*member]
                .into_iter()
                .any(|word| word.as_deref() == Some(""))
            {
                return Err(error(
                    ErrorKind::InvalidValue,
                    "a value is required for the group and the member, but none was supplied"
                        .to_owned(),
                ));
            }
        }
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
    /// Show whether hearthd is locked, its addresses, connected peers and groups
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
    /// `list`, `withdraw` or `approve` is named by its id here (or given when hearth asks)
    #[command(args_conflicts_with_subcommands = true)]
    Invite {
        #[command(subcommand)]
        manage: Option<InviteCommand>,
        #[arg(help = GROUP_HELP, value_parser = NonEmptyStringValueParser::new())]
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
        /// The invite token (`hearth1-…`) or the spoken code (e.g. `4-lantern-orchard-meadow`).
        /// Leave it out to be asked for it (it is not shown as you type), or give `-` to read
        /// it from standard input: either keeps it out of your shell history
        #[arg(value_name = "TOKEN|CODE", value_parser = NonEmptyStringValueParser::new())]
        token: Option<String>,
        /// The name the group's members will see you by. `--name -` reads it from standard
        /// input; `--name` alone asks for it
        #[arg(long, value_name = "NAME", value_parser = NonEmptyStringValueParser::new())]
        name: Option<Option<String>>,
    },
    /// List a group's members, compare safety numbers, change roles, remove members
    #[command(subcommand)]
    Member(MemberCommand),
    /// Leave a group: the other members are told, and your copy on this device is destroyed
    Leave {
        #[arg(help = GROUP_HELP, value_parser = NonEmptyStringValueParser::new())]
        group: Option<String>,
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
    /// Unlock hearthd with its passphrase (asked for without echo), so it syncs again
    Unlock {
        /// Read the passphrase from standard input (one line) instead of asking on the
        /// terminal
        #[arg(long)]
        passphrase_stdin: bool,
        /// Filled in by `input`, never from the command line.
        #[arg(skip)]
        passphrase: Option<Passphrase>,
    },
    /// Lock hearthd: it drops every key and stops syncing until `hearth unlock`
    Lock,
    /// Destroy every key and all of hearth's data on this device at once, and stop hearthd.
    /// Needs no passphrase, and works whether hearthd is locked or not
    Panic {
        /// Do not ask for confirmation (required with --json, or when standard input is
        /// not a terminal)
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Set, change or remove the passphrase that protects hearthd's storage key, or set a
    /// duress passphrase
    #[command(subcommand)]
    Passphrase(PassphraseCommand),
}

/// `hearth passphrase set|change|remove|duress`. The passphrases are asked for on the
/// terminal without echo, or read from standard input with `--passphrase-stdin`; never
/// taken as arguments. Each `Option<Passphrase>` is filled in by `input`.
#[derive(Debug, Subcommand)]
pub enum PassphraseCommand {
    /// Protect the storage key with a passphrase, where there is none yet (asked twice)
    Set {
        /// Read the new passphrase from standard input (one line) instead of asking
        #[arg(long)]
        passphrase_stdin: bool,
        #[arg(skip)]
        new: Option<Passphrase>,
    },
    /// Change the passphrase: the current one, then the new one twice
    Change {
        /// Read the passphrases from standard input (two lines: the current one, then the
        /// new one) instead of asking
        #[arg(long)]
        passphrase_stdin: bool,
        #[arg(skip)]
        current: Option<Passphrase>,
        #[arg(skip)]
        new: Option<Passphrase>,
    },
    /// Remove the passphrase: the storage key then sits in a file in the data directory,
    /// readable by anyone who copies it
    Remove {
        /// Read the current passphrase from standard input (one line) instead of asking
        #[arg(long)]
        passphrase_stdin: bool,
        /// Do not ask for confirmation (required with --json, or when standard input is
        /// not a terminal)
        #[arg(long, short = 'y')]
        yes: bool,
        #[arg(skip)]
        current: Option<Passphrase>,
    },
    /// Set a duress passphrase: given to `hearth unlock`, it destroys everything on this
    /// device instead of unlocking it
    Duress {
        /// Read the passphrases from standard input (two lines: the current passphrase,
        /// then the duress one) instead of asking
        #[arg(long)]
        passphrase_stdin: bool,
        #[arg(skip)]
        current: Option<Passphrase>,
        #[arg(skip)]
        duress: Option<Passphrase>,
    },
}

impl Command {
    /// The arguments of this command that can be `-` or left out, in the order they are
    /// asked for, with where each is kept: `input::resolve` fills them in.
    pub fn inputs(&mut self) -> Vec<(Field, Slot<'_>)> {
        use input::{AGREEMENT, GROUP, JOIN_NAME, MEMBER, MY_NAME, NEW_GROUP, PURPOSE, TOKEN};
        let group = |group| (GROUP, Slot::Needed(group));
        let member = |member| (MEMBER, Slot::Needed(member));
        match self {
            Command::Group(GroupCommand::Create {
                name,
                purpose,
                my_name,
            }) => vec![
                (NEW_GROUP, Slot::Needed(name)),
                (PURPOSE, Slot::Optional(purpose)),
                (MY_NAME, Slot::Optional(my_name)),
            ],
            Command::Group(GroupCommand::Show { group: g })
            | Command::Agreement(AgreementCommand::List { group: g })
            | Command::Member(MemberCommand::List { group: g })
            | Command::Leave { group: g, .. }
            | Command::Invite {
                manage:
                    Some(
                        InviteCommand::List { group: g }
                        | InviteCommand::Approve { group: g, .. }
                        | InviteCommand::Withdraw { group: g, .. },
                    ),
                ..
            }
            | Command::Invite {
                manage: None,
                group: g,
                ..
            } => vec![group(g)],
            Command::Agreement(AgreementCommand::Add { group: g, text }) => {
                vec![group(g), (AGREEMENT, Slot::Needed(text))]
            }
            Command::Member(
                MemberCommand::Verify {
                    group: g,
                    member: m,
                    ..
                }
                | MemberCommand::Role {
                    group: g,
                    member: m,
                    ..
                }
                | MemberCommand::Remove {
                    group: g,
                    member: m,
                },
            ) => vec![group(g), member(m)],
            Command::Join { token, name } => vec![
                (TOKEN, Slot::Needed(token)),
                (JOIN_NAME, Slot::Optional(name)),
            ],
            Command::Status
            | Command::Group(GroupCommand::List)
            | Command::Peer(_)
            | Command::Unlock { .. }
            | Command::Lock
            | Command::Panic { .. }
            | Command::Passphrase(_) => Vec::new(),
        }
    }
}

/// `hearth invite list|withdraw|approve`: the open invites of a group.
#[derive(Debug, Subcommand)]
pub enum InviteCommand {
    /// List a group's open invites (tokens and spoken codes) and when each expires; the
    /// secrets themselves are not shown again
    List {
        #[arg(help = GROUP_HELP, value_parser = NonEmptyStringValueParser::new())]
        group: Option<String>,
    },
    /// Let in (or with --deny turn away) the person whose device matched a spoken code and
    /// now waits for your approval (`hearth invite GROUP --code` asks you itself on a
    /// terminal; this is for `--no-wait`, `--json` and scripts)
    #[command(allow_missing_positional = true)]
    Approve {
        #[arg(help = GROUP_HELP, value_parser = NonEmptyStringValueParser::new())]
        group: Option<String>,
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
    #[command(allow_missing_positional = true)]
    Withdraw {
        #[arg(help = GROUP_HELP, value_parser = NonEmptyStringValueParser::new())]
        group: Option<String>,
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
        /// The group's name. `-` reads it from standard input; left out, hearth asks for it
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: Option<String>,
        /// What the group is for, in a sentence. `--purpose -` reads it from standard input;
        /// `--purpose` alone asks for it
        #[arg(long, value_name = "TEXT")]
        purpose: Option<Option<String>>,
        /// The name the group's members will see you by. `--my-name -` reads it from
        /// standard input; `--my-name` alone asks for it
        #[arg(long, value_name = "NAME", value_parser = NonEmptyStringValueParser::new())]
        my_name: Option<Option<String>>,
    },
    /// List the groups you belong to
    List,
    /// Show a group's purpose, members and agreements
    Show {
        #[arg(help = GROUP_HELP, value_parser = NonEmptyStringValueParser::new())]
        group: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgreementCommand {
    /// Propose an agreement to a group (hearth asks for the group, then the text)
    Add {
        #[arg(help = GROUP_HELP, value_parser = NonEmptyStringValueParser::new())]
        group: Option<String>,
        /// The agreement's text. `-` reads it from standard input (to its end, so it can be
        /// several lines); left out, hearth asks for it
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        text: Option<String>,
    },
    /// List a group's agreements
    List {
        #[arg(help = GROUP_HELP, value_parser = NonEmptyStringValueParser::new())]
        group: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// List a group's members: name, role, whether you verified them, when they joined
    List {
        #[arg(help = GROUP_HELP, value_parser = NonEmptyStringValueParser::new())]
        group: Option<String>,
    },
    /// Show the safety number you share with a member, to compare face to face; with
    /// --confirm, mark them verified
    Verify {
        #[arg(help = GROUP_HELP, value_parser = NonEmptyStringValueParser::new())]
        group: Option<String>,
        #[arg(help = MEMBER_HELP, value_parser = NonEmptyStringValueParser::new())]
        member: Option<String>,
        /// The digits matched on both screens: mark the member verified
        #[arg(long)]
        confirm: bool,
    },
    /// Make a member a facilitator, or a plain member again (facilitators only)
    // clap fills positionals from the left, so `[GROUP] [MEMBER] ROLE` is taken as words
    // and sorted out by `Cli::check`: the last is the role.
    #[command(override_usage = "hearth member role [OPTIONS] [GROUP] [MEMBER] <ROLE>")]
    Role {
        /// The group (its id or its (unique) name), the member (their member id, or their
        /// name when exactly one member has it), and the new role: `facilitator` or `member`.
        /// The group and the member can each be `-` to read it from standard input, or left
        /// out to be asked for (`hearth member role facilitator` asks for both)
        #[arg(value_name = "GROUP MEMBER ROLE", num_args = 1..=3, required = true)]
        words: Vec<String>,
        /// Filled in by `Cli::check` from `words`.
        #[arg(skip)]
        group: Option<String>,
        #[arg(skip)]
        member: Option<String>,
        #[arg(skip)]
        role: Option<RoleArg>,
    },
    /// Remove a member from a group; a new key then protects what is written next
    /// (facilitators only)
    Remove {
        #[arg(help = GROUP_HELP, value_parser = NonEmptyStringValueParser::new())]
        group: Option<String>,
        #[arg(help = MEMBER_HELP, value_parser = NonEmptyStringValueParser::new())]
        member: Option<String>,
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
            } => assert_eq!(group.as_deref(), Some("Thursday circle")),
            other => panic!("parsed as {other:?}"),
        }
        match parse(&["invite", "withdraw", "g", "3f9a0c12"])
            .unwrap()
            .command
        {
            Command::Invite {
                manage: Some(InviteCommand::Withdraw { group, id }),
                ..
            } => assert_eq!((group.as_deref(), id.as_str()), (Some("g"), "3f9a0c12")),
            other => panic!("parsed as {other:?}"),
        }
        // Left out, the group is asked for (see `input`); the id is not a secret and
        // must be given.
        for args in [&["invite"][..], &["invite", "list"], &["invite", "--code"]] {
            assert!(parse(args).is_ok(), "{args:?}");
        }
        match parse(&["invite", "withdraw", "3f9a0c12"]).unwrap().command {
            Command::Invite {
                manage: Some(InviteCommand::Withdraw { group, id }),
                ..
            } => assert_eq!((group, id.as_str()), (None, "3f9a0c12")),
            other => panic!("parsed as {other:?}"),
        }
        for args in [
            &["invite", "withdraw"][..],
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
                (group.as_deref(), number, deny, member.as_deref()),
                (Some("g"), 4, false, Some("ab12"))
            ),
            other => panic!("{other:?}"),
        }
        // The group left out: the one argument is the number.
        match parse(&["invite", "approve", "4"]).unwrap().command {
            Command::Invite {
                manage: Some(InviteCommand::Approve { group, number, .. }),
                ..
            } => assert_eq!((group, number), (None, 4)),
            other => panic!("{other:?}"),
        }
        for args in [
            &["invite", "approve"][..],
            &["invite", "approve", "g"],
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
                ..
            }) => {
                assert_eq!(
                    (group.as_deref(), member.as_deref()),
                    (Some("Thursday circle"), Some("Sam Lee"))
                );
                assert_eq!(role, Some(RoleArg::Facilitator));
                assert_eq!(Role::from(RoleArg::Facilitator), Role::Facilitator);
            }
            other => panic!("parsed as {other:?}"),
        }
        // The role comes last; what is left out before it is asked for.
        for (args, expected) in [
            (&["member", "role", "member"][..], (None, None)),
            (&["member", "role", "-", "member"], (Some("-"), None)),
            (
                &["member", "role", "g", "-", "member"],
                (Some("g"), Some("-")),
            ),
        ] {
            match parse(args).unwrap().command {
                Command::Member(MemberCommand::Role {
                    group,
                    member,
                    role,
                    words,
                }) => {
                    assert_eq!((group.as_deref(), member.as_deref()), expected, "{args:?}");
                    assert_eq!(role, Some(RoleArg::Member));
                    assert!(words.is_empty());
                }
                other => panic!("parsed as {other:?}"),
            }
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
        for args in [
            &["member", "role", "g", "Sam"][..],
            &["member", "role"],
            &["member", "role", "g", "Sam", "member", "x"],
            &["member", "role", "", "Sam", "member"],
            &["member", "role", "g", "", "member"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), i32::from(EXIT_USAGE), "{args:?}");
        }
    }

    #[test]
    fn names_and_leave_flags_parse() {
        match parse(&["group", "create", "Carers", "--my-name", "Ana"])
            .unwrap()
            .command
        {
            Command::Group(GroupCommand::Create { my_name, .. }) => {
                assert_eq!(my_name, Some(Some("Ana".to_owned())));
            }
            other => panic!("parsed as {other:?}"),
        }
        match parse(&["join", "-", "--name", "Sam Lee"]).unwrap().command {
            Command::Join { token, name } => {
                assert_eq!(token.as_deref(), Some("-"));
                assert_eq!(name, Some(Some("Sam Lee".to_owned())));
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
            } => assert_eq!((group.as_deref(), keep_copy, yes), (Some("g"), true, true)),
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
