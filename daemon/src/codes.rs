//! The facilitator's spoken codes while the daemon runs, and the limits on attempts.
//!
//! [`Codes`] is the in-memory registry of codes this daemon made (the store keeps the
//! open ones so they survive a restart): which channel holds which live code, and what
//! became of each, for whoever waits on it. It decides the rules that matter for
//! guessing: a guess is tested only when a confirmation is *checked* against a live code
//! (a hello alone changes nothing); each source (an IP address; on the shared loopback
//! addresses, a peer id) has at most one checked guess per code; and a code is burnt by
//! its [`MAX_WRONG`]th checked wrong confirmation, so one stranger who learns the channel
//! cannot burn it, and any attacker wins a code with probability at most
//! `MAX_WRONG × 2^-24`. A matched code is held until its join ends, and the join itself
//! waits for the facilitator's approval ([`Codes::await_approval`]).
//!
//! [`Limiter`] rations code exchanges per peer and per network origin (an IPv4 address,
//! an IPv6 /64), so a stranger sweeping channels pays for it in time.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use hearth_protocol::api;
use hearth_protocol::code::{CODE_WORDS, MAX_CHANNEL, SpokenCode};
use hearth_protocol::ids::GroupId;
use rand_core::RngCore;
use zeroize::Zeroizing;

/// How long a finished or expired code's outcome is kept for whoever waits on it.
pub const KEEP_OUTCOME_SECS: u64 = 60 * 60;
/// Checked wrong confirmations a code survives, less one: the one that makes this many
/// burns it.
pub const MAX_WRONG: usize = 3;

/// Who made a guess, for the one-guess-per-code rule: an IP address, or (on the loopback
/// addresses several daemons of one computer share, and where no address is known) a
/// peer id, hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Ip(IpAddr),
    Peer([u8; 32]),
}

impl Source {
    pub fn of(peer: &[u8], ip: Option<IpAddr>, shared: impl Fn(IpAddr) -> bool) -> Source {
        match ip {
            Some(ip) if !shared(ip) => Source::Ip(ip),
            _ => Source::Peer(*blake3::hash(peer).as_bytes()),
        }
    }
}

/// What a checked confirmation was, as the facilitator's side of the exchange found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guess {
    /// The confirmation and its binding matched.
    Right,
    /// The confirmation did not match: a wrong guess.
    Wrong,
    /// The confirmation matched but its binding did not: the exchange was relayed from
    /// another connection. Tests no guess of the sender's.
    Relayed,
}

/// One code this daemon made.
struct Entry {
    group: GroupId,
    expires_at: u64,
    /// The words while the code can still be tried; `None` once used or burnt.
    words: Option<Zeroizing<[u8; CODE_WORDS]>>,
    /// Which making of a code on this channel this is, so an exchange that began with an
    /// earlier code on the channel is never checked against a later one.
    generation: u64,
    status: api::CodeStatus,
    /// Wrong attempts this daemon refused on channels other than this code's (with no
    /// code, or another code, there) since this code was made.
    other_attempts: u32,
    /// The sources whose wrong guess was checked against this code.
    wrong_from: Vec<Source>,
    /// The facilitator's answer to a join held for approval.
    approval: Option<bool>,
}

impl Entry {
    fn live(&self, now: u64) -> bool {
        self.words.is_some() && self.expires_at > now
    }
}

/// A live code handed to an exchange at its hello.
pub struct Live {
    pub code: SpokenCode,
    pub generation: u64,
}

/// What a checked confirmation came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// It matched a live code, which is now used: go on with the join.
    Matched(GroupId),
    /// It did not match the live code on its channel, which survives (fewer than
    /// [`MAX_WRONG`] wrong guesses so far).
    Wrong,
    /// It did not match the live code on its channel, which is now burnt.
    Burnt,
    /// Refused without being checked: no live code (of the exchange's making) on that
    /// channel, or its source already had its one guess at this code, or the exchange
    /// was relayed. Nothing changed.
    NoCode,
}

#[derive(Default)]
pub struct Codes {
    entries: BTreeMap<u16, Entry>,
    generation: u64,
}

fn status(state: api::CodeState) -> api::CodeStatus {
    api::CodeStatus {
        state,
        member_id: None,
        name: None,
        safety_number: None,
        other_attempts: 0,
        wrong_attempts: 0,
    }
}

impl Codes {
    /// Takes an open code found in the store at start.
    pub fn restore(&mut self, group: GroupId, code: &SpokenCode, expires_at: u64) {
        self.insert(group, code, expires_at);
    }

    fn insert(&mut self, group: GroupId, code: &SpokenCode, expires_at: u64) {
        self.generation += 1;
        self.entries.insert(
            code.channel(),
            Entry {
                group,
                expires_at,
                words: Some(Zeroizing::new(*code.words())),
                generation: self.generation,
                status: status(api::CodeState::Open),
                other_attempts: 0,
                wrong_from: Vec::new(),
                approval: None,
            },
        );
    }

    /// Channels free for a new code at `now`: those with no live code and no join of
    /// theirs under way.
    pub fn free_channels(&self, now: u64) -> Vec<u16> {
        (1..=MAX_CHANNEL)
            .filter(|c| {
                !self.entries.get(c).is_some_and(|e| {
                    e.live(now)
                        || matches!(
                            e.status.state,
                            api::CodeState::Joining | api::CodeState::AwaitingApproval
                        )
                })
            })
            .collect()
    }

    /// Makes a code on a random free channel, or `None` if every channel holds a live code.
    pub fn open(
        &mut self,
        group: GroupId,
        expires_at: u64,
        now: u64,
        rng: &mut impl RngCore,
    ) -> Option<SpokenCode> {
        self.prune(now);
        let free = self.free_channels(now);
        if free.is_empty() {
            return None;
        }
        // Uniform over the free channels (rejection sampling keeps it unbiased).
        let n = free.len() as u32;
        let zone = u32::MAX - u32::MAX % n;
        let index = loop {
            let r = rng.next_u32();
            if r < zone {
                break (r % n) as usize;
            }
        };
        let mut words = [0u8; CODE_WORDS];
        rng.fill_bytes(&mut words);
        let code = SpokenCode::from_parts(free[index], words).ok()?;
        words.fill(0);
        self.insert(group, &code, expires_at);
        Some(code)
    }

    /// The live code on `channel`, if any, for an exchange that starts now.
    pub fn at_hello(&self, channel: u16, now: u64) -> Option<Live> {
        let e = self.entries.get(&channel).filter(|e| e.live(now))?;
        let words = e.words.as_deref()?;
        Some(Live {
            code: SpokenCode::from_parts(channel, *words).ok()?,
            generation: e.generation,
        })
    }

    /// Records what the check of a confirmation on `channel` came to: `guess` is what the
    /// constant-time checks found, `generation` the code the exchange began with (`None`
    /// for a decoy), `source` who sent it. A wrong guess counts against the live code it
    /// was checked against, once per source, and the [`MAX_WRONG`]th burns it; a source
    /// that already had its guess at the code is refused unchecked; a relayed exchange
    /// changes nothing. A confirmation checked against a decoy counts as an attempt on
    /// another channel for every open code.
    pub fn checked(
        &mut self,
        channel: u16,
        generation: Option<u64>,
        source: Source,
        guess: Guess,
        now: u64,
    ) -> Checked {
        let live = self
            .entries
            .get_mut(&channel)
            .filter(|e| e.live(now) && Some(e.generation) == generation);
        match live {
            Some(e) if e.wrong_from.contains(&source) => Checked::NoCode,
            Some(_) if guess == Guess::Relayed => Checked::NoCode,
            Some(e) => match guess {
                Guess::Right => {
                    e.words = None;
                    e.status.state = api::CodeState::Joining;
                    Checked::Matched(e.group)
                }
                _ => {
                    e.wrong_from.push(source);
                    e.status.wrong_attempts = e.wrong_from.len() as u32;
                    if e.wrong_from.len() >= MAX_WRONG {
                        e.words = None;
                        e.status.state = api::CodeState::WrongCode;
                        Checked::Burnt
                    } else {
                        Checked::Wrong
                    }
                }
            },
            None => {
                for (c, e) in &mut self.entries {
                    if *c != channel && e.live(now) {
                        e.other_attempts = e.other_attempts.saturating_add(1);
                    }
                }
                Checked::NoCode
            }
        }
    }

    /// Holds the join that the code on `channel` (of `generation`) began until the
    /// facilitator approves or declines it: shows who asks (member id, name) and the
    /// safety number to whoever waits on the code. Whether the code was still that one.
    pub fn await_approval(
        &mut self,
        channel: u16,
        generation: u64,
        member_id: String,
        name: String,
        safety_number: String,
    ) -> bool {
        match self.entries.get_mut(&channel) {
            Some(e) if e.generation == generation && e.status.state == api::CodeState::Joining => {
                e.status.state = api::CodeState::AwaitingApproval;
                e.status.member_id = Some(member_id);
                e.status.name = Some(name);
                e.status.safety_number = Some(safety_number);
                e.approval = None;
                true
            }
            _ => false,
        }
    }

    /// The facilitator's answer to the join held on `channel` of `group`: `approve` or
    /// decline it. `member_id`, if given, must be the held joiner's. Errs (with a message
    /// for the person) when no join of that code waits for approval.
    pub fn decide(
        &mut self,
        group: &GroupId,
        channel: u16,
        member_id: Option<&str>,
        approve: bool,
    ) -> Result<api::CodeStatus, String> {
        let e = self
            .entries
            .get_mut(&channel)
            .filter(|e| e.group == *group)
            .ok_or("this device has no spoken code with that number for that group")?;
        if e.status.state != api::CodeState::AwaitingApproval || e.approval.is_some() {
            return Err(format!(
                "no one is waiting for approval on code {channel} (it is {})",
                e.status.state.as_str()
            ));
        }
        if let Some(m) = member_id
            && e.status.member_id.as_deref() != Some(m.trim())
        {
            return Err("the member id given is not that of the person waiting".into());
        }
        e.approval = Some(approve);
        let mut out = e.status.clone();
        out.other_attempts = e.other_attempts;
        Ok(out)
    }

    /// The facilitator's answer so far to the join held on `channel` of `generation`.
    pub fn approval(&self, channel: u16, generation: u64) -> Option<bool> {
        self.entries
            .get(&channel)
            .filter(|e| e.generation == generation)
            .and_then(|e| e.approval)
    }

    /// Records the end of a join that a matched code (of `generation`) began; a newer
    /// code on the channel is left alone.
    pub fn finish(
        &mut self,
        channel: u16,
        generation: u64,
        state: api::CodeState,
        joined: Option<(String, String)>,
    ) {
        if let Some(e) = self
            .entries
            .get_mut(&channel)
            .filter(|e| e.generation == generation)
        {
            e.words = None;
            e.status.state = state;
            if let Some((m, n)) = joined {
                e.status.member_id = Some(m);
                e.status.name = Some(n);
            }
        }
    }

    /// Ends a join of the code on `channel` (of `generation`) that is still under way as
    /// `failed`; whether it was under way. For joins whose task ended early.
    pub fn fail_if_pending(&mut self, channel: u16, generation: u64) -> bool {
        match self.entries.get_mut(&channel) {
            Some(e)
                if e.generation == generation
                    && matches!(
                        e.status.state,
                        api::CodeState::Joining | api::CodeState::AwaitingApproval
                    ) =>
            {
                e.status.state = api::CodeState::Failed;
                true
            }
            _ => false,
        }
    }

    /// The generation of the code on `channel`, if any (for [`Codes::finish`] right after
    /// making it).
    pub fn generation(&self, channel: u16) -> Option<u64> {
        self.entries.get(&channel).map(|e| e.generation)
    }

    /// Withdraws the live code on `channel` of `group`; whether there was one.
    pub fn withdraw(&mut self, group: &GroupId, channel: u16, now: u64) -> bool {
        match self.entries.get_mut(&channel) {
            Some(e) if e.group == *group && e.live(now) => {
                e.words = None;
                e.status.state = api::CodeState::Withdrawn;
                true
            }
            _ => false,
        }
    }

    /// Forgets every code of `group` (the group is being forgotten).
    pub fn forget_group(&mut self, group: &GroupId) {
        self.entries.retain(|_, e| e.group != *group);
    }

    /// The status of the code on `channel` of `group`, if this daemon knows of one.
    pub fn status(&self, group: &GroupId, channel: u16, now: u64) -> Option<api::CodeStatus> {
        let e = self.entries.get(&channel).filter(|e| e.group == *group)?;
        let mut status = e.status.clone();
        if status.state == api::CodeState::Open && e.expires_at <= now {
            status.state = api::CodeState::Expired;
        }
        status.other_attempts = e.other_attempts;
        Some(status)
    }

    /// Live codes of `group`: (channel, expires_at).
    pub fn open_of(&self, group: &GroupId, now: u64) -> Vec<(u16, u64)> {
        self.entries
            .iter()
            .filter(|(_, e)| e.group == *group && e.live(now))
            .map(|(c, e)| (*c, e.expires_at))
            .collect()
    }

    /// Drops the words of expired codes, and whole entries whose outcome has been kept
    /// [`KEEP_OUTCOME_SECS`] past their expiry. Returns the channels whose code expired
    /// unused since the last prune (their stored records can go).
    pub fn prune(&mut self, now: u64) -> Vec<u16> {
        let mut expired = Vec::new();
        for (c, e) in &mut self.entries {
            if e.words.is_some() && e.expires_at <= now {
                e.words = None;
                expired.push(*c);
            }
        }
        self.entries
            .retain(|_, e| e.expires_at.saturating_add(KEEP_OUTCOME_SECS) > now);
        expired
    }

    #[cfg(test)]
    pub fn entries(&self) -> usize {
        self.entries.len()
    }
}

/// Where a peer's connection comes from, for rationing: an IPv4 address, or an IPv6 /64
/// (one device on a network easily holds a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    V4([u8; 4]),
    V6([u8; 8]),
}

impl Origin {
    pub fn of(ip: IpAddr) -> Origin {
        match ip {
            IpAddr::V4(v4) => Origin::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Origin::V4(v4.octets()),
                None => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    Origin::V6(prefix)
                }
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Peer([u8; 32]),
    Origin(Origin),
}

/// Token buckets: each key may start [`Limiter::BURST`] code exchanges at once, then one
/// every [`Limiter::EVERY`]. An exchange needs a token from its peer's bucket and from
/// its origin's.
#[derive(Default)]
pub struct Limiter {
    buckets: HashMap<Key, (f64, Instant)>,
}

impl Limiter {
    pub const BURST: f64 = 5.0;
    pub const EVERY: Duration = Duration::from_secs(5);
    /// Most keys tracked; past it the least recently used are forgotten.
    pub const MAX_KEYS: usize = 4096;

    fn level(&self, key: &Key, now: Instant) -> f64 {
        match self.buckets.get(key) {
            Some((tokens, at)) => (tokens
                + now.saturating_duration_since(*at).as_secs_f64() / Self::EVERY.as_secs_f64())
            .min(Self::BURST),
            None => Self::BURST,
        }
    }

    /// Whether an exchange from `peer` (its peer id's bytes, hashed to a fixed key) at
    /// `origin` may start `now`; if so, takes its tokens. A refused attempt is not free:
    /// it costs its peer id a token all the same (down to [`Limiter::BURST`] in debt), so
    /// a peer that keeps asking while refused stays refused, and the tokens its origin
    /// regains go to peers that waited.
    pub fn allow(&mut self, peer: &[u8], origin: Option<Origin>, now: Instant) -> bool {
        let peer_key = Key::Peer(*blake3::hash(peer).as_bytes());
        let mut keys = vec![peer_key];
        keys.extend(origin.map(Key::Origin));
        if keys.iter().any(|k| self.level(k, now) < 1.0) {
            let level = self.level(&peer_key, now);
            self.buckets
                .insert(peer_key, ((level - 1.0).max(-Self::BURST), now));
            self.forget_past_max(now);
            return false;
        }
        for k in &keys {
            let level = self.level(k, now);
            self.buckets.insert(*k, (level - 1.0, now));
        }
        self.forget_past_max(now);
        true
    }

    fn forget_past_max(&mut self, now: Instant) {
        if self.buckets.len() > Self::MAX_KEYS {
            // Forget full buckets first (they hold nothing), then the oldest.
            let full: Vec<Key> = self
                .buckets
                .keys()
                .filter(|k| self.level(k, now) >= Self::BURST)
                .copied()
                .collect();
            for k in full {
                self.buckets.remove(&k);
            }
            while self.buckets.len() > Self::MAX_KEYS {
                let Some(oldest) = self
                    .buckets
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| *k)
                else {
                    break;
                };
                self.buckets.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    const G: GroupId = GroupId([1; 16]);

    fn from(i: u8) -> Source {
        Source::Ip(std::net::IpAddr::from([192, 0, 2, i]))
    }

    #[test]
    fn a_hello_changes_nothing_and_the_third_wrong_check_burns() {
        let mut codes = Codes::default();
        let code = codes.open(G, 1_000, 0, &mut OsRng).unwrap();
        let c = code.channel();
        // Any number of hellos: the code stays.
        for _ in 0..10 {
            assert!(codes.at_hello(c, 1).is_some());
        }
        let live = codes.at_hello(c, 1).unwrap();
        assert_eq!(live.code, code);
        // A wrong check on another channel (a decoy) changes nothing of it, but is counted.
        let other = if c == 1 { 2 } else { 1 };
        assert_eq!(
            codes.checked(other, None, from(1), Guess::Wrong, 2),
            Checked::NoCode
        );
        assert_eq!(codes.status(&G, c, 2).unwrap().other_attempts, 1);
        assert!(codes.at_hello(c, 2).is_some());
        let g = Some(live.generation);
        // One wrong guess (a stranger who learnt the channel) does not burn it.
        assert_eq!(
            codes.checked(c, g, from(1), Guess::Wrong, 3),
            Checked::Wrong
        );
        assert!(codes.at_hello(c, 3).is_some());
        let status = codes.status(&G, c, 3).unwrap();
        assert_eq!(
            (status.state, status.wrong_attempts),
            (api::CodeState::Open, 1)
        );
        // Its source gets no second guess, right or wrong: refused unchecked.
        assert_eq!(
            codes.checked(c, g, from(1), Guess::Wrong, 3),
            Checked::NoCode
        );
        assert_eq!(
            codes.checked(c, g, from(1), Guess::Right, 3),
            Checked::NoCode
        );
        // A relayed exchange tests nothing and changes nothing.
        assert_eq!(
            codes.checked(c, g, from(2), Guess::Relayed, 3),
            Checked::NoCode
        );
        assert_eq!(codes.status(&G, c, 3).unwrap().wrong_attempts, 1);
        // A second source's wrong guess: still open. The third burns it.
        assert_eq!(
            codes.checked(c, g, from(2), Guess::Wrong, 3),
            Checked::Wrong
        );
        assert_eq!(
            codes.checked(c, g, from(3), Guess::Wrong, 3),
            Checked::Burnt
        );
        // After that no guess is even compared (the right words do not help any more).
        assert_eq!(
            codes.checked(c, g, from(4), Guess::Right, 3),
            Checked::NoCode
        );
        assert!(codes.at_hello(c, 3).is_none());
        assert_eq!(
            codes.status(&G, c, 3).unwrap().state,
            api::CodeState::WrongCode
        );
    }

    #[test]
    fn the_real_joiner_gets_in_after_a_strangers_wrong_guess() {
        let mut codes = Codes::default();
        let c = codes.open(G, 1_000, 0, &mut OsRng).unwrap().channel();
        let g = Some(codes.at_hello(c, 1).unwrap().generation);
        assert_eq!(
            codes.checked(c, g, from(9), Guess::Wrong, 2),
            Checked::Wrong
        );
        assert_eq!(
            codes.checked(c, g, from(1), Guess::Right, 2),
            Checked::Matched(G)
        );
    }

    #[test]
    fn a_match_uses_the_code_once_and_a_new_code_ignores_old_exchanges() {
        let mut codes = Codes::default();
        let code = codes.open(G, 1_000, 0, &mut OsRng).unwrap();
        let c = code.channel();
        let old = codes.at_hello(c, 1).unwrap().generation;
        assert_eq!(
            codes.checked(c, Some(old), from(1), Guess::Right, 2),
            Checked::Matched(G)
        );
        assert_eq!(
            codes.checked(c, Some(old), from(2), Guess::Right, 2),
            Checked::NoCode
        );
        codes.finish(
            c,
            old,
            api::CodeState::Joined,
            Some(("m".into(), "Sam".into())),
        );
        assert_eq!(
            codes.status(&G, c, 2).unwrap().state,
            api::CodeState::Joined
        );
    }

    /// A join that matched just before the code's expiry is reported as under way, not
    /// as "expired unused"; and a join finishing after a new code was made on the same
    /// channel leaves the new code alone.
    #[test]
    fn a_matched_code_is_never_reported_expired_and_a_late_finish_spares_a_new_code() {
        let mut codes = Codes::default();
        let c = codes.open(G, 100, 0, &mut OsRng).unwrap().channel();
        let old = codes.at_hello(c, 99).unwrap().generation;
        assert_eq!(
            codes.checked(c, Some(old), from(1), Guess::Right, 99),
            Checked::Matched(G)
        );
        assert_eq!(
            codes.status(&G, c, 150).unwrap().state,
            api::CodeState::Joining
        );
        // While its join is under way the channel is not given to a new code.
        assert!(!codes.free_channels(150).contains(&c));
        assert!(codes.fail_if_pending(c, old));
        assert!(!codes.fail_if_pending(c, old), "once");
        codes.finish(c, old, api::CodeState::Failed, None);
        // A new code on the channel (forced here: drawn until it lands there).
        let new = loop {
            let code = codes.open(G, 1_000, 150, &mut OsRng).unwrap();
            if code.channel() == c {
                break code;
            }
        };
        codes.finish(c, old, api::CodeState::Failed, None);
        assert_eq!(codes.at_hello(c, 151).unwrap().code, new);
        assert_eq!(
            codes.status(&G, c, 151).unwrap().state,
            api::CodeState::Open
        );
    }

    #[test]
    fn a_matched_join_waits_for_the_facilitators_decision() {
        let mut codes = Codes::default();
        let c = codes.open(G, 1_000, 0, &mut OsRng).unwrap().channel();
        let g = codes.at_hello(c, 1).unwrap().generation;
        // Nothing to decide before a join is held.
        assert!(codes.decide(&G, c, None, true).is_err());
        codes.checked(c, Some(g), from(1), Guess::Right, 2);
        assert!(codes.await_approval(c, g, "m1".into(), "Sam".into(), "12345".into()));
        let status = codes.status(&G, c, 3).unwrap();
        assert_eq!(status.state, api::CodeState::AwaitingApproval);
        assert_eq!(status.name.as_deref(), Some("Sam"));
        assert_eq!(status.safety_number.as_deref(), Some("12345"));
        assert_eq!(codes.approval(c, g), None);
        // Not for another member id, nor in another group.
        assert!(codes.decide(&G, c, Some("m2"), true).is_err());
        assert!(codes.decide(&GroupId([2; 16]), c, None, true).is_err());
        assert_eq!(codes.approval(c, g), None);
        codes.decide(&G, c, Some("m1"), true).unwrap();
        assert_eq!(codes.approval(c, g), Some(true));
        // Decided once.
        assert!(codes.decide(&G, c, None, false).is_err());
    }

    #[test]
    fn expired_codes_free_their_channel_and_every_channel_can_fill() {
        let mut codes = Codes::default();
        for _ in 0..MAX_CHANNEL {
            assert!(codes.open(G, 100, 0, &mut OsRng).is_some());
        }
        // All 999 live: no endless search, a clear None.
        assert!(codes.open(G, 100, 0, &mut OsRng).is_none());
        assert!(codes.free_channels(0).is_empty());
        // Once they expired, channels are free again and the stale words are dropped.
        assert!(codes.open(G, 300, 100, &mut OsRng).is_some());
        assert_eq!(codes.free_channels(100).len(), usize::from(MAX_CHANNEL) - 1);
        assert!(
            codes.prune(101).is_empty(),
            "the open above pruned them already"
        );
        // Outcomes are kept a while for whoever waits, then forgotten.
        codes.prune(100 + KEEP_OUTCOME_SECS);
        assert_eq!(codes.entries(), 1);
        codes.prune(300 + KEEP_OUTCOME_SECS);
        assert_eq!(codes.entries(), 0);
    }

    /// A refused attempt is not free: a peer that keeps asking while its origin is out of
    /// tokens stays refused when a token comes back, and a peer that waited gets it.
    #[test]
    fn a_fast_poller_does_not_take_every_refilled_token() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        let shared = Some(Origin::of("2001:db8::1".parse().unwrap()));
        for i in 0..Limiter::BURST as u8 {
            assert!(l.allow(&[i], shared, t0));
        }
        // The poller asks ten times a second while the origin is dry.
        let mut t = t0;
        for _ in 0..49 {
            t += Duration::from_millis(100);
            assert!(!l.allow(b"poller", shared, t));
        }
        t += Duration::from_millis(100);
        // A token is back for the origin: the poller, deep in debt, is refused...
        assert!(!l.allow(b"poller", shared, t));
        // ...and the joiner who waited gets it.
        assert!(l.allow(b"joiner", shared, t));
    }

    #[test]
    fn the_limiter_rations_per_peer_and_per_origin() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        let here = Some(Origin::of("192.0.2.7".parse().unwrap()));
        let burst = Limiter::BURST as usize;
        for i in 0..burst {
            // New peer ids from one origin: the origin's bucket empties.
            assert!(l.allow(&[i as u8], here, t0), "attempt {i}");
        }
        assert!(!l.allow(&[99], here, t0));
        // Another origin is not held back.
        assert!(l.allow(&[100], Some(Origin::of("192.0.2.8".parse().unwrap())), t0));
        // One IPv6 /64 is one origin.
        let a = Some(Origin::of("2001:db8::1".parse().unwrap()));
        let b = Some(Origin::of("2001:db8::ffff:1".parse().unwrap()));
        assert_eq!(a, b);
        // Time refills the bucket at the stated rate.
        assert!(!l.allow(&[101], here, t0 + Limiter::EVERY / 2));
        assert!(l.allow(&[101], here, t0 + Limiter::EVERY));
        // One peer id is rationed on its own too.
        let mut l = Limiter::default();
        for _ in 0..burst {
            assert!(l.allow(b"peer", None, t0));
        }
        assert!(!l.allow(b"peer", None, t0));
    }
}
