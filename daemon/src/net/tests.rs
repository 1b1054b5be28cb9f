//! Tests for the libp2p layer. Loopback addresses only, mDNS off.

use std::time::Duration;

use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use tokio::sync::mpsc;

use super::*;

const WAIT: Duration = Duration::from_secs(10);

fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().unwrap()
}

async fn node() -> (NetHandle, mpsc::Receiver<NetEvent>) {
    start(NetConfig {
        listen: vec![loopback()],
        mdns: false,
    })
    .await
    .expect("start node")
}

async fn first_addr(handle: &NetHandle) -> Multiaddr {
    handle
        .listen_addrs()
        .await
        .into_iter()
        .next()
        .expect("a listen address")
}

/// Waits for the first event matching `pick`, skipping others.
async fn wait_for<T>(
    rx: &mut mpsc::Receiver<NetEvent>,
    mut pick: impl FnMut(NetEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = rx.recv().await.expect("event channel closed");
            if let Some(t) = pick(event) {
                return t;
            }
        }
    })
    .await
    .expect("timed out waiting for event")
}

async fn wait_connected(rx: &mut mpsc::Receiver<NetEvent>, who: PeerId) {
    wait_for(rx, |e| match e {
        NetEvent::Connected { peer } if peer == who => Some(()),
        _ => None,
    })
    .await
}

async fn wait_inbound(
    rx: &mut mpsc::Receiver<NetEvent>,
) -> (PeerId, StreamProtocol, libp2p::Stream) {
    wait_for(rx, |e| match e {
        NetEvent::InboundStream {
            peer,
            protocol,
            stream,
            ..
        } => Some((peer, protocol, stream)),
        _ => None,
    })
    .await
}

/// Starts two nodes and connects A to B; returns both with their receivers.
async fn connected_pair() -> (
    (NetHandle, mpsc::Receiver<NetEvent>),
    (NetHandle, mpsc::Receiver<NetEvent>),
) {
    let (a, mut a_rx) = node().await;
    let (b, mut b_rx) = node().await;
    let peer = a
        .connect(first_addr(&b).await, WAIT)
        .await
        .expect("connect");
    assert_eq!(peer, b.local_peer_id());
    wait_connected(&mut a_rx, b.local_peer_id()).await;
    wait_connected(&mut b_rx, a.local_peer_id()).await;
    ((a, a_rx), (b, b_rx))
}

#[tokio::test]
async fn listen_addrs_are_concrete_after_start() {
    let (a, _rx) = node().await;
    let addrs = a.listen_addrs().await;
    assert_eq!(addrs.len(), 1, "{addrs:?}");
    let mut parts = addrs[0].iter();
    assert_eq!(
        parts.next(),
        Some(Protocol::Ip4(std::net::Ipv4Addr::LOCALHOST))
    );
    match parts.next() {
        Some(Protocol::Tcp(port)) => assert_ne!(port, 0),
        other => panic!("unexpected {other:?}"),
    }
    a.shutdown().await;
}

#[tokio::test]
async fn each_start_gets_a_fresh_peer_id() {
    let (a, _a_rx) = node().await;
    let (b, _b_rx) = node().await;
    assert_ne!(a.local_peer_id(), b.local_peer_id());
    let a_id = a.local_peer_id();
    a.shutdown().await;
    let (c, _c_rx) = node().await;
    assert_ne!(c.local_peer_id(), a_id);
    assert_ne!(c.local_peer_id(), b.local_peer_id());
}

#[tokio::test]
async fn connect_both_sides_see_connected_and_peers() {
    let ((a, _a_rx), (b, _b_rx)) = connected_pair().await;

    let a_peers = a.peers().await;
    assert_eq!(a_peers.len(), 1, "{a_peers:?}");
    assert_eq!(a_peers[0].0, b.local_peer_id());
    assert!(!a_peers[0].1.is_empty());
    assert!(
        a_peers[0].1.contains(&first_addr(&b).await),
        "{a_peers:?} should contain B's dialed address"
    );

    let b_peers = b.peers().await;
    assert_eq!(b_peers.len(), 1, "{b_peers:?}");
    assert_eq!(b_peers[0].0, a.local_peer_id());
    assert!(!b_peers[0].1.is_empty());
}

#[tokio::test]
async fn sync_stream_roundtrip() {
    let ((a, _a_rx), (b, mut b_rx)) = connected_pair().await;

    let mut out = a
        .open_stream(b.local_peer_id(), SYNC_PROTOCOL)
        .await
        .expect("open stream");
    out.write_all(b"hello hearth").await.unwrap();
    out.flush().await.unwrap();

    let (peer, protocol, mut inbound) = wait_inbound(&mut b_rx).await;
    assert_eq!(peer, a.local_peer_id());
    assert_eq!(protocol, SYNC_PROTOCOL);
    let mut buf = [0u8; 12];
    inbound.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello hearth");

    // And back, then close: the reader sees EOF.
    inbound.write_all(b"ack").await.unwrap();
    inbound.close().await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(WAIT, out.read_to_end(&mut reply))
        .await
        .expect("read reply")
        .unwrap();
    assert_eq!(reply, b"ack");
}

#[tokio::test]
async fn join_stream_is_tagged_with_its_protocol() {
    let ((a, mut a_rx), (b, _b_rx)) = connected_pair().await;
    // B opens towards A this time.
    let mut out = b
        .open_stream(a.local_peer_id(), JOIN_PROTOCOL)
        .await
        .expect("open stream");
    out.write_all(b"j").await.unwrap();
    out.flush().await.unwrap();
    let (peer, protocol, mut inbound) = wait_inbound(&mut a_rx).await;
    assert_eq!(peer, b.local_peer_id());
    assert_eq!(protocol, JOIN_PROTOCOL);
    let mut buf = [0u8; 1];
    inbound.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"j");
}

#[tokio::test]
async fn unknown_protocol_is_refused() {
    let ((a, _a_rx), (b, _b_rx)) = connected_pair().await;
    let err = a
        .open_stream(b.local_peer_id(), StreamProtocol::new("/hearth/nope/1"))
        .await
        .expect_err("unsupported protocol must fail");
    assert!(err.to_string().contains("does not support"), "{err:#}");
}

#[tokio::test]
async fn open_stream_to_unknown_peer_fails() {
    let (a, _a_rx) = node().await;
    let stranger = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    let err = a
        .open_stream_with_timeout(stranger, SYNC_PROTOCOL, Duration::from_secs(5))
        .await
        .expect_err("no address known for that peer");
    let _ = err.to_string();
    let err = a
        .open_stream(a.local_peer_id(), SYNC_PROTOCOL)
        .await
        .expect_err("stream to ourselves");
    assert!(err.to_string().contains("ourselves"), "{err:#}");
}

#[tokio::test]
async fn unsupported_addresses_are_rejected_clearly() {
    let (a, _a_rx) = node().await;
    for bad in [
        "/dns4/x/udp/1/quic-v1",
        "/ip4/127.0.0.1/udp/1/quic-v1",
        "/dns4/example.org/tcp/4001",
        "/ip4/127.0.0.1/tcp/0",
        "/ip4/0.0.0.0/tcp/4001",
        "/ip4/127.0.0.1/tcp/4001/ws",
    ] {
        let addr: Multiaddr = bad.parse().unwrap();
        let err = a.dial(addr.clone()).await.expect_err(bad);
        assert!(err.to_string().contains("cannot dial"), "{bad}: {err:#}");
        let err = a
            .connect(addr, Duration::from_secs(2))
            .await
            .expect_err(bad);
        assert!(err.to_string().contains("cannot dial"), "{bad}: {err:#}");
    }
    // Our own peer id.
    let own = first_addr(&a).await.with(Protocol::P2p(a.local_peer_id()));
    let err = a.dial(own).await.expect_err("own peer id");
    assert!(err.to_string().contains("own peer id"), "{err:#}");
}

#[tokio::test]
async fn connect_to_closed_port_fails_fast() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (a, _a_rx) = node().await;
    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    a.dial(addr.clone()).await.expect("dial is issued");
    let started = std::time::Instant::now();
    let err = a
        .connect(addr, WAIT)
        .await
        .expect_err("nobody listens there");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "should fail fast: {err:#}"
    );
    assert!(err.to_string().contains("connection failed"), "{err:#}");
}

#[tokio::test]
async fn connect_with_peer_id_suffix() {
    let ((a, _a_rx), (b, _b_rx)) = connected_pair().await;
    let with_id = first_addr(&b).await.with(Protocol::P2p(b.local_peer_id()));
    // Already connected: returns immediately.
    assert_eq!(a.connect(with_id, WAIT).await.unwrap(), b.local_peer_id());
    // Wrong peer id in the address: refused after the handshake.
    let stranger = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    let wrong = first_addr(&b).await.with(Protocol::P2p(stranger));
    let err = a.connect(wrong, WAIT).await.expect_err("wrong peer id");
    assert!(err.to_string().contains("connection failed"), "{err:#}");
}

#[tokio::test]
async fn taken_port_is_a_clear_error() {
    let (a, _a_rx) = node().await;
    let taken = first_addr(&a).await;
    let err = start(NetConfig {
        listen: vec![taken.clone()],
        mdns: false,
    })
    .await
    .expect_err("port already in use");
    assert!(err.to_string().contains("cannot listen on"), "{err:#}");

    let err = start(NetConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
        mdns: false,
    })
    .await
    .expect_err("quic is not supported");
    assert!(err.to_string().contains("cannot listen on"), "{err:#}");
}

#[tokio::test]
async fn dial_only_node_without_listeners() {
    let (a, mut a_rx) = start(NetConfig {
        listen: vec![],
        mdns: false,
    })
    .await
    .unwrap();
    assert!(a.listen_addrs().await.is_empty());
    let (b, mut b_rx) = node().await;
    a.dial(first_addr(&b).await).await.unwrap();
    wait_connected(&mut a_rx, b.local_peer_id()).await;
    wait_connected(&mut b_rx, a.local_peer_id()).await;
}

#[tokio::test]
async fn shutdown_disconnects_and_stops() {
    let ((a, mut a_rx), (b, mut b_rx)) = connected_pair().await;
    let a_id = a.local_peer_id();
    a.shutdown().await;
    a.shutdown().await; // idempotent
    wait_for(&mut b_rx, |e| match e {
        NetEvent::Disconnected { peer } if peer == a_id => Some(()),
        _ => None,
    })
    .await;
    assert!(b.peers().await.is_empty());

    // A's event stream ends; its handle reports errors instead of hanging.
    tokio::time::timeout(WAIT, async { while a_rx.recv().await.is_some() {} })
        .await
        .expect("event channel ends after shutdown");
    assert!(a.listen_addrs().await.is_empty());
    assert!(a.peers().await.is_empty());
    assert!(a.dial(first_addr(&b).await).await.is_err());
    assert!(a.connect(first_addr(&b).await, WAIT).await.is_err());
    assert!(
        a.open_stream(b.local_peer_id(), SYNC_PROTOCOL)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn slow_consumer_does_not_block_commands() {
    // B never drains its events until the end; its handle must keep answering.
    let (b, mut b_rx) = node().await;
    let b_addr = first_addr(&b).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let (c, c_rx) = node().await;
        c.connect(b_addr.clone(), WAIT).await.unwrap();
        clients.push((c, c_rx));
    }
    tokio::time::timeout(WAIT, async {
        while b.peers().await.len() < 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("B sees all clients");
    let mut connected = 0;
    while connected < 5 {
        if let NetEvent::Connected { .. } = b_rx.recv().await.unwrap() {
            connected += 1;
        }
    }
}

/// A bare libp2p node (think: anyone on the network with a libp2p tool) that asks for
/// identify: it learns no agent, no protocol version, no protocol list and no address,
/// because identify is not spoken at all.
#[tokio::test]
async fn identify_tells_a_stranger_nothing() {
    use libp2p::swarm::SwarmEvent;
    let (a, mut a_rx) = node().await;
    let mut stranger = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|key| {
            libp2p::identify::Behaviour::new(libp2p::identify::Config::new(
                "/ipfs/0.1.0".to_string(),
                key.public(),
            ))
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let a_addr = first_addr(&a).await;
    stranger.dial(a_addr.clone()).unwrap();
    let mut received = Vec::new();
    let outcome = tokio::time::timeout(WAIT, async {
        loop {
            match stranger.select_next_some().await {
                SwarmEvent::Behaviour(libp2p::identify::Event::Received { info, .. }) => {
                    received.push(format!("{info:?}"));
                }
                SwarmEvent::Behaviour(libp2p::identify::Event::Error { error, .. }) => {
                    break error.to_string();
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the identify request is answered one way or another");
    wait_connected(&mut a_rx, *stranger.local_peer_id()).await;
    assert!(received.is_empty(), "identify answered: {received:?}");
    let told = outcome.to_lowercase();
    assert!(!told.contains("hearth"), "{outcome}");
    assert!(!told.contains("127.0.0.1"), "{outcome}");
}

#[tokio::test]
async fn a_dropped_stranger_is_disconnected() {
    let ((a, mut a_rx), (b, mut b_rx)) = connected_pair().await;
    a.drop_stranger(b.local_peer_id()).await;
    wait_for(&mut a_rx, |e| match e {
        NetEvent::Disconnected { peer } if peer == b.local_peer_id() => Some(()),
        _ => None,
    })
    .await;
    wait_for(&mut b_rx, |e| match e {
        NetEvent::Disconnected { peer } if peer == a.local_peer_id() => Some(()),
        _ => None,
    })
    .await;
    assert!(a.peers().await.is_empty());
}

#[test]
fn peer_ids_in_logs_are_short() {
    let peer = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    let full = peer.to_base58();
    let shown = short(&peer).to_string();
    assert!(shown.chars().count() <= 7, "{shown}");
    assert!(full.ends_with(shown.trim_start_matches('…')));
}

#[tokio::test]
async fn full_event_channel_loses_nothing_and_commands_still_work() {
    let ((a, _a_rx), (b, mut b_rx)) = connected_pair().await;
    // More inbound streams than the event channel holds, while B does not drain it.
    let n = EVENT_CHANNEL_CAPACITY + 44;
    let mut outbound = Vec::new();
    for _ in 0..n {
        let mut s = a
            .open_stream(b.local_peer_id(), SYNC_PROTOCOL)
            .await
            .expect("open stream");
        s.write_all(b"x").await.unwrap();
        s.flush().await.unwrap();
        outbound.push(s);
    }
    // B's swarm task keeps serving commands although its consumer is behind.
    tokio::time::timeout(WAIT, async {
        assert_eq!(b.peers().await.len(), 1);
        assert_eq!(b.listen_addrs().await.len(), 1);
    })
    .await
    .expect("commands answered while the event channel is full");
    let mut got = 0;
    while got < n {
        let (peer, _, mut stream) = wait_inbound(&mut b_rx).await;
        assert_eq!(peer, a.local_peer_id());
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        got += 1;
    }
}
