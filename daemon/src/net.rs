//! hearthd's libp2p layer.
//!
//! One spawned task owns the [`Swarm`]; everything else talks to it through a cloneable
//! [`NetHandle`] (an mpsc command channel with oneshot replies) and receives [`NetEvent`]s on a
//! bounded channel.
//!
//! Design points (see hearth's design):
//! - The transport identity is ephemeral: a fresh ed25519 key on every [`start`], never
//!   persisted, so mDNS on a shared network reveals no stable identity.
//! - TCP + Noise + Yamux only. No DNS, QUIC, relays, DHT or bootstrap nodes: we dial only what
//!   the caller asks for, plus peers discovered over mDNS (when enabled).
//! - hearth's own protocols ([`SYNC_PROTOCOL`], [`JOIN_PROTOCOL`]) run over raw libp2p streams
//!   (`libp2p-stream`); inbound streams arrive as [`NetEvent::InboundStream`].
//! - Nothing a stranger receives names hearth or lists our addresses: there is no identify
//!   (the only libp2p protocols spoken are ping and our two streams, under generic names).
//!   Whether a peer is one to keep is decided above this layer (a shared group); the daemon
//!   drops the others with [`NetHandle::drop_stranger`], and this layer then no longer dials
//!   them when mDNS reports them, until [`NetHandle::forgive_strangers`].
//!
//! Event ordering: all events (including inbound streams) are produced by the swarm task in
//! the order it observes them, so a peer's `Connected` is always delivered before any
//! `InboundStream` from that peer's connection. The swarm task never blocks on a full event
//! channel: it queues events internally (keeps serving handle commands meanwhile) and stops
//! polling the network once that backlog reaches [`MAX_EVENT_BACKLOG`], which applies
//! backpressure to remotes instead of dropping `Connected`/`Disconnected`.
//!
//! Nothing here logs stream payloads; logging is at `debug` (connection lifecycle) or `trace`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use futures::StreamExt as _;
use libp2p::core::ConnectedPoint;
use libp2p::core::transport::ListenerId;
use libp2p::core::upgrade::Version;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Stream, StreamProtocol, Swarm, Transport as _, connection_limits, mdns,
    noise, ping, tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, trace, warn};

mod ip_limits;
#[cfg(test)]
mod tests;

pub use ip_limits::{IP_LIMITS, LOOPBACK_LIMITS, Limits, limits_for};

/// hearth's sync protocol (one stream per sync session). The name is generic on purpose:
/// multistream-select tells anyone who asks (`ls`) which protocols a node speaks.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/sync/1");
/// hearth's join protocol (invite redemption, spoken codes); generic like [`SYNC_PROTOCOL`].
/// Version 2: spoken-code confirmations are bound to the connection, join requests are
/// padded, and a code join waits for the facilitator's approval. A daemon of another
/// version is told apart by the name ([`Unsupported`]), not by a garbled exchange.
pub const JOIN_PROTOCOL: StreamProtocol = StreamProtocol::new("/join/2");

/// The peer does not speak the stream protocol asked for (another hearth version, or not
/// hearth at all).
#[derive(Debug)]
pub struct Unsupported;

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the peer does not support this protocol")
    }
}

impl std::error::Error for Unsupported {}

/// Connections with no open stream are closed after this long.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Upper bound for the TCP connect + Noise + Yamux handshake of one connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound for [`NetHandle::open_stream`] (dialing if needed + protocol negotiation).
pub const OPEN_STREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Capacity of the [`NetEvent`] channel returned by [`start`].
pub const EVENT_CHANNEL_CAPACITY: usize = 256;
/// Events the swarm task queues internally (on top of the channel) before it stops polling
/// the network until the consumer catches up.
pub const MAX_EVENT_BACKLOG: usize = 1024;
/// How long [`start`] waits for all listeners to report an address.
const LISTEN_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// After listeners on wildcard addresses are up, [`start`] keeps collecting interface
/// addresses until none arrived for this long (bounded by [`LISTEN_SETTLE_MAX`]).
const LISTEN_SETTLE_QUIET: Duration = Duration::from_millis(100);
const LISTEN_SETTLE_MAX: Duration = Duration::from_secs(1);
const COMMAND_CHANNEL_CAPACITY: usize = 64;
/// mDNS re-query interval (libp2p's default is 5 min; shorter recovers lost packets sooner).
const MDNS_QUERY_INTERVAL: Duration = Duration::from_secs(60);

// Connection limits: hearth groups are small; these only guard against floods.
const MAX_PENDING_INCOMING: u32 = 16;
const MAX_ESTABLISHED_INCOMING: u32 = 64;
const MAX_ESTABLISHED_TOTAL: u32 = 128;
const MAX_ESTABLISHED_PER_PEER: u32 = 8;

/// Network configuration.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/0`. May be empty (dial-only node).
    pub listen: Vec<Multiaddr>,
    /// Enable mDNS discovery (and auto-dialing of discovered peers) on the local network.
    pub mdns: bool,
}

#[derive(Debug)]
pub enum NetEvent {
    /// First connection to this peer established (not sent for extra parallel connections).
    Connected { peer: PeerId },
    /// Last connection to this peer closed.
    Disconnected { peer: PeerId },
    /// A remote opened a stream for one of our protocols.
    InboundStream {
        peer: PeerId,
        /// The remote IP address of (one of) the peer's connections, if known.
        ip: Option<IpAddr>,
        protocol: StreamProtocol,
        stream: Stream,
    },
}

/// Cloneable handle to the running network task.
///
/// When every handle has been dropped (or [`NetHandle::shutdown`] was called) the swarm task
/// stops, closing all connections; the event channel then ends.
#[derive(Clone)]
pub struct NetHandle {
    local_peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
}

impl std::fmt::Debug for NetHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetHandle")
            .field("local_peer_id", &self.local_peer_id)
            .field("running", &!self.commands.is_closed())
            .finish()
    }
}

enum Command {
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<anyhow::Result<()>>,
    },
    Connect {
        addr: Multiaddr,
        reply: oneshot::Sender<anyhow::Result<PeerId>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<(PeerId, Vec<Multiaddr>)>>,
    },
    DropStranger {
        peer: PeerId,
    },
    ForgiveStrangers,
    ReachDiscovered,
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

const STOPPED: &str = "hearth network task is not running (shut down)";

impl NetHandle {
    /// This node's (ephemeral) peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    async fn request<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(make(reply)).await.ok()?;
        rx.await.ok()
    }

    /// Dials an address (with or without `/p2p/` suffix). Resolves when the dial was issued;
    /// errors if the address is not dialable (e.g. unsupported transport) with a clear message.
    /// The outcome of the dial itself shows up as [`NetEvent::Connected`] (or not at all).
    pub async fn dial(&self, addr: Multiaddr) -> anyhow::Result<()> {
        check_dialable(&addr, Some(&self.local_peer_id))?;
        self.request(|reply| Command::Dial { addr, reply })
            .await
            .ok_or_else(|| anyhow!(STOPPED))?
    }

    /// Dials `addr` and waits until a connection is established or `timeout` passes; returns
    /// the connected PeerId. If `addr` ends in `/p2p/<peer>` and that peer is already
    /// connected, returns at once without dialing.
    pub async fn connect(&self, addr: Multiaddr, timeout: Duration) -> anyhow::Result<PeerId> {
        check_dialable(&addr, Some(&self.local_peer_id))?;
        let shown = addr.clone();
        match tokio::time::timeout(
            timeout,
            self.request(|reply| Command::Connect { addr, reply }),
        )
        .await
        {
            Ok(Some(result)) => result,
            Ok(None) => Err(anyhow!(STOPPED)),
            Err(_) => Err(anyhow!(
                "connecting to {shown} timed out after {}",
                fmt_duration(timeout)
            )),
        }
    }

    /// Addresses we are listening on (wildcard listen addresses expanded to the concrete
    /// interface addresses), non-loopback addresses first. Empty once the network task has
    /// stopped.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.request(|reply| Command::ListenAddrs { reply })
            .await
            .unwrap_or_default()
    }

    /// Connected peers with the remote addresses of their connections (without `/p2p/`
    /// suffix), sorted by peer id. Empty once the network task has stopped.
    pub async fn peers(&self) -> Vec<(PeerId, Vec<Multiaddr>)> {
        self.request(|reply| Command::Peers { reply })
            .await
            .unwrap_or_default()
    }

    /// Opens a new stream to a connected (or dialable-by-id, e.g. mDNS-discovered) peer for
    /// `protocol`. Gives up after [`OPEN_STREAM_TIMEOUT`].
    pub async fn open_stream(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> anyhow::Result<Stream> {
        self.open_stream_with_timeout(peer, protocol, OPEN_STREAM_TIMEOUT)
            .await
    }

    /// [`NetHandle::open_stream`] with an explicit timeout.
    pub async fn open_stream_with_timeout(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
        timeout: Duration,
    ) -> anyhow::Result<Stream> {
        if self.commands.is_closed() {
            bail!(STOPPED);
        }
        if peer == self.local_peer_id {
            bail!("cannot open a {protocol} stream to ourselves");
        }
        // Each clone gets its own guaranteed slot in libp2p-stream's channels, so concurrent
        // callers never wait on each other here.
        let mut control = self.control.clone();
        trace!(peer = %short(&peer), %protocol, "opening stream");
        match tokio::time::timeout(timeout, control.open_stream(peer, protocol.clone())).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(p))) => {
                Err(anyhow::Error::new(Unsupported).context(format!(
                    "peer {} does not support protocol {p}",
                    short(&peer)
                )))
            }
            Ok(Err(libp2p_stream::OpenStreamError::Io(e))) => Err(anyhow!(
                "could not open a {protocol} stream to peer {}: {}",
                short(&peer),
                error_chain(&e)
            )),
            Ok(Err(e)) => Err(anyhow!(
                "could not open a {protocol} stream to peer {}: {}",
                short(&peer),
                error_chain(&e)
            )),
            Err(_) => Err(anyhow!(
                "opening a {protocol} stream to peer {} timed out after {} \
                 (peer not connected and not dialable, or unresponsive)",
                short(&peer),
                fmt_duration(timeout)
            )),
        }
    }

    /// Closes every connection to `peer`, a peer that shares nothing with us, and no longer
    /// dials it (by this run's peer id, or any address it was reached or announced at)
    /// when mDNS reports it, until [`NetHandle::forgive_strangers`]. Inbound connections
    /// from it are still accepted (and judged again by the caller).
    pub async fn drop_stranger(&self, peer: PeerId) {
        let _ = self.commands.send(Command::DropStranger { peer }).await;
    }

    /// Forgets every dropped stranger and dials again the peers mDNS has reported that are
    /// not connected (a change of this device's groups or memberships may have made one of
    /// them a fellow member).
    pub async fn forgive_strangers(&self) {
        let _ = self.commands.send(Command::ForgiveStrangers).await;
    }

    /// Dials every peer mDNS has reported that is not connected, dropped strangers
    /// included, without forgiving them (the member asked for it: joining by spoken code
    /// looks for the facilitator's daemon among them).
    pub async fn reach_discovered(&self) {
        let _ = self.commands.send(Command::ReachDiscovered).await;
    }

    /// Stops the swarm task (used on shutdown): closes all connections and listeners, ends the
    /// event channel. Resolves once the swarm has been dropped. Idempotent.
    pub async fn shutdown(&self) {
        let _ = self.request(|reply| Command::Shutdown { reply }).await;
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    ip_limits: ip_limits::Behaviour,
    limits: connection_limits::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    stream: libp2p_stream::Behaviour,
}

fn build_swarm(enable_mdns: bool) -> anyhow::Result<Swarm<Behaviour>> {
    let swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        // Equivalent to `.with_tcp(..)` but with a bound on the connection handshake, so a
        // remote that stalls the Noise/Yamux upgrade cannot pin a pending connection forever.
        .with_other_transport(|key| {
            let noise = noise::Config::new(key)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                tcp::tokio::Transport::new(tcp::Config::new().nodelay(true))
                    .upgrade(Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .timeout(HANDSHAKE_TIMEOUT),
            )
        })
        .context("building the TCP/Noise/Yamux transport")?
        .with_behaviour(|key| {
            let local_peer_id = key.public().to_peer_id();
            let mdns = if enable_mdns {
                let config = mdns::Config {
                    query_interval: MDNS_QUERY_INTERVAL,
                    ..Default::default()
                };
                Some(
                    mdns::tokio::Behaviour::new(config, local_peer_id).map_err(|e| {
                        format!("cannot start mDNS discovery ({e}); disable mDNS to run without it")
                    })?,
                )
            } else {
                None
            };
            let limits = connection_limits::ConnectionLimits::default()
                .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                .with_max_established_incoming(Some(MAX_ESTABLISHED_INCOMING))
                .with_max_established(Some(MAX_ESTABLISHED_TOTAL))
                .with_max_established_per_peer(Some(MAX_ESTABLISHED_PER_PEER));
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Behaviour {
                ip_limits: ip_limits::Behaviour::default(),
                limits: connection_limits::Behaviour::new(limits),
                ping: ping::Behaviour::default(),
                mdns: Toggle::from(mdns),
                stream: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| anyhow!("{e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    Ok(swarm)
}

/// Builds the swarm (with a fresh, ephemeral identity), starts listening on every
/// `config.listen` address, spawns the swarm task on the current tokio runtime and returns the
/// handle plus the event receiver. Resolves only after every listen address is bound (so
/// `listen_addrs()` is populated right after), failing clearly if one cannot be bound.
///
/// The receiver must be drained: while it is full the swarm task stops reading from the
/// network (handle commands keep working).
///
/// Must be called from within a tokio runtime.
pub async fn start(config: NetConfig) -> anyhow::Result<(NetHandle, mpsc::Receiver<NetEvent>)> {
    // libp2p's TCP listeners set SO_REUSEPORT, so a second daemon on the same port would
    // silently share it; probe first so a taken port is a clear error instead.
    for addr in &config.listen {
        probe_listen_addr(addr).await?;
    }

    let mut swarm = build_swarm(config.mdns)?;
    let local_peer_id = *swarm.local_peer_id();
    let mut control = swarm.behaviour().stream.new_control();
    let sync_incoming = control
        .accept(SYNC_PROTOCOL)
        .context("registering the sync protocol")?;
    let join_incoming = control
        .accept(JOIN_PROTOCOL)
        .context("registering the join protocol")?;
    let incoming = futures::stream::select(
        sync_incoming.map(|(peer, stream)| (peer, SYNC_PROTOCOL, stream)),
        join_incoming.map(|(peer, stream)| (peer, JOIN_PROTOCOL, stream)),
    );

    let mut waiting = HashMap::new();
    let mut any_wildcard = false;
    for addr in &config.listen {
        let id = swarm.listen_on(addr.clone()).map_err(|e| {
            anyhow!(
                "cannot listen on {addr}: {} (hearthd listens on TCP only: \
                 /ip4/<ip>/tcp/<port> or /ip6/<ip>/tcp/<port>)",
                error_chain(&e)
            )
        })?;
        any_wildcard |= is_wildcard(addr);
        waiting.insert(id, addr.clone());
    }

    let mut driver = Driver {
        swarm,
        connections: BTreeMap::new(),
        pending_connects: HashMap::new(),
        backlog: VecDeque::new(),
        mdns_dials: HashMap::new(),
        mdns_redials: Vec::new(),
        discovered: HashMap::new(),
        strangers: HashSet::new(),
        stranger_addrs: HashSet::new(),
    };
    driver.wait_for_listeners(waiting, any_wildcard).await?;
    debug!(peer = %short(&local_peer_id), addrs = ?driver.swarm.listeners().collect::<Vec<_>>(), "network started");

    let (events_tx, events_rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
    let (commands, commands_rx) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
    tokio::spawn(driver.run(commands_rx, events_tx, incoming));

    Ok((
        NetHandle {
            local_peer_id,
            commands,
            control,
        },
        events_rx,
    ))
}

struct Driver {
    swarm: Swarm<Behaviour>,
    /// Open connections per peer with their remote address.
    connections: BTreeMap<PeerId, Vec<(ConnectionId, Multiaddr)>>,
    /// `connect()` calls waiting for their dial to finish.
    pending_connects: HashMap<ConnectionId, oneshot::Sender<anyhow::Result<PeerId>>>,
    /// Events not yet handed to the event channel.
    backlog: VecDeque<NetEvent>,
    /// Dials to peers found by mDNS, with the attempt number: a failed one is tried again.
    mdns_dials: HashMap<ConnectionId, (PeerId, Vec<Multiaddr>, u32)>,
    /// mDNS peers to dial again, and when.
    mdns_redials: Vec<(tokio::time::Instant, PeerId, Vec<Multiaddr>, u32)>,
    /// What mDNS currently reports: each peer with its announced addresses.
    discovered: HashMap<PeerId, Vec<Multiaddr>>,
    /// Peers dropped as strangers in this run, and the addresses they were reached at:
    /// mDNS reports of them are not dialled.
    strangers: HashSet<PeerId>,
    stranger_addrs: HashSet<Multiaddr>,
}

/// Most addresses remembered for one peer found by mDNS.
const MAX_ADDRS_PER_PEER: usize = 16;

/// Most peers remembered from mDNS and as dropped strangers (a flood of fake mDNS answers
/// must not grow memory without bound; past this the oldest knowledge is simply cleared).
const MAX_REMEMBERED_PEERS: usize = 1024;

/// How often a failed dial to a peer found by mDNS is tried again: mDNS reports a peer
/// only once per record lifetime (minutes), so one lost dial (say, both sides dialling at
/// the same instant) would otherwise keep two daemons in the same room apart that long.
const MDNS_DIAL_ATTEMPTS: u32 = 4;
/// The wait before the n-th retry is n times this, plus up to this again at random (so
/// two daemons that failed together do not retry together).
const MDNS_REDIAL_STEP: Duration = Duration::from_millis(500);

impl Driver {
    async fn wait_for_listeners(
        &mut self,
        mut waiting: HashMap<ListenerId, Multiaddr>,
        any_wildcard: bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + LISTEN_READY_TIMEOUT;
        while !waiting.is_empty() {
            let event = match tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await
            {
                Ok(event) => event,
                Err(_) => {
                    let addrs: Vec<String> = waiting.values().map(|a| a.to_string()).collect();
                    bail!(
                        "listening on {} did not become ready within {}",
                        addrs.join(", "),
                        fmt_duration(LISTEN_READY_TIMEOUT)
                    );
                }
            };
            match &event {
                SwarmEvent::NewListenAddr { listener_id, .. } => {
                    waiting.remove(listener_id);
                }
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason,
                    ..
                } => {
                    if let Some(addr) = waiting.get(listener_id) {
                        match reason {
                            Err(e) => bail!("cannot listen on {addr}: {}", error_chain(e)),
                            Ok(()) => bail!("cannot listen on {addr}: listener closed"),
                        }
                    }
                }
                _ => {}
            }
            self.on_swarm_event(event);
        }
        if any_wildcard {
            // A wildcard listener reports one address per interface; collect the ones that
            // are available right away so listen_addrs() is complete after start().
            let settle_deadline = tokio::time::Instant::now() + LISTEN_SETTLE_MAX;
            loop {
                let quiet_deadline =
                    (tokio::time::Instant::now() + LISTEN_SETTLE_QUIET).min(settle_deadline);
                match tokio::time::timeout_at(quiet_deadline, self.swarm.select_next_some()).await {
                    Ok(event) => self.on_swarm_event(event),
                    Err(_) => break,
                }
            }
        }
        Ok(())
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<NetEvent>,
        incoming: impl futures::Stream<Item = (PeerId, StreamProtocol, Stream)> + Unpin,
    ) {
        let mut events = Some(events);
        let mut incoming = incoming.fuse();
        let mut warned_backlog = false;
        let shutdown_reply = loop {
            let poll_network = self.backlog.len() < MAX_EVENT_BACKLOG;
            if !poll_network && !warned_backlog {
                warn!(
                    backlog = self.backlog.len(),
                    "network event consumer is not keeping up; pausing network processing"
                );
            }
            warned_backlog = !poll_network;
            let deliver = events.is_some() && !self.backlog.is_empty();
            let mut receiver_gone = false;
            let next_redial = self.mdns_redials.iter().map(|r| r.0).min();
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => break Some(reply),
                    Some(command) => self.on_command(command),
                    None => {
                        debug!("all network handles dropped; stopping");
                        break None;
                    }
                },
                permit = reserve(events.as_ref()), if deliver => match permit {
                    Ok(permit) => {
                        if let Some(event) = self.backlog.pop_front() {
                            permit.send(event);
                        }
                    }
                    Err(_) => {
                        debug!("network event receiver dropped; discarding further events");
                        receiver_gone = true;
                    }
                },
                event = self.swarm.select_next_some(), if poll_network => {
                    self.on_swarm_event(event);
                }
                Some((peer, protocol, stream)) = incoming.next(), if poll_network => {
                    trace!(peer = %short(&peer), %protocol, "inbound stream");
                    let ip = self
                        .connections
                        .get(&peer)
                        .and_then(|c| c.first())
                        .and_then(|(_, addr)| ip_limits::ip_of(addr));
                    self.push(NetEvent::InboundStream { peer, ip, protocol, stream });
                }
                () = sleep_until_some(next_redial) => self.redial_mdns_due(),
            }
            if receiver_gone {
                events = None;
                self.backlog.clear();
            }
        };
        let local = *self.swarm.local_peer_id();
        drop(self);
        debug!(peer = %short(&local), "network stopped");
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(());
        }
        // Answer shutdown requests that raced with this one instead of dropping them silently.
        commands.close();
        while let Some(command) = commands.recv().await {
            if let Command::Shutdown { reply } = command {
                let _ = reply.send(());
            }
        }
    }

    fn push(&mut self, event: NetEvent) {
        self.backlog.push_back(event);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Dial { addr, reply } => {
                let result = self.dial(addr).map(|_| ());
                let _ = reply.send(result);
            }
            Command::Connect { addr, reply } => {
                if let Some(peer) = peer_of(&addr)
                    && self.swarm.is_connected(&peer)
                {
                    let _ = reply.send(Ok(peer));
                    return;
                }
                // A connection to this very address serves again: joining a facilitator's
                // second group must not pile up connections to it. (An address naming a
                // peer id is answered above or dialled, so the id is checked.)
                let wanted = without_p2p(&addr);
                if peer_of(&addr).is_none()
                    && let Some((peer, _)) = self
                        .connections
                        .iter()
                        .find(|(_, conns)| conns.iter().any(|(_, remote)| *remote == wanted))
                {
                    let _ = reply.send(Ok(*peer));
                    return;
                }
                match self.dial(addr) {
                    Ok(connection) => {
                        // Forget waiters whose connect() already timed out.
                        self.pending_connects.retain(|_, tx| !tx.is_closed());
                        self.pending_connects.insert(connection, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::ListenAddrs { reply } => {
                let mut addrs: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
                // Addresses other machines can reach first (invites embed the first few).
                addrs.sort_by_key(is_loopback);
                let _ = reply.send(addrs);
            }
            Command::Peers { reply } => {
                let peers = self
                    .connections
                    .iter()
                    .map(|(peer, conns)| (*peer, conns.iter().map(|(_, a)| a.clone()).collect()))
                    .collect();
                let _ = reply.send(peers);
            }
            Command::DropStranger { peer } => {
                if self.strangers.len() >= MAX_REMEMBERED_PEERS {
                    self.strangers.clear();
                    self.stranger_addrs.clear();
                }
                self.strangers.insert(peer);
                // Only where it was really reached: an announcement can name anyone's
                // address, and would keep members from dialling each other.
                for (_, addr) in self.connections.get(&peer).into_iter().flatten() {
                    self.stranger_addrs.insert(addr.clone());
                }
                self.mdns_redials.retain(|r| r.1 != peer);
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::ForgiveStrangers => {
                self.strangers.clear();
                self.stranger_addrs.clear();
                self.dial_discovered();
            }
            Command::ReachDiscovered => self.dial_discovered(),
            Command::Shutdown { reply } => {
                // Handled in run(); kept for exhaustiveness.
                let _ = reply.send(());
            }
        }
    }

    fn dial(&mut self, addr: Multiaddr) -> anyhow::Result<ConnectionId> {
        check_dialable(&addr, Some(self.swarm.local_peer_id()))?;
        let opts = DialOpts::unknown_peer_id()
            .address(addr.clone())
            .allocate_new_port()
            .build();
        let connection = opts.connection_id();
        debug!(%addr, %connection, "dialing");
        self.swarm
            .dial(opts)
            .map_err(|e| anyhow!("cannot dial {addr}: {}", describe_dial_error(&e)))?;
        Ok(connection)
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                self.mdns_dials.remove(&connection_id);
                let remote = without_p2p(endpoint.get_remote_address());
                debug!(
                    peer = %short(&peer_id),
                    connection = %connection_id,
                    %remote,
                    outbound = matches!(endpoint, ConnectedPoint::Dialer { .. }),
                    "connection established"
                );
                self.connections
                    .entry(peer_id)
                    .or_default()
                    .push((connection_id, remote));
                if num_established.get() == 1 {
                    self.push(NetEvent::Connected { peer: peer_id });
                }
                if let Some(reply) = self.pending_connects.remove(&connection_id) {
                    let _ = reply.send(Ok(peer_id));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                debug!(
                    peer = %short(&peer_id),
                    connection = %connection_id,
                    cause = cause.as_ref().map(|c| error_chain(c)),
                    "connection closed"
                );
                if let Some(conns) = self.connections.get_mut(&peer_id) {
                    conns.retain(|(id, _)| *id != connection_id);
                    if conns.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
                if num_established == 0 {
                    self.connections.remove(&peer_id);
                    self.push(NetEvent::Disconnected { peer: peer_id });
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                let reason = describe_dial_error(&error);
                debug!(peer = ?peer_id.as_ref().map(|p| short(p).to_string()), connection = %connection_id, %reason, "outgoing connection failed");
                if let Some((peer, addrs, attempt)) = self.mdns_dials.remove(&connection_id)
                    && attempt < MDNS_DIAL_ATTEMPTS
                {
                    let jitter = Duration::from_millis(u64::from(
                        rand_core::RngCore::next_u32(&mut rand_core::OsRng) % 500,
                    ));
                    let wait = MDNS_REDIAL_STEP * attempt + jitter;
                    self.mdns_redials.push((
                        tokio::time::Instant::now() + wait,
                        peer,
                        addrs,
                        attempt + 1,
                    ));
                }
                if let Some(reply) = self.pending_connects.remove(&connection_id) {
                    let _ = reply.send(Err(anyhow!("connection failed: {reason}")));
                }
            }
            SwarmEvent::IncomingConnectionError {
                connection_id,
                send_back_addr,
                error,
                ..
            } => {
                debug!(connection = %connection_id, remote = %send_back_addr, error = %error_chain(&error), "incoming connection failed");
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                debug!(%address, "listening");
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                debug!(%address, "listen address expired");
            }
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => match reason {
                Ok(()) => debug!(?addresses, "listener closed"),
                // Warnings carry no address (they are seen at the default log level).
                Err(e) => warn!(error = %error_chain(&e), "listener failed"),
            },
            SwarmEvent::ListenerError { error, .. } => {
                warn!(error = %error_chain(&error), "listener error");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            other => trace!(event = ?other, "swarm event"),
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => self.on_mdns_discovered(found),
            BehaviourEvent::Mdns(mdns::Event::Expired(gone)) => {
                for (peer, addr) in gone {
                    trace!(peer = %short(&peer), "mDNS record expired");
                    let addr = without_p2p(&addr);
                    if let Some(addrs) = self.discovered.get_mut(&peer) {
                        addrs.retain(|a| *a != addr);
                        if addrs.is_empty() {
                            self.discovered.remove(&peer);
                        }
                    }
                }
            }
            BehaviourEvent::Ping(event) => {
                trace!(peer = %event.peer, rtt = ?event.result.as_ref().ok(), "ping")
            }
            BehaviourEvent::Limits(never) | BehaviourEvent::IpLimits(never) => match never {},
            BehaviourEvent::Stream(()) => {}
        }
    }

    /// Whether `peer` (announced at `addrs`) was dropped as a stranger in this run.
    fn is_stranger(&self, peer: &PeerId, addrs: &[Multiaddr]) -> bool {
        self.strangers.contains(peer) || addrs.iter().any(|a| self.stranger_addrs.contains(a))
    }

    /// Dials every peer mDNS reports that is not connected, strangers included.
    fn dial_discovered(&mut self) {
        let found: Vec<(PeerId, Vec<Multiaddr>)> = self
            .discovered
            .iter()
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        for (peer, addrs) in found {
            self.dial_mdns_peer(peer, addrs, 1);
        }
    }

    /// Dials each newly discovered peer once per discovery, unless already connected/dialing
    /// or dropped as a stranger.
    fn on_mdns_discovered(&mut self, found: Vec<(PeerId, Multiaddr)>) {
        let local = *self.swarm.local_peer_id();
        let mut by_peer: BTreeMap<PeerId, Vec<Multiaddr>> = BTreeMap::new();
        for (peer, addr) in found {
            let addr = without_p2p(&addr);
            if peer == local || check_dialable(&addr, None).is_err() {
                continue;
            }
            let addrs = by_peer.entry(peer).or_default();
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        if self.discovered.len() >= MAX_REMEMBERED_PEERS {
            self.discovered.clear();
        }
        for (peer, addrs) in by_peer {
            let known = self.discovered.entry(peer).or_default();
            for addr in &addrs {
                if !known.contains(addr) && known.len() < MAX_ADDRS_PER_PEER {
                    known.push(addr.clone());
                }
            }
            if self.is_stranger(&peer, &addrs) {
                trace!(peer = %short(&peer), "mDNS reported a dropped stranger; not dialing");
                continue;
            }
            debug!(peer = %short(&peer), "mDNS discovered peer");
            self.dial_mdns_peer(peer, addrs, 1);
        }
    }

    /// Dials a peer found by mDNS unless already connected or dialing. Dials from a fresh
    /// port: two daemons that find each other at the same instant would otherwise make
    /// one TCP connection from both listen ports, on which both think they dialed, and the
    /// Noise handshake fails.
    fn dial_mdns_peer(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, attempt: u32) {
        if self.swarm.is_connected(&peer) {
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs.clone())
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .allocate_new_port()
            .build();
        let connection = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.mdns_dials.insert(connection, (peer, addrs, attempt));
            }
            Err(e) => {
                debug!(peer = %short(&peer), reason = %describe_dial_error(&e), "not dialing discovered peer")
            }
        }
    }

    fn redial_mdns_due(&mut self) {
        let now = tokio::time::Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.mdns_redials)
            .into_iter()
            .partition(|r| r.0 <= now);
        self.mdns_redials = later;
        for (_, peer, addrs, attempt) in due {
            if self.is_stranger(&peer, &addrs) {
                continue;
            }
            debug!(peer = %short(&peer), attempt, "dialing a peer found by mDNS again");
            self.dial_mdns_peer(peer, addrs, attempt);
        }
    }
}

/// Sleeps until `at`, or forever if there is nothing to wait for.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn reserve(
    events: Option<&mpsc::Sender<NetEvent>>,
) -> Result<mpsc::Permit<'_, NetEvent>, mpsc::error::SendError<()>> {
    match events {
        Some(events) => events.reserve().await,
        None => std::future::pending().await,
    }
}

/// Checks that `addr` can be dialed by our transport stack:
/// `/ip4|ip6/<ip>/tcp/<port>[/p2p/<peer>]` with a concrete IP and non-zero port.
fn check_dialable(addr: &Multiaddr, local: Option<&PeerId>) -> anyhow::Result<()> {
    const SHAPE: &str = "hearthd dials only TCP addresses of the form \
        /ip4/<ip>/tcp/<port>[/p2p/<peer-id>] or /ip6/<ip>/tcp/<port>[/p2p/<peer-id>] \
        (no DNS, QUIC, WebSocket or relay addresses)";
    let mut parts = addr.iter();
    let ip: IpAddr = match parts.next() {
        Some(Protocol::Ip4(ip)) => ip.into(),
        Some(Protocol::Ip6(ip)) => ip.into(),
        _ => bail!("cannot dial {addr}: unsupported address; {SHAPE}"),
    };
    let port = match parts.next() {
        Some(Protocol::Tcp(port)) => port,
        _ => bail!("cannot dial {addr}: unsupported address; {SHAPE}"),
    };
    let peer = match parts.next() {
        None => None,
        Some(Protocol::P2p(peer)) => Some(peer),
        Some(_) => bail!("cannot dial {addr}: unsupported address; {SHAPE}"),
    };
    if parts.next().is_some() {
        bail!("cannot dial {addr}: unsupported address; {SHAPE}");
    }
    if ip.is_unspecified() || ip.is_multicast() || port == 0 {
        bail!("cannot dial {addr}: not a concrete address (unspecified/multicast IP or port 0)");
    }
    if let (Some(peer), Some(local)) = (peer, local)
        && &peer == local
    {
        bail!("cannot dial {addr}: that is our own peer id");
    }
    Ok(())
}

/// A peer id shortened for logs: its last 6 base58 characters (ids are ephemeral anyway,
/// but a full id in a log links that log to a capture of the network).
pub fn short(peer: &PeerId) -> ShortPeer {
    ShortPeer(*peer)
}

/// See [`short`].
pub struct ShortPeer(PeerId);

impl std::fmt::Display for ShortPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.0.to_base58();
        let tail = text.get(text.len().saturating_sub(6)..).unwrap_or("");
        write!(f, "…{tail}")
    }
}

/// The peer id in a trailing `/p2p/` component, if any.
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

fn without_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

fn is_loopback(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

fn is_wildcard(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_unspecified(),
        Some(Protocol::Ip6(ip)) => ip.is_unspecified(),
        _ => false,
    }
}

/// Fails if `addr` is a concrete `/ip4/<ip>/tcp/<port>` (port != 0) that is already taken.
/// IPv6 and port 0 are left to libp2p (a dual-stack probe could report false conflicts).
async fn probe_listen_addr(addr: &Multiaddr) -> anyhow::Result<()> {
    let mut parts = addr.iter();
    let (Some(Protocol::Ip4(ip)), Some(Protocol::Tcp(port)), None) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Ok(());
    };
    if port == 0 {
        return Ok(());
    }
    let socket_addr = SocketAddr::new(ip.into(), port);
    let probe = tokio::net::TcpSocket::new_v4()
        .and_then(|s| {
            // Like libp2p, tolerate TIME_WAIT leftovers; unlike libp2p, no SO_REUSEPORT.
            s.set_reuseaddr(true)?;
            s.bind(socket_addr)?;
            Ok(s)
        })
        .and_then(|s| s.listen(1));
    match probe {
        Ok(listener) => {
            drop(listener);
            Ok(())
        }
        Err(e) => Err(anyhow!("cannot listen on {addr}: {e}")),
    }
}

fn describe_dial_error(error: &DialError) -> String {
    match error {
        DialError::Transport(errors) => {
            let parts: Vec<String> = errors
                .iter()
                .map(|(addr, e)| format!("{}: {}", without_p2p(addr), error_chain(e)))
                .collect();
            parts.join("; ")
        }
        DialError::Denied { cause } => format!("denied locally: {}", error_chain(cause)),
        DialError::WrongPeerId { obtained, .. } => {
            format!(
                "the remote is peer {}, not the one in the address",
                short(obtained)
            )
        }
        DialError::NoAddresses => {
            "no usable address (is it one of our own listen addresses?)".to_string()
        }
        other => error_chain(other),
    }
}

/// `e` and its sources joined with ": ", skipping empty messages and messages already
/// contained in an earlier one (many errors embed their source in their own message).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(e);
    while let Some(err) = current {
        let msg = err.to_string();
        let msg = msg.trim_end_matches('.');
        if !msg.is_empty() && !parts.iter().any(|p| p.contains(msg)) {
            parts.push(msg.to_string());
        }
        current = err.source();
    }
    if parts.is_empty() {
        format!("{e:?}")
    } else {
        parts.join(": ")
    }
}

fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
