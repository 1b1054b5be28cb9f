//! The daemon's life: take the data directory, serve the local API, unlock (at once when
//! no passphrase protects the store), and shut down cleanly on SIGTERM or Ctrl-C; and the
//! unlocked daemon's parts: the store, networking, and routing peer events to sessions.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use hearth_protocol::session::Side;
use libp2p::PeerId;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use crate::http::{self, AppState};
use crate::keeper::Keeper;
use crate::net::{self, JOIN_PROTOCOL, NetConfig, NetEvent, NetHandle, SYNC_PROTOCOL, short};
use crate::node::Node;
use crate::peering::Peering;
use crate::store::{DataDir, Store};
use crate::{join, peering, sync};

pub async fn run(config: Config) -> anyhow::Result<()> {
    // The directory's lock comes first: a second daemon on the same data dir stops here.
    let dir =
        Arc::new(DataDir::open(&config.data_dir).with_context(|| {
            format!("opening the data directory {}", config.data_dir.display())
        })?);
    let keeper = Keeper::new(config.clone(), dir);
    let listener = http::bind(&config.socket).await?;
    keeper.start_if_unprotected().await?;
    if config.auto_lock.is_some() && !keeper.protected() {
        tracing::warn!(
            "--auto-lock has no effect until a passphrase is set (`hearth passphrase set`)"
        );
    }
    let auto_lock = tokio::spawn(crate::keeper::auto_lock(keeper.clone()));
    tracing::info!(
        socket = %config.socket.display(),
        locked = keeper.is_locked(),
        mdns = config.mdns,
        "hearthd ready"
    );
    let app = http::front_router(keeper.clone());
    let stopping = keeper.clone();
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        // The unlocked daemon first: that ends the event streams, which would otherwise
        // hold the graceful shutdown for as long as their clients stay.
        stopping.shut_down().await;
    });
    let served = tokio::select! {
        served = serve.into_future() => served,
        () = keeper.exit_requested() => {
            // After a panic everything is destroyed: leave at once, telling no one and
            // waiting for no client, once the panic's answer has had a moment to go out.
            tokio::time::sleep(PANIC_ANSWER_GRACE).await;
            // Anything work racing the panic wrote meanwhile goes too.
            keeper.sweep_after_panic();
            std::process::exit(0);
        }
    };
    auto_lock.abort();
    if let Err(e) = std::fs::remove_file(&config.socket) {
        tracing::warn!("could not remove the API socket: {e}");
    }
    served.context("serving the local API")
}

/// How long a panicking daemon gives its answer to reach the client before it exits.
const PANIC_ANSWER_GRACE: std::time::Duration = std::time::Duration::from_millis(50);

/// The unlocked daemon's parts, made by [`start`] on the runtime that will run them.
pub struct Started {
    pub state: AppState,
    /// Tells open event streams to end when the daemon locks or stops.
    pub stop: tokio::sync::watch::Sender<bool>,
}

/// Why [`start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Networking did not start (a listen address was taken); the key comes back, so the
    /// caller can try other addresses.
    #[error("starting networking: {1:#}")]
    Network(crate::vault::StorageKey, anyhow::Error),
    #[error("{0:#}")]
    Store(anyhow::Error),
}

/// Opens the store under `key`, loads the groups, starts networking and every background
/// task. Runs on the unlocked runtime, so all it spawns ends when that runtime is shut down.
pub async fn start(
    config: Config,
    dir: Arc<DataDir>,
    key: crate::vault::StorageKey,
) -> Result<Started, StartError> {
    // Networking first: if its address is taken, nothing was opened.
    let (net, events) = match net::start(NetConfig {
        listen: config.listen.clone(),
        mdns: config.mdns,
    })
    .await
    {
        Ok(started) => started,
        Err(e) => return Err(StartError::Network(key, e)),
    };
    let loaded = tokio::task::spawn_blocking(move || {
        let opened = Store::open(dir, &key).map_err(anyhow::Error::from);
        drop(key);
        crate::wipe::scrub_stack();
        let store = opened.context("opening the store")?;
        Node::open(store).map_err(anyhow::Error::from)
    })
    .await
    .context("loading the store")
    .and_then(|r| r);
    let node = match loaded {
        Ok(node) => Arc::new(node),
        Err(e) => {
            net.shutdown().await;
            return Err(StartError::Store(e));
        }
    };

    peering::redial_remembered(node.clone(), net.clone());
    tokio::spawn(purge_invites(node.clone()));
    peering::forgive_on_change(node.clone(), net.clone());
    let peering = Peering::default();
    tokio::spawn(route_events(
        node.clone(),
        net.clone(),
        peering.clone(),
        events,
    ));

    // Where it listens is no business of a log someone else may read (the API's `status`
    // says it to the member); at debug it is there for a developer.
    let addrs: Vec<String> = net
        .listen_addrs()
        .await
        .iter()
        .map(|a| a.to_string())
        .collect();
    tracing::debug!(listen = ?addrs, "listening");
    let (stop, stopping) = tokio::sync::watch::channel(false);
    Ok(Started {
        state: AppState {
            node,
            net,
            peering,
            stopping,
        },
        stop,
    })
}

/// How often expired invites and codes are deleted (they are also at start, and whenever
/// invites are made, listed or withdrawn).
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

async fn purge_invites(node: std::sync::Arc<Node>) {
    let mut tick = tokio::time::interval(PURGE_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let worker = node.clone();
        match tokio::task::spawn_blocking(move || worker.purge_invites()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::debug!(count = n, "deleted expired invites"),
            Ok(Err(e)) => tracing::warn!("deleting expired invites failed: {e}"),
            Err(e) => tracing::warn!("the invite purge worker failed: {e}"),
        }
    }
}

async fn shutdown_signal() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// How many streams of one kind may be served at once: per peer, per remote IP address and
/// in all. Peer ids cost nothing to make, so the limit per address is what keeps one host
/// from taking every slot; streams that send nothing are dropped within seconds (the first
/// frame's timeout), so slots come free again quickly.
#[derive(Debug, Clone, Copy)]
struct Limit {
    per_peer: usize,
    per_ip: usize,
    total: usize,
}

/// Inbound sync sessions (a joiner briefly holds two with its facilitator: the one that
/// found no shared group yet, and the one after joining).
const SESSIONS: Limit = Limit {
    per_peer: 2,
    per_ip: 4,
    total: 64,
};
/// Join requests being answered at once. When all are taken, a new join stream makes room
/// by dropping the oldest one whose peer has not yet sent what it must send promptly (see
/// [`Gate::enter`]), so streams kept open and silent cannot keep a joiner out.
const JOINS: Limit = Limit {
    per_peer: 1,
    per_ip: 1,
    total: 8,
};

impl Limit {
    /// The limit for one address: the shared loopback addresses (`127.0.0.1`, `::1`),
    /// where tests and benchmarks run many daemons, are bounded by the total only (see
    /// `net::LOOPBACK_LIMITS`).
    fn per_ip(&self, ip: std::net::IpAddr) -> usize {
        if net::limits_for(ip) == net::LOOPBACK_LIMITS {
            self.total
        } else {
            self.per_ip
        }
    }
}

/// One stream holding a slot.
struct Slot {
    peer: PeerId,
    ip: Option<std::net::IpAddr>,
    /// Whether its peer has sent what it must send promptly; until then it may be
    /// dropped to make room.
    settled: bool,
    /// Told when the slot was taken from it.
    evicted: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct Counts {
    per_peer: HashMap<PeerId, usize>,
    per_ip: HashMap<std::net::IpAddr, usize>,
    all: usize,
    /// The streams holding slots, by the order they came in.
    slots: std::collections::BTreeMap<u64, Slot>,
    next: u64,
}

impl Counts {
    fn release(&mut self, id: u64) -> Option<Slot> {
        let slot = self.slots.remove(&id)?;
        self.all -= 1;
        decrement(&mut self.per_peer, &slot.peer);
        if let Some(ip) = slot.ip {
            decrement(&mut self.per_ip, &ip);
        }
        Some(slot)
    }
}

/// Counts streams per peer, per address and in all, so no one can make the daemon run
/// unbounded tasks or keep others out.
#[derive(Clone, Default)]
struct Gate(Arc<std::sync::Mutex<Counts>>);

struct Pass {
    gate: Gate,
    id: u64,
    evicted: Arc<tokio::sync::Notify>,
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(c) = map.get_mut(key) {
        *c -= 1;
        if *c == 0 {
            map.remove(key);
        }
    }
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a stream from `peer` at `ip`, within `limit`. With `evict`, when every
    /// slot is taken, the oldest stream that has not settled (see [`Pass::settle`]) is
    /// dropped to make room (its task is told through [`Pass::evicted`]).
    fn enter(
        &self,
        peer: PeerId,
        ip: Option<std::net::IpAddr>,
        limit: Limit,
        evict: bool,
    ) -> Option<Pass> {
        let mut counts = self.lock();
        let full = |n: Option<&usize>, max: usize| n.is_some_and(|n| *n >= max);
        if full(counts.per_peer.get(&peer), limit.per_peer)
            || ip.is_some_and(|ip| full(counts.per_ip.get(&ip), limit.per_ip(ip)))
        {
            return None;
        }
        if counts.all >= limit.total {
            let oldest_idle = evict
                .then(|| {
                    counts
                        .slots
                        .iter()
                        .find(|(_, s)| !s.settled)
                        .map(|(id, _)| *id)
                })
                .flatten()?;
            if let Some(slot) = counts.release(oldest_idle) {
                slot.evicted.notify_one();
            }
        }
        *counts.per_peer.entry(peer).or_default() += 1;
        if let Some(ip) = ip {
            *counts.per_ip.entry(ip).or_default() += 1;
        }
        counts.all += 1;
        counts.next += 1;
        let id = counts.next;
        let evicted = Arc::new(tokio::sync::Notify::new());
        counts.slots.insert(
            id,
            Slot {
                peer,
                ip,
                settled: false,
                evicted: evicted.clone(),
            },
        );
        Some(Pass {
            gate: self.clone(),
            id,
            evicted,
        })
    }
}

impl Pass {
    /// A function that marks this stream settled: from then on it keeps its slot.
    fn settler(&self) -> impl FnOnce() + Send + 'static {
        let (gate, id) = (self.gate.clone(), self.id);
        move || {
            if let Some(slot) = gate.lock().slots.get_mut(&id) {
                slot.settled = true;
            }
        }
    }

    /// Notified when the slot was taken from this stream.
    fn evicted(&self) -> Arc<tokio::sync::Notify> {
        self.evicted.clone()
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.gate.lock().release(self.id);
    }
}

/// Starts a sync session for each new peer (the side with the lower peer id opens it, so
/// two daemons keep one session), and serves inbound sync and join streams within limits.
async fn route_events(
    node: Arc<Node>,
    net: NetHandle,
    peering: Peering,
    mut events: tokio::sync::mpsc::Receiver<NetEvent>,
) {
    let local = net.local_peer_id();
    let sessions = Gate::default();
    let joins = Gate::default();
    let mut supervisors: HashMap<PeerId, tokio::task::JoinHandle<()>> = HashMap::new();
    while let Some(event) = events.recv().await {
        match event {
            NetEvent::Connected { peer } => {
                peering::watch_strangers(node.clone(), net.clone(), peering.clone(), peer);
                // One supervisor per peer (`supervise` refuses a second): a peer that
                // reconnects quickly must not pile them up.
                if local.to_bytes() < peer.to_bytes()
                    && let Some(handle) =
                        peering::supervise(node.clone(), net.clone(), peering.clone(), peer)
                {
                    supervisors.insert(peer, handle);
                }
            }
            NetEvent::InboundStream {
                peer,
                ip,
                protocol,
                stream,
            } => {
                let node = node.clone();
                if !peering.may_open(&peer) {
                    tracing::debug!(peer = %short(&peer), "refused a stream from a stranger past its window");
                    continue;
                }
                if protocol == SYNC_PROTOCOL {
                    let Some(pass) = sessions.enter(peer, ip, SESSIONS, false) else {
                        tracing::debug!(peer = %short(&peer), "refused a sync stream over the limit");
                        continue;
                    };
                    let peering = peering.clone();
                    let net = net.clone();
                    tokio::spawn(async move {
                        let _pass = pass;
                        let session = sync::run(node, &peering, &net, peer, stream, Side::Listener);
                        if let Err(e) = session.await {
                            tracing::debug!(peer = %short(&peer), "sync session failed: {e:#}");
                        }
                    });
                } else if protocol == JOIN_PROTOCOL {
                    let Some(pass) = joins.enter(peer, ip, JOINS, true) else {
                        tracing::debug!(peer = %short(&peer), "refused a join stream over the limit");
                        continue;
                    };
                    let net = net.clone();
                    let exchange = peering.exchange(peer);
                    let peering = peering.clone();
                    tokio::spawn(async move {
                        let evicted = pass.evicted();
                        let settled = pass.settler();
                        let (_pass, _exchange) = (pass, exchange);
                        let serve = join::serve(node, net, peering, peer, ip, stream, settled);
                        tokio::select! {
                            served = serve => if let Err(e) = served {
                                tracing::debug!(peer = %short(&peer), "join stream failed: {e:#}");
                            },
                            () = evicted.notified() => tracing::debug!(
                                peer = %short(&peer),
                                "dropped an idle join stream to make room for another"
                            ),
                        }
                    });
                }
            }
            NetEvent::Disconnected { peer } => {
                peering.disconnected(&peer);
                if let Some(handle) = supervisors.remove(&peer) {
                    handle.abort();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId::random()
    }

    /// Streams that never send their first message cannot keep a joiner out: when every
    /// join slot is taken, a newcomer takes the slot of the oldest unsettled stream.
    #[test]
    fn idle_join_streams_make_room_for_a_newcomer() {
        let gate = Gate::default();
        let ip = |i: u8| Some(std::net::IpAddr::from([192, 168, 1, i]));
        // A stranger with as many addresses as there are slots, each stream silent.
        let idle: Vec<Pass> = (0..JOINS.total as u8)
            .map(|i| gate.enter(peer(), ip(10 + i), JOINS, true).unwrap())
            .collect();
        let first_evicted = idle[0].evicted();
        // The joiner, at an address holding no slot, still gets in.
        let joiner = gate
            .enter(peer(), ip(1), JOINS, true)
            .expect("an idle stream makes room");
        assert!(
            futures::FutureExt::now_or_never(first_evicted.notified()).is_some(),
            "the oldest idle stream is told to go"
        );
        // Once settled, the joiner's stream keeps its slot whatever comes after.
        joiner.settler()();
        for i in 0..(2 * JOINS.total as u8) {
            drop(gate.enter(peer(), ip(100 + i), JOINS, true));
        }
        assert_eq!(gate.lock().slots.values().filter(|s| s.settled).count(), 1);
        // With every slot settled, a newcomer is refused; streams dropped by eviction
        // release nothing twice.
        let settled: Vec<Pass> = (0..JOINS.total as u8 - 1)
            .filter_map(|i| gate.enter(peer(), ip(200 + i), JOINS, true))
            .inspect(|p| p.settler()())
            .collect();
        assert!(gate.enter(peer(), ip(250), JOINS, true).is_none());
        drop(idle);
        drop(settled);
        drop(joiner);
        let counts = gate.lock();
        assert_eq!((counts.all, counts.slots.len()), (0, 0));
        assert!(counts.per_ip.is_empty() && counts.per_peer.is_empty());
    }
}
