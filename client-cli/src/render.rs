//! Text for people: what each command prints without `--json`.
//!
//! Every function is pure (the current time is a parameter) and returns the whole output,
//! ending in a newline. Names, purposes and agreements are written by other members, so all
//! text from the daemon goes through [`clean`] before it reaches the terminal.

use std::fmt::Write as _;

use hearth_protocol::api::{
    Agreement, AgreementAdded, GroupCreated, GroupDetail, GroupSummary, InviteCreated, Joined,
    Peer, PeerAdded, Status,
};

/// Space between table columns and between a label and its value.
const GAP: &str = "  ";

pub fn status(status: &Status) -> String {
    let listening = if status.listen_addrs.is_empty() {
        vec!["(not listening yet)".to_owned()]
    } else {
        status.listen_addrs.clone()
    };
    fields(&[
        ("member id", vec![status.member_id.clone()]),
        ("peers", vec![format!("{} connected", status.peers)]),
        ("groups", vec![status.groups.to_string()]),
        ("listening on", listening),
    ])
}

pub fn group_created(name: &str, created: &GroupCreated) -> String {
    let id = clean(&created.group_id);
    format!(
        "Created group \"{}\" (id {id}).\n\
         Next: add agreements with `hearth agreement add {id} \"TEXT\"`, \
         then invite people with `hearth invite {id}`.\n",
        clean(name)
    )
}

pub fn group_list(groups: &[GroupSummary]) -> String {
    if groups.is_empty() {
        return "You are not in any group yet. Create one with `hearth group create NAME`, \
                or join one with `hearth join TOKEN`.\n"
            .to_owned();
    }
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| vec![g.group_id.clone(), g.name.clone(), g.members.to_string()])
        .collect();
    table(&["ID", "NAME", "MEMBERS"], &rows)
}

pub fn group_detail(group: &GroupDetail) -> String {
    let purpose = if group.purpose.trim().is_empty() {
        vec!["(none given)".to_owned()]
    } else {
        lines(&group.purpose)
    };
    let mut out = format!("{}\n", clean(&group.name));
    out += &fields(&[("id", vec![group.group_id.clone()]), ("purpose", purpose)]);

    out.push('\n');
    let members: Vec<Vec<String>> = group
        .members
        .iter()
        .map(|m| vec![m.member_id.clone(), m.role.to_string()])
        .collect();
    out += &table(&["MEMBER", "ROLE"], &members);

    out.push('\n');
    out += "AGREEMENTS\n";
    if group.agreements.is_empty() {
        let _ = writeln!(
            out,
            "none yet. Propose one with `hearth agreement add {} \"TEXT\"`.",
            clean(&group.group_id)
        );
    } else {
        let texts: Vec<&str> = group.agreements.iter().map(|a| a.text.as_str()).collect();
        out += &numbered(&texts, |_| None);
    }
    out
}

pub fn agreement_added(group: &str, added: &AgreementAdded) -> String {
    format!(
        "Added agreement {} to group \"{}\".\n",
        clean(&added.id),
        clean(group)
    )
}

/// Agreements, numbered, each with its id, author and age. `now` is seconds since the epoch.
pub fn agreement_list(agreements: &[Agreement], now: i64) -> String {
    if agreements.is_empty() {
        return "This group has no agreements yet. Propose one with \
                `hearth agreement add GROUP \"TEXT\"`.\n"
            .to_owned();
    }
    let texts: Vec<&str> = agreements.iter().map(|a| a.text.as_str()).collect();
    numbered(&texts, |i| {
        agreements.get(i).map(|a| {
            format!(
                "id {}, by {}, written {}",
                clean(&a.id),
                clean(&a.author),
                ago(a.created_at, now)
            )
        })
    })
}

/// The token on a line of its own (easy to copy), when it expires, and how to hand it over.
pub fn invite(group: &str, invite: &InviteCreated, now: u64) -> String {
    let expiry = if invite.expires_at > now {
        format!("It expires in {}.", in_words(invite.expires_at - now))
    } else {
        "It has already expired; check this device's clock, then create a new one.".to_owned()
    };
    format!(
        "Invite token for group \"{}\":\n\n{}\n\n{expiry}\n\
         The token is a secret: hand it over in person (or read it out), and do not post it \
         in a chat, an email or anywhere else. Whoever holds it can join the group.\n",
        clean(group),
        clean(&invite.token),
    )
}

pub fn joined(joined: &Joined) -> String {
    let id = clean(&joined.group_id);
    format!("Joined group {id}.\nSee its members and agreements with `hearth group show {id}`.\n")
}

pub fn peer_added(added: &PeerAdded) -> String {
    format!(
        "Added peer {}. See connected peers with `hearth peer list`.\n",
        clean(&added.addr)
    )
}

pub fn peer_list(peers: &[Peer]) -> String {
    if peers.is_empty() {
        return "No peers connected. Add one with `hearth peer add MULTIADDR`.\n".to_owned();
    }
    let mut rows = Vec::new();
    for peer in peers {
        let mut addrs = peer.addrs.iter();
        let first = addrs.next().cloned().unwrap_or_else(|| "-".to_owned());
        rows.push(vec![peer.peer_id.clone(), first]);
        // Further addresses go on lines of their own under the first.
        rows.extend(addrs.map(|addr| vec![String::new(), addr.clone()]));
    }
    table(&["PEER ID", "ADDRESS"], &rows)
}

/// A table with a header row and columns aligned on the widest cell. Cells are cleaned.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let header: Vec<String> = headers.iter().map(|h| clean(h)).collect();
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| clean(cell)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| width(h)).collect();
    for row in &body {
        for (column, cell) in row.iter().enumerate() {
            match widths.get_mut(column) {
                Some(w) => *w = (*w).max(width(cell)),
                None => widths.push(width(cell)),
            }
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&body) {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column > 0 {
                line += GAP;
            }
            line += cell;
            let pad = widths
                .get(column)
                .map_or(0, |w| w.saturating_sub(width(cell)));
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

/// `label  value` lines with values aligned; a value with several lines continues under
/// the first.
fn fields(entries: &[(&str, Vec<String>)]) -> String {
    let label_width = entries.iter().map(|(l, _)| width(l)).max().unwrap_or(0);
    let mut out = String::new();
    for (label, values) in entries {
        let mut label = Some(*label);
        for value in values {
            for line in lines(value) {
                let shown = label.take().unwrap_or("");
                let _ = writeln!(out, "{shown:<label_width$}{GAP}{line}");
            }
        }
    }
    out
}

/// `1. text` items, numbers right-aligned; `note(i)` adds an indented line under item `i`.
fn numbered(texts: &[&str], note: impl Fn(usize) -> Option<String>) -> String {
    let number_width = texts.len().to_string().len();
    let indent = " ".repeat(number_width + 2);
    let mut out = String::new();
    for (i, text) in texts.iter().enumerate() {
        for (n, line) in lines(text).iter().enumerate() {
            if n == 0 {
                let _ = writeln!(out, "{:>number_width$}. {line}", i + 1);
            } else {
                let _ = writeln!(out, "{indent}{line}");
            }
        }
        if let Some(note) = note(i) {
            let _ = writeln!(out, "{indent}{note}");
        }
    }
    out
}

/// The cleaned lines of a possibly multi-line text (at least one, possibly empty).
fn lines(text: &str) -> Vec<String> {
    let lines: Vec<String> = text
        .lines()
        .map(|line| clean(line).trim_end().to_owned())
        .collect();
    if lines.is_empty() {
        vec![String::new()]
    } else {
        lines
    }
}

/// Makes text from other members safe to print: control characters (escape sequences,
/// newlines, carriage returns) and bidirectional overrides are shown as `\u{…}` escapes,
/// so no one can redraw the screen or disguise text.
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || is_bidi_control(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Display width in columns, counting one per character (good for the scripts in use;
/// wide East Asian characters will misalign a little).
fn width(text: &str) -> usize {
    text.chars().count()
}

/// A duration in words, to the nearest minute past one minute: "45 seconds",
/// "15 minutes", "1 hour 30 minutes", "2 days 3 hours".
pub fn in_words(secs: u64) -> String {
    if secs < 60 {
        return plural(secs, "second");
    }
    let minutes = secs / 60 + u64::from(secs % 60 >= 30);
    let (days, hours, mins) = (minutes / (24 * 60), minutes / 60 % 24, minutes % 60);
    match (days, hours, mins) {
        (0, 0, m) => plural(m, "minute"),
        (0, h, 0) => plural(h, "hour"),
        (0, h, m) => format!("{} {}", plural(h, "hour"), plural(m, "minute")),
        (d, 0, _) => plural(d, "day"),
        (d, h, _) => format!("{} {}", plural(d, "day"), plural(h, "hour")),
    }
}

/// How long ago `then` was, both in seconds since the epoch. The author's clock may be
/// ahead of ours, so anything not clearly in the past is "just now".
fn ago(then: i64, now: i64) -> String {
    match u64::try_from(now.saturating_sub(then)) {
        Ok(secs) if secs >= 60 => format!("{} ago", in_words(secs)),
        _ => "just now".to_owned(),
    }
}

fn plural(n: u64, unit: &str) -> String {
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::api::{MemberInfo, Role};

    const A: &str = "0123456789abcdef0123456789abcdef";
    const B: &str = "fedcba9876543210fedcba9876543210";

    fn agreement(id: &str, text: &str, created_at: i64) -> Agreement {
        Agreement {
            id: id.into(),
            text: text.into(),
            author: A.into(),
            created_at,
        }
    }

    #[test]
    fn table_aligns_columns_on_the_widest_cell() {
        let rows = vec![
            vec![
                "1".to_owned(),
                "Thursday circle".to_owned(),
                "12".to_owned(),
            ],
            vec!["22".to_owned(), "Carers".to_owned(), "3".to_owned()],
        ];
        assert_eq!(
            table(&["ID", "NAME", "MEMBERS"], &rows),
            "ID  NAME             MEMBERS\n\
             1   Thursday circle  12\n\
             22  Carers           3\n"
        );
    }

    #[test]
    fn table_trims_trailing_space_and_tolerates_ragged_rows() {
        let rows = vec![
            vec!["x".to_owned()],
            vec!["a".into(), "b".into(), "extra".into()],
        ];
        assert_eq!(table(&["A", "B"], &rows), "A  B\nx\na  b  extra\n");
    }

    #[test]
    fn table_counts_characters_not_bytes() {
        let rows = vec![vec!["Mütter".to_owned(), "1".to_owned()]];
        assert_eq!(table(&["NAME", "N"], &rows), "NAME    N\nMütter  1\n");
    }

    #[test]
    fn group_list_is_a_table_of_id_name_members() {
        let groups = vec![
            GroupSummary {
                group_id: A.into(),
                name: "Thursday circle".into(),
                members: 5,
            },
            GroupSummary {
                group_id: B.into(),
                name: "Carers".into(),
                members: 12,
            },
        ];
        assert_eq!(
            group_list(&groups),
            format!(
                "ID                                NAME             MEMBERS\n\
                 {A}  Thursday circle  5\n\
                 {B}  Carers           12\n"
            )
        );
        assert!(group_list(&[]).contains("hearth group create"));
    }

    #[test]
    fn hostile_text_cannot_reach_the_terminal_raw() {
        let groups = vec![GroupSummary {
            group_id: A.into(),
            name: "\u{1b}[2J\u{1b}]0;owned\u{7}evil\nline\u{202e}txt".into(),
            members: 1,
        }];
        let out = group_list(&groups);
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        assert!(!out.contains('\u{202e}'));
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(out.contains("\\u{1b}[2J"));
    }

    #[test]
    fn status_lists_every_address_under_the_first() {
        let status = Status {
            member_id: A.into(),
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/4001".into(), "/ip6/::1/tcp/4001".into()],
            peers: 2,
            groups: 1,
        };
        assert_eq!(
            super::status(&status),
            format!(
                "member id     {A}\n\
                 peers         2 connected\n\
                 groups        1\n\
                 listening on  /ip4/127.0.0.1/tcp/4001\n              /ip6/::1/tcp/4001\n"
            )
        );
    }

    #[test]
    fn group_detail_shows_purpose_members_and_numbered_agreements() {
        let group = GroupDetail {
            group_id: A.into(),
            name: "Thursday circle".into(),
            purpose: "Mutual support\nfor carers.".into(),
            members: vec![
                MemberInfo {
                    member_id: A.into(),
                    role: Role::Facilitator,
                },
                MemberInfo {
                    member_id: B.into(),
                    role: Role::Member,
                },
            ],
            agreements: vec![
                agreement("1", "What is said here stays here.", 0),
                agreement("2", "We listen\nwithout fixing.", 0),
            ],
        };
        assert_eq!(
            group_detail(&group),
            format!(
                "Thursday circle\n\
                 id       {A}\n\
                 purpose  Mutual support\n         for carers.\n\
                 \n\
                 MEMBER                            ROLE\n\
                 {A}  facilitator\n\
                 {B}  member\n\
                 \n\
                 AGREEMENTS\n\
                 1. What is said here stays here.\n\
                 2. We listen\n   without fixing.\n"
            )
        );
    }

    #[test]
    fn group_detail_without_purpose_or_agreements_says_so() {
        let group = GroupDetail {
            group_id: A.into(),
            name: "New".into(),
            purpose: String::new(),
            members: vec![],
            agreements: vec![],
        };
        let out = group_detail(&group);
        assert!(out.contains("purpose  (none given)"), "{out}");
        assert!(out.contains(&format!("hearth agreement add {A}")), "{out}");
    }

    #[test]
    fn agreement_list_numbers_align_past_nine() {
        let now = 1_000_000;
        let list: Vec<Agreement> = (1..=10)
            .map(|i| agreement(&i.to_string(), "text", now - 3 * 86_400))
            .collect();
        let out = agreement_list(&list, now);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], " 1. text");
        assert_eq!(lines[1], format!("    id 1, by {A}, written 3 days ago"));
        assert_eq!(lines[18], "10. text");
    }

    #[test]
    fn invite_puts_the_token_alone_on_a_line_and_warns() {
        let created = InviteCreated {
            token: "hearth-invite-abc123".into(),
            expires_at: 10_900,
        };
        let out = invite("Thursday circle", &created, 10_000);
        assert!(out.lines().any(|l| l == "hearth-invite-abc123"), "{out}");
        assert!(out.contains("expires in 15 minutes"), "{out}");
        assert!(out.contains("secret"), "{out}");
        assert!(out.contains("in person"), "{out}");
        assert!(out.contains("do not post it"), "{out}");

        let late = invite("g", &created, 20_000);
        assert!(late.contains("already expired"), "{late}");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(in_words(0), "0 seconds");
        assert_eq!(in_words(1), "1 second");
        assert_eq!(in_words(45), "45 seconds");
        assert_eq!(in_words(60), "1 minute");
        assert_eq!(in_words(899), "15 minutes");
        assert_eq!(in_words(900), "15 minutes");
        assert_eq!(in_words(3600), "1 hour");
        assert_eq!(in_words(5400), "1 hour 30 minutes");
        assert_eq!(in_words(7200 - 1), "2 hours");
        assert_eq!(in_words(86_400), "1 day");
        assert_eq!(in_words(2 * 86_400 + 3 * 3600), "2 days 3 hours");
        assert_eq!(in_words(7 * 86_400), "7 days");
        assert!(in_words(u64::MAX).contains("days"));
    }

    #[test]
    fn ages_are_never_in_the_future() {
        assert_eq!(ago(100, 100), "just now");
        assert_eq!(ago(200, 100), "just now");
        assert_eq!(ago(i64::MAX, i64::MIN), "just now");
        assert_eq!(ago(0, 7200), "2 hours ago");
    }

    #[test]
    fn peer_list_puts_extra_addresses_on_their_own_lines() {
        let peers = vec![
            Peer {
                peer_id: "12D3KooWA".into(),
                addrs: vec!["/ip4/192.0.2.7/tcp/4001".into(), "/ip6/::1/tcp/4001".into()],
            },
            Peer {
                peer_id: "12D3KooWBB".into(),
                addrs: vec![],
            },
        ];
        assert_eq!(
            peer_list(&peers),
            "PEER ID     ADDRESS\n\
             12D3KooWA   /ip4/192.0.2.7/tcp/4001\n            /ip6/::1/tcp/4001\n\
             12D3KooWBB  -\n"
        );
        assert!(peer_list(&[]).contains("hearth peer add"));
    }
}
