//! Locked or unlocked: the daemon's keys and everything that needs them.
//!
//! Unlocked, the store, the groups and networking live on a runtime of their own (see
//! [`crate::daemon::start`]), and requests reach them through a [`Gate`]. Locking closes
//! the gate and shuts that runtime down, which drops every task it ran and with them every
//! key, decrypted document and cache (wiped as freed, by [`crate::wipe::WipeOnFree`]);
//! the threads scrub their stacks as they end. A locked daemon keeps only the key file's
//! path and the API socket.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use hearth_protocol::api::{self, Passphrase};
use tokio::runtime::{Handle, Runtime};

use crate::config::Config;
use crate::http::AppState;
use crate::node::Node;
use crate::store::{self, DataDir};
use crate::vault::{KdfParams, KeyFile, Opened, StorageKey, Vault, VaultError};
use crate::wipe::scrub_stack;

/// Wrong passphrases allowed in a row before each further try must wait.
const FREE_TRIES: u32 = 3;
/// The longest wait between tries after many wrong ones.
const MAX_WAIT: Duration = Duration::from_secs(300);
/// How long locking waits for work in flight (a write being made durable) to finish.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("hearthd is locked; run `hearth unlock` and try again")]
    Locked,

    #[error("hearthd is already unlocked")]
    AlreadyUnlocked,

    #[error("that passphrase is not right; nothing changed")]
    WrongPassphrase,

    #[error(
        "too many wrong passphrases in a row; wait {secs} second{} before trying again",
        if *secs == 1 { "" } else { "s" }
    )]
    SlowDown { secs: u64 },

    #[error(
        "no passphrase protects this store, so hearthd cannot lock; set one first with \
         `hearth passphrase set`"
    )]
    NotProtected,

    #[error("a passphrase is set already; change it with `hearth passphrase change`")]
    AlreadyProtected,

    #[error("{0}")]
    Refused(String),

    #[error(
        "hearthd locked while this request ran, so it may or may not have been done; unlock \
         it with `hearth unlock` and look before trying again"
    )]
    Interrupted,

    #[error("{0:#}")]
    Internal(anyhow::Error),
}

impl From<VaultError> for KeeperError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::WrongPassphrase => KeeperError::WrongPassphrase,
            VaultError::NotProtected => KeeperError::NotProtected,
            VaultError::TooShort
            | VaultError::SameAsPassphrase
            | VaultError::SameAsDuress
            | VaultError::Destroyed => KeeperError::Refused(e.to_string()),
            other => KeeperError::Internal(other.into()),
        }
    }
}

/// What a request to the unlocked daemon needs: the API's state and router, and the
/// runtime the request runs on (so that what it spawns ends when the daemon locks).
#[derive(Clone)]
pub struct Gate {
    pub state: AppState,
    pub router: axum::Router,
    pub handle: Handle,
}

struct Running {
    runtime: Runtime,
    stop: tokio::sync::watch::Sender<bool>,
    node: Weak<Node>,
}

#[derive(Default)]
struct Tries {
    wrong_in_a_row: u32,
    not_before: Option<Instant>,
}

pub struct Keeper {
    config: Config,
    dir: Arc<DataDir>,
    vault: Vault,
    /// Serialises unlocking, locking and passphrase changes.
    running: tokio::sync::Mutex<Option<Running>>,
    gate: std::sync::RwLock<Option<Gate>>,
    /// When the last client request came, on the clock that keeps counting while the
    /// computer sleeps (so a laptop closed overnight locks when it wakes).
    last_request: std::sync::Mutex<Duration>,
    tries: std::sync::Mutex<Tries>,
    /// Whether a passphrase protects the store, as of the last start or change (not read
    /// from the file each time: a damaged or unreadable file must not turn locking off).
    protected: AtomicBool,
    panicked: AtomicBool,
    exit: tokio::sync::watch::Sender<bool>,
    /// The TCP port the first unlock was given for `--listen .../tcp/0`, asked for again
    /// on every later unlock, so that peers who remember this daemon's address still
    /// reach it after a lock.
    port: std::sync::Mutex<Option<u16>>,
    /// The node of the last unlock: a new one may not open the store while it lives.
    last_node: std::sync::Mutex<Weak<Node>>,
}

impl Keeper {
    pub fn new(config: Config, dir: Arc<DataDir>) -> Arc<Keeper> {
        let vault = Vault::new(dir.path());
        Arc::new(Keeper {
            config,
            dir,
            vault,
            running: tokio::sync::Mutex::new(None),
            gate: std::sync::RwLock::new(None),
            last_request: std::sync::Mutex::new(since_boot()),
            tries: std::sync::Mutex::new(Tries::default()),
            protected: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            exit: tokio::sync::watch::channel(false).0,
            port: std::sync::Mutex::new(None),
            last_node: std::sync::Mutex::new(Weak::new()),
        })
    }

    /// Finishes what a crash interrupted, then unlocks at once when no passphrase protects
    /// the store (making a key for a new one).
    pub async fn start_if_unprotected(&self) -> anyhow::Result<()> {
        let vault = self.vault.clone();
        let dir = self.dir.path().to_owned();
        let key = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<StorageKey>> {
            store::recover(&dir, &vault)?;
            let key = match vault.read()? {
                Some(KeyFile::Plain(key)) => Some(key),
                Some(KeyFile::Wrapped(_)) => None,
                None => Some(store::key_for_new_or_legacy(&dir, &vault)?),
            };
            scrub_stack();
            Ok(key)
        })
        .await??;
        self.protected.store(key.is_none(), Ordering::SeqCst);
        if let Some(key) = key {
            let mut running = self.running.lock().await;
            *running = Some(self.start(key).await.map_err(|e| anyhow::anyhow!("{e}"))?);
        }
        Ok(())
    }

    pub fn protected(&self) -> bool {
        self.protected.load(Ordering::SeqCst)
    }

    pub fn is_locked(&self) -> bool {
        self.gate().is_none()
    }

    /// The way in to the unlocked daemon, or `None` while locked.
    pub fn gate(&self) -> Option<Gate> {
        self.gate.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Notes a client request, which holds off auto-lock.
    pub fn touch(&self) {
        *self.last_request.lock().unwrap_or_else(|p| p.into_inner()) = since_boot();
    }

    fn idle_for(&self) -> Duration {
        let last = *self.last_request.lock().unwrap_or_else(|p| p.into_inner());
        since_boot().saturating_sub(last)
    }

    pub async fn status(&self) -> api::Status {
        let mut status = api::Status {
            locked: true,
            passphrase: self.protected(),
            auto_lock_secs: self.config.auto_lock.map(|d| d.as_secs()),
            listen_addrs: None,
            peers: None,
            groups: None,
        };
        if let Some(gate) = self.gate() {
            let net = &gate.state.net;
            status.locked = false;
            status.listen_addrs = Some(
                net.listen_addrs()
                    .await
                    .iter()
                    .map(|a| a.to_string())
                    .collect(),
            );
            status.peers = Some(net.peers().await.len());
            status.groups = Some(gate.state.node.group_count());
        }
        status
    }

    /// Opens the store with `passphrase`. The duress passphrase destroys the store and
    /// unlocks a fresh, empty one that only it opens, and answers exactly as an unlock.
    pub async fn unlock(&self, passphrase: Passphrase) -> Result<(), KeeperError> {
        let mut running = self.running.lock().await;
        self.not_destroyed()?;
        if running.is_some() {
            return Err(KeeperError::AlreadyUnlocked);
        }
        self.no_store_open()?;
        self.may_try()?;
        let vault = self.vault.clone();
        let dir = self.dir.path().to_owned();
        let opened = tokio::task::spawn_blocking(move || {
            if let Err(e) = store::recover(&dir, &vault) {
                return Err(KeeperError::Internal(e.into()));
            }
            let opened = match vault.unlock(&passphrase) {
                Ok(Opened::Storage(key)) => Ok(key),
                Ok(Opened::Duress(wrap)) => start_over(&vault, &dir, &wrap),
                Err(e) => Err(KeeperError::from(e)),
            };
            drop(passphrase);
            scrub_stack();
            opened
        })
        .await
        .map_err(|e| KeeperError::Internal(e.into()))?;
        let key = self.count_try(opened)?;
        *running = Some(self.start(key).await?);
        Ok(())
    }

    /// Drops every key and stops syncing. Refused when no passphrase is set, as the key
    /// file beside the data would open it again anyway.
    pub async fn lock(&self) -> Result<(), KeeperError> {
        if !self.protected() {
            return Err(KeeperError::NotProtected);
        }
        let mut running = self.running.lock().await;
        if let Some(r) = running.take() {
            self.stop(r).await;
        }
        Ok(())
    }

    /// Sets the first passphrase, or changes it (`current` given).
    ///
    /// Setting the first one also moves the store to a new storage key: until then the key
    /// sat in the clear beside the data, and a copy of that file (a backup, a snapshot)
    /// must open nothing stored afterwards. Changing it wraps the same key again, quickly,
    /// without re-encrypting anything: a copy of the key file from before still opens the
    /// store with the old passphrase (docs/threat-model.md).
    pub async fn set_passphrase(
        &self,
        current: Option<Passphrase>,
        new: Passphrase,
    ) -> Result<(), KeeperError> {
        if let Some(current) = current {
            return self
                .with_current_passphrase(move |vault| vault.change(&current, &new))
                .await;
        }
        let mut running = self.running.lock().await;
        self.not_destroyed()?;
        if running.is_none() {
            return Err(KeeperError::Locked);
        }
        let vault = self.vault.clone();
        let new_key = StorageKey::random();
        // The slow part (Argon2id) first, while the daemon keeps serving.
        let (old_key, staged, new_key) = self
            .blocking(move || match vault.read()? {
                Some(KeyFile::Plain(old)) => {
                    let staged = vault.prepare_protect(&new_key, &new, KdfParams::default())?;
                    Ok((old, staged, new_key))
                }
                _ => Err(KeeperError::AlreadyProtected),
            })
            .await?;
        if let Some(r) = running.take() {
            self.stop(r).await;
        }
        // stop() waited 2 s for requests in flight to let go; give stragglers longer.
        for _ in 0..100 {
            if self.no_store_open().is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Err(e) = self.no_store_open() {
            return Err(KeeperError::Internal(anyhow::anyhow!(
                "{e}; nothing changed: restart hearthd"
            )));
        }
        let (vault, dir) = (self.vault.clone(), self.dir.clone());
        let rekeyed = self
            .blocking(move || {
                let done = rekey(&vault, &dir, &old_key, &new_key, &staged);
                Ok((done, old_key, new_key))
            })
            .await?;
        let (done, old_key, new_key) = rekeyed;
        if let Err(e) = done {
            // Finish or undo what the files say was done (never start a key beside a store
            // it does not open: Store::open would make an empty one).
            let (vault, dir) = (self.vault.clone(), self.dir.clone());
            let held = self
                .blocking(move || {
                    store::recover(dir.path(), &vault)
                        .map_err(|e| KeeperError::Internal(e.into()))?;
                    if !store::exists(dir.path()) {
                        return Err(KeeperError::Internal(anyhow::anyhow!(
                            "the store is missing after a failed change of key"
                        )));
                    }
                    Ok(matches!(vault.read()?, Some(KeyFile::Wrapped(_))))
                })
                .await;
            return match held {
                Ok(wrapped) => {
                    self.protected.store(wrapped, Ordering::SeqCst);
                    let key = if wrapped { new_key } else { old_key };
                    match self.start(key).await {
                        Ok(r) => {
                            *running = Some(r);
                            if wrapped { Ok(()) } else { Err(e) }
                        }
                        Err(start) => Err(start),
                    }
                }
                Err(recovery) => Err(KeeperError::Internal(anyhow::anyhow!(
                    "{e}; and then: {recovery}; restart hearthd, which finishes or undoes it"
                ))),
            };
        }
        self.protected.store(true, Ordering::SeqCst);
        match self.start(new_key).await {
            Ok(r) => {
                *running = Some(r);
                Ok(())
            }
            Err(e) => Err(KeeperError::Internal(anyhow::anyhow!(
                "the passphrase is set, but hearthd could not start again: {e}; run `hearth \
                 unlock`, or restart hearthd"
            ))),
        }
    }

    /// Takes the passphrase (and any duress passphrase) away.
    pub async fn remove_passphrase(&self, current: Passphrase) -> Result<(), KeeperError> {
        self.with_current_passphrase(move |vault| vault.unprotect(&current))
            .await?;
        self.protected.store(false, Ordering::SeqCst);
        Ok(())
    }

    pub async fn set_duress(
        &self,
        current: Passphrase,
        duress: Passphrase,
    ) -> Result<(), KeeperError> {
        self.with_current_passphrase(move |vault| vault.add_duress(&current, &duress))
            .await
    }

    /// Runs a change of the key file that the current passphrase authorises: only while
    /// unlocked and not destroyed, and counted against the wrong-passphrase slowdown as an
    /// unlock is.
    async fn with_current_passphrase(
        &self,
        change: impl FnOnce(&Vault) -> Result<(), VaultError> + Send + 'static,
    ) -> Result<(), KeeperError> {
        let running = self.running.lock().await;
        self.not_destroyed()?;
        if running.is_none() {
            return Err(KeeperError::Locked);
        }
        self.may_try()?;
        let vault = self.vault.clone();
        let done = self.blocking(move || Ok(change(&vault)?)).await;
        self.count_try(done)
    }

    /// Destroys the keys, then the data, and asks the daemon to exit at once. Needs no
    /// passphrase and tells no peer anything.
    pub async fn panic(self: &Arc<Self>) -> Result<(), KeeperError> {
        {
            // Under the gate's lock, so no start racing this can open it again.
            let mut gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
            self.panicked.store(true, Ordering::SeqCst);
            gate.take();
        }
        // Open event streams end now (the process exits right after the answer anyway).
        if let Ok(running) = self.running.try_lock()
            && let Some(r) = running.as_ref()
        {
            r.stop.send_replace(true);
        }
        // The destruction and the exit go on if the client goes away meanwhile.
        let keeper = self.clone();
        tokio::spawn(async move {
            let (vault, dir, socket) = (
                keeper.vault.clone(),
                keeper.dir.path().to_owned(),
                keeper.config.socket.clone(),
            );
            let destroyed =
                tokio::task::spawn_blocking(move || destroy_everything(&vault, &dir, &socket))
                    .await
                    .map_err(|e| KeeperError::Internal(e.into()))
                    .and_then(|r| r);
            // Exit once nothing opens the data; while a key file is still there, stay
            // (locked, refusing all but panic) so panic can be pressed again.
            if !crate::vault::any_key_file(keeper.dir.path()) {
                keeper.exit.send_replace(true);
            }
            destroyed
        })
        .await
        .map_err(|e| KeeperError::Internal(e.into()))?
    }

    pub fn panicked(&self) -> bool {
        self.panicked.load(Ordering::SeqCst)
    }

    /// Destroys what a panic may have missed (work racing it that wrote a file after it
    /// looked): called again just before the process exits.
    pub fn sweep_after_panic(&self) {
        let _ = destroy_everything(&self.vault, self.dir.path(), &self.config.socket);
    }

    /// Whether auto-lock is due: a request that comes after the limit (the computer asleep
    /// meanwhile, say) must find the daemon locked, not reset the clock.
    pub fn auto_lock_due(&self) -> bool {
        self.config
            .auto_lock
            .is_some_and(|limit| self.protected() && !self.is_locked() && self.idle_for() >= limit)
    }

    /// Resolves when the daemon should exit (after a panic).
    pub fn exit_requested(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.exit.subscribe();
        async move {
            let _ = rx.wait_for(|exit| *exit).await;
        }
    }

    /// Stops the unlocked daemon, if it runs, for the process to exit.
    pub async fn shut_down(&self) {
        let mut running = self.running.lock().await;
        if let Some(r) = running.take() {
            self.stop(r).await;
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, KeeperError> + Send + 'static,
    ) -> Result<T, KeeperError> {
        tokio::task::spawn_blocking(move || {
            let out = f();
            scrub_stack();
            out
        })
        .await
        .map_err(|e| KeeperError::Internal(e.into()))?
    }

    /// Refuses while work from before the last lock still holds the store open: a second
    /// opening of the same file would corrupt it.
    fn no_store_open(&self) -> Result<(), KeeperError> {
        if self
            .last_node
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .strong_count()
            > 0
        {
            return Err(KeeperError::Refused(
                "hearthd is still finishing work from before it locked; try again in a minute"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    fn not_destroyed(&self) -> Result<(), KeeperError> {
        if self.panicked() {
            return Err(KeeperError::Refused(
                "hearthd destroyed its keys and data and is stopping".to_owned(),
            ));
        }
        Ok(())
    }

    fn may_try(&self) -> Result<(), KeeperError> {
        let tries = self.tries.lock().unwrap_or_else(|p| p.into_inner());
        match tries.not_before {
            Some(t) if Instant::now() < t => Err(KeeperError::SlowDown {
                secs: (t - Instant::now()).as_secs().max(1),
            }),
            _ => Ok(()),
        }
    }

    /// Counts a wrong passphrase (each one past the free tries doubles the wait before
    /// the next), or clears the count on a right one.
    fn count_try<T>(&self, result: Result<T, KeeperError>) -> Result<T, KeeperError> {
        let mut tries = self.tries.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Err(KeeperError::WrongPassphrase) => {
                tries.wrong_in_a_row += 1;
                if tries.wrong_in_a_row >= FREE_TRIES {
                    let doublings = (tries.wrong_in_a_row - FREE_TRIES).min(16);
                    let wait = Duration::from_secs(1 << doublings).min(MAX_WAIT);
                    tries.not_before = Some(Instant::now() + wait);
                }
            }
            Ok(_) => *tries = Tries::default(),
            Err(_) => {}
        }
        result
    }

    async fn start(&self, key: StorageKey) -> Result<Running, KeeperError> {
        self.not_destroyed()?;
        self.no_store_open()?;
        let port = *self.port.lock().unwrap_or_else(|p| p.into_inner());
        match self.start_listening(key, port).await {
            // The port was taken meanwhile: any port will do.
            Err((Some(key), _)) if port.is_some() => {
                self.start_listening(key, None).await.map_err(|(_, e)| e)
            }
            other => other.map_err(|(_, e)| e),
        }
    }

    /// [`Keeper::start`] with `port` in place of the configured listen addresses' port 0.
    /// Gives the key back when networking failed to start, for another try.
    async fn start_listening(
        &self,
        key: StorageKey,
        port: Option<u16>,
    ) -> Result<Running, (Option<StorageKey>, KeeperError)> {
        let mut config = self.config.clone();
        if let Some(port) = port {
            config.listen = config.listen.iter().map(|a| with_port(a, port)).collect();
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("hearthd-unlocked")
            .on_thread_stop(scrub_stack)
            .build()
            .map_err(|e| (None, KeeperError::Internal(e.into())))?;
        let started = runtime
            .spawn(crate::daemon::start(config, self.dir.clone(), key))
            .await;
        let started = match started {
            Ok(Ok(s)) => s,
            failed => {
                let _ =
                    tokio::task::spawn_blocking(move || runtime.shutdown_timeout(SHUTDOWN_WAIT))
                        .await;
                return Err(match failed {
                    Ok(Err(crate::daemon::StartError::Network(key, e))) => {
                        (Some(key), KeeperError::Internal(e))
                    }
                    Ok(Err(e)) => (None, KeeperError::Internal(e.into())),
                    Err(e) => (None, KeeperError::Internal(e.into())),
                    Ok(Ok(_)) => unreachable!("matched above"),
                });
            }
        };
        if port.is_none() {
            let bound = started.state.net.listen_addrs().await;
            *self.port.lock().unwrap_or_else(|p| p.into_inner()) = bound.iter().find_map(tcp_port);
        }
        let node = Arc::downgrade(&started.state.node);
        *self.last_node.lock().unwrap_or_else(|p| p.into_inner()) = node.clone();

        let gate = Gate {
            router: crate::http::router(started.state.clone()),
            state: started.state,
            handle: runtime.handle().clone(),
        };
        {
            let mut open = self.gate.write().unwrap_or_else(|p| p.into_inner());
            if !self.panicked() {
                *open = Some(gate);
            }
        }
        if self.panicked() {
            // A panic came while this was starting: open nothing to anyone.
            drop(started.stop);
            let _ =
                tokio::task::spawn_blocking(move || runtime.shutdown_timeout(SHUTDOWN_WAIT)).await;
            return Err((None, KeeperError::Refused("hearthd is stopping".to_owned())));
        }
        self.touch();
        tracing::info!("unlocked");
        Ok(Running {
            runtime,
            stop: started.stop,
            node,
        })
    }

    async fn stop(&self, running: Running) {
        let gate = self.gate.write().unwrap_or_else(|p| p.into_inner()).take();
        running.stop.send_replace(true);
        if let Some(gate) = gate {
            let net = gate.state.net.clone();
            let _ = running
                .runtime
                .spawn(async move { net.shutdown().await })
                .await;
            let node = gate.state.node.clone();
            let _ = running
                .runtime
                .spawn_blocking(move || node.store().compact_file())
                .await;
        }
        let Running { runtime, node, .. } = running;
        let _ = tokio::task::spawn_blocking(move || runtime.shutdown_timeout(SHUTDOWN_WAIT)).await;
        // Requests that were in flight let go of the node as their tasks are dropped.
        for _ in 0..200 {
            if node.strong_count() == 0 {
                tracing::info!("locked");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::error!("something still holds the groups after locking");
    }
}

/// Time since boot, counting time asleep (`CLOCK_BOOTTIME`; `Instant` stops while the
/// computer is suspended).
fn since_boot() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Changes the storage key of the (closed) store from `old` to `new`: the copy under the
/// new key first, then the key file for it staged, then the copy put in place of the old
/// store (destroyed) and the key file installed (`store::rekey`, `store::recover`).
fn rekey(
    vault: &Vault,
    dir: &Arc<DataDir>,
    old: &StorageKey,
    new: &StorageKey,
    staged: &crate::vault::Staged,
) -> Result<(), KeeperError> {
    let internal = |e: store::StoreError| KeeperError::Internal(e.into());
    store::rekey(dir, old, new).map_err(internal)?;
    vault.stage(staged)?;
    let mut replaced = None;
    vault
        .install_staged(|| {
            replaced = store::finish_rekey(dir.path())?;
            Ok::<(), store::StoreError>(())
        })
        .map_err(internal)?;
    match replaced {
        Some(old) => store::overwrite_old_store(old).map_err(internal),
        None => Ok(()),
    }
}

/// A duress unlock: a fresh key file for the duress passphrase, the real key destroyed,
/// then the store, then the fresh key file installed. Returns the fresh storage key.
fn start_over(
    vault: &Vault,
    dir: &std::path::Path,
    duress: &crate::vault::WrapKey,
) -> Result<StorageKey, KeeperError> {
    let key = vault.start_fresh(duress)?;
    store::destroy_files(dir).map_err(|e| KeeperError::Internal(e.into()))?;
    vault.finish_fresh()?;
    Ok(key)
}

/// The panic button's work: every key file first, so that nothing left can be opened
/// even if what follows is interrupted, then the store, then the rest of what hearthd
/// keeps on disk. Each step is tried whatever the ones before did (a read-only file, a
/// failed overwrite): the first error is returned.
fn destroy_everything(
    vault: &Vault,
    dir: &std::path::Path,
    socket: &PathBuf,
) -> Result<(), KeeperError> {
    let keys = vault.destroy();
    let data = store::destroy_files(dir);
    // The way to press panic again stays while a key file does.
    if !crate::vault::any_key_file(dir) {
        let _ = std::fs::remove_file(dir.join(store::LOCK_FILE));
        let _ = std::fs::remove_dir(dir);
        let _ = std::fs::remove_file(socket);
        if let Some(parent) = socket.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
    keys.map_err(|e| KeeperError::Internal(e.into()))?;
    data.map_err(|e| KeeperError::Internal(e.into()))
}

fn tcp_port(addr: &libp2p::Multiaddr) -> Option<u16> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Tcp(port) if port != 0 => Some(port),
        _ => None,
    })
}

/// `addr` with a TCP port of 0 replaced by `port`.
fn with_port(addr: &libp2p::Multiaddr, port: u16) -> libp2p::Multiaddr {
    addr.iter()
        .map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(0) => libp2p::multiaddr::Protocol::Tcp(port),
            other => other,
        })
        .collect()
}

/// Locks the daemon after `--auto-lock` without a client request.
pub async fn auto_lock(keeper: Arc<Keeper>) {
    let Some(limit) = keeper.config.auto_lock else {
        return;
    };
    let mut tick = tokio::time::interval(
        (limit / 4).clamp(Duration::from_millis(250), Duration::from_secs(5)),
    );
    loop {
        tick.tick().await;
        if !keeper.is_locked() && keeper.idle_for() >= limit && keeper.protected() {
            tracing::info!("locking after {} s without a request", limit.as_secs());
            let _ = keeper.lock().await;
        }
    }
}
