//! Join: a new member joins a group with a long history. Time from `join` until the group
//! is readable on the joiner (it shows A's last agreement); against automerge saving and
//! loading the same document.

use std::path::Path;
use std::time::Instant;

use anyhow::{Result, ensure};
use serde_json::json;

use super::history::History;
use crate::api::Events;
use crate::fleet::{Member, copy_dir};

pub fn hearth(root: &Path, h: &History, rt: &tokio::runtime::Runtime) -> Result<f64> {
    copy_dir(&h.a_dir, &root.join("a"))?;
    let mut a = Member::start("Ana", &root.join("a"));
    let mut c = Member::start("Cy", &root.join("c"));
    let token = a.invite(&h.group, None)?;
    let ms = rt.block_on(async {
        let mut events = Events::subscribe(c.socket()).await?;
        let start = Instant::now();
        let joined = c
            .api
            .post("/v1/join", &json!({ "token": token, "name": "Cy" }))
            .await?;
        ensure!(joined["group_id"] == h.group.as_str(), "joined {joined}");
        events
            .until("the joiner to show A's last agreement", || {
                c.api.has_agreement(&h.group, &h.last_id)
            })
            .await?;
        anyhow::Ok(start.elapsed().as_secs_f64() * 1e3)
    })?;
    a.stop();
    c.stop();
    Ok(ms)
}

/// automerge's own snapshot of `history`: save() it, load() it again.
pub fn baseline(history: &automerge::Automerge) -> Result<f64> {
    let start = Instant::now();
    let saved = history.save();
    let loaded = automerge::Automerge::load(&saved)?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    ensure!(
        loaded.get_heads() == history.get_heads(),
        "save/load lost changes"
    );
    Ok(ms)
}
