//! The shared fixture of the catch-up, join and disk scenarios: A writes a long history
//! through its API while B, a member, is offline.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

use crate::fleet::{Member, dir_bytes};
use crate::proxy::{Proxy, socket_addr};

/// Two stopped daemons' data dirs: A wrote `changes` agreements after B joined and went
/// offline.
pub struct History {
    pub a_dir: PathBuf,
    pub b_dir: PathBuf,
    pub group: String,
    pub changes: usize,
    /// The id of A's last agreement: a daemon that shows it has all of A's history.
    pub last_id: String,
    /// A's data dir before and after the writes.
    pub a_bytes_before: u64,
    pub a_bytes_after: u64,
    /// How long the writes took, one API call after another.
    pub writing: Duration,
}

/// The text of the `i`-th agreement of a history (the baseline writes the same).
pub fn text(i: usize) -> String {
    format!("agreement number {i:05} of the group's long history")
}

/// The same history as plain automerge: one change per agreement, worded alike.
pub fn as_automerge(changes: usize) -> Result<automerge::Automerge> {
    let mut work = crate::baseline::Workload::new()?;
    for i in 0..changes {
        work.add(&text(i))?;
    }
    work.automerge()
}

pub fn build(root: &Path, changes: usize, rt: &tokio::runtime::Runtime) -> Result<History> {
    let a_dir = root.join("a");
    let b_dir = root.join("b");
    let mut a = Member::start("Ana", &a_dir);
    let mut b = Member::start("Ben", &b_dir);
    let group = a.create_group("Circle");
    // B joins through a relay that is gone afterwards, so the only address B remembers
    // for A leads nowhere: in each run B reaches A only when the harness says so.
    let a_addr = socket_addr(&a.daemon.addr()).ok_or_else(|| anyhow::anyhow!("A's address"))?;
    let relay = rt.block_on(Proxy::start(a_addr))?;
    b.join(&a.invite(&group, Some(&relay.multiaddr()))?);
    b.stop();
    drop(relay);
    let a_bytes_before = dir_bytes(&a_dir)?;

    let start = Instant::now();
    let last_id = rt.block_on(async {
        let mut last = String::new();
        for i in 0..changes {
            last = a.api.add_agreement(&group, &text(i)).await?;
        }
        anyhow::Ok(last)
    })?;
    let writing = start.elapsed();
    ensure!(!last_id.is_empty(), "no agreement was written");
    a.stop();
    let a_bytes_after = dir_bytes(&a_dir)?;
    Ok(History {
        a_dir,
        b_dir,
        group,
        changes,
        last_id,
        a_bytes_before,
        a_bytes_after,
        writing,
    })
}
