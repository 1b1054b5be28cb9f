//! Joining by a spoken code, in the same room: the joiner's daemon asks the peers it
//! meets on the local network (mDNS), one at a time, to run the PAKE
//! (`hearth_protocol::code`) until one holds the code; the secret the PAKE agrees then
//! serves as the invite secret of an ordinary join request on the same stream.
//!
//! The facilitator's daemon answers every hello alike, whether or not it holds a code on
//! that channel (a decoy password where it holds none), rations exchanges per peer and per
//! network origin, and uses a code up only when a confirmation is checked against it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use hearth_protocol::api::{self, CodeState};
use hearth_protocol::code::{CodeError, CodeFacilitator, CodeHello, CodeJoiner, SpokenCode};
use hearth_protocol::identity::MemberKeys;
use hearth_protocol::ids::GroupId;
use hearth_protocol::invite::JoinRequest;
use hearth_protocol::wire::{JoinMessage, MAX_FRAME_LEN, MAX_JOIN_FRAME_LEN};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use rand_core::OsRng;

use crate::codes::{Checked, Origin};
use crate::frame::{read_msg, write_msg};
use crate::join::{JOIN_TIMEOUT, answer_code_request, settle_in};
use crate::net::{JOIN_PROTOCOL, NetHandle};
use crate::node::{Node, NodeError};
use crate::peering::Peering;

/// How long the joiner looks for the facilitator's daemon on the local network.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(20);
/// How often it looks at the peers it has met.
const DISCOVERY_POLL: Duration = Duration::from_millis(300);
/// How long it waits before asking again a peer that turned its hello away unanswered
/// (rationed) or could not be reached.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Longest one peer may take over one step of the exchange.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// The network origin of a peer's connection, from its remote address.
pub(crate) fn origin(addrs: &[Multiaddr]) -> Option<Origin> {
    addrs.iter().find_map(|a| {
        a.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(Origin::of(IpAddr::V4(ip))),
            Protocol::Ip6(ip) => Some(Origin::of(IpAddr::V6(ip))),
            _ => None,
        })
    })
}

/// Whether an address is on a local network (loopback, private, link-local or unique
/// local): a spoken code is for the room, so only such peers are asked.
pub(crate) fn is_local(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback() || ip.is_private() || ip.is_link_local(),
        Protocol::Ip6(ip) => {
            ip.is_loopback()
                || ip.is_unicast_link_local()
                || ip.is_unique_local()
                || ip
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_private() || v4.is_link_local())
        }
        _ => false,
    })
}

/// The facilitator's side, after a `CodeHello` arrived on a join stream.
///
/// Every hello is answered alike: a `CodeReply` (with the code's words if this daemon
/// holds a live code on that channel, with random words otherwise), then, to the joiner's
/// confirmation, `CodeAccepted` only if it matched a live code and `Reject` otherwise.
/// Only a checked wrong confirmation burns a code; the refusal goes out before the burn
/// is written, so the answer takes the same time either way.
pub async fn serve(
    node: Arc<Node>,
    net: NetHandle,
    peer: PeerId,
    mut stream: libp2p::Stream,
    hello: CodeHello,
) -> anyhow::Result<()> {
    let channel = hello.channel;
    let addrs = net
        .peers()
        .await
        .into_iter()
        .find(|(p, _)| *p == peer)
        .map(|(_, a)| a)
        .unwrap_or_default();
    if !node.code_attempt_allowed(&peer.to_bytes(), origin(&addrs)) {
        // Turned away before any work, the same on every channel.
        write_msg(&mut stream, &JoinMessage::Reject).await?;
        return Err(anyhow!(
            "a code attempt over the rate limit was turned away"
        ));
    }
    let live = node.code_at_hello(channel);
    let generation = live.as_ref().map(|l| l.generation);
    let responded = match &live {
        Some(l) => CodeFacilitator::respond(&l.code, &hello, &mut OsRng),
        None => CodeFacilitator::respond_decoy(&hello, &mut OsRng),
    };
    drop(live);
    let (facilitator, reply) = match responded {
        Ok(r) => r,
        Err(e) => {
            // Malformed: no guess was tested, nothing changes.
            write_msg(&mut stream, &JoinMessage::Reject).await?;
            return Err(anyhow!("a malformed code hello: {e}"));
        }
    };
    write_msg(&mut stream, &JoinMessage::CodeReply(reply)).await?;
    let confirm = match tokio::time::timeout(
        STEP_TIMEOUT,
        read_msg::<_, JoinMessage>(&mut stream, MAX_JOIN_FRAME_LEN),
    )
    .await
    {
        Ok(Ok(Some(JoinMessage::CodeConfirm(c)))) => c,
        // No confirmation: no guess was tested, so the code (if any) stays as it was.
        _ => return Ok(()),
    };
    // The check runs the same way on every channel; what it came to is recorded in memory.
    let finished = facilitator.finish(&confirm);
    let checked = node.code_checked(channel, generation, finished.is_ok());
    let (secret, accepted, group) = match (checked, finished) {
        (Checked::Matched(group), Ok((secret, accepted))) => (secret, accepted, group),
        (checked, _) => {
            write_msg(&mut stream, &JoinMessage::Reject).await?;
            futures::AsyncWriteExt::close(&mut stream).await.ok();
            if checked == Checked::Burnt {
                tracing::info!("a spoken code was tried with the wrong words; it is burnt");
                let worker = node.clone();
                tokio::task::spawn_blocking(move || worker.drop_code_record(channel))
                    .await
                    .context("code worker failed")??;
            } else {
                tracing::debug!(
                    peer = %crate::net::short(&peer),
                    "refused a code attempt that matched no open code"
                );
            }
            return Ok(());
        }
    };
    let worker = node.clone();
    tokio::task::spawn_blocking(move || worker.drop_code_record(channel))
        .await
        .context("code worker failed")??;
    write_msg(&mut stream, &JoinMessage::CodeAccepted(accepted)).await?;
    let request = match tokio::time::timeout(
        JOIN_TIMEOUT,
        read_msg::<_, JoinMessage>(&mut stream, MAX_JOIN_FRAME_LEN),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .flatten()
    {
        Some(JoinMessage::Request(r)) => r,
        _ => {
            node.set_code_state(channel, CodeState::Failed, None);
            return Err(anyhow!("peer sent no join request after the code exchange"));
        }
    };
    let secret = zeroize::Zeroizing::new(*secret.invite_secret());
    match answer_code_request(node.clone(), net, peer, stream, request, group, secret).await {
        Ok(Some(joiner)) => {
            let joined = (joiner.identity.member_id(), joiner.name);
            node.set_code_state(channel, CodeState::Joined, Some(joined));
            Ok(())
        }
        Ok(None) => {
            node.set_code_state(channel, CodeState::Failed, None);
            Ok(())
        }
        Err(e) => {
            node.set_code_state(channel, CodeState::Failed, None);
            Err(e)
        }
    }
}

/// What one attempt with one peer came to.
enum Attempt {
    /// The peer's daemon did not accept the code: it holds no such code, or the words
    /// were wrong (the two look the same, by design).
    NoMatch,
    /// The peer turned the hello away unanswered (rationed), or could not be reached:
    /// worth asking again a little later.
    Later,
    Joined(GroupId),
}

/// The joiner's side: asks the peers on the local network, one at a time, until one
/// accepts the code.
pub async fn join(
    node: Arc<Node>,
    net: NetHandle,
    peering: Peering,
    code: &SpokenCode,
    name: &str,
) -> Result<GroupId, NodeError> {
    // Daemons met earlier and dropped for sharing no group are among those to ask.
    net.reach_discovered().await;
    // Peers asked, and when they may be asked again (never, once the code did not match).
    let mut asked: BTreeMap<PeerId, Option<tokio::time::Instant>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + DISCOVERY_TIMEOUT;
    let mut no_match = 0usize;
    loop {
        for (peer, addrs) in net.peers().await {
            let now = tokio::time::Instant::now();
            match asked.get(&peer) {
                Some(None) => continue,
                Some(Some(again)) if *again > now => continue,
                _ => {}
            }
            // A spoken code is for the room: ask only peers on a local network.
            if !addrs.iter().any(is_local) {
                continue;
            }
            match attempt(&node, &net, &peering, peer, code, name).await {
                Ok(Attempt::Joined(group)) => return Ok(group),
                Ok(Attempt::NoMatch) => {
                    no_match += 1;
                    asked.insert(peer, None);
                }
                Ok(Attempt::Later) => {
                    asked.insert(peer, Some(now + RETRY_AFTER));
                }
                Err(e @ (NodeError::Forbidden(_) | NodeError::Conflict(_))) => return Err(e),
                Err(e) => {
                    tracing::debug!(peer = %crate::net::short(&peer), "code attempt failed: {e}");
                    asked.insert(peer, Some(now + RETRY_AFTER));
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            let message = if no_match > 0 {
                format!(
                    "the code did not match on any device nearby ({no_match} asked). Check                      each word with the facilitator; if the words were right, the code may be                      used up or expired (a wrong attempt uses it up), so ask them for a new one"
                )
            } else {
                "no device on this network answered; check that the facilitator's hearthd                  is running on the same network with mDNS on, then try again"
                    .to_owned()
            };
            return Err(NodeError::Forbidden(message));
        }
        tokio::time::sleep(DISCOVERY_POLL).await;
    }
}

async fn attempt(
    node: &Arc<Node>,
    net: &NetHandle,
    peering: &Peering,
    peer: PeerId,
    code: &SpokenCode,
    name: &str,
) -> Result<Attempt, NodeError> {
    // An exchange under way: the peer is not dropped as a stranger meanwhile.
    let _exchange = peering.exchange(peer);
    let unreachable = |e: anyhow::Error| NodeError::Unreachable(format!("{e:#}"));
    let step = |what: &'static str| {
        move |_| NodeError::Unreachable(format!("the other daemon did not answer in time ({what})"))
    };
    let mut stream = net
        .open_stream(peer, JOIN_PROTOCOL)
        .await
        .map_err(unreachable)?;
    let (joiner, hello) = CodeJoiner::start(code, &mut OsRng);
    write_msg(&mut stream, &JoinMessage::CodeHello(hello))
        .await
        .map_err(unreachable)?;
    let reply = match tokio::time::timeout(
        STEP_TIMEOUT,
        read_msg::<_, JoinMessage>(&mut stream, MAX_JOIN_FRAME_LEN),
    )
    .await
    .map_err(step("code exchange"))?
    .map_err(unreachable)?
    {
        Some(JoinMessage::CodeReply(r)) => r,
        // Turned away before the exchange (rationed, or busy): no guess was tested.
        _ => return Ok(Attempt::Later),
    };
    let (joiner, confirm) = match joiner.confirm(&reply) {
        Ok(done) => done,
        Err(e) => {
            return Err(NodeError::Unreachable(format!(
                "the code exchange failed: {e}"
            )));
        }
    };
    write_msg(&mut stream, &JoinMessage::CodeConfirm(confirm))
        .await
        .map_err(unreachable)?;
    let accepted = match tokio::time::timeout(
        STEP_TIMEOUT,
        read_msg::<_, JoinMessage>(&mut stream, MAX_JOIN_FRAME_LEN),
    )
    .await
    .map_err(step("code check"))?
    .map_err(unreachable)?
    {
        Some(JoinMessage::CodeAccepted(a)) => a,
        _ => return Ok(Attempt::NoMatch),
    };
    let secret = match joiner.finish(&accepted) {
        Ok(secret) => secret,
        Err(CodeError::WrongCode) => {
            // It claimed to accept the code without proving it knew it: not the facilitator.
            tracing::warn!("a peer accepted the code without knowing it");
            return Ok(Attempt::NoMatch);
        }
        Err(e) => {
            return Err(NodeError::Unreachable(format!(
                "the code exchange failed: {e}"
            )));
        }
    };
    let local = net.local_peer_id().to_bytes();
    let remote = peer.to_bytes();
    // A membership identity of its own, so this group cannot be linked to others.
    let keys = MemberKeys::generate(&mut OsRng);
    let request = JoinRequest::with_secret(
        &keys,
        secret.invite_secret(),
        name,
        &local,
        &remote,
        &mut OsRng,
    );
    write_msg(&mut stream, &JoinMessage::Request(request))
        .await
        .map_err(unreachable)?;
    let accept = match tokio::time::timeout(
        JOIN_TIMEOUT,
        read_msg::<_, JoinMessage>(&mut stream, MAX_FRAME_LEN),
    )
    .await
    .map_err(step("admission"))?
    .map_err(unreachable)?
    {
        Some(JoinMessage::Accept(a)) => a,
        Some(JoinMessage::Reject) => {
            return Err(NodeError::Forbidden(
                "the facilitator's daemon accepted the code but refused the join; ask them \
                 for a new code"
                    .into(),
            ));
        }
        _ => {
            return Err(NodeError::Unreachable(
                "the facilitator's daemon closed the connection without answering".into(),
            ));
        }
    };
    let joining = crate::join::accepted(&accept, keys, |a, k| {
        a.verify_code(k, secret.invite_secret(), name, &local, &remote)
    })?;
    if node.sees_self_in(&joining.welcome.info.group_id) {
        return Err(NodeError::Conflict(
            "this device is already a member of that group".into(),
        ));
    }
    settle_in(node.clone(), net.clone(), peering.clone(), peer, joining)
        .await
        .map(Attempt::Joined)
}

/// Waits until the code on `channel` is used or expires, or until another code attempt
/// is refused while it is open (`other_attempts` grows), at most `wait`.
pub async fn wait_for(
    node: &Node,
    group: &GroupId,
    channel: u16,
    wait: Duration,
) -> Result<api::CodeStatus, NodeError> {
    let mut changed = node.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    let first = node.code_status(group, channel)?.other_attempts;
    loop {
        let status = node.code_status(group, channel)?;
        if status.state != CodeState::Open || status.other_attempts != first {
            return Ok(status);
        }
        // Expiry changes nothing in the store, so look again at least every second.
        let tick = tokio::time::sleep(Duration::from_secs(1));
        tokio::select! {
            _ = changed.changed() => {}
            () = tick => {}
            () = tokio::time::sleep_until(deadline) => return Ok(status),
        }
    }
}
