//! Text for people: what each command prints without `--json`.
//!
//! Every function is pure (the current time is a parameter) and returns the whole output,
//! ending in a newline. Names, purposes and agreements are written by other members, so all
//! text from the daemon goes through [`clean`] before it reaches the terminal.

use std::fmt::Write as _;

use hearth_protocol::api::{
    Agreement, AgreementAdded, CodeCreated, CodeStatus, GroupCreated, GroupDetail, GroupSummary,
    InviteCreated, InviteKind, InviteList, InviteWithdrawn, Joined, Left, MemberInfo,
    MemberRemoved, Peer, PeerAdded, Role, SafetyNumber, Status,
};

use crate::qr;

/// Space between table columns and between a label and its value.
const GAP: &str = "  ";

pub fn status(status: &Status) -> String {
    if status.locked {
        return "hearthd is locked: it holds no key and syncs nothing.\n\
                Next: unlock it with `hearth unlock`.\n"
            .to_owned();
    }
    let addrs = status.listen_addrs.clone().unwrap_or_default();
    let listening = if addrs.is_empty() {
        vec!["(not listening yet)".to_owned()]
    } else {
        addrs
    };
    let passphrase = if status.passphrase {
        "set"
    } else {
        "none: the storage key sits in a key file in the data directory (add one with \
         `hearth passphrase set`)"
    };
    let auto_lock = match status.auto_lock_secs {
        Some(secs) => format!("after {} without a request", in_words(secs)),
        None => "off".to_owned(),
    };
    fields(&[
        ("state", vec!["unlocked".to_owned()]),
        ("passphrase", vec![passphrase.to_owned()]),
        ("auto-lock", vec![auto_lock]),
        (
            "peers",
            vec![format!("{} connected", status.peers.unwrap_or(0))],
        ),
        ("groups", vec![status.groups.unwrap_or(0).to_string()]),
        ("listening on", listening),
    ])
}

/// `hearth unlock`.
pub fn unlocked(status: &Status) -> String {
    if status.locked {
        // hearthd would have refused a wrong passphrase; say what it says rather than guess.
        return "hearthd answered, but says it is still locked. Check with `hearth status`.\n"
            .to_owned();
    }
    "Unlocked. hearthd is syncing again.\n".to_owned()
}

/// `hearth lock`.
pub fn locked(status: &Status) -> String {
    if !status.locked {
        return "hearthd answered, but says it is not locked. Check with `hearth status`.\n"
            .to_owned();
    }
    "Locked: hearthd dropped every key and stopped syncing. Unlock it with `hearth unlock`.\n"
        .to_owned()
}

/// `hearth panic`: one short line, as it is meant for a key binding.
pub fn panicked() -> String {
    "Done: hearthd destroyed its keys and data, and stopped.\n".to_owned()
}

/// `hearth passphrase set`.
pub const PASSPHRASE_SET: &str = "A passphrase now protects the storage key: `hearth unlock` \
     needs it from now on. If you forget it, the groups on this device cannot be opened again.\n";
/// `hearth passphrase change`.
pub const PASSPHRASE_CHANGED: &str =
    "The passphrase is changed: `hearth unlock` needs the new one from now on.\n";
/// `hearth passphrase remove`.
pub const PASSPHRASE_REMOVED: &str = "The passphrase is removed. The storage key now sits in a \
     key file in hearthd's data directory: anyone who copies that directory can read your \
     groups. Add a passphrase again with `hearth passphrase set`.\n";
/// `hearth passphrase duress`.
pub const DURESS_SET: &str = "The duress passphrase is set. Given to `hearth unlock`, it \
     destroys every key and all of hearth's data on this device instead of unlocking it.\n";

pub fn group_created(name: &str, created: &GroupCreated) -> String {
    let id = clean(&created.group_id);
    format!(
        "Created group \"{}\" (id {id}).\n\
         Next: add agreements with `hearth agreement add {id}`, \
         then invite people with `hearth invite {id}`.\n",
        clean(name)
    )
}

pub fn group_list(groups: &[GroupSummary]) -> String {
    if groups.is_empty() {
        return "You are not in any group yet. Create one with `hearth group create`, \
                or join one with `hearth join` (each asks what it needs).\n"
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
    out += &member_table(&group.members);

    out.push('\n');
    out += "AGREEMENTS\n";
    if group.agreements.is_empty() {
        let _ = writeln!(
            out,
            "none yet. Propose one with `hearth agreement add {}`.",
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
                `hearth agreement add`.\n"
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

/// The token on a line of its own (easy to copy), with `qr` the same token as a QR code
/// under it, when it expires, and how to hand it over.
pub fn invite(group: &str, invite: &InviteCreated, now: u64, qr: bool) -> String {
    let expiry = if invite.expires_at > now {
        format!("It expires in {}.", in_words(invite.expires_at - now))
    } else {
        "It has already expired; check this device's clock, then create a new one.".to_owned()
    };
    let mut out = format!(
        "Invite token for group \"{}\":\n\n{}\n\n",
        clean(group),
        clean(&invite.token),
    );
    let mut hand_over = "hand it over in person (or read it out)";
    if qr {
        // The token as it is, not cleaned: what a scanner reads must be what `hearth join`
        // takes. The picture is modules only, so nothing in the token reaches the terminal.
        match qr::lines(&invite.token) {
            Some(lines) => {
                out += "The same token as a QR code:\n\n";
                for line in lines {
                    out += &line;
                    out.push('\n');
                }
                out.push('\n');
                hand_over = "hand it over in person (read it out, or let them scan the QR code)";
            }
            None => out += "(The token is too long to show as a QR code.)\n\n",
        }
    }
    let _ = writeln!(
        out,
        "{expiry}\nThe token is a secret: {hand_over}, and do not post it in a chat, an email \
         or anywhere else. Whoever holds it can join the group."
    );
    out
}

/// `hearth invite list GROUP`: the open invites, soonest to expire first, by their ids.
pub fn invite_list(list: &InviteList, now: u64) -> String {
    let name = clean(&list.group_name);
    let id = clean(&suggested(&[&list.group_id]));
    if list.invites.is_empty() {
        return format!(
            "\"{name}\" has no open invites. Make one with `hearth invite{id}` (a token) \
             or `hearth invite{id} --code` (a code to say aloud).\n"
        );
    }
    let rows: Vec<Vec<String>> = list
        .invites
        .iter()
        .map(|i| {
            let kind = match i.kind {
                InviteKind::Token => "token",
                InviteKind::Code => "spoken code",
            };
            let expires = if i.expires_at > now {
                format!("in {}", in_words(i.expires_at - now))
            } else {
                "now".to_owned()
            };
            vec![clean(&i.id), kind.to_owned(), expires]
        })
        .collect();
    let mut out = format!("Open invites for \"{name}\":\n\n");
    out += &table(&["ID", "KIND", "EXPIRES"], &rows);
    let _ = writeln!(
        out,
        "\nEach works once. To stop one from working: hearth invite withdraw{id} ID"
    );
    out
}

/// `hearth invite withdraw GROUP ID`: what was withdrawn, and what now.
pub fn invite_withdrawn(withdrawn: &InviteWithdrawn) -> String {
    let what = match withdrawn.kind {
        InviteKind::Token => format!("The invite token {}", clean(&withdrawn.id)),
        InviteKind::Code => format!("Spoken code number {}", clean(&withdrawn.id)),
    };
    format!(
        "{what} for \"{}\" is withdrawn: nobody can join with it any more. To invite \
         someone, make a new one: hearth invite{}\n",
        clean(&withdrawn.group_name),
        clean(&suggested(&[&withdrawn.group_id]))
    )
}

/// `hearth invite GROUP --code`: the spoken code, large and alone, how long it works, what
/// the person joining runs, and, when `waiting`, that hearth now waits for them.
pub fn code(group: &str, created: &CodeCreated, now: u64, waiting: bool) -> String {
    let code = clean(&created.code);
    let life = if created.expires_at > now {
        format!("it works once, for {}", in_words(created.expires_at - now))
    } else {
        "it has already expired: check this device's clock".to_owned()
    };
    let mut out = format!(
        "Say this code to the person joining \"{}\" ({life}):\n\n    {code}\n\n\
         They run `hearth join` and type the code when it asks.\n",
        clean(group),
    );
    if waiting {
        out += "Waiting for their device... You will be asked to let them in. (Ctrl-C stops \
                waiting; the code stays valid until it expires)\n";
    } else {
        let _ = writeln!(
            out,
            "The code stays valid until it expires. When their device has found yours, it \
             waits for you to let them in: hearth invite approve{} {}",
            clean(&suggested(&[group])),
            created.channel
        );
    }
    out
}

/// `hearth invite approve`: what was decided about the join held on a code.
pub fn code_decided(group: &str, approved: bool, status: &CodeStatus) -> String {
    let who = match status.name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => format!("\"{}\"", clean(name)),
        _ => "the person (no name given)".to_owned(),
    };
    if approved {
        let mut out = format!("Letting {who} into \"{}\".", clean(group));
        if let Some(number) = &status.safety_number {
            let _ = write!(
                out,
                " Once they are in, compare the safety number with them, face to face: {}",
                clean(number)
            );
        }
        out.push('\n');
        out
    } else {
        format!("Turned {who} away; nobody joined with that code.\n",)
    }
}

pub fn joined(joined: &Joined) -> String {
    let id = clean(&joined.group_id);
    format!(
        "Joined group {id}.\nSee its members and agreements with `hearth group show {id}`, \
         then compare safety numbers with each member, face to face: \
         `hearth member verify {id}` (it asks which member).\n"
    )
}

/// `hearth member list`: the member table, or a line saying there is no one.
pub fn member_list(members: &[MemberInfo]) -> String {
    if members.is_empty() {
        return "This group has no members.\n".to_owned();
    }
    member_table(members)
}

/// One row per member: name (yours marked), role, verified, when they joined, member id.
fn member_table(members: &[MemberInfo]) -> String {
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            let mut name = if m.name.trim().is_empty() {
                "(no name)".to_owned()
            } else {
                m.name.clone()
            };
            if m.you {
                name += " (you)";
            }
            let verified = match (m.verified, m.key_changed) {
                (true, _) => "yes",
                (false, true) => "no: KEY CHANGED",
                (false, false) => "no",
            };
            let joined = if m.joined_at == 0 {
                "creator".to_owned()
            } else {
                utc(m.joined_at)
            };
            vec![
                name,
                m.role.to_string(),
                verified.to_owned(),
                joined,
                m.member_id.clone(),
            ]
        })
        .collect();
    table(
        &["NAME", "ROLE", "VERIFIED", "JOINED (UTC)", "MEMBER ID"],
        &rows,
    )
}

/// The stderr warning about members whose key differs from a verified member who went by
/// the same name, or `None` when there are none. `group` is as the user typed it.
pub fn key_changed_warning(group: &str, members: &[MemberInfo]) -> Option<String> {
    let mut out = String::new();
    for m in members.iter().filter(|m| m.key_changed) {
        let name = if m.name.is_empty() {
            "(no name)".to_owned()
        } else {
            clean(&m.name)
        };
        let id = clean(&m.member_id);
        let _ = writeln!(
            out,
            "hearth: warning: \"{name}\" (member {id}) has a different key from the verified \
             member who went by that name. It may be someone else, or the same person on a new \
             device. Do not trust it is them until you compare safety numbers again, face to \
             face: hearth member verify{}",
            clean(&suggested(&[group, &m.member_id])),
        );
    }
    (!out.is_empty()).then_some(out)
}

/// `hearth member verify` without `--confirm`: the safety number, large, and what to do with
/// it. `group` and `member` are as the user typed them.
pub fn safety_number(group: &str, member: &str, number: &SafetyNumber) -> String {
    let who = clean(member);
    let mut out = format!(
        "Safety number for you and {who} in group \"{}\":\n\n",
        clean(group)
    );
    for line in safety_number_lines(&number.safety_number) {
        let _ = writeln!(out, "    {line}\n");
    }
    if number.verified {
        let _ = writeln!(
            out,
            "You have already marked {who} as verified. To check again, compare these digits \
             with the ones on {who}'s screen, face to face."
        );
    } else {
        let _ = writeln!(
            out,
            "Compare these digits with the ones on {who}'s screen, face to face. If every \
             digit matches, run:\n\n    hearth member verify{} --confirm\n\n\
             If any digit differs, do not confirm: the device you are comparing with may not \
             be {who}'s.",
            clean(&suggested(&[group, member])),
        );
    }
    out
}

/// A safety number's digits in groups of five, four groups a line (three lines for the
/// usual sixty digits), so two people can read them out without losing their place. Text
/// that is not digits and spaces is shown as it is, cleaned, on one line.
pub fn safety_number_lines(number: &str) -> Vec<String> {
    let digits: String = number.split_whitespace().collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return vec![clean(number)];
    }
    let groups: Vec<&str> = digits
        .as_bytes()
        .chunks(5)
        // Only ASCII digits, so every chunk is valid UTF-8.
        .map(|chunk| std::str::from_utf8(chunk).unwrap_or_default())
        .collect();
    groups.chunks(4).map(|line| line.join("   ")).collect()
}

/// `hearth member verify --confirm`.
pub fn verified(group: &str, member: &str, number: &SafetyNumber) -> String {
    let who = clean(member);
    if number.verified {
        format!("Marked {who} as verified.\n")
    } else {
        format!(
            "hearthd did not mark {who} as verified. Check with `hearth member list{}`.\n",
            clean(&suggested(&[group]))
        )
    }
}

/// `hearth member role`: the member's new role, from hearthd's answer.
pub fn role_set(group: &str, member: &str, info: &MemberInfo) -> String {
    let who = if info.name.is_empty() {
        clean(member)
    } else {
        clean(&info.name)
    };
    let role = match info.role {
        Role::Facilitator => "a facilitator",
        Role::Member => "a member, not a facilitator,",
    };
    format!("{who} is now {role} of group \"{}\".\n", clean(group))
}

/// `hearth member remove`. `member` is as the user typed it.
pub fn member_removed(member: &str, removed: &MemberRemoved) -> String {
    let who = clean(member);
    format!(
        "Removed {who}. A new key (epoch {}) now protects everything written from here on; \
         {who} cannot read it.\n",
        removed.epoch
    )
}

/// `hearth leave`: whether the others were told, and what became of this device's copy.
pub fn left(group: &str, left: &Left) -> String {
    let mut out = format!("Left group \"{}\".\n", clean(group));
    if left.delivered {
        out += "The other members' devices have been told.\n";
    } else {
        out += "No member's device could be reached: the group will not know you left until \
                a facilitator removes you. Tell one, with your member id from `hearth status`.\n";
    }
    if left.kept_copy {
        out += "Your copy of the group stays on this device, read-only.\n";
    } else {
        out += "Your copy of the group on this device has been destroyed.\n";
    }
    out
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

/// The arguments of a command hearth suggests, each with a space before it: the words when
/// every one is an id (a group or member id: 32 hex digits), else none at all, so that the
/// suggested command asks for them. A group or member name copied into a command line
/// would stay in the shell's history and show in the process list; an id reveals nothing.
pub fn suggested(words: &[&str]) -> String {
    let is_id = |w: &&str| w.len() == 32 && w.bytes().all(|b| b.is_ascii_hexdigit());
    if words.iter().all(is_id) {
        words.iter().map(|w| format!(" {w}")).collect()
    } else {
        String::new()
    }
}

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM`, in UTC.
pub fn utc(secs: i64) -> String {
    let (days, secs_of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        secs_of_day / 3600,
        secs_of_day / 60 % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
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
    const C: &str = "00000000000000000000000000000001";
    const D: &str = "dddddddddddddddddddddddddddddddd";

    fn agreement(id: &str, text: &str, created_at: i64) -> Agreement {
        Agreement {
            id: id.into(),
            text: text.into(),
            author: A.into(),
            created_at,
        }
    }

    #[test]
    fn invite_lists_name_the_group_and_say_what_to_do_next() {
        let list = InviteList {
            group_id: "0123456789abcdef0123456789abcdef".into(),
            group_name: "Thursday circle".into(),
            invites: vec![
                hearth_protocol::api::OpenInvite {
                    id: "3f9a0c12".into(),
                    kind: InviteKind::Token,
                    expires_at: 1_090,
                },
                hearth_protocol::api::OpenInvite {
                    id: "4".into(),
                    kind: InviteKind::Code,
                    expires_at: 1_600,
                },
            ],
        };
        let text = invite_list(&list, 1_000);
        assert!(
            text.starts_with("Open invites for \"Thursday circle\":"),
            "{text}"
        );
        assert!(text.contains("3f9a0c12  token"), "{text}");
        assert!(text.contains("spoken code"), "{text}");
        assert!(text.contains("in 2 minutes"), "{text}");
        assert!(text.contains("hearth invite withdraw 0123456789abcdef0123456789abcdef ID"));
        let empty = InviteList {
            invites: Vec::new(),
            ..list
        };
        let text = invite_list(&empty, 1_000);
        assert!(
            text.contains("\"Thursday circle\" has no open invites"),
            "{text}"
        );
        assert!(
            text.contains("hearth invite 0123456789abcdef0123456789abcdef --code"),
            "{text}"
        );
        let withdrawn = InviteWithdrawn {
            group_id: A.into(),
            group_name: "Thursday circle".into(),
            id: "4".into(),
            kind: InviteKind::Code,
        };
        let text = invite_withdrawn(&withdrawn);
        assert!(text.starts_with("Spoken code number 4 for \"Thursday circle\" is withdrawn"));
        assert!(
            text.ends_with(&format!("make a new one: hearth invite {A}\n")),
            "{text}"
        );
        // An id that is not one (a stand-in daemon's) is left out: hearth asks instead.
        let text = invite_withdrawn(&InviteWithdrawn {
            group_id: "0123".into(),
            ..withdrawn
        });
        assert!(text.ends_with("make a new one: hearth invite\n"), "{text}");
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
                epoch: Some(3),
            },
            GroupSummary {
                group_id: B.into(),
                name: "Carers".into(),
                members: 12,
                epoch: None,
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
            epoch: Some(1),
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
            locked: false,
            passphrase: false,
            auto_lock_secs: None,
            listen_addrs: Some(vec![
                "/ip4/127.0.0.1/tcp/4001".into(),
                "/ip6/::1/tcp/4001".into(),
            ]),
            peers: Some(2),
            groups: Some(1),
        };
        assert_eq!(
            super::status(&status),
            format!(
                "state         unlocked\n\
                 passphrase    none: the storage key sits in a key file in the data directory \
                 (add one with `hearth passphrase set`)\n\
                 auto-lock     off\n\
                 peers         2 connected\n\
                 groups        1\n\
                 listening on  /ip4/127.0.0.1/tcp/4001\n              /ip6/::1/tcp/4001\n"
            )
        );
        let protected = super::status(&Status {
            passphrase: true,
            auto_lock_secs: Some(900),
            ..status.clone()
        });
        assert!(protected.contains("passphrase    set\n"), "{protected}");
        assert!(
            protected.contains("auto-lock     after 15 minutes without a request\n"),
            "{protected}"
        );
    }

    #[test]
    fn a_locked_status_says_so_and_how_to_unlock() {
        let status = Status {
            locked: true,
            passphrase: true,
            auto_lock_secs: None,
            listen_addrs: None,
            peers: None,
            groups: None,
        };
        let text = super::status(&status);
        assert!(text.starts_with("hearthd is locked"), "{text}");
        assert!(text.contains("`hearth unlock`"), "{text}");
        assert_eq!(
            unlocked(&status),
            "hearthd answered, but says it is still locked. Check with `hearth status`.\n"
        );
        assert_eq!(
            locked(&status),
            "Locked: hearthd dropped every key and stopped syncing. Unlock it with `hearth \
             unlock`.\n"
        );
        let open = Status {
            locked: false,
            ..status
        };
        assert_eq!(unlocked(&open), "Unlocked. hearthd is syncing again.\n");
        assert!(locked(&open).contains("not locked"));
        assert_eq!(panicked().lines().count(), 1);
    }

    #[test]
    fn group_detail_shows_purpose_members_and_numbered_agreements() {
        let group = GroupDetail {
            group_id: A.into(),
            name: "Thursday circle".into(),
            purpose: "Mutual support\nfor carers.".into(),
            members: vec![
                member(A, "Ana", Role::Facilitator, 0),
                MemberInfo {
                    you: true,
                    ..member(B, "", Role::Member, 1_767_225_600)
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
                 NAME             ROLE         VERIFIED  JOINED (UTC)      MEMBER ID\n\
                 Ana              facilitator  no        creator           {A}\n\
                 (no name) (you)  member       no        2026-01-01 00:00  {B}\n\
                 \n\
                 AGREEMENTS\n\
                 1. What is said here stays here.\n\
                 2. We listen\n   without fixing.\n"
            )
        );
    }

    fn member(id: &str, name: &str, role: Role, joined_at: i64) -> MemberInfo {
        MemberInfo {
            member_id: id.into(),
            name: name.into(),
            role,
            verified: false,
            joined_at,
            you: false,
            key_changed: false,
        }
    }

    #[test]
    fn member_list_shows_names_roles_verification_and_join_times() {
        let members = vec![
            MemberInfo {
                you: true,
                verified: true,
                ..member(A, "Ana", Role::Facilitator, 0)
            },
            MemberInfo {
                verified: true,
                ..member(B, "Sam Lee", Role::Member, 1_767_277_845)
            },
            member(C, "", Role::Member, 1_767_290_000),
            MemberInfo {
                key_changed: true,
                ..member(D, "Kim", Role::Member, 1_767_300_000)
            },
        ];
        assert_eq!(
            member_list(&members),
            format!(
                "NAME       ROLE         VERIFIED         JOINED (UTC)      MEMBER ID\n\
                 Ana (you)  facilitator  yes              creator           {A}\n\
                 Sam Lee    member       yes              2026-01-01 14:30  {B}\n\
                 (no name)  member       no               2026-01-01 17:53  {C}\n\
                 Kim        member       no: KEY CHANGED  2026-01-01 20:40  {D}\n"
            )
        );
        assert!(member_list(&[]).contains("no members"));
    }

    #[test]
    fn changed_keys_get_a_warning_naming_the_member_and_the_command() {
        let mut members = vec![
            member(A, "Ana", Role::Facilitator, 0),
            MemberInfo {
                key_changed: true,
                ..member(D, "Kim", Role::Member, 5)
            },
        ];
        let warning = key_changed_warning("Thursday circle", &members).unwrap();
        assert_eq!(
            warning,
            format!(
                "hearth: warning: \"Kim\" (member {D}) has a different key from the verified \
                 member who went by that name. It may be someone else, or the same person on a \
                 new device. Do not trust it is them until you compare safety numbers again, \
                 face to face: hearth member verify\n"
            )
        );
        assert!(!warning.contains("Ana"));

        members[0].key_changed = true;
        members[0].name = "Ana\u{1b}[2J".into();
        let warning = key_changed_warning(A, &members).unwrap();
        assert_eq!(warning.lines().count(), 2, "{warning}");
        assert!(!warning.contains('\u{1b}'), "{warning:?}");
        assert!(
            warning.contains(&format!("hearth member verify {A} {A}")),
            "{warning}"
        );

        members.iter_mut().for_each(|m| m.key_changed = false);
        assert_eq!(key_changed_warning("g", &members), None);
    }

    const NUMBER: &str = "01234 56789 11111 22222 33333 44444 55555 66666 77777 88888 99999 00000";

    #[test]
    fn safety_numbers_are_three_lines_of_four_groups() {
        let expected = vec![
            "01234   56789   11111   22222".to_owned(),
            "33333   44444   55555   66666".to_owned(),
            "77777   88888   99999   00000".to_owned(),
        ];
        assert_eq!(safety_number_lines(NUMBER), expected);
        // The same digits without spaces, or spaced oddly, come out the same.
        assert_eq!(safety_number_lines(&NUMBER.replace(' ', "")), expected);
        assert_eq!(safety_number_lines(&NUMBER.replace(' ', "\n  ")), expected);
        // Anything else is shown as it is, cleaned.
        assert_eq!(safety_number_lines("ab\u{1b}cd"), vec!["ab\\u{1b}cd"]);
        assert_eq!(safety_number_lines(""), vec![""]);
    }

    #[test]
    fn safety_number_screen_says_how_to_compare_and_confirm() {
        let number = SafetyNumber {
            safety_number: NUMBER.into(),
            verified: false,
        };
        assert_eq!(
            safety_number("Thursday circle", "Sam", &number),
            "Safety number for you and Sam in group \"Thursday circle\":\n\
             \n\
             \x20   01234   56789   11111   22222\n\
             \n\
             \x20   33333   44444   55555   66666\n\
             \n\
             \x20   77777   88888   99999   00000\n\
             \n\
             Compare these digits with the ones on Sam's screen, face to face. If every digit \
             matches, run:\n\
             \n\
             \x20   hearth member verify --confirm\n\
             \n\
             If any digit differs, do not confirm: the device you are comparing with may not \
             be Sam's.\n"
        );
        // Named by ids, the command names them again: ids are no secret.
        let by_id = safety_number(A, B, &number);
        assert!(
            by_id.contains(&format!("hearth member verify {A} {B} --confirm")),
            "{by_id}"
        );
        let again = safety_number(
            "g",
            "Sam",
            &SafetyNumber {
                verified: true,
                ..number
            },
        );
        assert!(again.contains("already marked Sam as verified"), "{again}");
        assert!(!again.contains("--confirm"), "{again}");
    }

    #[test]
    fn verify_confirm_role_remove_and_leave_messages() {
        let yes = SafetyNumber {
            safety_number: NUMBER.into(),
            verified: true,
        };
        assert_eq!(verified("g", "Sam", &yes), "Marked Sam as verified.\n");
        let no = SafetyNumber {
            verified: false,
            ..yes
        };
        assert!(verified("g", "Sam", &no).contains("did not mark Sam"));

        let info = member(B, "Sam Lee", Role::Facilitator, 5);
        assert_eq!(
            role_set("Carers", B, &info),
            "Sam Lee is now a facilitator of group \"Carers\".\n"
        );
        let unnamed = member(B, "", Role::Member, 5);
        assert_eq!(
            role_set("Carers", "xyz", &unnamed),
            "xyz is now a member, not a facilitator, of group \"Carers\".\n"
        );

        let removed = MemberRemoved {
            member_id: B.into(),
            epoch: 7,
        };
        assert_eq!(
            member_removed("Sam", &removed),
            "Removed Sam. A new key (epoch 7) now protects everything written from here on; \
             Sam cannot read it.\n"
        );

        let told = left(
            "Carers",
            &Left {
                delivered: true,
                kept_copy: false,
            },
        );
        assert_eq!(
            told,
            "Left group \"Carers\".\n\
             The other members' devices have been told.\n\
             Your copy of the group on this device has been destroyed.\n"
        );
        let alone = left(
            "Carers",
            &Left {
                delivered: false,
                kept_copy: true,
            },
        );
        assert!(
            alone.contains(
                "No member's device could be reached: the group will not know you left until a \
                 facilitator removes you."
            ),
            "{alone}"
        );
        assert!(alone.contains("stays on this device"), "{alone}");
    }

    #[test]
    fn utc_times_are_calendar_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00");
        assert_eq!(utc(1_767_225_599), "2025-12-31 23:59");
        assert_eq!(utc(-1), "1969-12-31 23:59");
        // Nonsense from a broken clock must not panic.
        assert!(!utc(i64::MAX).is_empty());
        assert!(!utc(i64::MIN).is_empty());
    }

    #[test]
    fn suggested_commands_name_ids_only() {
        assert_eq!(suggested(&[A]), format!(" {A}"));
        assert_eq!(suggested(&[A, B]), format!(" {A} {B}"));
        assert_eq!(suggested(&[]), "");
        // One name among the words leaves them all out, so the command asks for them in
        // order rather than taking an id for the wrong argument.
        for words in [
            &["Thursday circle"][..],
            &[A, "Sam"],
            &["Sam", A],
            &["$HOME"],
            &[""],
            &["0123456789abcdef"],
            &["0123456789abcdef0123456789abcdeg"],
        ] {
            assert_eq!(suggested(words), "", "{words:?}");
        }
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
        let out = invite("Thursday circle", &created, 10_000, false);
        assert!(out.lines().any(|l| l == "hearth-invite-abc123"), "{out}");
        assert!(out.contains("expires in 15 minutes"), "{out}");
        assert!(out.contains("secret"), "{out}");
        assert!(out.contains("in person"), "{out}");
        assert!(out.contains("do not post it"), "{out}");

        let late = invite("g", &created, 20_000, false);
        assert!(late.contains("already expired"), "{late}");

        let scan = invite("g", &created, 10_000, true);
        assert!(
            scan.contains("The same token as a QR code:\n\n\u{1b}["),
            "{scan}"
        );
        assert!(scan.contains("let them scan the QR code"), "{scan}");
        let long = InviteCreated {
            token: "x".repeat(4000),
            expires_at: 10_900,
        };
        let out = invite("g", &long, 10_000, true);
        assert!(out.contains("too long to show as a QR code"), "{out}");
        assert!(!out.contains('\u{1b}'), "{out}");
    }

    #[test]
    fn spoken_codes_from_the_daemon_are_cleaned() {
        let created = CodeCreated {
            code: "4-a\u{1b}[2J".into(),
            channel: 4,
            expires_at: 0,
        };
        let out = code("g", &created, 10, false);
        assert!(!out.contains('\u{1b}'), "{out:?}");
        assert!(out.contains("already expired"), "{out}");
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
