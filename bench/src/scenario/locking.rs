//! Locking: what unlocking, locking and the panic button cost on a daemon holding some
//! content behind a passphrase. Unlock is timed from request to answer against its floor,
//! the Argon2id derivation alone with the same parameters, run in this process on a copy of
//! the daemon's own key file. Lock and panic have no baseline: they are reported as times,
//! panic with the size of what it destroyed.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use hearth_protocol::api::Passphrase;
use hearthd::vault::{KdfParams, Opened, Vault};
use serde_json::{Value, json};

use crate::api::{Api, PATIENCE};
use crate::fleet::{Member, copy_dir, dir_bytes};

/// The passphrase the scenario sets (any passphrase costs the same to derive).
const PASSPHRASE: &str = "a bench passphrase of some length";

pub struct Shape {
    /// Agreements in the daemon's one group.
    pub agreements: usize,
}

/// One run's figures, in milliseconds except `panic_bytes`.
pub struct Run {
    /// `POST /v1/unlock`, request to answer.
    pub unlock_ms: f64,
    /// `Vault::unlock` on a copy of the daemon's key file, in this process: one Argon2id
    /// derivation, the key file read and a slot opened.
    pub kdf_ms: f64,
    /// Zeroing a block as large as the derivation's memory: what hearthd's allocator adds
    /// to freeing that memory, and this process does not.
    pub wipe_ms: f64,
    /// `POST /v1/lock`, request to answer.
    pub lock_ms: f64,
    /// `POST /v1/panic` on an unlocked copy of the daemon, request to answer.
    pub panic_answer_ms: f64,
    /// The same, request to the process's exit.
    pub panic_exit_ms: f64,
    /// The copy's data directory just before the panic, in bytes.
    pub panic_bytes: u64,
}

/// The daemon, locked, and what it holds.
pub struct Fixture {
    member: Member,
    group: String,
    agreements: usize,
    /// The data dir while locked, in bytes.
    pub data_bytes: u64,
    /// The Argon2id parameters in the daemon's key file.
    pub params: KdfParams,
}

/// Starts a daemon, writes `shape.agreements` agreements in one group, sets a passphrase
/// and locks it.
pub fn build(root: &Path, shape: &Shape, rt: &tokio::runtime::Runtime) -> Result<Fixture> {
    let member = Member::start("Ana", &root.join("a"));
    let group = member.create_group("Circle");
    rt.block_on(async {
        for i in 0..shape.agreements {
            member
                .api
                .add_agreement(&group, &super::history::text(i))
                .await?;
        }
        let status = member
            .api
            .put("/v1/passphrase", &json!({ "passphrase": PASSPHRASE }))
            .await?;
        ensure!(status["passphrase"] == true, "no passphrase set: {status}");
        let status = member.api.post("/v1/lock", &json!({})).await?;
        ensure!(status["locked"] == true, "not locked: {status}");
        anyhow::Ok(())
    })?;
    let data_bytes = dir_bytes(&member.daemon.data_dir)?;
    let params = key_file_params(&member.daemon.data_dir.join(hearthd::vault::KEY_FILE))?;
    Ok(Fixture {
        member,
        group,
        agreements: shape.agreements,
        data_bytes,
        params,
    })
}

impl Fixture {
    /// One run, in `root`: unlock, check, lock, the derivation alone, then panic on a copy.
    pub fn run(&mut self, root: &Path, rt: &tokio::runtime::Runtime) -> Result<Run> {
        let unlock_ms = rt.block_on(timed_unlock(&self.member.api))?;
        rt.block_on(self.check_content(&self.member.api))?;
        let lock_ms = rt.block_on(async {
            let start = Instant::now();
            let status = self.member.api.post("/v1/lock", &json!({})).await?;
            let ms = start.elapsed().as_secs_f64() * 1e3;
            ensure!(status["locked"] == true, "not locked: {status}");
            anyhow::Ok(ms)
        })?;

        let kdf_ms = self.kdf_alone(&root.join("vault"))?;
        let wipe_ms = wipe_alone(self.params.m_cost_kib as usize * 1024);

        // The copy is taken while the daemon is locked: its store is closed.
        let copy = root.join("panic");
        copy_dir(&self.member.daemon.data_dir, &copy)?;
        let mut doomed = Member::start("Ana", &copy);
        rt.block_on(async {
            timed_unlock(&doomed.api).await?;
            self.check_content(&doomed.api).await
        })?;
        let panic_bytes = dir_bytes(&copy)?;
        let pid = doomed.pid()?;
        let (panic_answer_ms, panic_exit_ms) = rt.block_on(timed_panic(&doomed.api, pid))?;
        let status = doomed.daemon.wait_for_exit();
        ensure!(
            status.success(),
            "hearthd exited with {status} after a panic"
        );
        for left in ["keys", "store"] {
            ensure!(
                !copy.join(left).exists(),
                "{left} is still there after a panic"
            );
        }
        Ok(Run {
            unlock_ms,
            kdf_ms,
            wipe_ms,
            lock_ms,
            panic_answer_ms,
            panic_exit_ms,
            panic_bytes,
        })
    }

    /// The unlocked daemon shows the whole group: unlocking really opened the store.
    async fn check_content(&self, api: &Api) -> Result<()> {
        let listed = api
            .get(&format!("/v1/groups/{}/agreements", self.group))
            .await?;
        let count = listed.as_array().map_or(0, Vec::len);
        ensure!(
            count == self.agreements,
            "the unlocked daemon shows {count} agreements, not {}",
            self.agreements
        );
        Ok(())
    }

    /// `Vault::unlock` on a copy of the daemon's key file (same salt, same parameters).
    fn kdf_alone(&self, dir: &Path) -> Result<f64> {
        std::fs::create_dir_all(dir)?;
        // `fs::copy` keeps the file's mode (0600), which the vault insists on.
        std::fs::copy(
            self.member.daemon.data_dir.join(hearthd::vault::KEY_FILE),
            dir.join(hearthd::vault::KEY_FILE),
        )
        .context("copying the key file")?;
        let vault = Vault::new(dir);
        let passphrase = Passphrase::new(PASSPHRASE.to_owned());
        let start = Instant::now();
        let opened = vault.unlock(&passphrase)?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        ensure!(
            matches!(opened, Opened::Storage(_)),
            "the passphrase opened the wrong slot"
        );
        Ok(ms)
    }

    pub fn stop(&mut self) {
        self.member.stop();
    }
}

async fn timed_unlock(api: &Api) -> Result<f64> {
    let start = Instant::now();
    let status = api
        .post("/v1/unlock", &json!({ "passphrase": PASSPHRASE }))
        .await?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    ensure!(status["locked"] == false, "still locked: {status}");
    Ok(ms)
}

/// `POST /v1/panic`: milliseconds to the answer and to the process's exit. The exit is
/// watched from before the request (a pidfd, which leaves the child for `wait` to reap).
async fn timed_panic(api: &Api, pid: u32) -> Result<(f64, f64)> {
    let pidfd = pidfd_open(pid)?;
    let exited = tokio::task::spawn_blocking(move || wait_readable(&pidfd));
    let start = Instant::now();
    let answer: Value = api.post("/v1/panic", &json!({})).await?;
    let answered = start.elapsed().as_secs_f64() * 1e3;
    ensure!(answer["destroyed"] == true, "panic answered {answer}");
    let exit = exited.await??;
    Ok((answered, exit.duration_since(start).as_secs_f64() * 1e3))
}

fn pidfd_open(pid: u32) -> Result<OwnedFd> {
    // SAFETY: pidfd_open(2) with a pid and no flags; it returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        bail!("pidfd_open: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor the call above just opened, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Blocks until the process behind `pidfd` has exited (at most [`PATIENCE`]), and returns
/// when that was seen.
fn wait_readable(pidfd: &OwnedFd) -> Result<Instant> {
    let mut poll = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = i32::try_from(PATIENCE.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: one valid pollfd, for the duration of the call.
        let n = unsafe { libc::poll(&mut poll, 1, timeout) };
        match n {
            1.. => return Ok(Instant::now()),
            0 => bail!("hearthd did not exit after a panic"),
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => bail!("poll: {}", std::io::Error::last_os_error()),
        }
    }
}

/// What hearthd's global allocator (`hearthd::wipe::WipeOnFree`) adds to freeing the
/// derivation's memory: zeros written over a block of `bytes` that was written through,
/// as that memory is, in milliseconds (the same `write_bytes` the allocator does). This process runs on the system allocator, so its
/// `kdf_ms` frees the same memory without this.
fn wipe_alone(bytes: usize) -> f64 {
    let mut block = vec![0x5au8; bytes];
    std::hint::black_box(&mut block);
    let start = Instant::now();
    block.fill(0);
    std::hint::black_box(&mut block);
    start.elapsed().as_secs_f64() * 1e3
}

/// The Argon2id parameters in a wrapped key file (see `hearthd::vault`'s layout:
/// `"hearth-keys" || version || mode || m_cost || t_cost || p_cost || ...`, little-endian).
fn key_file_params(path: &Path) -> Result<KdfParams> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let rest = bytes
        .strip_prefix(b"hearth-keys".as_slice())
        .context("not a key file")?;
    ensure!(rest.len() >= 14, "a key file cut short");
    ensure!(rest[..2] == [2, 1], "not a wrapped key file of version 2");
    let word = |i: usize| u32::from_le_bytes(rest[2 + 4 * i..6 + 4 * i].try_into().unwrap());
    Ok(KdfParams {
        m_cost_kib: word(0),
        t_cost: word(1),
        p_cost: word(2),
    })
}
