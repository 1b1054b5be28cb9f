//! Real hearthd processes for the scenarios: started quietly on loopback, each with its
//! API at hand, and the file-system chores around their data dirs.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use hearth_protocol::invite::InviteToken;
use hearth_tests::{Daemon, Launch};

use crate::api::Api;

/// What the daemons log while measured, unless `HEARTH_LOG` says otherwise: warnings only,
/// so logging costs nothing.
const BENCH_LOG_FILTER: &str = "warn";

pub struct Member {
    pub daemon: Daemon,
    pub api: Api,
}

impl Member {
    /// Starts hearthd on `dir` listening on a random loopback port, mDNS off.
    pub fn start(name: &str, dir: &Path) -> Member {
        Member::start_listening(name, dir, "/ip4/127.0.0.1/tcp/0")
    }

    /// Starts hearthd on `dir` listening on `listen`, mDNS off.
    pub fn start_listening(name: &str, dir: &Path, listen: &str) -> Member {
        // The log and socket go beside the data dir.
        if let Some(parent) = dir.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let launch = Launch {
            wrapper: Vec::new(),
            net_args: vec!["--listen".into(), listen.into(), "--no-mdns".into()],
            log_filter: std::env::var("HEARTH_LOG").unwrap_or_else(|_| BENCH_LOG_FILTER.into()),
        };
        let daemon = Daemon::start_with(name, dir, launch);
        let api = Api::new(&daemon.socket);
        Member { daemon, api }
    }

    pub fn socket(&self) -> &Path {
        &self.daemon.socket
    }

    pub fn pid(&self) -> Result<u32> {
        self.daemon
            .pid()
            .ok_or_else(|| anyhow!("{} is not running", self.daemon.name))
    }

    /// This member's id in `group` (each membership has its own).
    pub fn member_id(&self, group: &str) -> String {
        self.daemon.member_id(group)
    }

    /// Creates a group named `name` with this member as facilitator; returns its id.
    pub fn create_group(&self, name: &str) -> String {
        self.daemon
            .json(&["group", "create", name, "--my-name", &self.daemon.name])["group_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// A one-time invite token to `group`; with `via`, the token names that address
    /// instead of this daemon's own (so the joiner's traffic goes through a relay).
    pub fn invite(&self, group: &str, via: Option<&str>) -> Result<String> {
        let token = self.daemon.json(&["invite", group, "--no-qr"])["token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let Some(addr) = via else {
            return Ok(token);
        };
        let mut decoded = InviteToken::decode(&token).context("reading our own token")?;
        decoded.addrs = vec![addr.to_owned()];
        Ok(decoded.encode())
    }

    /// Has this member join with `token` under its own name.
    pub fn join(&self, token: &str) {
        self.daemon
            .json(&["join", token, "--name", &self.daemon.name]);
    }

    pub fn stop(&mut self) {
        self.daemon.stop();
    }
}

/// Copies a stopped daemon's data dir (and nothing else) to `to`.
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Bytes of every file under `dir` (their lengths, as `du --apparent-size` counts).
pub fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
