//! Idle: one daemon in many groups with several connected peers, doing nothing. Its
//! resident memory and CPU use over a quiet window; against a daemon with no groups.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::fleet::Member;

pub struct Usage {
    pub rss_mib: f64,
    pub cpu_percent: f64,
}

pub struct Shape {
    pub groups: usize,
    pub peers: usize,
    /// How long the daemons are left alone before measuring (sessions settle).
    pub settle: Duration,
    /// How long CPU time is measured over.
    pub window: Duration,
}

pub fn hearth(root: &Path, shape: &Shape) -> Result<Usage> {
    let mut hub = Member::start("Hub", &root.join("hub"));
    let mut peers: Vec<Member> = (0..shape.peers)
        .map(|i| Member::start(&format!("P{i}"), &root.join(format!("p{i}"))))
        .collect();
    for g in 0..shape.groups {
        let group = hub.create_group(&format!("Group {g}"));
        for peer in &peers {
            peer.join(&hub.invite(&group, None)?);
        }
    }
    std::thread::sleep(shape.settle);
    let connected = hub.daemon.json(&["status"])["peers"].as_u64().unwrap_or(0);
    ensure!(
        connected as usize == shape.peers,
        "the hub has {connected} peers connected, not {}",
        shape.peers
    );
    let usage = measure(hub.pid()?, shape.window)?;
    hub.stop();
    for p in &mut peers {
        p.stop();
    }
    Ok(usage)
}

/// A daemon with no group and no peer, measured the same way.
pub fn baseline(root: &Path, shape: &Shape) -> Result<Usage> {
    let mut lone = Member::start("Lone", &root.join("lone"));
    std::thread::sleep(shape.settle);
    let usage = measure(lone.pid()?, shape.window)?;
    lone.stop();
    Ok(usage)
}

fn measure(pid: u32, window: Duration) -> Result<Usage> {
    let before = cpu_ticks(pid)?;
    std::thread::sleep(window);
    let after = cpu_ticks(pid)?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu_percent = (after - before) as f64 / ticks_per_sec / window.as_secs_f64() * 100.0;
    Ok(Usage {
        rss_mib: rss_kib(pid)? as f64 / 1024.0,
        cpu_percent,
    })
}

/// User plus system CPU time of `pid`, in clock ticks (`/proc/PID/stat` fields 14, 15).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("odd /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3, so fields 14 and 15 are at 11 and 12.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// Resident set size of `pid` in KiB (`VmRSS` of `/proc/PID/status`).
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()
        .context("odd VmRSS")
}
