//! Catch-up: B was offline while A wrote the history; B connects. Time until B's API shows
//! A's last agreement, and the bytes both ways; against automerge's sync protocol bringing
//! an empty document up to date over plain TCP, with the same changes.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use serde_json::json;

use super::history::History;
use crate::api::Events;
use crate::baseline::Peer;
use crate::fleet::{Member, copy_dir};
use crate::proxy::{Proxy, socket_addr};

pub struct Run {
    pub ms: f64,
    pub bytes: u64,
}

/// One hearth catch-up on fresh copies of the history's data dirs.
pub fn hearth(root: &Path, h: &History, rt: &tokio::runtime::Runtime) -> Result<Run> {
    copy_dir(&h.a_dir, &root.join("a"))?;
    copy_dir(&h.b_dir, &root.join("b"))?;
    let mut a = Member::start("Ana", &root.join("a"));
    let mut b = Member::start("Ben", &root.join("b"));
    let a_addr = socket_addr(&a.daemon.addr()).context("A's address")?;
    let run = rt.block_on(async {
        let relay = Proxy::start(a_addr).await?;
        let mut events = Events::subscribe(b.socket()).await?;
        let start = Instant::now();
        b.api
            .post("/v1/peers", &json!({ "addr": relay.multiaddr() }))
            .await?;
        events
            .until("B to show A's last agreement", || {
                b.api.has_agreement(&h.group, &h.last_id)
            })
            .await?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let bytes = relay.bytes();
        // Untimed: B shows exactly what A shows.
        let path = format!("/v1/groups/{}/agreements", h.group);
        let (on_a, on_b) = (a.api.get(&path).await?, b.api.get(&path).await?);
        ensure!(
            on_a == on_b,
            "B's agreements differ from A's after catch-up"
        );
        ensure!(
            on_b.as_array().map(Vec::len) == Some(h.changes),
            "B shows {} agreements, A wrote {}",
            on_b.as_array().map_or(0, Vec::len),
            h.changes
        );
        anyhow::Ok(Run { ms, bytes })
    })?;
    a.stop();
    b.stop();
    Ok(run)
}

/// One baseline catch-up: an empty automerge document in another process brought up to
/// date with `history` (the same changes, as plain automerge).
pub fn baseline(history: &automerge::Automerge, rt: &tokio::runtime::Runtime) -> Result<Run> {
    let mut doc = history.clone();
    rt.block_on(async {
        let mut peer = Peer::start().await?;
        let took = peer.sync_until_current(&mut doc).await?;
        Ok(Run {
            ms: took.as_secs_f64() * 1e3,
            bytes: peer.bytes,
        })
    })
}

/// What automerge alone takes to apply the same changes, in one batch, to an empty
/// document: the least a receiver that checks every change before applying it must spend
/// (hearth's receiver applies them the same way, after its checks). Milliseconds.
pub fn apply_floor(history: &automerge::Automerge) -> Result<f64> {
    let changes = history.get_changes(&[]);
    let mut doc = automerge::AutoCommit::new();
    let start = Instant::now();
    doc.apply_changes_batch(changes)
        .context("applying the history's changes")?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    ensure!(
        doc.get_heads() == history.get_heads(),
        "the applied document's heads differ from the history's"
    );
    Ok(ms)
}
