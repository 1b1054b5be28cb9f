//! A sync session with one peer, on one long-lived `/hearth/sync/1` stream.
//!
//! Handshake (see `hearth_protocol::session`): nonces, group proofs, member signatures.
//! Then each side sends its version vector for every shared group and, whenever it holds
//! envelopes the other lacks (its own, or any member's it has accepted), sends them in
//! bounded batches. The writer only ever computes "what does the peer lack" from the
//! peer's last known version vector, so pushes coalesce and a slow peer only slows its
//! own stream (the write awaits the peer's flow control).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::AsyncReadExt;
use hearth_protocol::envelope::Envelope;
use hearth_protocol::group::VersionVector;
use hearth_protocol::identity::PublicIdentity;
use hearth_protocol::ids::GroupId;
use hearth_protocol::session::{self, Side};
use hearth_protocol::wire::{
    BATCH_BYTE_BUDGET, MAX_BATCH_ENVELOPES, MAX_FRAME_LEN, MAX_HANDSHAKE_FRAME_LEN, SyncMessage,
    VvEntry, WIRE_VERSION,
};
use libp2p::PeerId;
use rand_core::{OsRng, RngCore};
use tokio::sync::Notify;

use crate::frame::{read_msg, write_msg};
use crate::node::Node;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// Group proofs are padded to a multiple of this, so a peer learns only a rough count.
const PROOF_PADDING: usize = 8;

type Known = Arc<Mutex<HashMap<GroupId, VersionVector>>>;
/// Groups whose version vector should be sent to the peer again.
type Resend = Arc<Mutex<BTreeSet<GroupId>>>;

/// What a session's receive and push halves share.
#[derive(Clone, Default)]
struct Link {
    /// The peer's version vector per group, as last told plus what crossed since.
    known: Known,
    resend: Resend,
    /// Wakes the push half when the receive half learned something.
    wake: Arc<Notify>,
    /// Set when the membership changed: renew sessions after confirming receipt.
    renew: Arc<std::sync::atomic::AtomicBool>,
}
/// Least time between two repeated version vectors for one group.
const RESEND_HAVE_EVERY: Duration = Duration::from_secs(5);

/// How a session went, so its supervisor knows when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It synced at least one group, until the stream closed or it was renewed.
    Synced,
    /// Both hold a group's key but one side does not yet see the other as a member (the
    /// add is still on its way): worth retrying soon.
    Awaiting,
    /// Nothing in common.
    Nothing,
}

/// Runs one session to its end. The session ends when the stream closes, when this
/// device's set of groups changes, or when a group held back at the handshake (the peer
/// was not yet known as a member) can now be included, so a new handshake covers it.
pub async fn run(
    node: Arc<Node>,
    local: PeerId,
    peer: PeerId,
    stream: libp2p::Stream,
    side: Side,
) -> anyhow::Result<Outcome> {
    let (mut reader, mut writer) = stream.split();
    let shared = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake(&node, local, peer, side, &mut reader, &mut writer),
    )
    .await
    .context("handshake timed out")??;
    let groups = shared.groups;
    let receive_only = shared.receive_only;
    if groups.is_empty() && receive_only.is_empty() {
        tracing::debug!(%peer, "no shared group; closing session");
        return Ok(if shared.awaiting.is_empty() {
            Outcome::Nothing
        } else {
            Outcome::Awaiting
        });
    }
    tracing::info!(%peer, groups = groups.len(), "sync session established");

    let link = Link::default();
    let mut push = tokio::spawn(push_loop(
        node.clone(),
        groups.clone(),
        receive_only.clone(),
        shared.awaiting,
        shared.identity,
        link.clone(),
        writer,
    ));
    let receivable: BTreeSet<GroupId> = groups.union(&receive_only).copied().collect();
    let peer_member = shared.identity.map(|i| i.member_id());
    let receive = receive_loop(&node, &receivable, &groups, peer_member, &link, &mut reader);
    let result = tokio::select! {
        r = receive => r,
        r = &mut push => r.context("push task failed")?,
    };
    push.abort();
    tracing::info!(%peer, "sync session ended");
    result.map(|()| Outcome::Synced)
}

/// What a handshake established.
struct Shared {
    /// Groups both sides hold the key of and see the other as a member of.
    groups: BTreeSet<GroupId>,
    /// Groups whose key the peer holds but where it is no longer a member in our view: we
    /// send it nothing, but take what it sends (checked like everything else), because
    /// our view may be what is out of date (a removal that concurrent changes undo).
    receive_only: BTreeSet<GroupId>,
    /// Groups both hold the key of where we do not (yet) see the peer as a member.
    awaiting: Vec<GroupId>,
    /// The peer's proven member identity.
    identity: Option<PublicIdentity>,
}

async fn handshake<R, W>(
    node: &Node,
    local: PeerId,
    peer: PeerId,
    side: Side,
    reader: &mut R,
    writer: &mut W,
) -> anyhow::Result<Shared>
where
    R: futures::AsyncRead + Unpin,
    W: futures::AsyncWrite + Unpin,
{
    let mut nonce = [0u8; 32];
    OsRng.fill_bytes(&mut nonce);
    write_msg(
        writer,
        &SyncMessage::Hello {
            version: WIRE_VERSION,
            nonce,
        },
    )
    .await?;
    let their_nonce = match read_msg(reader, MAX_HANDSHAKE_FRAME_LEN).await? {
        Some(SyncMessage::Hello { nonce, .. }) => nonce,
        _ => bail!("peer did not start with hello"),
    };
    let (local_b, peer_b) = (local.to_bytes(), peer.to_bytes());
    let transcript = match side {
        Side::Dialer => session::transcript(&local_b, &peer_b, &nonce, &their_nonce),
        Side::Listener => session::transcript(&peer_b, &local_b, &their_nonce, &nonce),
    };

    let mut tags = node.group_proofs(&transcript, side);
    while tags.is_empty() || !tags.len().is_multiple_of(PROOF_PADDING) {
        let mut filler = [0u8; 32];
        OsRng.fill_bytes(&mut filler);
        tags.push(filler);
    }
    write_msg(writer, &SyncMessage::Proofs { tags }).await?;
    let their_tags = match read_msg(reader, MAX_HANDSHAKE_FRAME_LEN).await? {
        Some(SyncMessage::Proofs { tags }) => tags,
        _ => bail!("peer did not send group proofs"),
    };
    let matched = node.matched_groups(&transcript, side.other(), &their_tags);
    if matched.is_empty() {
        return Ok(Shared {
            groups: BTreeSet::new(),
            receive_only: BTreeSet::new(),
            awaiting: Vec::new(),
            identity: None,
        });
    }

    let signature = session::sign_auth(node.keys(), &transcript, side, &matched);
    write_msg(
        writer,
        &SyncMessage::Auth {
            identity: node.keys().public(),
            signature,
        },
    )
    .await?;
    let (identity, their_sig) = match read_msg(reader, MAX_HANDSHAKE_FRAME_LEN).await? {
        Some(SyncMessage::Auth {
            identity,
            signature,
        }) => (identity, signature),
        _ => bail!("peer did not prove its member identity"),
    };
    if !session::verify_auth(&identity, &their_sig, &transcript, side.other(), &matched) {
        bail!("peer's member signature does not verify");
    }
    let (groups, others): (Vec<GroupId>, Vec<GroupId>) = matched
        .into_iter()
        .partition(|g| node.has_member(g, &identity));
    let (receive_only, awaiting): (Vec<GroupId>, Vec<GroupId>) = others
        .into_iter()
        .partition(|g| node.has_departed(g, &identity));
    Ok(Shared {
        groups: groups.into_iter().collect(),
        receive_only: receive_only.into_iter().collect(),
        awaiting,
        identity: Some(identity),
    })
}

async fn receive_loop<R>(
    node: &Arc<Node>,
    groups: &BTreeSet<GroupId>,
    sending: &BTreeSet<GroupId>,
    peer_member: Option<hearth_protocol::ids::MemberId>,
    link: &Link,
    reader: &mut R,
) -> anyhow::Result<()>
where
    R: futures::AsyncRead + Unpin,
{
    let mut last_resend: HashMap<GroupId, Instant> = HashMap::new();
    while let Some(msg) = read_msg::<_, SyncMessage>(reader, MAX_FRAME_LEN).await? {
        match msg {
            SyncMessage::Have { group_id, heads } if sending.contains(&group_id) => {
                let vv = heads
                    .into_iter()
                    .map(|e| (e.author, (e.seq, e.hash)))
                    .collect();
                node.note_peer_has(&group_id, &vv);
                // Where the peer's log differs from ours, send ours so it sees the fork.
                let vv = node.reconcile_heads(&group_id, vv);
                lock(&link.known).insert(group_id, vv);
                link.wake.notify_one();
            }
            SyncMessage::HaveOwn {
                group_id,
                seq,
                hash,
            } if sending.contains(&group_id) => {
                // The peer wants our own log only: treat every other author as up to date.
                let me = node.member_id();
                let mut vv = node.version_vector(&group_id);
                node.note_peer_has(&group_id, &VersionVector::from([(me, (seq, hash))]));
                vv.insert(me, (seq, hash));
                let vv = node.reconcile_heads(&group_id, vv);
                lock(&link.known).insert(group_id, vv);
                link.wake.notify_one();
            }
            SyncMessage::Envelopes {
                group_id,
                envelopes,
            } if groups.contains(&group_id) => {
                // From a peer no longer a member in our view, only its own log is taken.
                let own_only = !sending.contains(&group_id);
                let decoded: Vec<Envelope> = envelopes
                    .into_iter()
                    .filter_map(|b| Envelope::decode(b).ok())
                    .filter(|e| !own_only || Some(e.header().author) == peer_member)
                    .collect();
                // The peer has these: never echo them back.
                if let Some(vv) = lock(&link.known).get_mut(&group_id) {
                    note_sent(vv, &decoded);
                }
                // Verification, decryption and the fsync run off the async workers.
                let worker = node.clone();
                let ingest = tokio::task::spawn_blocking(move || worker.ingest(&group_id, decoded))
                    .await
                    .context("ingest worker failed")??;
                let refused = ingest.refused;
                // Confirm what arrived with our version vector: the sender learns it was
                // delivered (a member leaving waits for that). After a membership change
                // the push half renews every session once that confirmation is out.
                if ingest.accepted > 0 || ingest.roster_changed {
                    lock_set(&link.resend).insert(group_id);
                    if ingest.roster_changed {
                        link.renew.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    link.wake.notify_one();
                }
                // Out-of-order envelopes were refused for now: once in a while, send our
                // version vector again so the peer resends what we still lack.
                if refused > 0
                    && sending.contains(&group_id)
                    && last_resend
                        .get(&group_id)
                        .is_none_or(|t| t.elapsed() >= RESEND_HAVE_EVERY)
                {
                    last_resend.insert(group_id, Instant::now());
                    lock_set(&link.resend).insert(group_id);
                    link.wake.notify_one();
                }
            }
            // Anything else (a group not shared in this session, a late handshake message)
            // is ignored rather than trusted.
            _ => {}
        }
    }
    Ok(())
}

async fn push_loop<W>(
    node: Arc<Node>,
    groups: BTreeSet<GroupId>,
    receive_only: BTreeSet<GroupId>,
    awaiting: Vec<GroupId>,
    identity: Option<PublicIdentity>,
    link: Link,
    mut writer: W,
) -> anyhow::Result<()>
where
    W: futures::AsyncWrite + Unpin,
{
    let mut changed = node.subscribe();
    let mut groups_changed = node.subscribe_groups();
    let peer_id = identity.map(|i| i.member_id());
    let have = |group_id: GroupId| {
        let own = receive_only
            .contains(&group_id)
            .then_some(peer_id)
            .flatten();
        (group_id, own)
    };
    for group_id in groups.iter().chain(&receive_only) {
        let (group_id, own) = have(*group_id);
        send_have(&node, group_id, own, &mut writer).await?;
    }
    loop {
        changed.borrow_and_update();
        let again: Vec<GroupId> = std::mem::take(&mut *lock_set(&link.resend))
            .into_iter()
            .collect();
        for group_id in again {
            let (group_id, own) = have(group_id);
            send_have(&node, group_id, own, &mut writer).await?;
        }
        if link.renew.swap(false, std::sync::atomic::Ordering::SeqCst) {
            futures::AsyncWriteExt::flush(&mut writer).await?;
            node.renew_sessions();
            return Ok(());
        }
        if let Some(identity) = &identity
            && awaiting.iter().any(|g| node.has_member(g, identity))
        {
            return Ok(()); // renew the session so its handshake covers that group
        }
        let mut sent_any = false;
        for group_id in &groups {
            // The membership may have changed since the handshake: never send a group's
            // envelopes to someone who is no longer in it.
            if identity
                .as_ref()
                .is_some_and(|i| !node.has_member(group_id, i))
            {
                continue;
            }
            let Some(vv) = lock(&link.known).get(group_id).cloned() else {
                continue; // their version vector has not arrived yet
            };
            let batch = node.missing(group_id, &vv, MAX_BATCH_ENVELOPES, BATCH_BYTE_BUDGET);
            if batch.is_empty() {
                continue;
            }
            if let Some(vv) = lock(&link.known).get_mut(group_id) {
                note_sent(vv, &batch);
            }
            let envelopes = batch.into_iter().map(Envelope::into_bytes).collect();
            write_msg(
                &mut writer,
                &SyncMessage::Envelopes {
                    group_id: *group_id,
                    envelopes,
                },
            )
            .await?;
            sent_any = true;
        }
        if sent_any {
            continue;
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return Ok(()) },
            () = link.wake.notified() => {}
            _ = groups_changed.changed() => return Ok(()),
        }
    }
}

/// Sends our version vector for one group; or, to a peer (`own`) that is no longer a
/// member in our view, only our head of its own log.
async fn send_have<W>(
    node: &Node,
    group_id: GroupId,
    own: Option<hearth_protocol::ids::MemberId>,
    writer: &mut W,
) -> anyhow::Result<()>
where
    W: futures::AsyncWrite + Unpin,
{
    if let Some(peer) = own {
        let (seq, hash) = node
            .version_vector(&group_id)
            .get(&peer)
            .copied()
            .unwrap_or((0, [0; 32]));
        return write_msg(
            writer,
            &SyncMessage::HaveOwn {
                group_id,
                seq,
                hash,
            },
        )
        .await;
    }
    let heads = node
        .version_vector(&group_id)
        .into_iter()
        .map(|(author, (seq, hash))| VvEntry { author, seq, hash })
        .collect();
    write_msg(writer, &SyncMessage::Have { group_id, heads }).await
}

fn lock_set(resend: &Resend) -> std::sync::MutexGuard<'_, BTreeSet<GroupId>> {
    resend.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records that the peer now has `envelopes`.
fn note_sent(vv: &mut VersionVector, envelopes: &[Envelope]) {
    for env in envelopes {
        let h = env.header();
        let entry = vv.entry(h.author).or_insert((0, [0; 32]));
        if h.seq > entry.0 {
            *entry = (h.seq, env.hash());
        }
    }
}

fn lock(known: &Known) -> std::sync::MutexGuard<'_, HashMap<GroupId, VersionVector>> {
    known.lock().unwrap_or_else(|p| p.into_inner())
}
