//! What a stranger gets from a member's daemon: a stranger here is a node built on libp2p
//! alone, the way anyone on the same Wi-Fi could write one. It learns nothing that names
//! hearth or lists an address, is dropped within seconds, and however many stalled streams
//! it opens (from another address, with as many peer ids as it likes), a member can still
//! join and sync.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use hearth_tests::{Daemon, PATIENCE};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, ping};

#[derive(NetworkBehaviour)]
struct StrangerBehaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    stream: libp2p_stream::Behaviour,
}

/// A TCP transport whose connections leave from one chosen local IP address (libp2p's own
/// binds dials to the unspecified address), so a test can play a host on another address.
struct FromIp(std::net::IpAddr);

impl libp2p::Transport for FromIp {
    type Output = libp2p::tcp::tokio::TcpStream;
    type Error = std::io::Error;
    type ListenerUpgrade = futures::future::Pending<Result<Self::Output, Self::Error>>;
    type Dial = futures::future::BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn listen_on(
        &mut self,
        _id: libp2p::core::transport::ListenerId,
        addr: Multiaddr,
    ) -> Result<(), libp2p::core::transport::TransportError<Self::Error>> {
        Err(libp2p::core::transport::TransportError::MultiaddrNotSupported(addr))
    }

    fn remove_listener(&mut self, _id: libp2p::core::transport::ListenerId) -> bool {
        false
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _opts: libp2p::core::transport::DialOpts,
    ) -> Result<Self::Dial, libp2p::core::transport::TransportError<Self::Error>> {
        use libp2p::multiaddr::Protocol;
        let mut parts = addr.iter();
        let (Some(Protocol::Ip4(ip)), Some(Protocol::Tcp(port))) = (parts.next(), parts.next())
        else {
            return Err(libp2p::core::transport::TransportError::MultiaddrNotSupported(addr));
        };
        let source = std::net::SocketAddr::new(self.0, 0);
        Ok(Box::pin(async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(source)?;
            let stream = socket.connect((ip, port).into()).await?;
            stream.set_nodelay(true)?;
            Ok(libp2p::tcp::tokio::TcpStream(stream))
        }))
    }

    fn poll(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<libp2p::core::transport::TransportEvent<Self::ListenerUpgrade, Self::Error>>
    {
        std::task::Poll::Pending
    }
}

/// A bare libp2p node whose connections come from `ip`.
async fn stranger(ip: &str) -> Swarm<StrangerBehaviour> {
    use libp2p::Transport as _;
    let ip: std::net::IpAddr = ip.parse().unwrap();
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                FromIp(ip)
                    .upgrade(libp2p::core::upgrade::Version::V1)
                    .authenticate(libp2p::noise::Config::new(key)?)
                    .multiplex(libp2p::yamux::Config::default()),
            )
        })
        .unwrap()
        .with_behaviour(|key| StrangerBehaviour {
            // The version string hearth daemons once sent, as a stranger spoofing it would:
            // a string proves nothing.
            identify: identify::Behaviour::new(identify::Config::new(
                "/hearth/id/1".into(),
                key.public(),
            )),
            ping: ping::Behaviour::default(),
            stream: libp2p_stream::Behaviour::new(),
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_stranger_learns_nothing_and_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start("A", &tmp.path().join("a"));
    a.create_group("Circle");
    let addr: Multiaddr = a.addr().parse().unwrap();
    let a_status = a.json(&["status"]);
    let (told, connected_for) = runtime().block_on(async {
        let mut s = stranger("127.0.0.1").await;
        s.dial(addr).unwrap();
        let mut told = Vec::new();
        let mut since = None;
        let deadline = tokio::time::sleep(PATIENCE);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                event = s.select_next_some() => match event {
                    SwarmEvent::ConnectionEstablished { .. } => since = Some(Instant::now()),
                    SwarmEvent::Behaviour(StrangerBehaviourEvent::Identify(
                        identify::Event::Received { info, .. },
                    )) => told.push(format!("{info:?}")),
                    SwarmEvent::ConnectionClosed { num_established: 0, .. } => {
                        break (told, since.map(|t| t.elapsed()));
                    }
                    _ => {}
                },
                () = &mut deadline => break (told, None),
            }
        }
    });
    assert!(told.is_empty(), "identify told a stranger: {told:?}");
    let connected_for = connected_for.unwrap_or_else(|| {
        panic!(
            "the stranger was still connected after {PATIENCE:?}; A's log:\n{}",
            a.log()
        )
    });
    // The grace is 10 s; anything near a minute would be a stranger kept.
    assert!(
        connected_for < Duration::from_secs(30),
        "the stranger stayed {connected_for:?}"
    );
    // And it was not for lack of an address: A listens where it was dialled.
    assert!(a_status["listen_addrs"].to_string().contains("127.0.0.1"));
}

/// One stranger identity: keeps a connection to `target` and, on it, `sync` stalled sync
/// streams and `joins` stalled join streams, reopening whatever the daemon closes. Never
/// returns.
async fn stall(ip: String, target: Multiaddr, sync: usize, joins: usize) {
    use futures::AsyncReadExt as _;
    let mut s = stranger(&ip).await;
    let mut control = s.behaviour().stream.new_control();
    let _ = s.dial(target.clone());
    let mut peer: Option<PeerId> = None;
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let (mut open_sync, mut open_joins) = (0, 0);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            event = s.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => peer = Some(peer_id),
                SwarmEvent::ConnectionClosed { num_established: 0, .. }
                | SwarmEvent::OutgoingConnectionError { .. } => {
                    peer = None;
                    let _ = s.dial(target.clone());
                }
                _ => {}
            },
            Some(was_sync) = closed.recv() => {
                if was_sync { open_sync -= 1 } else { open_joins -= 1 }
            }
            _ = tick.tick() => {
                let Some(peer) = peer else { continue };
                while open_sync < sync || open_joins < joins {
                    let is_sync = open_sync < sync;
                    let protocol = if is_sync { "/sync/1" } else { "/join/2" };
                    let opening = control.open_stream(peer, StreamProtocol::new(protocol));
                    let Ok(Ok(mut stream)) =
                        tokio::time::timeout(Duration::from_millis(500), opening).await
                    else {
                        break;
                    };
                    if is_sync { open_sync += 1 } else { open_joins += 1 }
                    let closed_tx = closed_tx.clone();
                    // Never writes; notices when the daemon gives up on the stream.
                    tokio::spawn(async move {
                        let mut buf = [0u8; 256];
                        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                        let _ = closed_tx.send(is_sync);
                    });
                }
            }
        }
    }
}

#[test]
fn stalled_streams_from_strangers_do_not_keep_members_out() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start("A", &tmp.path().join("a"));
    let b = Daemon::start("B", &tmp.path().join("b"));
    let group = a.create_group("Circle");
    let addr: Multiaddr = a.addr().parse().unwrap();
    // Many identities from one other address, each holding stalled sync and join
    // streams: more than the daemon serves at once in all.
    let rt = runtime();
    for _ in 0..40 {
        rt.spawn(stall("127.0.0.2".into(), addr.clone(), 2, 1));
    }
    std::thread::sleep(Duration::from_secs(3));
    let token = a.json(&["invite", &group])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    if let Err(e) = b.try_json(&["join", &token]) {
        panic!("B could not join: {e}\nA's log:\n{}", a.log());
    }
    a.json(&["agreement", "add", &group, "members still get in"]);
    b.wait_for_agreements(&group, &["members still get in"]);
    b.json(&["agreement", "add", &group, "and still sync"]);
    a.wait_for_agreements(&group, &["and still sync"]);
    rt.shutdown_background();
}

/// A stranger with more addresses than the daemon has join slots, each address holding a
/// silent join stream and reopening it whenever it is closed: a member's join still gets
/// through, because a silent stream gives its slot up to a newcomer.
#[test]
fn silent_join_streams_from_many_addresses_do_not_keep_a_joiner_out() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start("A", &tmp.path().join("a"));
    let b = Daemon::start("B", &tmp.path().join("b"));
    let group = a.create_group("Circle");
    let addr: Multiaddr = a.addr().parse().unwrap();
    let rt = runtime();
    for i in 2..14 {
        rt.spawn(stall(format!("127.0.0.{i}"), addr.clone(), 0, 1));
    }
    std::thread::sleep(Duration::from_secs(3));
    let token = a.json(&["invite", &group])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    if let Err(e) = b.try_json(&["join", &token]) {
        panic!("B could not join: {e}\nA's log:\n{}", a.log());
    }
    assert_eq!(b.json(&["group", "list"]).as_array().unwrap().len(), 1);
    rt.shutdown_background();
}
