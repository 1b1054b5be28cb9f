//! A sync session with one peer, on one long-lived `/sync/1` stream.
//!
//! Handshake (see `hearth_protocol::session`): nonces and session keys, then each side's
//! identity in each group, sealed for the members it counts as current there.
//! Then each side sends its version vector for every shared group and, whenever it holds
//! envelopes the other lacks (its own, or any member's it has accepted), sends them in
//! bounded batches. The writer only ever computes "what does the peer lack" from the
//! peer's last known version vector, so pushes coalesce and a slow peer only slows its
//! own stream (the write awaits the peer's flow control).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::AsyncReadExt;
use hearth_protocol::envelope::Envelope;
use hearth_protocol::group::VersionVector;
use hearth_protocol::identity::PublicIdentity;
use hearth_protocol::ids::{GroupId, MemberId};
use hearth_protocol::session::{self, SessionKey, Side};
use hearth_protocol::wire::{
    BATCH_BYTE_BUDGET, MAX_BATCH_ENVELOPES, MAX_FRAME_LEN, MAX_HANDSHAKE_FRAME_LEN, SyncMessage,
    VvEntry, WIRE_VERSION,
};
use libp2p::PeerId;
use rand_core::{OsRng, RngCore};
use tokio::sync::Notify;

use crate::frame::{read_msg, write_msg};
use crate::net::{NetHandle, short};
use crate::node::{Node, Standing};
use crate::peering::Peering;

/// The whole handshake must be done in this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The peer's `Hello` must arrive in this long: a stream that sends nothing gives its
/// slot back quickly (see the daemon's stream limits).
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// A session that shared nothing closes after this many milliseconds, plus up to the
/// second number more, at random.
const NOTHING_SHARED_WAIT_MS: (u64, u64) = (200, 500);

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
}
/// Least time between two repeated version vectors for one group.
const RESEND_HAVE_EVERY: Duration = Duration::from_secs(5);

/// How a session went, so its supervisor knows when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Both revealed themselves in at least one group, and the session ran until the stream closed or this
    /// device's set of groups changed.
    Synced,
    /// Nothing in common.
    Nothing,
}

/// Runs one session to its end: until the stream closes, or this device's set of groups
/// changes (joined, created or forgotten), so that a new handshake covers exactly those.
/// A membership change does not end it: before each announcement and batch the session
/// re-checks where the peer stands in each group it shares (member, departed, unknown).
pub async fn run(
    node: Arc<Node>,
    peering: &Peering,
    net: &NetHandle,
    peer: PeerId,
    stream: libp2p::Stream,
    side: Side,
) -> anyhow::Result<Outcome> {
    let (mut reader, mut writer) = stream.split();
    // Until the handshake is done the peer is not dropped as a stranger; then what it
    // found decides (see `peering`).
    let exchange = peering.exchange(peer);
    // What this device could share as the handshake begins (see `peering`).
    let view = node.view_version();
    let groups = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake(
            &node,
            net.local_peer_id(),
            peer,
            side,
            &mut reader,
            &mut writer,
        ),
    )
    .await
    .context("handshake timed out")??;
    peering.handshake_done(&peer, !groups.is_empty(), view);
    drop(exchange);
    settle_addresses(&node, net, peer, &groups).await;
    if groups.is_empty() {
        // How long opening the peer's slots took must not tell it whether one was for us.
        let wait = NOTHING_SHARED_WAIT_MS.0 + OsRng.next_u64() % NOTHING_SHARED_WAIT_MS.1;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        tracing::debug!(peer = %short(&peer), "no shared group; closing session");
        return Ok(Outcome::Nothing);
    }
    tracing::debug!(peer = %short(&peer), groups = groups.len(), "sync session established");
    let _running = peering.running(peer);

    let link = Link::default();
    let mut push = tokio::spawn(push_loop(
        node.clone(),
        groups.clone(),
        view,
        link.clone(),
        writer,
    ));
    let receive = receive_loop(&node, &groups, &link, &mut reader);
    let result = tokio::select! {
        r = receive => r,
        r = &mut push => r.context("push task failed")?,
    };
    push.abort();
    tracing::debug!(peer = %short(&peer), "sync session ended");
    result.map(|()| Outcome::Synced)
}

/// Remembered addresses through which this session runs now belong to the memberships it
/// shares (or, sharing none, are forgotten): see `peers`.
async fn settle_addresses(node: &Arc<Node>, net: &NetHandle, peer: PeerId, shared: &Shared) {
    let addrs: Vec<libp2p::Multiaddr> = net
        .peers()
        .await
        .into_iter()
        .filter(|(p, _)| *p == peer)
        .flat_map(|(_, a)| a)
        .collect();
    let pairs: Vec<(GroupId, MemberId)> =
        shared.iter().map(|(g, id)| (*g, id.member_id())).collect();
    let node = node.clone();
    let settled =
        tokio::task::spawn_blocking(move || crate::peers::settle(node.store(), &addrs, &pairs))
            .await;
    if !matches!(settled, Ok(Ok(()))) {
        tracing::warn!("could not update the remembered addresses");
    }
}

/// The groups a session shares, each with the peer's identity in it. What each side sends
/// of a group depends on the peer's standing in it, checked anew as memberships change.
type Shared = BTreeMap<GroupId, PublicIdentity>;

/// The handshake: the groups where each side revealed itself to the other (none if the two
/// have nothing in common, or the peer is no one this device counts as a member).
async fn handshake<R, W>(
    node: &Arc<Node>,
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
    let session_key = SessionKey::generate(&mut OsRng);
    write_msg(
        writer,
        &SyncMessage::Hello {
            version: WIRE_VERSION,
            nonce,
            key: session_key.public(),
        },
    )
    .await?;
    let hello = tokio::time::timeout(
        FIRST_FRAME_TIMEOUT,
        read_msg(reader, MAX_HANDSHAKE_FRAME_LEN),
    )
    .await
    .context("the peer sent no hello in time")??;
    let (their_nonce, their_key) = match hello {
        Some(SyncMessage::Hello { nonce, key, .. }) => (nonce, key),
        _ => bail!("peer did not start with hello"),
    };
    let (local_b, peer_b) = (local.to_bytes(), peer.to_bytes());
    let my_key = session_key.public();
    let transcript = session::transcript(&match side {
        Side::Dialer => session::Hellos {
            dialer_peer: &local_b,
            listener_peer: &peer_b,
            dialer_nonce: &nonce,
            listener_nonce: &their_nonce,
            dialer_key: &my_key,
            listener_key: &their_key,
        },
        Side::Listener => session::Hellos {
            dialer_peer: &peer_b,
            listener_peer: &local_b,
            dialer_nonce: &their_nonce,
            listener_nonce: &nonce,
            dialer_key: &their_key,
            listener_key: &my_key,
        },
    });

    // One X25519 per (group, member), and the opening below one per group: off the async
    // workers, like every other piece of per-peer crypto.
    let worker = node.clone();
    let slots =
        tokio::task::spawn_blocking(move || worker.reveal_slots(&session_key, &transcript, side))
            .await
            .context("reveal worker failed")?;
    write_msg(writer, &SyncMessage::Reveal { slots }).await?;
    let their_slots = match read_msg(reader, MAX_HANDSHAKE_FRAME_LEN).await? {
        Some(SyncMessage::Reveal { slots }) => slots,
        _ => bail!("peer did not send its reveal"),
    };
    let worker = node.clone();
    let shared = tokio::task::spawn_blocking(move || {
        worker.open_reveals(&their_key, &transcript, side.other(), &their_slots)
    })
    .await
    .context("reveal worker failed")?;
    tracing::debug!(peer = %short(&peer), shared = shared.len(), "session handshake done");
    Ok(shared)
}

async fn receive_loop<R>(
    node: &Arc<Node>,
    groups: &Shared,
    link: &Link,
    reader: &mut R,
) -> anyhow::Result<()>
where
    R: futures::AsyncRead + Unpin,
{
    let mut last_resend: HashMap<GroupId, Instant> = HashMap::new();
    while let Some(msg) = read_msg::<_, SyncMessage>(reader, MAX_FRAME_LEN).await? {
        match msg {
            SyncMessage::Have { group_id, heads } => {
                let Some(peer) = groups.get(&group_id) else {
                    continue;
                };
                let vv = heads
                    .into_iter()
                    .map(|e| (e.author, (e.seq, e.hash)))
                    .collect();
                // Kept whatever the peer's standing: it is what we send from once it is a
                // member here. Only a member's confirmation counts for a departure.
                if node.standing(&group_id, peer) == Standing::Member {
                    node.note_peer_has(&group_id, &vv);
                }
                // Where the peer's log differs from ours, send ours so it sees the fork.
                let vv = node.reconcile_heads(&group_id, vv);
                lock(&link.known).insert(group_id, vv);
                link.wake.notify_one();
            }
            SyncMessage::HaveOwn {
                group_id,
                seq,
                hash,
            } => {
                let Some(peer) = groups.get(&group_id) else {
                    continue;
                };
                let Ok(me) = node.member_keys(&group_id).map(|k| k.member_id()) else {
                    continue;
                };
                // The peer wants our own log only: treat every other author as up to date.
                let mut vv = node.version_vector(&group_id);
                if node.standing(&group_id, peer) == Standing::Member {
                    node.note_peer_has(&group_id, &VersionVector::from([(me, (seq, hash))]));
                }
                vv.insert(me, (seq, hash));
                let vv = node.reconcile_heads(&group_id, vv);
                lock(&link.known).insert(group_id, vv);
                link.wake.notify_one();
            }
            SyncMessage::Envelopes {
                group_id,
                envelopes,
            } => {
                let Some(peer) = groups.get(&group_id) else {
                    continue;
                };
                let standing = node.standing(&group_id, peer);
                // From a peer no longer a member in our view, only its own log is taken.
                // From one not yet known here (the facilitator who admitted this device,
                // before the admission arrived) everything is, checked like any envelope:
                // its logs bring the admission.
                let own_only = standing == Standing::Departed;
                let decoded: Vec<Envelope> = envelopes
                    .into_iter()
                    .filter_map(|b| Envelope::decode(b).ok())
                    .filter(|e| !own_only || e.header().author == peer.member_id())
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
                // Confirm what arrived with our version vector: the sender learns it was
                // delivered (a member leaving waits for that).
                if ingest.accepted > 0 || ingest.roster_changed {
                    lock_set(&link.resend).insert(group_id);
                    link.wake.notify_one();
                }
                // Out-of-order envelopes were refused for now: once in a while, send our
                // version vector again so the peer resends what we still lack.
                if ingest.refused > 0
                    && last_resend
                        .get(&group_id)
                        .is_none_or(|t| t.elapsed() >= RESEND_HAVE_EVERY)
                {
                    last_resend.insert(group_id, Instant::now());
                    lock_set(&link.resend).insert(group_id);
                    link.wake.notify_one();
                }
            }
            // A late handshake message is ignored rather than trusted.
            SyncMessage::Hello { .. } | SyncMessage::Reveal { .. } => {}
        }
    }
    Ok(())
}

async fn push_loop<W>(
    node: Arc<Node>,
    groups: Shared,
    view: u64,
    link: Link,
    mut writer: W,
) -> anyhow::Result<()>
where
    W: futures::AsyncWrite + Unpin,
{
    let mut changed = node.subscribe();
    let mut groups_changed = node.subscribe_groups();
    let mut widened = node.subscribe_widened();
    // This device's groups changed during the handshake (a join just finished): the
    // notice came before the subscription above, so restart now to cover them.
    if node.view_version() != view {
        return Ok(());
    }
    // The peer's standing per group as last announced to it (by `Have` or `HaveOwn`).
    let mut told: HashMap<GroupId, Standing> = HashMap::new();
    loop {
        changed.borrow_and_update();
        // A standing that changed (an admission or removal reached us) is announced
        // before anything else is sent: a new member gets our version vector (so it
        // sends what we lack), a departed one only our head of its own log.
        let mut again = std::mem::take(&mut *lock_set(&link.resend));
        for (group_id, peer) in &groups {
            let standing = node.standing(group_id, peer);
            let was = told.insert(*group_id, standing);
            if was != Some(standing) {
                if was.is_some() {
                    tracing::debug!(?standing, "a peer's standing changed");
                }
                again.insert(*group_id);
            }
            if again.remove(group_id) {
                send_have(&node, *group_id, standing, peer, &mut writer).await?;
            }
        }
        let mut sent_any = false;
        for (group_id, peer) in &groups {
            let Some(vv) = lock(&link.known).get(group_id).cloned() else {
                continue; // their version vector has not arrived yet
            };
            // Nothing unless the peer is a member now, checked with the read under one
            // lock: never a group's envelopes to someone who is no longer in it.
            let batch = node.missing_for_member(
                group_id,
                peer,
                &vv,
                MAX_BATCH_ENVELOPES,
                BATCH_BYTE_BUDGET,
            );
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
            // Someone new counts as a member of a group this session does not share: the
            // peer may be them, so a fresh handshake is due. (Missed notices restart too.)
            w = widened.recv() => match w {
                Ok(group) if groups.contains_key(&group) => {}
                _ => return Ok(()),
            },
        }
    }
}

/// Announces the peer's standing in one group: to a member, and to the facilitator who
/// admitted us before our admission arrived, our version vector; to a peer that left or
/// was removed, only our head of its own log; to one not known here as a member, nothing.
async fn send_have<W>(
    node: &Node,
    group_id: GroupId,
    standing: Standing,
    peer: &PublicIdentity,
    writer: &mut W,
) -> anyhow::Result<()>
where
    W: futures::AsyncWrite + Unpin,
{
    match standing {
        Standing::Unknown => Ok(()),
        // Only our version vector, so the facilitator who admitted us sends what we lack
        // (our admission first of all); `missing_for_member` sends it nothing.
        Standing::Introducer => send_vv(node, group_id, writer).await,
        Standing::Departed => {
            let (seq, hash) = node
                .version_vector(&group_id)
                .get(&peer.member_id())
                .copied()
                .unwrap_or((0, [0; 32]));
            write_msg(
                writer,
                &SyncMessage::HaveOwn {
                    group_id,
                    seq,
                    hash,
                },
            )
            .await
        }
        Standing::Member => send_vv(node, group_id, writer).await,
    }
}

/// Sends our version vector of one group.
async fn send_vv<W>(node: &Node, group_id: GroupId, writer: &mut W) -> anyhow::Result<()>
where
    W: futures::AsyncWrite + Unpin,
{
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
            *entry = (h.seq, env.chain_hash());
        }
    }
}

fn lock(known: &Known) -> std::sync::MutexGuard<'_, HashMap<GroupId, VersionVector>> {
    known.lock().unwrap_or_else(|p| p.into_inner())
}
