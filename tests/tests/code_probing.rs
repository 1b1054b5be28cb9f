//! A stranger on the network sweeping spoken-code channels against a facilitator's
//! daemon: every channel answers alike, a hello alone burns nothing, the sweep is
//! rationed, one wrong guess does not burn a code, and the real joiner still joins with the
//! facilitator's code afterwards (once the facilitator approves).
//!
//! The stranger is an in-process libp2p node (hearthd's own network layer) speaking the
//! join protocol by hand, on 127.0.0.2, so the facilitator sees it at another address than
//! the real joiner (127.0.0.1).

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use hearth_protocol::code::{CodeJoiner, MAX_CHANNEL, SpokenCode};
use hearth_protocol::wire::{self, JoinMessage};
use hearth_tests::{Daemon, wait_for};
use hearthd::net::{self, JOIN_PROTOCOL, NetConfig, NetHandle};
use libp2p::PeerId;
use rand_core::{OsRng, RngCore};

/// What the facilitator's daemon answered one probe with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Turned away before any exchange (rationed).
    TurnedAway,
    /// A reply of this many bytes, then (if the stranger confirmed) this answer.
    Replied {
        reply_len: usize,
        then: Option<String>,
    },
}

async fn read(stream: &mut libp2p::Stream) -> Option<(JoinMessage, usize)> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).await.ok()?;
    let len = wire::frame_len(prefix).ok()?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.ok()?;
    Some((wire::decode(&body).ok()?, len))
}

async fn send(stream: &mut libp2p::Stream, msg: &JoinMessage) -> bool {
    stream.write_all(&wire::encode_frame(msg)).await.is_ok() && stream.flush().await.is_ok()
}

fn kind(msg: &JoinMessage) -> String {
    format!("{msg:?}")
        .split(['(', ' '])
        .next()
        .unwrap()
        .to_owned()
}

/// One probe of `channel` with random words; `confirm` says whether to send the
/// confirmation (testing the random guess) or to stop after the reply. A stream the
/// daemon drops unanswered (it serves one join stream per peer at a time, and the last
/// one may still be finishing) is opened again.
async fn probe(net: &NetHandle, f: PeerId, channel: u16, confirm: bool) -> Seen {
    for _ in 0..50 {
        if let Some(seen) = probe_once(net, f, channel, confirm).await {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("F never answered a probe of channel {channel}");
}

async fn probe_once(net: &NetHandle, f: PeerId, channel: u16, confirm: bool) -> Option<Seen> {
    let mut words = [0u8; 3];
    OsRng.fill_bytes(&mut words);
    let code = SpokenCode::from_parts(channel, words).unwrap();
    let mut stream = match net.open_stream(f, JOIN_PROTOCOL).await {
        Ok(s) => s,
        Err(e) => panic!("opening a join stream to F failed: {e:#}"),
    };
    let (joiner, hello) = CodeJoiner::start(&code, &mut OsRng);
    if !send(&mut stream, &JoinMessage::CodeHello(hello)).await {
        return None;
    }
    let reply = match read(&mut stream).await? {
        (JoinMessage::CodeReply(r), len) => (r, len),
        (JoinMessage::Reject, _) => return Some(Seen::TurnedAway),
        (other, _) => panic!("F answered a hello with {other:?}"),
    };
    let then = if confirm {
        let (_, c) = joiner
            .confirm(&reply.0, &net.local_peer_id().to_bytes(), &f.to_bytes())
            .unwrap();
        assert!(send(&mut stream, &JoinMessage::CodeConfirm(c)).await);
        let answer = read(&mut stream)
            .await
            .map_or("closed".into(), |(m, _)| kind(&m));
        // Wait for F to end the stream, so the next probe is not turned away as a second
        // stream of the same peer.
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
        Some(answer)
    } else {
        None
    };
    stream.close().await.ok();
    Some(Seen::Replied {
        reply_len: reply.1,
        then,
    })
}

#[test]
fn a_stranger_sweeping_channels_learns_nothing_and_burns_nothing_it_did_not_guess() {
    let tmp = tempfile::tempdir().unwrap();
    let f = Daemon::start("F", &tmp.path().join("f"));
    let log = scopeguard_log(&f);
    let j = Daemon::start("J", &tmp.path().join("j"));
    let group = f.json(&["group", "create", "Circle", "--my-name", "Fran"])["group_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let code = |ttl: &str| f.json(&["invite", &group, "--code", "--no-wait", "--ttl", ttl]);
    let kept = code("10m");
    let sacrificed = code("10m");
    let kept_channel = kept["channel"].as_u64().unwrap() as u16;
    let sacrificed_channel = sacrificed["channel"].as_u64().unwrap() as u16;

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let seen: Vec<(u16, Seen)> = runtime.block_on(async {
        let (stranger, mut events) = net::start(NetConfig {
            listen: vec!["/ip4/127.0.0.2/tcp/0".parse().unwrap()],
            mdns: false,
        })
        .await
        .unwrap();
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        let addr = stranger.listen_addrs().await[0].to_string();
        // The facilitator's daemon meets the stranger (as mDNS would make it).
        f.json(&["peer", "add", &addr]);
        let f_peer = loop {
            if let Some((p, _)) = stranger.peers().await.first() {
                break *p;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut seen = Vec::new();
        // The live code's channel, asked without a confirmation: a sweep that tests no
        // guess. Then the other live code with a (wrong) guess, then every other channel.
        seen.push((
            kept_channel,
            probe(&stranger, f_peer, kept_channel, false).await,
        ));
        seen.push((
            sacrificed_channel,
            probe(&stranger, f_peer, sacrificed_channel, true).await,
        ));
        for channel in (1..=MAX_CHANNEL).filter(|c| ![kept_channel, sacrificed_channel].contains(c))
        {
            seen.push((channel, probe(&stranger, f_peer, channel, true).await));
        }
        seen
    });

    // Every answered hello got a reply of the same size, and every tested guess the same
    // refusal, whether a code was open on that channel or not.
    let replied: Vec<&(u16, Seen)> = seen
        .iter()
        .filter(|(_, s)| matches!(s, Seen::Replied { .. }))
        .collect();
    assert!(replied.len() >= 3, "{seen:?}");
    for (channel, s) in &replied {
        let Seen::Replied { reply_len, then } = s else {
            unreachable!()
        };
        assert_eq!(*reply_len, replied_len(&replied), "channel {channel}");
        if *channel != kept_channel {
            assert_eq!(then.as_deref(), Some("Reject"), "channel {channel}");
        }
    }
    // The sweep is rationed: most channels were turned away, all alike, and it could not
    // get through 999 channels in the time it took.
    let turned_away = seen.iter().filter(|(_, s)| *s == Seen::TurnedAway).count();
    assert!(turned_away > 900, "only {turned_away} of 999 turned away");
    assert_eq!(replied.len() + turned_away, usize::from(MAX_CHANNEL));

    // The code whose channel was only named is still open; the facilitator hears of the
    // attempts with other numbers. The code that met one wrong guess still works (one
    // stranger cannot burn a code), and the facilitator hears of that guess too.
    let kept_status = api_get(&f, &format!("/v1/groups/{group}/codes/{kept_channel}"));
    assert_eq!(kept_status["state"], "open", "{kept_status}");
    let guesses = replied.len() as u64 - 2; // the decoy channels the stranger guessed on
    assert_eq!(kept_status["other_attempts"], guesses, "{kept_status}");
    let guessed = api_get(
        &f,
        &format!("/v1/groups/{group}/codes/{sacrificed_channel}"),
    );
    assert_eq!(guessed["state"], "open", "{guessed}");
    assert_eq!(guessed["wrong_attempts"], 1, "{guessed}");
    let listed = f.json(&["invite", "list", &group]);
    let open: Vec<&str> = listed["invites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    let kept_id = kept_channel.to_string();
    let sacrificed_id = sacrificed_channel.to_string();
    assert!(open.contains(&kept_id.as_str()), "{listed}");
    assert!(open.contains(&sacrificed_id.as_str()), "{listed}");

    // The real joiner, at another address, joins with the code the sweep named.
    j.json(&["peer", "add", &f.addr()]);
    wait_for("J to meet F", || {
        (!j.json(&["peer", "list"]).as_array()?.is_empty()).then_some(())
    });
    // F's daemon holds the join until the facilitator approves it.
    let joined = f
        .approve_code_join(&j, &group, kept["code"].as_str().unwrap(), "Jo")
        .unwrap();
    assert_eq!(joined["group_id"], group.as_str());
    assert_eq!(f.member_names(&group), ["Fran", "Jo"]);
    drop(log);
}

fn replied_len(replied: &[&(u16, Seen)]) -> usize {
    match &replied[0].1 {
        Seen::Replied { reply_len, .. } => *reply_len,
        Seen::TurnedAway => unreachable!(),
    }
}

/// `GET path` on a daemon's API socket (what a thin client other than the CLI would do).
fn api_get(d: &Daemon, path: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut socket = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    write!(
        socket,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Prints F's log if the test fails, to explain why.
fn scopeguard_log(f: &Daemon) -> impl Drop + '_ {
    struct Guard<'a>(&'a Daemon);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!("F's log:\n{}", self.0.log());
            }
        }
    }
    Guard(f)
}
