//! Joining by a spoken code, in the same room: the joiner's daemon asks every peer it
//! meets on the local network (mDNS) at once to run the PAKE (`hearth_protocol::code`),
//! and goes on with the one that holds the code; the secret the PAKE agrees then serves
//! as the invite secret of an ordinary join request on the same stream, which the
//! facilitator's daemon holds until the facilitator approves it.
//!
//! The facilitator's daemon answers every hello alike, whether or not it holds a code on
//! that channel (a decoy password where it holds none), rations exchanges per peer and per
//! network origin, and tests a guess against a code only when a confirmation is checked
//! (see `codes` for how many wrong guesses a code survives).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hearth_protocol::api::{self, CodeState};
use hearth_protocol::code::{
    CodeError, CodeFacilitator, CodeHello, CodeJoiner, CodeSecret, SpokenCode,
};
use hearth_protocol::identity::MemberKeys;
use hearth_protocol::ids::GroupId;
use hearth_protocol::invite::JoinRequest;
use hearth_protocol::wire::{JoinMessage, MAX_FRAME_LEN, MAX_JOIN_FRAME_LEN};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use rand_core::OsRng;
use tokio::time::Instant;

use crate::codes::{Checked, Guess, Origin, Source};
use crate::frame::{read_msg, write_msg};
use crate::join::{JOIN_TIMEOUT, answer_code_request, settle_in};
use crate::net::{JOIN_PROTOCOL, NetHandle};
use crate::node::{Node, NodeError};
use crate::peering::Peering;

/// How long the joiner looks for the facilitator's daemon on the local network, in all.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(20);
/// How often it looks for peers it has not asked yet.
const DISCOVERY_POLL: Duration = Duration::from_millis(300);
/// How long it waits before asking again a peer that turned its hello away unanswered
/// (rationed) or could not be reached (no guess was made with it).
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Longest one peer may take over one step of the exchange.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the facilitator's daemon holds a join for approval.
pub const APPROVAL_TIMEOUT: Duration = Duration::from_secs(api::CODE_APPROVAL_SECS);

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

/// The facilitator's side, after a `CodeHello` arrived on a join stream from `peer` at
/// `ip`. `settled` is called once the hello has passed the rate limit (see `join::serve`):
/// from then on a flood of other streams cannot take the joiner's slot mid-exchange.
///
/// Every hello is answered alike: a `CodeReply` (with the code's words if this daemon
/// holds a live code on that channel, with random words otherwise), then, to the joiner's
/// confirmation, `CodeAccepted` only if it matched a live code and `Reject` otherwise.
/// Only a checked wrong confirmation counts against a code; the refusal goes out before
/// anything is written, and a burnt code's record is deleted by a detached task, so the
/// stream ends at the same point whatever the check came to. A matched code's join is
/// held until the facilitator approves it.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    node: Arc<Node>,
    net: NetHandle,
    peering: Peering,
    peer: PeerId,
    ip: Option<IpAddr>,
    mut stream: libp2p::Stream,
    hello: CodeHello,
    settled: impl FnOnce() + Send,
) -> anyhow::Result<()> {
    let channel = hello.channel;
    let addrs = net
        .peers()
        .await
        .into_iter()
        .find(|(p, _)| *p == peer)
        .map(|(_, a)| a)
        .unwrap_or_default();
    let origin = ip.map(Origin::of).or_else(|| origin(&addrs));
    if !node.code_attempt_allowed(&peer.to_bytes(), origin) {
        // Turned away before any work, the same on every channel.
        write_msg(&mut stream, &JoinMessage::Reject).await?;
        return Err(anyhow!(
            "a code attempt over the rate limit was turned away"
        ));
    }
    settled();
    let remote = peer.to_bytes();
    let local = net.local_peer_id().to_bytes();
    let live = node.code_at_hello(channel);
    let generation = live.as_ref().map(|l| l.generation);
    let responded = match &live {
        Some(l) => CodeFacilitator::respond(&l.code, &hello, &remote, &local, &mut OsRng),
        None => CodeFacilitator::respond_decoy(&hello, &remote, &local, &mut OsRng),
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
    let guess = match &finished {
        Ok(_) => Guess::Right,
        Err(CodeError::Relayed) => Guess::Relayed,
        Err(_) => Guess::Wrong,
    };
    let source = Source::of(&remote, ip, |ip| {
        crate::net::limits_for(ip) == crate::net::LOOPBACK_LIMITS
    });
    let checked = node.code_checked(channel, generation, source, guess);
    let (secret, accepted, group, generation) = match (checked, finished, generation) {
        (Checked::Matched(group), Ok((secret, accepted)), Some(generation)) => {
            (secret, accepted, group, generation)
        }
        (checked, _, _) => {
            write_msg(&mut stream, &JoinMessage::Reject).await?;
            futures::AsyncWriteExt::close(&mut stream).await.ok();
            // Debug only, like every line here: the facilitator's `invite --code` reports
            // attempts, and a log at the default level should not date them.
            match checked {
                Checked::Burnt => {
                    tracing::debug!(
                        "a spoken code was tried with wrong words too often; it is burnt"
                    );
                    // Detached: this stream ends now, exactly as after a decoy.
                    let worker = node.clone();
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = worker.drop_code_record(channel) {
                            tracing::warn!("deleting a burnt code failed: {e}");
                        }
                    });
                }
                Checked::Wrong => {
                    tracing::debug!("a spoken code was tried with the wrong words; it still works");
                }
                _ if guess == Guess::Relayed => {
                    tracing::debug!(
                        "refused a spoken-code exchange relayed from another connection"
                    );
                }
                _ => tracing::debug!(
                    peer = %crate::net::short(&peer),
                    "refused a code attempt that matched no open code"
                ),
            }
            return Ok(());
        }
    };
    // However this task ends from here on, the join does not stay "under way".
    let _unfinished = Unfinished {
        node: node.clone(),
        channel,
        generation,
    };
    let worker = node.clone();
    tokio::task::spawn_blocking(move || worker.drop_code_record(channel))
        .await
        .context("code worker failed")??;
    write_msg(&mut stream, &JoinMessage::CodeAccepted(accepted)).await?;
    let failed = |node: &Node| node.set_code_state(channel, generation, CodeState::Failed, None);
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
            failed(&node);
            return Err(anyhow!("peer sent no join request after the code exchange"));
        }
    };
    let secret = zeroize::Zeroizing::new(*secret.invite_secret());
    // Who asks, before anything is written: the facilitator approves this person.
    let Some(joiner) = request.verify(&secret, &remote, &local) else {
        failed(&node);
        write_msg(&mut stream, &JoinMessage::Reject).await?;
        return Err(anyhow!(
            "a join request after a matched code did not verify"
        ));
    };
    if crate::join::check_name(&joiner.name).is_err()
        || !node.await_code_approval(channel, generation, &group, &joiner)?
    {
        failed(&node);
        write_msg(&mut stream, &JoinMessage::Reject).await?;
        return Err(anyhow!(
            "a join request after a matched code could not be held"
        ));
    }
    let approved = wait_for_approval(&node, channel, generation).await;
    if !approved {
        node.set_code_state(channel, generation, CodeState::Declined, None);
        write_msg(&mut stream, &JoinMessage::Reject).await?;
        futures::AsyncWriteExt::close(&mut stream).await.ok();
        tracing::debug!("a join by spoken code was not approved; turned away");
        return Ok(());
    }
    let answered =
        answer_code_request(node.clone(), net, peer, stream, request, group, secret).await;
    match answered {
        Ok(Some(joiner)) => {
            peering.admitted(&peer);
            let joined = (joiner.identity.member_id(), joiner.name);
            node.set_code_state(channel, generation, CodeState::Joined, Some(joined));
            Ok(())
        }
        Ok(None) => {
            failed(&node);
            Ok(())
        }
        Err(e) => {
            failed(&node);
            Err(e)
        }
    }
}

/// Ends a matched code's join as `failed` when its task ends without recording an outcome.
struct Unfinished {
    node: Arc<Node>,
    channel: u16,
    generation: u64,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        self.node.fail_pending_code(self.channel, self.generation);
    }
}

/// Waits for the facilitator's answer to the join held on `channel`, at most
/// [`APPROVAL_TIMEOUT`]; whether it was approved.
async fn wait_for_approval(node: &Node, channel: u16, generation: u64) -> bool {
    let mut changed = node.subscribe();
    let deadline = Instant::now() + APPROVAL_TIMEOUT;
    loop {
        if let Some(answer) = node.code_approval(channel, generation) {
            return answer;
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return false },
            () = tokio::time::sleep_until(deadline) => return false,
        }
    }
}

/// What one exchange with one peer came to.
enum Attempt {
    /// The peer's daemon did not accept the code: it holds no such code, or the words
    /// were wrong (the two look the same, by design), or it failed after this side had
    /// sent its confirmation. Not asked again in this run: it has had its one guess.
    NoMatch,
    /// The peer turned the hello away unanswered (rationed), or could not be reached,
    /// before any guess was made: worth asking again a little later.
    Later,
    /// The peer proved it holds the code: go on with the join on this stream.
    Found(Box<Found>),
}

/// An exchange that found the facilitator's daemon.
struct Found {
    peer: PeerId,
    stream: libp2p::Stream,
    secret: CodeSecret,
    _exchange: crate::peering::Exchange,
}

/// The joiner's side: asks every peer on the local network at once (and each peer met
/// later within the deadline), until one proves it holds the code; then sends the join
/// request to that one and waits for the facilitator to approve it.
pub async fn join(
    node: Arc<Node>,
    net: NetHandle,
    peering: Peering,
    code: &SpokenCode,
    name: &str,
) -> Result<GroupId, NodeError> {
    // Daemons met earlier and dropped for sharing no group are among those to ask.
    net.reach_discovered().await;
    // Peers asked, and when they may be asked again (never, once they had a guess).
    let mut asked: BTreeMap<PeerId, Option<Instant>> = BTreeMap::new();
    let deadline = Instant::now() + DISCOVERY_TIMEOUT;
    let mut pending = FuturesUnordered::new();
    let mut no_match = 0usize;
    loop {
        let now = Instant::now();
        for (peer, addrs) in net.peers().await {
            match asked.get(&peer) {
                Some(None) => continue,
                Some(Some(again)) if *again > now => continue,
                _ => {}
            }
            // A spoken code is for the room: ask only peers on a local network.
            if !addrs.iter().any(is_local) {
                continue;
            }
            asked.insert(peer, None);
            let (net, peering, code) = (net.clone(), peering.clone(), code.clone());
            pending.push(async move {
                let result =
                    tokio::time::timeout_at(deadline, exchange(&net, &peering, peer, &code))
                        .await
                        .unwrap_or(Attempt::NoMatch);
                (peer, result)
            });
        }
        tokio::select! {
            Some((peer, result)) = pending.next(), if !pending.is_empty() => match result {
                Attempt::Found(found) => {
                    // The facilitator is found: the other exchanges are dropped.
                    drop(pending);
                    return complete(node, net, peering, *found, name).await;
                }
                Attempt::NoMatch => no_match += 1,
                Attempt::Later => {
                    asked.insert(peer, Some(Instant::now() + RETRY_AFTER));
                }
            },
            () = tokio::time::sleep(DISCOVERY_POLL) => {}
            () = tokio::time::sleep_until(deadline) => {
                let message = if no_match > 0 {
                    format!(
                        "the code did not match on any device nearby ({no_match} asked). \
                         Check each word with the facilitator; if the words were right, the \
                         code may be used up, burnt or expired, so ask them for a new one"
                    )
                } else {
                    "no device on this network answered; check that the facilitator's \
                     hearthd is running on the same network with mDNS on, then try again"
                        .to_owned()
                };
                return Err(NodeError::Forbidden(message));
            }
        }
    }
}

/// The PAKE with one peer, up to the facilitator's proof that it holds the code.
async fn exchange(net: &NetHandle, peering: &Peering, peer: PeerId, code: &SpokenCode) -> Attempt {
    // An exchange under way: the peer is not dropped as a stranger meanwhile.
    let exchange = peering.exchange(peer);
    let short = crate::net::short(&peer);
    let mut stream = match net.open_stream(peer, JOIN_PROTOCOL).await {
        Ok(s) => s,
        Err(e) => {
            if e.downcast_ref::<crate::net::Unsupported>().is_some() {
                tracing::debug!(
                    peer = %short,
                    "a nearby device runs a hearth that speaks another join protocol; \
                     it was not asked"
                );
                return Attempt::NoMatch;
            }
            tracing::debug!(peer = %short, "could not ask a peer: {e:#}");
            return Attempt::Later;
        }
    };
    let (joiner, hello) = CodeJoiner::start(code, &mut OsRng);
    if write_msg(&mut stream, &JoinMessage::CodeHello(hello))
        .await
        .is_err()
    {
        return Attempt::Later;
    }
    let reply = match tokio::time::timeout(
        STEP_TIMEOUT,
        read_msg::<_, JoinMessage>(&mut stream, MAX_JOIN_FRAME_LEN),
    )
    .await
    {
        Ok(Ok(Some(JoinMessage::CodeReply(r)))) => r,
        // Turned away before the exchange (rationed, or busy): no guess was tested.
        Ok(Ok(Some(JoinMessage::Reject))) => return Attempt::Later,
        // Anything else before a guess was sent: not worth the wait of asking again.
        _ => return Attempt::NoMatch,
    };
    let local = net.local_peer_id().to_bytes();
    let remote = peer.to_bytes();
    let Ok((joiner, confirm)) = joiner.confirm(&reply, &local, &remote) else {
        return Attempt::NoMatch;
    };
    // From here on the peer has had its guess: whatever happens, it is not asked again.
    if write_msg(&mut stream, &JoinMessage::CodeConfirm(confirm))
        .await
        .is_err()
    {
        return Attempt::NoMatch;
    }
    let accepted = match tokio::time::timeout(
        STEP_TIMEOUT,
        read_msg::<_, JoinMessage>(&mut stream, MAX_JOIN_FRAME_LEN),
    )
    .await
    {
        Ok(Ok(Some(JoinMessage::CodeAccepted(a)))) => a,
        _ => return Attempt::NoMatch,
    };
    match joiner.finish(&accepted) {
        Ok(secret) => Attempt::Found(Box::new(Found {
            peer,
            stream,
            secret,
            _exchange: exchange,
        })),
        Err(_) => {
            // It claimed to accept the code without proving it knew it: not the facilitator.
            tracing::warn!("a peer accepted the code without knowing it");
            Attempt::NoMatch
        }
    }
}

/// Sends the join request to the facilitator's daemon found by [`exchange`], waits for
/// its answer (the facilitator approves the join first) and settles into the group.
async fn complete(
    node: Arc<Node>,
    net: NetHandle,
    peering: Peering,
    found: Found,
    name: &str,
) -> Result<GroupId, NodeError> {
    let Found {
        peer,
        mut stream,
        secret,
        _exchange,
    } = found;
    let unreachable = |e: anyhow::Error| NodeError::Unreachable(format!("{e:#}"));
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
        APPROVAL_TIMEOUT + JOIN_TIMEOUT,
        read_msg::<_, JoinMessage>(&mut stream, MAX_FRAME_LEN),
    )
    .await
    .map_err(|_| {
        NodeError::Unreachable(
            "the facilitator's daemon did not answer in time (waiting for approval)".into(),
        )
    })?
    .map_err(unreachable)?
    {
        Some(JoinMessage::Accept(a)) => a,
        Some(JoinMessage::Reject) => {
            return Err(NodeError::Forbidden(
                "the facilitator's device found the code but did not let you in: the \
                 facilitator declined or did not approve in time. Ask them for a new code"
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
        return Err(NodeError::already_member());
    }
    settle_in(node.clone(), net.clone(), peering.clone(), peer, joining).await
}

/// Waits while the code on `channel` is open, until it is not (matched, waiting for
/// approval, used, burnt, expired...) or until another code attempt is refused or a
/// wrong guess is checked while it is open, at most `wait`. A code that is not open is
/// answered at once (a client waiting on a join held for approval asks again at its own
/// pace).
pub async fn wait_for(
    node: &Node,
    group: &GroupId,
    channel: u16,
    wait: Duration,
) -> Result<api::CodeStatus, NodeError> {
    let mut changed = node.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    let first = node.code_status(group, channel)?;
    loop {
        let status = node.code_status(group, channel)?;
        if status.state != CodeState::Open
            || status.other_attempts != first.other_attempts
            || status.wrong_attempts != first.wrong_attempts
        {
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
