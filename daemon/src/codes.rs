//! The facilitator's spoken codes while the daemon runs, and the limits on attempts.
//!
//! [`Codes`] is the in-memory registry of codes this daemon made (the store keeps the
//! open ones so they survive a restart): which channel holds which live code, and what
//! became of each, for whoever waits on it. It decides the one rule that matters for
//! guessing: a code is burnt by the first *checked* wrong confirmation, and no exchange's
//! guess is checked against it after that; a hello alone changes nothing.
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
    /// It did not match the live code on its channel, which is now burnt.
    Burnt,
    /// No live code (of the exchange's making) on that channel: refused, nothing changed.
    NoCode,
}

#[derive(Default)]
pub struct Codes {
    entries: BTreeMap<u16, Entry>,
    generation: u64,
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
                status: api::CodeStatus {
                    state: api::CodeState::Open,
                    member_id: None,
                    name: None,
                    other_attempts: 0,
                },
                other_attempts: 0,
            },
        );
    }

    /// Channels free for a new code at `now`: those with no live code.
    pub fn free_channels(&self, now: u64) -> Vec<u16> {
        (1..=MAX_CHANNEL)
            .filter(|c| !self.entries.get(c).is_some_and(|e| e.live(now)))
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

    /// Records what the check of a confirmation on `channel` came to: `matched` is the
    /// constant-time check's result, `generation` the code the exchange began with (`None`
    /// for a decoy). A wrong confirmation burns the live code it was checked against; one
    /// checked against a decoy counts as an attempt on another channel for every open code.
    pub fn checked(
        &mut self,
        channel: u16,
        generation: Option<u64>,
        matched: bool,
        now: u64,
    ) -> Checked {
        let live = self
            .entries
            .get_mut(&channel)
            .filter(|e| e.live(now) && Some(e.generation) == generation);
        match live {
            Some(e) => {
                e.words = None;
                if matched {
                    Checked::Matched(e.group)
                } else {
                    e.status.state = api::CodeState::WrongCode;
                    Checked::Burnt
                }
            }
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

    /// Records the end of a join that a matched code began.
    pub fn finish(
        &mut self,
        channel: u16,
        state: api::CodeState,
        joined: Option<(String, String)>,
    ) {
        if let Some(e) = self.entries.get_mut(&channel) {
            e.words = None;
            e.status.state = state;
            e.status.member_id = joined.as_ref().map(|(m, _)| m.clone());
            e.status.name = joined.map(|(_, n)| n);
        }
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
    /// `origin` may start `now`; if so, takes its tokens.
    pub fn allow(&mut self, peer: &[u8], origin: Option<Origin>, now: Instant) -> bool {
        let mut keys = vec![Key::Peer(*blake3::hash(peer).as_bytes())];
        keys.extend(origin.map(Key::Origin));
        if keys.iter().any(|k| self.level(k, now) < 1.0) {
            return false;
        }
        for k in &keys {
            let level = self.level(k, now);
            self.buckets.insert(*k, (level - 1.0, now));
        }
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
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    const G: GroupId = GroupId([1; 16]);

    #[test]
    fn a_hello_changes_nothing_and_the_first_wrong_check_burns() {
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
        assert_eq!(codes.checked(other, None, false, 2), Checked::NoCode);
        assert_eq!(codes.status(&G, c, 2).unwrap().other_attempts, 1);
        assert!(codes.at_hello(c, 2).is_some());
        // The first wrong check burns it; a later check of another exchange that began
        // with it is not even compared (the right words do not help any more).
        assert_eq!(
            codes.checked(c, Some(live.generation), false, 3),
            Checked::Burnt
        );
        assert_eq!(
            codes.checked(c, Some(live.generation), true, 3),
            Checked::NoCode
        );
        assert!(codes.at_hello(c, 3).is_none());
        assert_eq!(
            codes.status(&G, c, 3).unwrap().state,
            api::CodeState::WrongCode
        );
    }

    #[test]
    fn a_match_uses_the_code_once_and_a_new_code_ignores_old_exchanges() {
        let mut codes = Codes::default();
        let code = codes.open(G, 1_000, 0, &mut OsRng).unwrap();
        let c = code.channel();
        let old = codes.at_hello(c, 1).unwrap().generation;
        assert_eq!(codes.checked(c, Some(old), true, 2), Checked::Matched(G));
        assert_eq!(codes.checked(c, Some(old), true, 2), Checked::NoCode);
        codes.finish(c, api::CodeState::Joined, Some(("m".into(), "Sam".into())));
        assert_eq!(
            codes.status(&G, c, 2).unwrap().state,
            api::CodeState::Joined
        );
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
