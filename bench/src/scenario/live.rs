//! Live: A and B connected; each edit on A is timed until B's API shows it. Baseline:
//! the same edits synced one by one by automerge's sync protocol to another process.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use crate::api::Events;
use crate::baseline::{Peer, Workload};
use crate::fleet::Member;

/// Edits made before measuring, so connection set-up and first-use costs are not counted.
const WARM_UP: usize = 20;

/// Latency of each edit, in milliseconds.
pub fn hearth(root: &Path, edits: usize, rt: &tokio::runtime::Runtime) -> Result<Vec<f64>> {
    let mut a = Member::start("Ana", &root.join("a"));
    let mut b = Member::start("Ben", &root.join("b"));
    let group = a.create_group("Circle");
    b.join(&a.invite(&group, None)?);
    let samples = rt.block_on(async {
        let mut events = Events::subscribe(b.socket()).await?;
        let mut samples = Vec::with_capacity(edits);
        for i in 0..WARM_UP + edits {
            let start = Instant::now();
            let id = a
                .api
                .add_agreement(&group, &format!("live edit {i}"))
                .await?;
            events
                .until("B to show the edit", || b.api.has_agreement(&group, &id))
                .await?;
            if i >= WARM_UP {
                samples.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        anyhow::Ok(samples)
    })?;
    a.stop();
    b.stop();
    Ok(samples)
}

/// Latency of each edit in the baseline, in milliseconds.
pub fn baseline(edits: usize, rt: &tokio::runtime::Runtime) -> Result<Vec<f64>> {
    let mut work = Workload::new()?;
    rt.block_on(async {
        let mut peer = Peer::start().await?;
        let mut doc = work.automerge()?;
        let mut samples = Vec::with_capacity(edits);
        for i in 0..WARM_UP + edits {
            let start = Instant::now();
            doc.apply_changes(work.add(&format!("live edit {i}"))?)?;
            peer.sync_until_current(&mut doc).await?;
            if i >= WARM_UP {
                samples.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok(samples)
    })
}
