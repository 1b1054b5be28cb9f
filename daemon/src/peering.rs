//! Keeping in touch with peers: one supervised sync session per peer this daemon is
//! responsible for, redialling the addresses the member added, and dropping strangers.
//!
//! **Strangers.** A connected peer is on probation until a sync session with it shares a
//! group. It may open streams during its window ([`STRANGER_GRACE`] after it connected,
//! or [`AFTER_EXCHANGE`] after a join exchange with it ended, never past
//! [`MAX_PROBATION`]); once the window has passed and no sync handshake or join exchange
//! with it is under way, it is disconnected and not dialled again on mDNS's word (see
//! `net`). A peer that was proven and then shares nothing in a later handshake (it left
//! or was removed) is on probation again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use hearth_protocol::session::Side;
use libp2p::PeerId;

use crate::net::{NetHandle, SYNC_PROTOCOL, short};
use crate::node::Node;
use crate::sync::Outcome;
use crate::{peers, sync};
use tokio::sync::watch;

/// Which peers this daemon supervises a session with, and with which it has a session
/// running (opened by either side), so that two daemons keep one session between them:
/// every session carries the same envelopes, and each one more costs both sides a push
/// and an ingest of every change.
#[derive(Clone)]
pub struct Peering {
    state: Arc<Mutex<PeeringState>>,
    /// Bumped when a running session ends.
    ended: Arc<watch::Sender<u64>>,
}

#[derive(Default)]
struct PeeringState {
    supervised: HashSet<PeerId>,
    running: HashMap<PeerId, usize>,
    /// Every connected peer's probation.
    probation: HashMap<PeerId, Probation>,
    /// Numbers each connection's probation, so a watcher ends with its connection.
    generation: u64,
}

/// A connected peer has this long to share a group in a sync session (or to start a join
/// exchange) before it is dropped as a stranger.
pub const STRANGER_GRACE: Duration = Duration::from_secs(10);
/// After a join exchange with a peer ends, it has this long to open the sync session
/// that proves the membership it was just given.
pub const AFTER_EXCHANGE: Duration = Duration::from_secs(5);
/// However many exchanges it starts, a peer that shares no group opens no stream later
/// than this after it connected.
pub const MAX_PROBATION: Duration = Duration::from_secs(60);
/// How often a connected peer's probation is looked at once its first window has passed.
const PROBATION_CHECK: Duration = Duration::from_millis(500);
/// How often a proven peer's is: it only changes when a later handshake shares nothing,
/// and an idle daemon with a few members should not wake for it twice a second.
const PROVEN_CHECK: Duration = Duration::from_secs(5);

struct Probation {
    generation: u64,
    since: Instant,
    /// A sync handshake with it shared a group (and none since shared nothing).
    proven: bool,
    /// Sync handshakes and join exchanges with it under way (either side's).
    busy: usize,
    last_exchange: Option<Instant>,
    /// This device's view (`Node::view_version`) when a handshake with it last shared
    /// nothing: if the view has changed since, the peer may be one to share with now, and
    /// is not dropped before another handshake has had its chance.
    nothing_shared_at: Option<u64>,
    /// A join exchange with it admitted it as a member (this side is the facilitator):
    /// the window after that exchange is not cut at [`MAX_PROBATION`], since a join held
    /// for the facilitator's approval may end later than that.
    admitted: bool,
}

impl Probation {
    fn window_end(&self) -> Instant {
        let after = self.last_exchange.map(|t| t + AFTER_EXCHANGE);
        let end = (self.since + STRANGER_GRACE)
            .max(after.unwrap_or(self.since))
            .min(self.since + MAX_PROBATION);
        match after {
            Some(after) if self.admitted => end.max(after),
            _ => end,
        }
    }
}

/// What a peer's probation says now.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Proven, or still in its window, or an exchange with it is under way.
    Keep,
    Stranger,
    /// Disconnected (or connected again since: another watcher looks after it).
    Gone,
}

impl Default for Peering {
    fn default() -> Self {
        Peering {
            state: Arc::default(),
            ended: Arc::new(watch::channel(0).0),
        }
    }
}

impl Peering {
    fn lock(&self) -> MutexGuard<'_, PeeringState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a session with `peer` as running until the returned guard is dropped.
    pub fn running(&self, peer: PeerId) -> Running {
        *self.lock().running.entry(peer).or_default() += 1;
        Running {
            peering: self.clone(),
            peer,
        }
    }

    fn is_running(&self, peer: &PeerId) -> bool {
        self.lock().running.contains_key(peer)
    }

    /// Starts `peer`'s probation (its first connection was just made) and returns the
    /// generation [`watch_strangers`] follows.
    fn connected(&self, peer: PeerId) -> u64 {
        let mut state = self.lock();
        state.generation += 1;
        let generation = state.generation;
        state.probation.insert(
            peer,
            Probation {
                generation,
                since: Instant::now(),
                proven: false,
                busy: 0,
                last_exchange: None,
                nothing_shared_at: None,
                admitted: false,
            },
        );
        generation
    }

    /// `peer`'s last connection closed.
    pub fn disconnected(&self, peer: &PeerId) {
        self.lock().probation.remove(peer);
    }

    /// Records what a sync handshake with `peer` found, in this device's view `view`: a
    /// shared group proves it; nothing shared puts it back on probation, with a window
    /// of its own from now.
    pub fn handshake_done(&self, peer: &PeerId, shared: bool, view: u64) {
        if let Some(p) = self.lock().probation.get_mut(peer) {
            if p.proven && !shared {
                p.since = Instant::now();
                p.last_exchange = None;
            }
            p.proven = shared;
            p.nothing_shared_at = (!shared).then_some(view);
        }
    }

    /// Counts a sync handshake or join exchange with `peer` as under way until the guard
    /// is dropped: meanwhile the peer is not dropped as a stranger.
    pub fn exchange(&self, peer: PeerId) -> Exchange {
        if let Some(p) = self.lock().probation.get_mut(&peer) {
            p.busy += 1;
        }
        Exchange {
            peering: self.clone(),
            peer,
        }
    }

    /// Records that a join exchange with `peer` admitted it: it may open the sync session
    /// that proves its membership within [`AFTER_EXCHANGE`] of that exchange's end, even
    /// past [`MAX_PROBATION`].
    pub fn admitted(&self, peer: &PeerId) {
        if let Some(p) = self.lock().probation.get_mut(peer) {
            p.admitted = true;
        }
    }

    /// Whether `peer` may open a stream now: proven, or within its window (or an exchange
    /// with it is under way, within [`MAX_PROBATION`]).
    pub fn may_open(&self, peer: &PeerId) -> bool {
        let state = self.lock();
        let Some(p) = state.probation.get(peer) else {
            return false;
        };
        let now = Instant::now();
        p.proven
            || (now < p.since + MAX_PROBATION && (p.busy > 0 || now < p.window_end()))
            || (p.admitted && now < p.window_end())
    }

    fn is_proven(&self, peer: &PeerId) -> bool {
        self.lock().probation.get(peer).is_some_and(|p| p.proven)
    }

    fn verdict(&self, peer: &PeerId, generation: u64, view: u64) -> Verdict {
        let state = self.lock();
        match state.probation.get(peer) {
            Some(p) if p.generation == generation => {
                let now = Instant::now();
                let view_changed =
                    now < p.since + MAX_PROBATION && p.nothing_shared_at.is_some_and(|v| v != view);
                if p.proven || p.busy > 0 || now < p.window_end() || view_changed {
                    Verdict::Keep
                } else {
                    Verdict::Stranger
                }
            }
            _ => Verdict::Gone,
        }
    }
}

/// A sync handshake or join exchange under way (see [`Peering::exchange`]).
pub struct Exchange {
    peering: Peering,
    peer: PeerId,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let Some(p) = self.peering.lock().probation.get_mut(&self.peer) {
            p.busy = p.busy.saturating_sub(1);
            p.last_exchange = Some(Instant::now());
        }
    }
}

/// Puts a newly connected peer on probation and watches it for as long as it stays
/// connected: once it is a stranger (see the module docs) it is dropped.
pub fn watch_strangers(node: Arc<Node>, net: NetHandle, peering: Peering, peer: PeerId) {
    let generation = peering.connected(peer);
    tokio::spawn(async move {
        tokio::time::sleep(STRANGER_GRACE).await;
        loop {
            match peering.verdict(&peer, generation, node.view_version()) {
                Verdict::Keep => {
                    let proven = peering.is_proven(&peer);
                    tokio::time::sleep(if proven {
                        PROVEN_CHECK
                    } else {
                        PROBATION_CHECK
                    })
                    .await;
                }
                Verdict::Gone => return,
                Verdict::Stranger => {
                    tracing::debug!(peer = %short(&peer), "no shared group; dropping the peer");
                    net.drop_stranger(peer).await;
                    return;
                }
            }
        }
    });
}

/// Forgives dropped strangers whenever this device's groups or any roster change: one of
/// them may be a fellow member now.
pub fn forgive_on_change(node: Arc<Node>, net: NetHandle) {
    let mut groups = node.subscribe_groups();
    let mut rosters = node.subscribe_rosters();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = groups.changed() => if r.is_err() { return },
                r = rosters.changed() => if r.is_err() { return },
            }
            net.forgive_strangers().await;
        }
    });
}

/// A session counted as running (see [`Peering::running`]).
pub struct Running {
    peering: Peering,
    peer: PeerId,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut state = self.peering.lock();
        if let Some(n) = state.running.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                state.running.remove(&self.peer);
            }
        }
        drop(state);
        self.peering.ended.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// A supervisor's claim on its peer, released when the supervisor ends or is aborted.
struct Claim {
    peering: Peering,
    peer: PeerId,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.peering.lock().supervised.remove(&self.peer);
    }
}

/// Wait before reopening a session that ended while sharing groups (the peer's set of
/// groups may have changed).
const RESTART_DELAY: Duration = Duration::from_secs(1);
/// Wait before trying again with a peer that shares no group with us (it may later; a
/// membership change here retries at once).
const IDLE_RETRY: Duration = Duration::from_secs(30);
/// First wait after a session failed to open or broke; it doubles with each failure in a
/// row, up to `IDLE_RETRY`. A peer still closing the previous session refuses the next
/// one for a moment, so the first retry must come soon.
const FAILURE_RETRY: Duration = Duration::from_millis(250);
/// How often remembered addresses that are not connected are dialled again.
const REDIAL_INTERVAL: Duration = Duration::from_secs(30);

/// Keeps a sync session open with `peer` for as long as it stays connected: reopens it when
/// it ends, when this device's groups change, or now and then if no group was shared
/// (at once after a membership change, which may have made the peer one to sync with).
/// While a session the peer opened is running, it opens none of its own. `None` if a
/// supervisor for `peer` is already running.
pub fn supervise(
    node: Arc<Node>,
    net: NetHandle,
    peering: Peering,
    peer: PeerId,
) -> Option<tokio::task::JoinHandle<()>> {
    if !peering.lock().supervised.insert(peer) {
        return None;
    }
    let claim = Claim {
        peering: peering.clone(),
        peer,
    };
    Some(tokio::spawn(async move {
        let _claim = claim;
        let mut groups_changed = node.subscribe_groups();
        let mut rosters_changed = node.subscribe_rosters();
        let mut ended = peering.ended.subscribe();
        let mut failures: u32 = 0;
        loop {
            groups_changed.borrow_and_update();
            rosters_changed.borrow_and_update();
            ended.borrow_and_update();
            if peering.is_running(&peer) {
                // The peer's own session carries this pair; when it ends, give its
                // supervisor the moment it needs to reopen before opening one here.
                tokio::select! {
                    _ = groups_changed.changed() => {}
                    _ = ended.changed() => tokio::time::sleep(RESTART_DELAY).await,
                }
                if !net.peers().await.iter().any(|(p, _)| *p == peer) {
                    break;
                }
                continue;
            }
            let outcome = if node.group_count() > 0 {
                open(&node, &net, &peering, peer).await
            } else {
                Ok(Outcome::Nothing)
            };
            let idle = matches!(outcome, Ok(Outcome::Nothing));
            let wait = match outcome {
                Ok(outcome) => {
                    failures = 0;
                    match outcome {
                        Outcome::Synced => RESTART_DELAY,
                        Outcome::Nothing => IDLE_RETRY,
                    }
                }
                Err(e) => {
                    tracing::debug!(peer = %short(&peer), "sync session failed: {e:#}");
                    failures = failures.saturating_add(1);
                    failure_backoff(failures)
                }
            };
            tokio::select! {
                _ = groups_changed.changed() => {}
                _ = rosters_changed.changed(), if idle => {}
                () = tokio::time::sleep(wait) => {}
            }
            if !net.peers().await.iter().any(|(p, _)| *p == peer) {
                break;
            }
        }
    }))
}

/// The wait after `failures` failed sessions in a row: doubling, capped at `IDLE_RETRY`.
fn failure_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FAILURE_RETRY.saturating_mul(1 << doublings).min(IDLE_RETRY)
}

async fn open(
    node: &Arc<Node>,
    net: &NetHandle,
    peering: &Peering,
    peer: PeerId,
) -> anyhow::Result<Outcome> {
    let stream = net.open_stream(peer, SYNC_PROTOCOL).await?;
    sync::run(node.clone(), peering, net, peer, stream, Side::Dialer).await
}

/// Dials remembered addresses now and again, so a member added by address comes back
/// after a network outage without a restart.
pub fn redial_remembered(node: Arc<Node>, net: NetHandle) {
    tokio::spawn(async move {
        loop {
            let connected: Vec<_> = net
                .peers()
                .await
                .into_iter()
                .flat_map(|(_, addrs)| addrs)
                .collect();
            match peers::current(&node) {
                Ok(addrs) => {
                    for addr in addrs.into_iter().filter(|a| !connected.contains(a)) {
                        if let Err(e) = net.dial(addr).await {
                            tracing::debug!("redialling a remembered peer failed: {e:#}");
                        }
                    }
                }
                Err(e) => tracing::warn!("cannot read remembered peers: {e}"),
            }
            tokio::time::sleep(REDIAL_INTERVAL).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_soon_after_one_failure_then_backs_off_to_the_idle_wait() {
        assert_eq!(failure_backoff(1), FAILURE_RETRY);
        assert_eq!(failure_backoff(2), FAILURE_RETRY * 2);
        assert!(failure_backoff(5) < IDLE_RETRY);
        assert_eq!(failure_backoff(8), IDLE_RETRY);
        assert_eq!(failure_backoff(u32::MAX), IDLE_RETRY);
    }

    /// A peer whose handshake shared nothing is a stranger once its window has passed,
    /// unless this device's view changed since (it may have just heard of the peer's
    /// admission): then the next handshake decides, within the overall bound.
    #[tokio::test(start_paused = true)]
    async fn a_peer_is_not_dropped_while_a_changed_view_awaits_a_handshake() {
        let peering = Peering::default();
        let peer = PeerId::random();
        let generation = peering.connected(peer);
        peering.handshake_done(&peer, false, 1);
        tokio::time::advance(STRANGER_GRACE + Duration::from_secs(1)).await;
        assert_eq!(peering.verdict(&peer, generation, 1), Verdict::Stranger);
        assert_eq!(peering.verdict(&peer, generation, 2), Verdict::Keep);
        tokio::time::advance(MAX_PROBATION).await;
        assert_eq!(peering.verdict(&peer, generation, 2), Verdict::Stranger);
    }

    /// A proven peer that a later handshake shares nothing with gets a window of its own,
    /// not what is left of the one it had when it connected.
    #[tokio::test(start_paused = true)]
    async fn a_peer_put_back_on_probation_gets_a_fresh_window() {
        let peering = Peering::default();
        let peer = PeerId::random();
        let generation = peering.connected(peer);
        peering.handshake_done(&peer, true, 1);
        tokio::time::advance(MAX_PROBATION * 2).await;
        assert_eq!(peering.verdict(&peer, generation, 1), Verdict::Keep);
        peering.handshake_done(&peer, false, 1);
        assert_eq!(peering.verdict(&peer, generation, 1), Verdict::Keep);
        tokio::time::advance(STRANGER_GRACE + Duration::from_secs(1)).await;
        assert_eq!(peering.verdict(&peer, generation, 1), Verdict::Stranger);
    }
}
