//! Rotation: a facilitator removes a member from a large group. Time from the removal
//! until every remaining daemon writes under the new epoch.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures::future::try_join_all;

use crate::api::Events;
use crate::fleet::Member;

/// How long the group is left alone before each removal.
const QUIET_BEFORE_REMOVAL: Duration = Duration::from_secs(2);

pub struct Group {
    members: Vec<Member>,
    group: String,
}

/// A group of `size` daemons: the first created it and admitted the others one by one.
pub fn build(root: &Path, size: usize, rt: &tokio::runtime::Runtime) -> Result<Group> {
    let first = Member::start("M00", &root.join("m00"));
    let group = first.create_group("Circle");
    let mut members = vec![first];
    for i in 1..size {
        let m = Member::start(&format!("M{i:02}"), &root.join(format!("m{i:02}")));
        m.join(&members[0].invite(&group, None)?);
        members.push(m);
    }
    // Settled: everyone writes under the facilitator's epoch.
    rt.block_on(async {
        let epoch = members[0].api.writing_epoch(&group).await?;
        for m in &members[1..] {
            let mut events = Events::subscribe(m.socket()).await?;
            events
                .until("every member to reach the admissions' epoch", || async {
                    m.api.writing_epoch(&group).await.ok().flatten() == epoch
                })
                .await?;
        }
        anyhow::Ok(())
    })?;
    Ok(Group { members, group })
}

impl Group {
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Removes the newest member; returns the time until every remaining member writes
    /// under the epoch the removal started, in milliseconds. The epoch is the one the
    /// removal's answer names, and the members are watched all at once, so the figure holds
    /// no round trips of the harness's own.
    pub fn remove_one(&mut self, rt: &tokio::runtime::Runtime) -> Result<f64> {
        // Untimed: the previous removal's follow-up (its member's daemon stopping, sessions
        // closing) is over, so each removal is measured on a quiet group. The disk is quiet
        // too: what the harness wrote before (other scenarios' histories, stopped daemons'
        // stores) is flushed now, not by the kernel in the middle of the removal's fsyncs.
        flush_page_cache()?;
        std::thread::sleep(QUIET_BEFORE_REMOVAL);
        let mut removed = self.members.pop().context("the group is empty")?;
        let group = self.group.clone();
        let removed_id = removed.member_id(&group);
        let ms = rt.block_on(async {
            let mut watching = Vec::new();
            for m in &self.members[1..] {
                watching.push((m, Events::subscribe(m.socket()).await?));
            }
            let facilitator = &self.members[0];
            let before = facilitator.api.writing_epoch(&group).await?;
            let start = Instant::now();
            let removal = facilitator
                .api
                .delete(&format!("/v1/groups/{group}/members/{removed_id}"))
                .await?;
            let epoch = removal["epoch"].as_u64();
            ensure!(
                epoch.is_some() && epoch > before,
                "the removal started no new epoch: {removal}"
            );
            let group = &group;
            try_join_all(watching.iter_mut().map(|(m, events)| {
                let m: &Member = m;
                events.until(
                    "a member to write under the new epoch",
                    move || async move { m.api.writing_epoch(group).await.ok().flatten() == epoch },
                )
            }))
            .await?;
            anyhow::Ok(start.elapsed().as_secs_f64() * 1e3)
        })?;
        removed.stop();
        Ok(ms)
    }

    pub fn stop(&mut self) {
        for m in &mut self.members {
            m.stop();
        }
    }
}

/// Writes every dirty page of every file system out to disk (sync(1)).
fn flush_page_cache() -> Result<()> {
    let status = std::process::Command::new("sync")
        .status()
        .context("running sync")?;
    ensure!(status.success(), "sync failed: {status}");
    Ok(())
}
