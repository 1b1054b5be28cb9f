//! The daemon's life: open the store, start networking and the local API, route peer
//! events to sessions, and shut down cleanly on SIGTERM or Ctrl-C.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use hearth_protocol::session::Side;
use libp2p::PeerId;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use crate::http::{self, AppState};
use crate::net::{self, JOIN_PROTOCOL, NetConfig, NetEvent, NetHandle, SYNC_PROTOCOL};
use crate::node::Node;
use crate::peering::Peering;
use crate::store::Store;
use crate::{join, peering, sync};

pub async fn run(config: Config) -> anyhow::Result<()> {
    // The store's lock comes first: a second daemon on the same data dir stops here.
    let store = Store::open(&config.data_dir)
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    let node = Arc::new(
        tokio::task::spawn_blocking(move || Node::open(store))
            .await
            .context("loading the store")??,
    );
    let listener = http::bind(&config.socket).await?;
    let (net, events) = net::start(NetConfig {
        listen: config.listen.clone(),
        mdns: config.mdns,
    })
    .await
    .context("starting networking")?;

    peering::redial_remembered(node.clone(), net.clone());
    let purger = tokio::spawn(purge_invites(node.clone()));
    let peering = Peering::default();
    let router_task = tokio::spawn(route_events(
        node.clone(),
        net.clone(),
        peering.clone(),
        events,
    ));

    let addrs: Vec<String> = net
        .listen_addrs()
        .await
        .iter()
        .map(|a| a.to_string())
        .collect();
    tracing::info!(
        socket = %config.socket.display(),
        listen = ?addrs,
        mdns = config.mdns,
        "hearthd ready"
    );
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let app = http::router(AppState {
        node: node.clone(),
        net: net.clone(),
        peering,
        stopping,
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            stop.send_replace(true);
        })
        .await;

    tracing::info!("shutting down");
    router_task.abort();
    purger.abort();
    net.shutdown().await;
    let compacting = node.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || compacting.store().compact_file()).await {
        tracing::warn!("compacting the store at shutdown failed: {e}");
    }
    if let Err(e) = std::fs::remove_file(&config.socket) {
        tracing::warn!("could not remove the API socket: {e}");
    }
    served.context("serving the local API")
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

/// Inbound sync sessions one peer may hold at once (a joiner briefly holds two: the one
/// that found no shared group yet, and the one after joining).
const MAX_SESSIONS_PER_PEER: usize = 2;
/// Inbound sync sessions in all.
const MAX_SESSIONS: usize = 64;
/// Join requests being answered at once, from any peer.
const MAX_JOINS: usize = 4;

/// Counts streams per peer and in all, so no one can make the daemon run unbounded tasks.
#[derive(Clone, Default)]
struct Gate(Arc<std::sync::Mutex<(HashMap<PeerId, usize>, usize)>>);

struct Pass {
    gate: Gate,
    peer: PeerId,
}

impl Gate {
    fn enter(&self, peer: PeerId, per_peer: usize, total: usize) -> Option<Pass> {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (per, all) = &mut *state;
        if *all >= total || per.get(&peer).is_some_and(|c| *c >= per_peer) {
            return None;
        }
        let count = per.entry(peer).or_default();
        *count += 1;
        *all += 1;
        Some(Pass {
            gate: self.clone(),
            peer,
        })
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut state = self.gate.0.lock().unwrap_or_else(|p| p.into_inner());
        let (per, all) = &mut *state;
        *all -= 1;
        if let Some(c) = per.get_mut(&self.peer) {
            *c -= 1;
            if *c == 0 {
                per.remove(&self.peer);
            }
        }
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
                protocol,
                stream,
            } => {
                let node = node.clone();
                if protocol == SYNC_PROTOCOL {
                    let Some(pass) = sessions.enter(peer, MAX_SESSIONS_PER_PEER, MAX_SESSIONS)
                    else {
                        tracing::debug!(%peer, "refused a sync stream over the limit");
                        continue;
                    };
                    let peering = peering.clone();
                    let net = net.clone();
                    tokio::spawn(async move {
                        let _pass = pass;
                        let session = sync::run(node, &peering, &net, peer, stream, Side::Listener);
                        if let Err(e) = session.await {
                            tracing::debug!(%peer, "sync session failed: {e:#}");
                        }
                    });
                } else if protocol == JOIN_PROTOCOL {
                    let Some(pass) = joins.enter(peer, 1, MAX_JOINS) else {
                        tracing::debug!(%peer, "refused a join stream over the limit");
                        continue;
                    };
                    let net = net.clone();
                    tokio::spawn(async move {
                        let _pass = pass;
                        if let Err(e) = join::serve(node, net, peer, stream).await {
                            tracing::debug!(%peer, "join stream failed: {e:#}");
                        }
                    });
                }
            }
            NetEvent::Disconnected { peer } => {
                if let Some(handle) = supervisors.remove(&peer) {
                    handle.abort();
                }
            }
        }
    }
}
