//! The daemon's life: open the store, start networking and the local API, route peer
//! events to sessions, and shut down cleanly on SIGTERM or Ctrl-C.

use std::sync::Arc;

use anyhow::Context;
use hearth_protocol::session::Side;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use crate::http::{self, AppState};
use crate::net::{self, JOIN_PROTOCOL, NetConfig, NetEvent, NetHandle, SYNC_PROTOCOL};
use crate::node::Node;
use crate::store::Store;
use crate::{join, peers, sync};

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

    for addr in peers::remembered(node.store())? {
        if let Err(e) = net.dial(addr.clone()).await {
            tracing::warn!(%addr, "could not dial a remembered peer: {e:#}");
        }
    }
    let router_task = tokio::spawn(route_events(node.clone(), net.clone(), events));

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
    let app = http::router(AppState {
        node: node.clone(),
        net: net.clone(),
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await;

    tracing::info!("shutting down");
    router_task.abort();
    net.shutdown().await;
    if let Err(e) = std::fs::remove_file(&config.socket) {
        tracing::warn!("could not remove the API socket: {e}");
    }
    served.context("serving the local API")
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

/// Starts a sync session for each new peer (the side with the lower peer id opens it, so
/// two daemons keep one session), and serves inbound sync and join streams.
async fn route_events(
    node: Arc<Node>,
    net: NetHandle,
    mut events: tokio::sync::mpsc::Receiver<NetEvent>,
) {
    let local = net.local_peer_id();
    while let Some(event) = events.recv().await {
        match event {
            NetEvent::Connected { peer } => {
                if local.to_bytes() < peer.to_bytes() && node.group_count() > 0 {
                    join::start_sync(node.clone(), net.clone(), peer);
                }
            }
            NetEvent::InboundStream {
                peer,
                protocol,
                stream,
            } => {
                let node = node.clone();
                if protocol == SYNC_PROTOCOL {
                    tokio::spawn(async move {
                        if let Err(e) = sync::run(node, local, peer, stream, Side::Listener).await {
                            tracing::debug!(%peer, "sync session failed: {e:#}");
                        }
                    });
                } else if protocol == JOIN_PROTOCOL {
                    let net = net.clone();
                    tokio::spawn(async move {
                        if let Err(e) = join::serve(node, net, peer, stream).await {
                            tracing::debug!(%peer, "join stream failed: {e:#}");
                        }
                    });
                }
            }
            NetEvent::Disconnected { .. } => {}
        }
    }
}
