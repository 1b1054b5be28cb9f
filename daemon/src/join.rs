//! Invites and the join protocol, on both sides of `/join/2`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use hearth_protocol::api::{self, InviteCreated};
use hearth_protocol::identity::{MemberKeys, PublicIdentity};
use hearth_protocol::ids::GroupId;
use hearth_protocol::invite::{InviteError, InviteToken, JoinAccept, JoinRequest, Joiner, Welcome};
use hearth_protocol::wire::{JoinMessage, MAX_FRAME_LEN, MAX_JOIN_FRAME_LEN};
use libp2p::{Multiaddr, PeerId};
use rand_core::{OsRng, RngCore};

use crate::frame::{read_msg, write_msg};
use crate::net::{JOIN_PROTOCOL, NetHandle};
use crate::node::{Node, NodeError, now_unix};
use crate::peering::Peering;
use crate::records::{self, InviteRecord};
use crate::store::{Table, WriteOp};

const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `join` waits for the first sync to bring this device's own admission.
const ADMISSION_SYNC_TIMEOUT: Duration = Duration::from_secs(20);

/// Makes a one-time invite for `group` (facilitators only).
pub async fn create_invite(
    node: &Node,
    net: &NetHandle,
    group: &GroupId,
    ttl_secs: u64,
) -> Result<InviteCreated, NodeError> {
    if ttl_secs == 0 || ttl_secs > api::MAX_INVITE_TTL_SECS {
        return Err(NodeError::Invalid(format!(
            "an invite must last between 1 second and {} days",
            api::MAX_INVITE_TTL_SECS / 86_400
        )));
    }
    node.check_can_invite(group)?;
    node.purge_invites()?;
    let addrs: Vec<String> = net
        .listen_addrs()
        .await
        .iter()
        .map(|a| a.to_string())
        .take(hearth_protocol::invite::MAX_TOKEN_ADDRS)
        .collect();
    if addrs.is_empty() {
        return Err(NodeError::Internal(
            "hearthd is not listening on any address, so nobody could use an invite".into(),
        ));
    }
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let expires_at = now_unix().saturating_add(ttl_secs);
    let token = InviteToken {
        group_id: *group,
        facilitator: node.member_keys(group)?.member_id(),
        secret,
        expires_at,
        addrs,
    };
    let record = InviteRecord {
        group_id: *group,
        secret,
        expires_at,
    };
    node.store().write(vec![WriteOp::Put {
        table: Table::Invites,
        key: token.invite_id().to_vec(),
        value: records::encode(&record),
    }])?;
    Ok(InviteCreated {
        token: token.encode(),
        expires_at,
    })
}

/// The joiner's side: dials the facilitator named by the token, runs the handshake, stores
/// the group and starts syncing with the facilitator.
pub async fn join(
    node: Arc<Node>,
    net: NetHandle,
    peering: Peering,
    token_text: &str,
    name: &str,
) -> Result<GroupId, NodeError> {
    check_name(name)?;
    let text = token_text.trim();
    if !text.starts_with(hearth_protocol::invite::TOKEN_PREFIX)
        && let Ok(code) = hearth_protocol::code::SpokenCode::parse(text)
    {
        return crate::code::join(node, net, peering, &code, name).await;
    }
    let token = InviteToken::decode(token_text).map_err(|e| NodeError::Invalid(e.to_string()))?;
    if token.expires_at <= now_unix() {
        return Err(NodeError::Invalid(
            "the invite has expired; ask the facilitator for a new one".into(),
        ));
    }
    if node.sees_self_in(&token.group_id) {
        return Err(NodeError::already_member());
    }
    let mut last_error = String::from("the invite names no address");
    let mut connected = None;
    for addr in &token.addrs {
        let Ok(addr) = addr.parse::<Multiaddr>() else {
            last_error = format!("the invite holds an unreadable address {addr:?}");
            continue;
        };
        match net.connect(addr, DIAL_TIMEOUT).await {
            Ok(peer) => {
                connected = Some(peer);
                break;
            }
            Err(e) => last_error = format!("{e:#}"),
        }
    }
    let Some(peer) = connected else {
        return Err(NodeError::Unreachable(format!(
            "none of the invite's addresses answered ({last_error}); check that the \
             facilitator's hearthd is running and reachable from here"
        )));
    };
    // A join under way: the facilitator's daemon is not dropped as a stranger meanwhile.
    let _exchange = peering.exchange(peer);
    let joining = tokio::time::timeout(JOIN_TIMEOUT, request_join(&net, peer, &token, name))
        .await
        .map_err(|_| {
            NodeError::Unreachable("the facilitator's daemon did not answer in time".into())
        })??;
    settle_in(node, net, peering, peer, joining).await
}

/// What a verified join answer gives this device: the group, the membership keys it made
/// for it, and the facilitator who admitted it.
pub(crate) struct Joining {
    pub welcome: hearth_protocol::invite::Welcome,
    pub keys: MemberKeys,
    pub facilitator: PublicIdentity,
}

/// Checks a join answer made for `keys`, and keeps what it needs.
pub(crate) fn accepted(
    accept: &JoinAccept,
    keys: MemberKeys,
    verify: impl FnOnce(&JoinAccept, &MemberKeys) -> Result<Welcome, InviteError>,
) -> Result<Joining, NodeError> {
    let welcome = verify(accept, &keys)
        .map_err(|e| NodeError::Forbidden(format!("the join answer was refused: {e}")))?;
    Ok(Joining {
        welcome,
        keys,
        facilitator: accept.facilitator,
    })
}

/// Stores a group just joined, starts syncing with the facilitator's daemon and waits until
/// this device's own admission has arrived, so the group is writable when `join` answers.
pub(crate) async fn settle_in(
    node: Arc<Node>,
    net: NetHandle,
    peering: Peering,
    peer: PeerId,
    joining: Joining,
) -> Result<GroupId, NodeError> {
    let group = node.install_joined(joining.welcome, &joining.keys, joining.facilitator)?;
    let mut changed = node.subscribe();
    // Sync with the facilitator at once, whichever side would usually open the session.
    // This supervisor lives as long as the connection (it ends itself on disconnect); if
    // one already runs for this peer, that one wakes on the new group.
    drop(crate::peering::supervise(node.clone(), net, peering, peer));
    // Answer once the facilitator's add has arrived, so the group is writable right away.
    let synced = tokio::time::timeout(ADMISSION_SYNC_TIMEOUT, async {
        while !node.sees_self_in(&group) {
            if changed.changed().await.is_err() {
                break;
            }
        }
    })
    .await;
    if synced.is_err() {
        // Debug only: at the default level a log says nothing of when groups were joined.
        tracing::debug!("joined, but the facilitator's add has not synced yet");
    }
    Ok(group)
}

/// A display name must fit the membership record (checked before anything is sent).
pub(crate) fn check_name(name: &str) -> Result<(), NodeError> {
    let max = hearth_protocol::membership::MAX_NAME_LEN;
    if name.chars().count() > max || name.chars().any(char::is_control) {
        return Err(NodeError::Invalid(format!(
            "a name must be at most {max} characters, with no control characters"
        )));
    }
    Ok(())
}

async fn request_join(
    net: &NetHandle,
    peer: PeerId,
    token: &InviteToken,
    name: &str,
) -> Result<Joining, NodeError> {
    let unreachable = |e: anyhow::Error| NodeError::Unreachable(format!("{e:#}"));
    let mut stream = net.open_stream(peer, JOIN_PROTOCOL).await.map_err(|e| {
        if e.downcast_ref::<crate::net::Unsupported>().is_some() {
            NodeError::Unreachable(
                "the facilitator's hearthd speaks another version of the join protocol; \
                     both devices need the same version of hearth"
                    .into(),
            )
        } else {
            unreachable(e)
        }
    })?;
    let local = net.local_peer_id().to_bytes();
    let remote = peer.to_bytes();
    // A membership identity of its own, so this group cannot be linked to others.
    let keys = MemberKeys::generate(&mut OsRng);
    let request = JoinRequest::new(&keys, token, name, &local, &remote, &mut OsRng);
    write_msg(&mut stream, &JoinMessage::Request(request))
        .await
        .map_err(unreachable)?;
    match read_msg::<_, JoinMessage>(&mut stream, MAX_FRAME_LEN)
        .await
        .map_err(unreachable)?
    {
        Some(JoinMessage::Accept(accept)) => accepted(&accept, keys, |a, k| {
            a.verify(k, token, name, &local, &remote)
        }),
        Some(JoinMessage::Reject) => Err(NodeError::Forbidden(
            "the facilitator's daemon refused the invite: it is used, expired or was \
             withdrawn; ask for a new one"
                .into(),
        )),
        _ => Err(NodeError::Unreachable(
            "the facilitator's daemon closed the connection without answering".into(),
        )),
    }
}

/// The facilitator's side of one join stream, from `peer` at `ip`. `settled` is called
/// once the peer has sent what it must send promptly (a join request, or a code hello that
/// passed the rate limit): until then the stream may be dropped to make room for another
/// (see `daemon`).
pub async fn serve(
    node: Arc<Node>,
    net: NetHandle,
    peering: Peering,
    peer: PeerId,
    ip: Option<std::net::IpAddr>,
    mut stream: libp2p::Stream,
    settled: impl FnOnce() + Send,
) -> anyhow::Result<()> {
    let request = match tokio::time::timeout(
        crate::sync::FIRST_FRAME_TIMEOUT,
        read_msg::<_, JoinMessage>(&mut stream, MAX_JOIN_FRAME_LEN),
    )
    .await
    .context("join request timed out")??
    {
        Some(JoinMessage::Request(r)) => {
            settled();
            r
        }
        Some(JoinMessage::CodeHello(hello)) => {
            let code = crate::code::serve(node, net, peering, peer, ip, stream, hello, settled);
            return code.await;
        }
        _ => return Err(anyhow!("peer sent no join request")),
    };
    answer_request(node, net, peer, stream, request)
        .await
        .map(drop)
}

/// Answers a join request made with a token, and closes. Returns who was admitted, if
/// anyone.
pub(crate) async fn answer_request(
    node: Arc<Node>,
    net: NetHandle,
    peer: PeerId,
    stream: libp2p::Stream,
    request: JoinRequest,
) -> anyhow::Result<Option<Joiner>> {
    answer(node, net, peer, stream, request, None).await
}

/// Answers the join request that follows a matched spoken code, whose exchange agreed
/// `secret` for `group`, and closes.
pub(crate) async fn answer_code_request(
    node: Arc<Node>,
    net: NetHandle,
    peer: PeerId,
    stream: libp2p::Stream,
    request: JoinRequest,
    group: GroupId,
    secret: zeroize::Zeroizing<[u8; 32]>,
) -> anyhow::Result<Option<Joiner>> {
    answer(node, net, peer, stream, request, Some((group, secret))).await
}

async fn answer(
    node: Arc<Node>,
    net: NetHandle,
    peer: PeerId,
    mut stream: libp2p::Stream,
    request: JoinRequest,
    code: Option<(GroupId, zeroize::Zeroizing<[u8; 32]>)>,
) -> anyhow::Result<Option<Joiner>> {
    // The admission writes (fsync) and saves the document: off the async workers.
    let worker = (node.clone(), net.clone());
    let admitted = tokio::task::spawn_blocking(move || {
        admit(&worker.0, &worker.1, peer, &request, code.as_ref())
    })
    .await
    .context("admission worker failed")?;
    let (answer, joiner) = match admitted {
        Ok((accept, joiner)) => (JoinMessage::Accept(Box::new(accept)), Some(joiner)),
        Err(e) => {
            tracing::debug!(peer = %crate::net::short(&peer), "refused a join request: {e}");
            (JoinMessage::Reject, None)
        }
    };
    write_msg(&mut stream, &answer).await?;
    futures::AsyncWriteExt::close(&mut stream).await.ok();
    Ok(joiner)
}

fn admit(
    node: &Node,
    net: &NetHandle,
    peer: PeerId,
    request: &JoinRequest,
    code: Option<&(GroupId, zeroize::Zeroizing<[u8; 32]>)>,
) -> Result<(JoinAccept, Joiner), NodeError> {
    let joiner_peer = peer.to_bytes();
    let local = net.local_peer_id().to_bytes();
    let proves = |invite: &crate::records::InviteRecord| {
        request.verify(&invite.secret, &joiner_peer, &local)
    };
    let (admission, record, joiner) = match code {
        Some((group, secret)) => node.admit_by_code(group, secret, proves)?,
        None => node.admit(&request.invite_id, proves)?,
    };
    let accept = JoinAccept::new(
        &node.member_keys(&record.group_id)?,
        &joiner,
        &record.secret,
        &admission,
        &joiner_peer,
        &local,
        &mut OsRng,
    );
    Ok((accept, joiner))
}
