//! Joining by a spoken code, in the same room: the joiner's daemon finds the facilitator's
//! daemon among the peers it meets on the local network (mDNS) and runs the PAKE
//! (`hearth_protocol::code`) with each until one holds the code; the secret the PAKE agrees
//! then serves as the invite secret of an ordinary join request on the same stream.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use hearth_protocol::api::{self, CodeState};
use hearth_protocol::code::{CodeError, CodeFacilitator, CodeHello, CodeJoiner, SpokenCode};
use hearth_protocol::identity::MemberKeys;
use hearth_protocol::ids::GroupId;
use hearth_protocol::invite::JoinRequest;
use hearth_protocol::wire::{JoinMessage, MAX_FRAME_LEN, MAX_JOIN_FRAME_LEN};
use libp2p::PeerId;
use rand_core::OsRng;

use crate::frame::{read_msg, write_msg};
use crate::join::{JOIN_TIMEOUT, answer_request, settle_in};
use crate::net::{JOIN_PROTOCOL, NetHandle};
use crate::node::{Node, NodeError};
use crate::peering::Peering;

/// How long the joiner looks for the facilitator's daemon on the local network.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(20);
/// How often it looks at the peers it has met.
const DISCOVERY_POLL: Duration = Duration::from_millis(300);
/// Longest one peer may take over one step of the exchange.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// The facilitator's side, after a `CodeHello` arrived on a join stream.
pub async fn serve(
    node: Arc<Node>,
    net: NetHandle,
    peer: PeerId,
    mut stream: libp2p::Stream,
    hello: CodeHello,
) -> anyhow::Result<()> {
    let channel = hello.channel;
    let worker = node.clone();
    let record = tokio::task::spawn_blocking(move || worker.take_code(channel))
        .await
        .context("code worker failed")??;
    let Some(record) = record else {
        // A code of ours that is used up: say so, so the joiner stops looking. Otherwise
        // it is most likely another daemon's code.
        let answer = if node.code_gone(channel) {
            JoinMessage::CodeGone
        } else {
            JoinMessage::Reject
        };
        write_msg(&mut stream, &answer).await?;
        return Ok(());
    };
    let code = SpokenCode::from_parts(record.channel, record.words)
        .map_err(|e| anyhow!("a stored code is malformed: {e}"))?;
    // The code is burnt already: this is the one attempt it allows.
    let (facilitator, reply) = match CodeFacilitator::respond(&code, &hello, &mut OsRng) {
        Ok(r) => r,
        Err(e) => {
            node.set_code_state(channel, CodeState::WrongCode, None);
            write_msg(&mut stream, &JoinMessage::Reject).await?;
            return Err(anyhow!(
                "a malformed code attempt burnt code {channel}: {e}"
            ));
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
        _ => {
            // The joiner found the code did not match, or went away: either way it is used.
            node.set_code_state(channel, CodeState::WrongCode, None);
            return Ok(());
        }
    };
    let secret = match facilitator.finish(&confirm) {
        Ok(secret) => secret,
        Err(_) => {
            node.set_code_state(channel, CodeState::WrongCode, None);
            write_msg(&mut stream, &JoinMessage::Reject).await?;
            tracing::info!("a spoken code was tried with the wrong words; it is burnt");
            return Ok(());
        }
    };
    let (worker, group) = (node.clone(), record.group_id);
    let staged_secret = *secret.invite_secret();
    tokio::task::spawn_blocking(move || worker.stage_code_invite(&group, &staged_secret))
        .await
        .context("code worker failed")??;
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
    let joined = (request.identity.member_id(), request.name.clone());
    if let Err(e) = answer_request(node.clone(), net, peer, stream, request).await {
        node.set_code_state(channel, CodeState::Failed, None);
        return Err(e);
    }
    let admitted = node
        .with_slot(&group, |s| Ok(s.group.roster().is_member(&joined.0)))
        .unwrap_or(false);
    if admitted {
        node.set_code_state(channel, CodeState::Joined, Some(joined));
    } else {
        node.set_code_state(channel, CodeState::Failed, None);
    }
    Ok(())
}

/// What one attempt with one peer came to.
enum Attempt {
    /// The peer holds no such code: try the next one.
    NotHere,
    Joined(GroupId),
}

/// The joiner's side: finds the facilitator's daemon on the local network and joins.
pub async fn join(
    node: Arc<Node>,
    net: NetHandle,
    peering: Peering,
    code: &SpokenCode,
    name: &str,
) -> Result<GroupId, NodeError> {
    // Daemons met earlier and dropped for sharing no group are among those to ask.
    net.reach_discovered().await;
    let mut tried: BTreeSet<PeerId> = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + DISCOVERY_TIMEOUT;
    loop {
        for (peer, _) in net.peers().await {
            if !tried.insert(peer) {
                continue;
            }
            match attempt(&node, &net, &peering, peer, code, name).await {
                Ok(Attempt::Joined(group)) => return Ok(group),
                Ok(Attempt::NotHere) => {}
                Err(e @ (NodeError::Forbidden(_) | NodeError::Conflict(_))) => return Err(e),
                Err(e) => {
                    tracing::debug!(peer = %crate::net::short(&peer), "code attempt failed: {e}")
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NodeError::Unreachable(
                "no daemon on this network holds that code; check that the facilitator's \
                 hearthd is running on the same network with mDNS on, and that the code is \
                 typed as they said it (it expires after 10 minutes)"
                    .into(),
            ));
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
        Some(JoinMessage::CodeGone) => {
            return Err(NodeError::Forbidden(
                "that code has already been used or has expired; ask the facilitator for a \
                 new one"
                    .into(),
            ));
        }
        _ => return Ok(Attempt::NotHere),
    };
    let (confirm, secret) = match joiner.finish(&reply) {
        Ok(done) => done,
        Err(CodeError::WrongCode) => {
            return Err(NodeError::Forbidden(
                "the code did not match the facilitator's; it is used up now, so ask them \
                 for a new one and check each word"
                    .into(),
            ));
        }
        Err(e) => {
            return Err(NodeError::Unreachable(format!(
                "the code exchange failed: {e}"
            )));
        }
    };
    write_msg(&mut stream, &JoinMessage::CodeConfirm(confirm))
        .await
        .map_err(unreachable)?;
    let local = net.local_peer_id().to_bytes();
    let remote = peer.to_bytes();
    // A membership identity of its own, so this group cannot be linked to others.
    let keys = MemberKeys::generate(&mut OsRng);
    let request = JoinRequest::with_secret(&keys, secret.invite_secret(), name, &local, &remote);
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
                "the facilitator's daemon refused: the code did not match or has expired; \
                 ask for a new one"
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
    if node.is_in(&joining.welcome.info.group_id) {
        return Err(NodeError::Conflict(
            "this device is already a member of that group".into(),
        ));
    }
    settle_in(node.clone(), net.clone(), peering.clone(), peer, joining)
        .await
        .map(Attempt::Joined)
}

/// Waits until the code on `channel` is used or expires, at most `wait`.
pub async fn wait_for(
    node: &Node,
    group: &GroupId,
    channel: u16,
    wait: Duration,
) -> Result<api::CodeStatus, NodeError> {
    let mut changed = node.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let status = node.code_status(group, channel)?;
        if status.state != CodeState::Open {
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
