//! The encrypted store: redb in an encrypted page file, every value also sealed under a
//! key derived from the storage key, and each group's values under that group's own key.
//!
//! Layout of the data directory (kept at 0700):
//! - `hearthd.lock` (0600): an exclusive `flock` held by [`DataDir`] for the daemon's life,
//!   and the owner's pid in ASCII so a second daemon can say who holds it.
//! - `keys` (0600): the storage key, in the clear or wrapped under a passphrase
//!   ([`crate::vault`]).
//! - `store` (0600): a [`PageFile`]: 256 random-looking key slots, then redb's pages, each
//!   sealed under HKDF(storage key, `hearth v2 storage page key`). Table names, keys,
//!   counts and redb's own bookkeeping are inside; a disk holder sees the file's size.
//!
//! Inside, one redb table per [`Table`], keys and values `&[u8]`. Each value is
//! `nonce[24] || XChaCha20-Poly1305(value)` with associated data
//! `"hearth v1 store" || table name || 0x00 || key`, so a value moved to another key or
//! table no longer opens. The values of a group's own tables are sealed under a key
//! derived from the storage key and that group's key slot; leaving overwrites the slot,
//! so what redb's freed pages still hold of the group opens under no key.
//!
//! Keys are not readable on disk, but callers still use only aliases ([`Store::alias`]),
//! random ids, counters and fixed labels as keys, never names or text.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use redb::{Database, ReadableDatabase, TableDefinition};
use zeroize::{Zeroize, Zeroizing};

use crate::vault::{KeyFile, StorageKey, Vault, VaultError};

mod legacy;

use crate::pagefile::{FILE_SECRET_SLOT, PageFile, PageFileError};

const STORE_FILE: &str = "store";
/// The new store being written from an older layout's files ([`legacy`]).
const MIGRATING_FILE: &str = "store.migrating";
/// The store being copied under a new storage key ([`rekey`]).
const REKEY_FILE: &str = "store.rekey";
/// The meta entry holding the key of [`Store::alias`]. Table keys are built from aliases,
/// so the alias key must outlive a change of storage key: it is derived from the first
/// storage key, then kept here.
const ALIAS_KEY_ENTRY: &[u8] = b"alias key";
pub const LOCK_FILE: &str = "hearthd.lock";
const KEY_LEN: usize = 32;
const VALUE_KEY_INFO: &[u8] = b"hearth v1 storage value key";
const ALIAS_KEY_INFO: &[u8] = b"hearth v1 storage key alias";
const PAGE_KEY_INFO: &[u8] = b"hearth v2 storage page key";
const GROUP_SALT_INFO: &[u8] = b"hearth v2 storage group salt";
const GROUP_VALUE_KEY_INFO: &[u8] = b"hearth v2 storage group value key";
const AAD_PREFIX: &[u8] = b"hearth v1 store";
const NONCE_LEN: usize = 24;
/// Meta keys `SLOT_PREFIX || group alias` hold the index of that group's key slot.
const SLOT_PREFIX: &[u8] = b"slot";

/// A table of the store. Each maps to one redb table of `&[u8]` keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Meta,
    Groups,
    Envelopes,
    EpochKeys,
    Invites,
    Peers,
    Verified,
}

impl Table {
    pub const ALL: [Table; 7] = [
        Table::Meta,
        Table::Groups,
        Table::Envelopes,
        Table::EpochKeys,
        Table::Invites,
        Table::Peers,
        Table::Verified,
    ];

    /// The redb table name; also part of every value's associated data, so never rename one.
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Groups => "groups",
            Table::Envelopes => "envelopes",
            Table::EpochKeys => "epoch_keys",
            Table::Invites => "invites",
            Table::Peers => "peers",
            Table::Verified => "verified",
        }
    }

    /// Tables whose keys start with a group's alias: their values are sealed under that
    /// group's own key when one is registered ([`Store::create_group_key`]).
    fn group_scoped(self) -> bool {
        matches!(
            self,
            Table::Groups | Table::Envelopes | Table::EpochKeys | Table::Verified
        )
    }

    fn definition(self) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        TableDefinition::new(self.name())
    }
}

/// One change for [`Store::write`].
///
/// A `Put`'s plaintext `value` is zeroized when the op is dropped, whether or not it was
/// written (so the fields can be matched by reference but not moved out), and `Debug`
/// shows only lengths.
pub enum WriteOp {
    Put {
        table: Table,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        table: Table,
        key: Vec<u8>,
    },
}

impl Drop for WriteOp {
    fn drop(&mut self) {
        if let WriteOp::Put { value, .. } = self {
            value.zeroize();
        }
    }
}

impl std::fmt::Debug for WriteOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteOp::Put { table, key, value } => f
                .debug_struct("Put")
                .field("table", table)
                .field("key_len", &key.len())
                .field("value_len", &value.len())
                .finish(),
            WriteOp::Delete { table, key } => f
                .debug_struct("Delete")
                .field("table", table)
                .field("key_len", &key.len())
                .finish(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "another hearthd (pid {}) is already using {}; stop it first or pass a different --data-dir",
        pid.map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
        dir.display()
    )]
    AlreadyRunning { dir: PathBuf, pid: Option<u32> },

    #[error(
        "{} can be read by other users (mode {mode:03o}); run `chmod 600 {}` and start hearthd again",
        path.display(),
        path.display()
    )]
    KeyFilePermissions { path: PathBuf, mode: u32 },

    #[error(
        "{} is not a hearth storage key: it holds {len} bytes, a key is exactly 32; \
         restore it from your backup (replacing it makes the existing data unreadable)",
        path.display()
    )]
    KeyFileLength { path: PathBuf, len: u64 },

    #[error(
        "{} is missing (or links to a file that is not there) but the store beside it holds \
         data sealed under it; restore it from a backup, or move the data directory aside to \
         start a new, empty store",
        path.display()
    )]
    KeyFileMissing { path: PathBuf },

    #[error(
        "a value in the `{table}` table failed authentication: the store or its key file was \
         damaged or replaced; restore the data directory from a backup"
    )]
    Corrupt { table: &'static str },

    #[error(
        "this device is in as many groups as it can keep ({FILE_SECRET_SLOT}); leave one before \
         creating or joining another"
    )]
    Full,

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    PageFile(#[from] PageFileError),

    #[error(
        "database error in the store: {0} (if the store was damaged or its key file replaced, \
         restore the data directory from a backup)"
    )]
    Db(#[source] redb::Error),

    #[error(transparent)]
    Vault(#[from] VaultError),

    #[error("a passphrase protects this store; unlock it through hearthd (`hearth unlock`)")]
    Protected,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into())
}

/// One `(key, plaintext value)` pair from [`Store::scan`].
pub type Entry = (Vec<u8>, Zeroizing<Vec<u8>>);

/// The encrypted store. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Store {
    // Field order is drop order: the database closes before the lock is released.
    /// Transactions share it; only [`Store::compact_file`] takes it alone.
    db: std::sync::RwLock<Database>,
    /// The page file under the database, for its key slots.
    file: PageFile,
    /// Holds the value-sealing key; the cipher zeroizes it on drop.
    cipher: XChaCha20Poly1305,
    /// Keys [`Store::alias`]; wiped on drop.
    alias_key: Zeroizing<[u8; 32]>,
    /// Mixed into every group's value key, so a key slot alone opens nothing.
    group_salt: Zeroizing<[u8; 32]>,
    /// Per-group key slots and value ciphers, by group alias (see
    /// [`Store::create_group_key`]).
    group_ciphers: std::sync::RwLock<std::collections::HashMap<[u8; 16], GroupKey>>,
    /// Serialises taking and freeing key slots.
    slots: std::sync::Mutex<()>,
    dir: PathBuf,
    /// Holds the directory's lock for as long as the store is open.
    _dir: std::sync::Arc<DataDir>,
}

/// A group's key slot and the cipher derived from it.
struct GroupKey {
    slot: usize,
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A data directory this process has to itself: created 0700 if missing, and locked with
/// an exclusive `flock` on `hearthd.lock` (which holds our pid, so a second daemon can say
/// who holds it) for as long as the value lives, whether the store in it is open or not.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    pub fn open(path: &Path) -> Result<DataDir, StoreError> {
        prepare_dir(path)?;
        let lock = take_lock(path)?;
        Ok(DataDir {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Store {
    /// Opens or creates the store in `dir`, sealed under `key`. A store an older hearthd
    /// left (see [`legacy`]) is moved into the current layout first.
    pub fn open(dir: std::sync::Arc<DataDir>, key: &StorageKey) -> Result<Store, StoreError> {
        let path = dir.path().join(STORE_FILE);
        if legacy::present(dir.path()) {
            if !path.exists() && legacy::has_data(dir.path()) {
                migrate(&dir, key)?;
            }
            legacy::destroy(dir.path())?;
        }
        Store::open_file(dir, key, &path)
    }

    /// Opens the store of a data directory whose key no passphrase protects, making one
    /// if the directory is new: for tools and tests that open a stopped daemon's data.
    pub fn open_unprotected(path: &Path) -> Result<Store, StoreError> {
        let dir = std::sync::Arc::new(DataDir::open(path)?);
        let key = unprotected_key(dir.path())?;
        Store::open(dir, &key)
    }

    fn open_file(
        dir: std::sync::Arc<DataDir>,
        key: &StorageKey,
        path: &Path,
    ) -> Result<Store, StoreError> {
        let fresh = !path.exists();
        let file = PageFile::create_or_open_with(path, |secret| page_key(key, secret))?;
        if fresh {
            fsync_dir(dir.path())?;
        }
        let mut db = open_db(file.clone())?;
        compact_db(&mut db);
        let mut store = Store {
            db: std::sync::RwLock::new(db),
            file,
            cipher: value_cipher(key.expose()),
            alias_key: derive(key.expose(), ALIAS_KEY_INFO),
            group_salt: derive(key.expose(), GROUP_SALT_INFO),
            group_ciphers: std::sync::RwLock::new(std::collections::HashMap::new()),
            slots: std::sync::Mutex::new(()),
            dir: dir.path().to_owned(),
            _dir: dir,
        };
        store.load_group_keys()?;
        match store.get(Table::Meta, ALIAS_KEY_ENTRY)? {
            Some(kept) => {
                store.alias_key = Zeroizing::new(
                    kept[..]
                        .try_into()
                        .map_err(|_| StoreError::Corrupt { table: "meta" })?,
                );
            }
            None => store.write(vec![WriteOp::Put {
                table: Table::Meta,
                key: ALIAS_KEY_ENTRY.to_vec(),
                value: store.alias_key.to_vec(),
            }])?,
        }
        Ok(store)
    }

    /// Copies every entry into `to`, re-sealed under its keys; each group gets a new key
    /// slot there (its slot record here is not copied).
    fn copy_into(&self, to: &Store) -> Result<(), StoreError> {
        for alias in self.group_aliases() {
            to.create_group_key(&alias)?;
        }
        for table in Table::ALL {
            let ops: Vec<WriteOp> = self
                .scan(table, &[])?
                .into_iter()
                .filter(|(key, _)| !(table == Table::Meta && key.starts_with(SLOT_PREFIX)))
                .map(|(key, value)| WriteOp::Put {
                    table,
                    key,
                    value: value.to_vec(),
                })
                .collect();
            to.write(ops)?;
        }
        Ok(())
    }

    fn group_aliases(&self) -> Vec<[u8; 16]> {
        self.group_ciphers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// Reads every group's key slot.
    fn load_group_keys(&self) -> Result<(), StoreError> {
        let mut ciphers = self.ciphers_mut();
        for (key, value) in self.scan(Table::Meta, SLOT_PREFIX)? {
            let alias = key[SLOT_PREFIX.len()..]
                .try_into()
                .map_err(|_| StoreError::Corrupt { table: "meta" })?;
            let slot = <[u8; 2]>::try_from(&value[..])
                .map(|b| usize::from(u16::from_be_bytes(b)))
                .ok()
                .filter(|s| *s < FILE_SECRET_SLOT)
                .ok_or(StoreError::Corrupt { table: "meta" })?;
            let cipher = self.group_cipher(slot)?;
            ciphers.insert(alias, GroupKey { slot, cipher });
        }
        Ok(())
    }

    /// HKDF-SHA256(salt = group salt, ikm = the slot's 32 bytes, info = "hearth v2 storage
    /// group value key").
    fn group_cipher(&self, slot: usize) -> Result<XChaCha20Poly1305, StoreError> {
        let bytes = self.file.read_slot(slot)?;
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&self.group_salt[..]), &bytes[..]);
        let mut key = Zeroizing::new([0u8; 32]);
        hk.expand(GROUP_VALUE_KEY_INFO, &mut key[..])
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Ok(XChaCha20Poly1305::new((&*key).into()))
    }

    /// Gives the group with alias `alias` a key of its own (if it has none): from then on,
    /// values of group-scoped tables whose key starts with `alias` are sealed under it, so
    /// that [`Store::shred_group_key`] leaves nothing of the group that any key opens.
    pub fn create_group_key(&self, alias: &[u8; 16]) -> Result<(), StoreError> {
        let _slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if self.has_group_key(alias) {
            return Ok(());
        }
        let used: std::collections::BTreeSet<usize> =
            self.ciphers_mut().values().map(|g| g.slot).collect();
        let slot = (0..FILE_SECRET_SLOT)
            .find(|s| !used.contains(s))
            .ok_or(StoreError::Full)?;
        // Fresh bytes in the slot first: a crash before the record leaves a free slot.
        self.file.write_slot(slot, &random32())?;
        self.write(vec![WriteOp::Put {
            table: Table::Meta,
            key: [SLOT_PREFIX, &alias[..]].concat(),
            value: (slot as u16).to_be_bytes().to_vec(),
        }])?;
        let cipher = self.group_cipher(slot)?;
        self.ciphers_mut().insert(*alias, GroupKey { slot, cipher });
        Ok(())
    }

    /// How many groups have a key of their own (a key slot) in this store.
    pub fn group_keys(&self) -> usize {
        self.group_ciphers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn has_group_key(&self, alias: &[u8; 16]) -> bool {
        self.group_ciphers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(alias)
    }

    /// Destroys a group's key: overwrites its slot in place with fresh random bytes (synced)
    /// and frees the slot. What is left of the group's values (in pages redb has freed but
    /// not yet reused) can then be opened by no key, the storage key included.
    pub fn shred_group_key(&self, alias: &[u8; 16]) -> Result<(), StoreError> {
        let _slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let Some(slot) = self.ciphers_mut().get(alias).map(|g| g.slot) else {
            return Ok(());
        };
        // The slot stays taken until its key is gone: a failed overwrite must not free it.
        self.file.write_slot(slot, &random32())?;
        self.ciphers_mut().remove(alias);
        self.write(vec![WriteOp::Delete {
            table: Table::Meta,
            key: [SLOT_PREFIX, &alias[..]].concat(),
        }])
    }

    fn ciphers_mut(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, std::collections::HashMap<[u8; 16], GroupKey>> {
        self.group_ciphers
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with the cipher that seals values of `table` under `key`.
    fn with_cipher<T>(
        &self,
        table: Table,
        key: &[u8],
        f: impl FnOnce(&XChaCha20Poly1305) -> T,
    ) -> T {
        if table.group_scoped()
            && let Some(alias) = key.get(..16).and_then(|a| <[u8; 16]>::try_from(a).ok())
        {
            let ciphers = self.group_ciphers.read().unwrap_or_else(|p| p.into_inner());
            if let Some(group) = ciphers.get(&alias) {
                return f(&group.cipher);
            }
        }
        f(&self.cipher)
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// A stable, opaque 16-byte stand-in for an identifier, for use in table keys: keyed
    /// BLAKE3 under a key derived from the storage key, over the length-prefixed `parts`.
    /// Group and member ids never appear on disk in the clear; without the key file the
    /// aliases cannot be linked to the ids, or across two devices' stores.
    pub fn alias(&self, parts: &[&[u8]]) -> [u8; 16] {
        let mut h = blake3::Hasher::new_keyed(&self.alias_key);
        for part in parts {
            h.update(&(part.len() as u64).to_be_bytes());
            h.update(part);
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize().as_bytes()[..16]);
        out
    }

    fn db(&self) -> std::sync::RwLockReadGuard<'_, Database> {
        // A panic while holding the guard leaves the database itself consistent.
        self.db.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives the database file's free pages back (redb keeps them for reuse), once no
    /// transaction is open. Call when the daemon is about to stop: a compacted own log
    /// leaves much of the file free.
    pub fn compact_file(&self) {
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        compact_db(&mut db);
    }

    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let db = self.db();
        let txn = db.begin_read().map_err(db_err)?;
        let t = txn.open_table(table.definition()).map_err(db_err)?;
        match t.get(key).map_err(db_err)? {
            Some(v) => Ok(Some(self.open_value(table, key, v.value())?)),
            None => Ok(None),
        }
    }

    /// The keys (only) of all entries whose key starts with `prefix`, in key order.
    pub fn scan_keys(&self, table: Table, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let db = self.db();
        let txn = db.begin_read().map_err(db_err)?;
        let t = txn.open_table(table.definition()).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in t.range::<&[u8]>(prefix..).map_err(db_err)? {
            let (k, _) = entry.map_err(db_err)?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            out.push(k.to_vec());
        }
        Ok(out)
    }

    /// All entries whose key starts with `prefix`, in key order.
    pub fn scan(&self, table: Table, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        let db = self.db();
        let txn = db.begin_read().map_err(db_err)?;
        let t = txn.open_table(table.definition()).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in t.range::<&[u8]>(prefix..).map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), self.open_value(table, k, v.value())?));
        }
        Ok(out)
    }

    /// Applies all ops in one durable transaction: when this returns Ok, the data survives
    /// kill -9 and power loss. Ops apply in order, so a later op on the same key wins.
    pub fn write(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        // Seal everything first; each op's plaintext is wiped as soon as it is sealed.
        let sealed: Vec<(Table, Vec<u8>, Option<Vec<u8>>)> = ops
            .into_iter()
            .map(|mut op| match &mut op {
                WriteOp::Put { table, key, value } => {
                    let s = self.seal_value(*table, key, value);
                    (*table, std::mem::take(key), Some(s))
                }
                WriteOp::Delete { table, key } => (*table, std::mem::take(key), None),
            })
            .collect();
        let db = self.db();
        let txn = db.begin_write().map_err(db_err)?;
        for (table, key, value) in &sealed {
            let mut t = txn.open_table(table.definition()).map_err(db_err)?;
            match value {
                Some(v) => {
                    t.insert(key.as_slice(), v.as_slice()).map_err(db_err)?;
                }
                None => {
                    t.remove(key.as_slice()).map_err(db_err)?;
                }
            }
        }
        txn.commit().map_err(db_err)
    }

    fn seal_value(&self, table: Table, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let ct = self
            .with_cipher(table, key, |cipher| {
                cipher.encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: value,
                        aad: &aad(table, key),
                    },
                )
            })
            .expect("XChaCha20-Poly1305 cannot fail to seal an in-memory buffer");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    fn open_value(
        &self,
        table: Table,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let corrupt = || StoreError::Corrupt {
            table: table.name(),
        };
        let Some((nonce, ct)) = sealed.split_at_checked(NONCE_LEN) else {
            return Err(corrupt());
        };
        self.with_cipher(table, key, |cipher| {
            cipher.decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: &aad(table, key),
                },
            )
        })
        .map(Zeroizing::new)
        .map_err(|_| corrupt())
    }
}

/// `"hearth v1 store" || table name || 0x00 || key`. Table names contain no 0x00, so the
/// encoding is unambiguous.
fn aad(table: Table, key: &[u8]) -> Vec<u8> {
    let name = table.name().as_bytes();
    let mut aad = Vec::with_capacity(AAD_PREFIX.len() + name.len() + 1 + key.len());
    aad.extend_from_slice(AAD_PREFIX);
    aad.extend_from_slice(name);
    aad.push(0);
    aad.extend_from_slice(key);
    aad
}

/// HKDF-SHA256(ikm = storage key, salt = empty, info = `label`). (`None` and an empty salt
/// are the same HMAC key.)
fn derive(storage_key: &[u8], label: &[u8]) -> Zeroizing<[u8; 32]> {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, storage_key);
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(label, &mut key[..])
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

/// The page key of a store file: HKDF-SHA256(salt = the file's secret slot, ikm =
/// HKDF(storage key, "hearth v2 storage page key"), info = "hearth v2 storage page key").
fn page_key(key: &StorageKey, file_secret: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let base = derive(key.expose(), PAGE_KEY_INFO);
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&file_secret[..]), &base[..]);
    let mut out = Zeroizing::new([0u8; 32]);
    hk.expand(PAGE_KEY_INFO, &mut out[..])
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// Every key the store derives from the storage key, and the page key of the store file
/// in `dir` (which mixes in the file's own secret): for tests that look for keys where none
/// may be (a locked daemon's memory).
pub fn derived_keys(key: &StorageKey, dir: &Path) -> Vec<Zeroizing<[u8; 32]>> {
    let mut keys: Vec<_> = [
        VALUE_KEY_INFO,
        ALIAS_KEY_INFO,
        PAGE_KEY_INFO,
        GROUP_SALT_INFO,
    ]
    .iter()
    .map(|label| derive(key.expose(), label))
    .collect();
    if let Ok(file) = std::fs::read(dir.join(STORE_FILE))
        && let Some(secret) = file
            .get(FILE_SECRET_SLOT * 32..FILE_SECRET_SLOT * 32 + 32)
            .and_then(|s| <[u8; 32]>::try_from(s).ok())
    {
        keys.push(page_key(key, &secret));
    }
    keys
}

/// The cipher of values: HKDF label "hearth v1 storage value key".
fn value_cipher(storage_key: &[u8]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new((&*derive(storage_key, VALUE_KEY_INFO)).into())
}

fn mode_of(meta: &std::fs::Metadata) -> u32 {
    meta.permissions().mode() & 0o7777
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing directory {}", dir.display())))
}

/// Creates `dir` (0700) if missing, and makes an existing one 0700.
fn prepare_dir(dir: &Path) -> Result<(), StoreError> {
    if !dir.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(format!("creating data directory {}", dir.display())))?;
    }
    let meta = std::fs::metadata(dir).map_err(io(format!("reading {}", dir.display())))?;
    if !meta.is_dir() {
        return Err(StoreError::Io {
            context: format!("using {} as the data directory", dir.display()),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let mode = mode_of(&meta);
    if mode != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("making {} private (chmod 700)", dir.display())))?;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "the data directory was accessible to other users (mode {mode:03o}); it is now 0700"
            );
        }
    }
    Ok(())
}

fn take_lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io(format!("opening {}", path.display())))?;
    // SAFETY: flock on a file descriptor owned by `file`, which outlives the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut pid = String::new();
            let _ = Read::by_ref(&mut file).take(32).read_to_string(&mut pid);
            return Err(StoreError::AlreadyRunning {
                dir: dir.to_owned(),
                pid: pid.trim().parse().ok(),
            });
        }
        return Err(StoreError::Io {
            context: format!("locking {}", path.display()),
            source: err,
        });
    }
    let ctx = || format!("writing our pid to {}", path.display());
    file.set_len(0).map_err(io(ctx()))?;
    file.rewind().map_err(io(ctx()))?;
    write!(file, "{}", std::process::id()).map_err(io(ctx()))?;
    Ok(file)
}

/// The storage key of a directory with no passphrase, made if the directory holds no store.
fn unprotected_key(dir: &Path) -> Result<StorageKey, StoreError> {
    let vault = Vault::new(dir);
    recover(dir, &vault)?;
    match vault.read()? {
        Some(KeyFile::Plain(key)) => Ok(key),
        Some(KeyFile::Wrapped(_)) => Err(StoreError::Protected),
        None => key_for_new_or_legacy(dir, &vault),
    }
}

/// The storage key when the directory has no key file: the one an older hearthd kept in
/// `storage.key` (moved into the key file unchanged; [`Store::open`] destroys the old file
/// once the store is moved), or a new one for a new store. Refuses to make a new key beside
/// data sealed under a lost one.
pub fn key_for_new_or_legacy(dir: &Path, vault: &Vault) -> Result<StorageKey, StoreError> {
    if let Some(key) = legacy::storage_key(dir)? {
        vault.store_plain(&key)?;
        return Ok(key);
    }
    if legacy::has_data(dir) || has_data(&dir.join(STORE_FILE)) {
        return Err(StoreError::KeyFileMissing {
            path: dir.join(crate::vault::KEY_FILE),
        });
    }
    Ok(vault.create_plain()?)
}

/// A page file holding more than its key slots: some page was written.
fn has_data(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() > crate::pagefile::SLOT_REGION_LEN)
}

/// Destroys the store's files (after the key file, whose loss already makes them
/// unreadable): the key slots are overwritten first, then the files removed. Missing files
/// are fine.
pub fn destroy_files(dir: &Path) -> Result<(), StoreError> {
    // Every file, whatever happened to the one before; the first error is returned.
    let mut outcome = Ok(());
    for name in [STORE_FILE, MIGRATING_FILE, REKEY_FILE] {
        outcome = outcome.and(destroy_store_file(&dir.join(name)));
    }
    outcome.and(legacy::destroy(dir))
}

/// Overwrites a small file with zeros, syncs it and removes it; a missing one is fine.
fn shred_file(path: &Path) -> Result<(), StoreError> {
    let ctx = || format!("destroying {}", path.display());
    match OpenOptions::new().write(true).open(path) {
        Ok(mut file) => {
            let len = file.metadata().map_err(io(ctx()))?.len().min(1 << 20) as usize;
            file.write_all(&vec![0u8; len.max(KEY_LEN)])
                .and_then(|()| file.sync_all())
                .map_err(io(ctx()))?;
            remove_if_there(path)
        }
        // Missing, or a symlink to a key that is not there now.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => remove_if_there(path),
        Err(e) => Err(StoreError::Io {
            context: ctx(),
            source: e,
        }),
    }
}

/// The first step of changing the storage key (a passphrase set or changed): the store,
/// closed, is copied under `new` as `store.rekey`, synced. Then the caller stages the new
/// key file ([`Vault::stage`]) and calls [`finish_rekey`], then installs the key file; a
/// start after a crash anywhere in between ends with the old key and store, or the new.
pub fn rekey(
    dir: &std::sync::Arc<DataDir>,
    old: &StorageKey,
    new: &StorageKey,
) -> Result<(), StoreError> {
    let temp = dir.path().join(REKEY_FILE);
    remove_if_there(&temp)?;
    let from = Store::open(dir.clone(), old)?;
    let to = Store::open_file(dir.clone(), new, &temp)?;
    from.copy_into(&to)?;
    drop((from, to));
    fsync_dir(dir.path())
}

/// The second step: the old store is destroyed (its key slots, the file's own secret
/// among them, so none of its pages opens under any key), and the copy takes its place.
///
/// Returns the old file, still open: overwrite it with [`overwrite_old_store`] once the
/// new key file is installed (outside the key file's lock, so a panic need not wait for
/// it), so its pages are gone too, not only unreadable (an earlier copy of the directory
/// holds the old file secret and key).
pub fn finish_rekey(dir: &Path) -> Result<Option<File>, StoreError> {
    let path = dir.join(STORE_FILE);
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    let old = OpenOptions::new().write(true).open(&path).ok();
    destroy_store_file(&path)?;
    std::fs::rename(dir.join(REKEY_FILE), &path).map_err(io(format!(
        "moving the re-keyed store into place as {}",
        path.display()
    )))?;
    fsync_dir(dir)?;
    Ok(old)
}

/// Overwrites every byte of a store file [`finish_rekey`] replaced, through the handle it
/// kept, and syncs; then the file is gone.
pub fn overwrite_old_store(old: File) -> Result<(), StoreError> {
    overwrite_handle(&old).map_err(io("overwriting the replaced store"))
}

/// Finishes, at start, what a crash interrupted: a duress unlock (the store is destroyed,
/// then the fresh key file installed), a re-key (the copy replaces the store, then the new
/// key file is installed), or a key file replacement; a re-key copy without its key file
/// is thrown away.
pub fn recover(dir: &Path, vault: &Vault) -> Result<(), StoreError> {
    match vault.pending()? {
        crate::vault::Pending::Fresh => {
            destroy_files(dir)?;
            vault.finish_fresh()?;
        }
        crate::vault::Pending::Staged => {
            let mut old = None;
            vault.install_staged(|| {
                if dir.join(REKEY_FILE).exists() {
                    old = finish_rekey(dir)?;
                }
                Ok::<(), StoreError>(())
            })?;
            if let Some(old) = old {
                overwrite_old_store(old)?;
            }
        }
        crate::vault::Pending::None => {
            if dir.join(REKEY_FILE).exists() {
                destroy_store_file(&dir.join(REKEY_FILE))?;
            }
        }
    }
    Ok(())
}

/// Whether the data directory has a store file.
pub fn exists(dir: &Path) -> bool {
    dir.join(STORE_FILE).exists()
}

/// Overwrites a store file's key slots with random bytes (the file's own secret among
/// them: no page of it opens afterwards, under any key), syncs, and removes it. A missing
/// file is fine.
fn destroy_store_file(path: &Path) -> Result<(), StoreError> {
    // Writable first, should someone have made it read-only; removed whatever the wipe did.
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    let wiped = match PageFile::wipe_slots(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(StoreError::Io {
            context: format!("destroying {}", path.display()),
            source: e,
        }),
    };
    let removed = remove_if_there(path);
    wiped.and(removed)
}

/// Overwrites every byte of a file with random bytes, in place, and syncs.
fn overwrite_whole(path: &Path) -> std::io::Result<()> {
    overwrite_handle(&OpenOptions::new().write(true).open(path)?)
}

fn overwrite_handle(file: &File) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let mut chunk = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(chunk.len() as u64) as usize;
        OsRng.fill_bytes(&mut chunk[..n]);
        file.write_all_at(&chunk[..n], at)?;
        at += n as u64;
    }
    file.sync_all()
}

fn random32() -> Zeroizing<[u8; 32]> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(&mut bytes[..]);
    bytes
}

fn remove_if_there(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Io {
            context: format!("removing {}", path.display()),
            source: e,
        }),
    }
}

/// Compacts the database file as far as redb can; a failure only leaves it larger.
fn compact_db(db: &mut Database) {
    loop {
        match db.compact() {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!("could not compact the database file: {e}");
                return;
            }
        }
    }
}

fn open_db(file: PageFile) -> Result<Database, StoreError> {
    // Verify every page checksum at open: a file altered outside redb becomes an error
    // here instead of a possible panic later.
    let db = redb::Builder::new()
        .set_check_integrity_on_open(true)
        .create_with_backend(file)
        .map_err(db_err)?;
    // Make every table exist so reads on a fresh store find empty tables.
    let txn = db.begin_write().map_err(db_err)?;
    for t in Table::ALL {
        txn.open_table(t.definition()).map_err(db_err)?;
    }
    txn.commit().map_err(db_err)?;
    Ok(db)
}

/// Moves an older hearthd's store ([`legacy`]) into a new one: written beside it as
/// `store.migrating`, made durable, then renamed into place. A crash before the rename
/// leaves the old store whole, and the next start begins again.
fn migrate(dir: &std::sync::Arc<DataDir>, key: &StorageKey) -> Result<(), StoreError> {
    let old = legacy::LegacyStore::open(dir.path(), key)?;
    let temp = dir.path().join(MIGRATING_FILE);
    remove_if_there(&temp)?;
    {
        let new = Store::open_file(dir.clone(), key, &temp)?;
        for alias in old.group_aliases() {
            new.create_group_key(&alias)?;
        }
        for table in Table::ALL {
            let ops: Vec<WriteOp> = old
                .entries(table)?
                .into_iter()
                .map(|(key, value)| WriteOp::Put {
                    table,
                    key,
                    value: value.to_vec(),
                })
                .collect();
            new.write(ops)?;
        }
    }
    let path = dir.path().join(STORE_FILE);
    std::fs::rename(&temp, &path).map_err(io(format!(
        "moving {} into place as {}",
        temp.display(),
        path.display()
    )))?;
    fsync_dir(dir.path())?;
    tracing::info!("moved the store into its current layout");
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const _: () = {
        const fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<Store>();
        send_sync::<StoreError>();
        send_sync::<WriteOp>();
    };

    fn put(table: Table, key: &[u8], value: &[u8]) -> WriteOp {
        WriteOp::Put {
            table,
            key: key.to_vec(),
            value: value.to_vec(),
        }
    }

    fn del(table: Table, key: &[u8]) -> WriteOp {
        WriteOp::Delete {
            table,
            key: key.to_vec(),
        }
    }

    fn plain(entries: Vec<Entry>) -> Vec<(Vec<u8>, Vec<u8>)> {
        entries.into_iter().map(|(k, v)| (k, v.to_vec())).collect()
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    /// The raw sealed bytes stored under `key`, read past the store's decryption.
    fn raw_get(s: &Store, table: Table, key: &[u8]) -> Option<Vec<u8>> {
        let txn = s.db().begin_read().unwrap();
        let t = txn.open_table(table.definition()).unwrap();
        t.get(key).unwrap().map(|v| v.value().to_vec())
    }

    fn raw_put(s: &Store, table: Table, key: &[u8], sealed: &[u8]) {
        let txn = s.db().begin_write().unwrap();
        txn.open_table(table.definition())
            .unwrap()
            .insert(key, sealed)
            .unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn a_shredded_group_key_leaves_nothing_any_key_opens() {
        let tmp = tempfile::tempdir().unwrap();
        let alias = [7u8; 16];
        let key = [&alias[..], b"env1"].concat();
        let sealed = {
            let s = Store::open_unprotected(tmp.path()).unwrap();
            s.create_group_key(&alias).unwrap();
            s.write(vec![put(Table::Envelopes, &key, b"group secret")])
                .unwrap();
            assert_eq!(
                &s.get(Table::Envelopes, &key).unwrap().unwrap()[..],
                b"group secret"
            );
            raw_get(&s, Table::Envelopes, &key).unwrap()
        };
        // The key survives a restart...
        let s = Store::open_unprotected(tmp.path()).unwrap();
        assert!(s.has_group_key(&alias));
        assert_eq!(
            &s.get(Table::Envelopes, &key).unwrap().unwrap()[..],
            b"group secret"
        );
        // ...and once shredded, the same sealed bytes (as a freed page may still hold
        // them) open under no key, though the storage key is still there.
        let slot = s.group_ciphers.read().unwrap()[&alias].slot;
        let before = s.file.read_slot(slot).unwrap();
        s.shred_group_key(&alias).unwrap();
        assert_ne!(
            *s.file.read_slot(slot).unwrap(),
            *before,
            "the slot was not overwritten"
        );
        assert!(s.scan(Table::Meta, SLOT_PREFIX).unwrap().is_empty());
        raw_put(&s, Table::Envelopes, &key, &sealed);
        assert!(matches!(
            s.get(Table::Envelopes, &key),
            Err(StoreError::Corrupt { .. })
        ));
        drop(s);
        let s = Store::open_unprotected(tmp.path()).unwrap();
        assert!(!s.has_group_key(&alias));
        assert!(s.get(Table::Envelopes, &key).is_err());
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// Every regular file under `dir`, recursively.
    fn all_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(all_files(&path));
            } else {
                out.push(path);
            }
        }
        out
    }

    #[test]
    fn fresh_store_reads_empty_in_every_table() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open_unprotected(tmp.path()).unwrap();
        assert_eq!(s.data_dir(), tmp.path());
        for t in Table::ALL {
            assert!(s.get(t, b"anything").unwrap().is_none());
            // The store's own alias key is its one entry.
            let entries: Vec<Vec<u8>> = s.scan(t, b"").unwrap().into_iter().map(|e| e.0).collect();
            if t == Table::Meta {
                assert_eq!(entries, vec![ALIAS_KEY_ENTRY.to_vec()]);
            } else {
                assert!(entries.is_empty());
            }
        }
        s.write(vec![]).unwrap();
    }

    #[test]
    fn round_trip_put_get_scan_delete_and_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        {
            let s = Store::open_unprotected(&dir).unwrap();
            s.write(vec![
                put(Table::Envelopes, b"a1", b"one"),
                put(Table::Envelopes, b"a2", b"two"),
                put(Table::Envelopes, b"b1", b"other"),
                put(Table::Groups, b"a1", b"not an envelope"),
                put(Table::Meta, b"empty", b""),
            ])
            .unwrap();
            assert_eq!(
                &s.get(Table::Envelopes, b"a1").unwrap().unwrap()[..],
                b"one"
            );
            assert_eq!(&s.get(Table::Meta, b"empty").unwrap().unwrap()[..], b"");
            assert_eq!(
                plain(s.scan(Table::Envelopes, b"a").unwrap()),
                vec![
                    (b"a1".to_vec(), b"one".to_vec()),
                    (b"a2".to_vec(), b"two".to_vec())
                ]
            );
            assert_eq!(s.scan(Table::Envelopes, b"").unwrap().len(), 3);
            assert!(s.scan(Table::Envelopes, b"c").unwrap().is_empty());
            // A later op on the same key in one batch wins; deleting a missing key is fine.
            s.write(vec![
                del(Table::Envelopes, b"a1"),
                put(Table::Envelopes, b"b1", b"first"),
                put(Table::Envelopes, b"b1", b"second"),
                del(Table::Peers, b"never written"),
            ])
            .unwrap();
            assert!(s.get(Table::Envelopes, b"a1").unwrap().is_none());
        }
        let s = Store::open_unprotected(&dir).unwrap();
        assert!(s.get(Table::Envelopes, b"a1").unwrap().is_none());
        assert_eq!(
            &s.get(Table::Envelopes, b"a2").unwrap().unwrap()[..],
            b"two"
        );
        assert_eq!(
            &s.get(Table::Envelopes, b"b1").unwrap().unwrap()[..],
            b"second"
        );
        assert_eq!(
            &s.get(Table::Groups, b"a1").unwrap().unwrap()[..],
            b"not an envelope"
        );
    }

    #[test]
    fn second_open_is_refused_while_first_is_alive() {
        let tmp = tempfile::tempdir().unwrap();
        let first = Store::open_unprotected(tmp.path()).unwrap();
        let err = Store::open_unprotected(tmp.path()).unwrap_err();
        let StoreError::AlreadyRunning { pid, dir } = &err else {
            panic!("expected AlreadyRunning, got {err}");
        };
        assert_eq!(*pid, Some(std::process::id()));
        assert_eq!(dir, tmp.path());
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("--data-dir"), "{msg}");
        drop(first);
        Store::open_unprotected(tmp.path()).unwrap();
    }

    #[test]
    fn files_and_directory_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("new");
        drop(Store::open_unprotected(&dir).unwrap());
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(crate::vault::KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.join(STORE_FILE)), 0o600);
        assert_eq!(mode(&dir.join(LOCK_FILE)), 0o600);

        // An existing directory and database file with loose modes are tightened.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.join(STORE_FILE), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        drop(Store::open_unprotected(&dir).unwrap());
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(STORE_FILE)), 0o600);
    }

    #[test]
    fn a_missing_key_file_beside_existing_data_is_refused_not_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let s = Store::open_unprotected(tmp.path()).unwrap();
            s.write(vec![put(Table::Meta, b"k", b"v")]).unwrap();
        }
        std::fs::remove_file(tmp.path().join(crate::vault::KEY_FILE)).unwrap();
        let err = Store::open_unprotected(tmp.path()).unwrap_err();
        assert!(matches!(err, StoreError::KeyFileMissing { .. }), "{err}");
        assert!(!tmp.path().join(crate::vault::KEY_FILE).exists());
    }

    /// Writes a store in an older hearthd's layout: `storage.key`, one group key file, and
    /// plain redb whose values are sealed as now.
    fn write_legacy(dir: &Path, storage: [u8; 32], group_alias: [u8; 16], group_file: [u8; 32]) {
        std::fs::create_dir_all(dir.join("group-keys")).unwrap();
        let private = |p: &Path, bytes: &[u8]| {
            std::fs::write(p, bytes).unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        private(&dir.join("storage.key"), &storage);
        private(
            &dir.join("group-keys").join(hex::encode(group_alias)),
            &group_file,
        );
        let seal = |key: &[u8; 32], table: Table, k: &[u8], v: &[u8]| {
            let nonce = [9u8; NONCE_LEN];
            let ct = XChaCha20Poly1305::new(key.into())
                .encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: v,
                        aad: &aad(table, k),
                    },
                )
                .unwrap();
            [&nonce[..], &ct].concat()
        };
        let value_key = derive(&storage, VALUE_KEY_INFO);
        let group_key = derive(&group_file, b"hearth v1 storage group value key");
        let db = redb::Database::create(dir.join("hearth.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(Table::Meta.definition()).unwrap();
            meta.insert(
                &b"m"[..],
                &seal(&value_key, Table::Meta, b"m", b"meta value")[..],
            )
            .unwrap();
            let mut env = txn.open_table(Table::Envelopes.definition()).unwrap();
            let k = [&group_alias[..], b"e"].concat();
            env.insert(
                &k[..],
                &seal(&group_key, Table::Envelopes, &k, b"group value")[..],
            )
            .unwrap();
        }
        txn.commit().unwrap();
    }

    #[test]
    fn a_store_in_the_old_layout_is_moved_and_its_old_files_destroyed() {
        let tmp = tempfile::tempdir().unwrap();
        let alias = [5u8; 16];
        write_legacy(tmp.path(), [0x11; 32], alias, [0x22; 32]);
        let group_key = [&alias[..], b"e"].concat();
        {
            let s = Store::open_unprotected(tmp.path()).unwrap();
            assert_eq!(
                &s.get(Table::Meta, b"m").unwrap().unwrap()[..],
                b"meta value"
            );
            assert_eq!(
                &s.get(Table::Envelopes, &group_key).unwrap().unwrap()[..],
                b"group value"
            );
            assert!(s.has_group_key(&alias));
            // The same storage key, now in the key file: aliases stay valid.
            let Some(KeyFile::Plain(key)) = Vault::new(tmp.path()).read().unwrap() else {
                panic!("the key moved into a plain key file");
            };
            assert_eq!(key.expose(), &[0x11; 32]);
        }
        let mut names: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["hearthd.lock", "keys", "store"]);
        // And it opens again the same way.
        let s = Store::open_unprotected(tmp.path()).unwrap();
        assert_eq!(
            &s.get(Table::Envelopes, &group_key).unwrap().unwrap()[..],
            b"group value"
        );
    }

    #[test]
    fn an_old_key_file_readable_by_others_or_of_the_wrong_length_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        write_legacy(tmp.path(), [0x11; 32], [5; 16], [0x22; 32]);
        let key = tmp.path().join("storage.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = Store::open_unprotected(tmp.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::KeyFilePermissions { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&key, [1u8; 31]).unwrap();
        let err = Store::open_unprotected(tmp.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::KeyFileLength { len: 31, .. }),
            "{err}"
        );
        // Nothing was moved or destroyed by the refusals.
        assert!(tmp.path().join("hearth.redb").exists());
        assert!(!tmp.path().join("store").exists());
    }

    #[test]
    fn a_rekey_interrupted_anywhere_ends_with_one_whole_key_and_store() {
        let quick = crate::vault::KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        };
        let pass = hearth_protocol::api::Passphrase::new("a long passphrase".to_owned());
        let alias = [3u8; 16];
        let group_key = [&alias[..], b"e"].concat();
        // 0: the copy made; 1: and the key file staged; 2: and the copy in place.
        for steps in 0..3 {
            let tmp = tempfile::tempdir().unwrap();
            let vault = Vault::new(tmp.path());
            {
                let s = Store::open_unprotected(tmp.path()).unwrap();
                s.create_group_key(&alias).unwrap();
                s.write(vec![
                    put(Table::Meta, b"k", b"v"),
                    put(Table::Envelopes, &group_key, b"group value"),
                ])
                .unwrap();
            }
            let Some(KeyFile::Plain(old)) = vault.read().unwrap() else {
                panic!("a plain key file");
            };
            let new = StorageKey::random();
            {
                let dir = std::sync::Arc::new(DataDir::open(tmp.path()).unwrap());
                rekey(&dir, &old, &new).unwrap();
                if steps >= 1 {
                    vault
                        .stage(&vault.prepare_protect(&new, &pass, quick).unwrap())
                        .unwrap();
                }
                if steps >= 2 {
                    finish_rekey(tmp.path()).unwrap();
                }
            }
            recover(tmp.path(), &vault).unwrap();
            assert!(!tmp.path().join(REKEY_FILE).exists(), "steps {steps}");
            let (expected, other) = if steps >= 1 {
                (&new, &old)
            } else {
                (&old, &new)
            };
            let dir = std::sync::Arc::new(DataDir::open(tmp.path()).unwrap());
            assert!(Store::open(dir.clone(), other).is_err(), "steps {steps}");
            let s = Store::open(dir, expected).unwrap();
            assert_eq!(&s.get(Table::Meta, b"k").unwrap().unwrap()[..], b"v");
            assert_eq!(
                &s.get(Table::Envelopes, &group_key).unwrap().unwrap()[..],
                b"group value"
            );
        }
    }

    #[test]
    fn an_interrupted_move_from_the_old_layout_starts_again() {
        let tmp = tempfile::tempdir().unwrap();
        write_legacy(tmp.path(), [0x11; 32], [5; 16], [0x22; 32]);
        // A half-written new store from a start that died.
        std::fs::write(tmp.path().join(MIGRATING_FILE), [7u8; 100]).unwrap();
        let s = Store::open_unprotected(tmp.path()).unwrap();
        assert_eq!(
            &s.get(Table::Meta, b"m").unwrap().unwrap()[..],
            b"meta value"
        );
        assert!(!tmp.path().join(MIGRATING_FILE).exists());
    }

    #[test]
    fn no_plaintext_in_any_file() {
        let tmp = tempfile::tempdir().unwrap();
        let marker = b"STORE-MARKER-5a8c0e1f-do-not-leak";
        // Large enough to span several redb pages.
        let big: Vec<u8> = marker.iter().copied().cycle().take(20_000).collect();
        let scan_dir = || {
            let files = all_files(tmp.path());
            assert!(files.len() >= 3, "{files:?}");
            for path in files {
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    !contains(&bytes, marker),
                    "plaintext found in {}",
                    path.display()
                );
                // Nor redb's structure: table names, its magic.
                for needle in Table::ALL
                    .iter()
                    .map(|t| t.name().as_bytes())
                    .chain([&b"redb"[..]])
                {
                    assert!(
                        !contains(&bytes, needle),
                        "{} found in {}",
                        String::from_utf8_lossy(needle),
                        path.display()
                    );
                }
            }
        };
        {
            let s = Store::open_unprotected(tmp.path()).unwrap();
            let mut ops: Vec<WriteOp> = Table::ALL.iter().map(|&t| put(t, b"k", marker)).collect();
            ops.push(put(Table::Envelopes, b"big", &big));
            s.write(ops).unwrap();
            // Overwrite and delete, so freed pages have held earlier versions.
            s.write(vec![
                put(Table::Meta, b"k", &big),
                del(Table::Groups, b"k"),
                del(Table::Envelopes, b"big"),
            ])
            .unwrap();
            scan_dir();
            assert_eq!(&s.get(Table::Peers, b"k").unwrap().unwrap()[..], marker);
        }
        scan_dir();
    }

    #[test]
    fn tampered_truncated_or_moved_values_are_corrupt_not_panics() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open_unprotected(tmp.path()).unwrap();
        s.write(vec![put(Table::Meta, b"k", b"secret value")])
            .unwrap();
        let sealed = raw_get(&s, Table::Meta, b"k").unwrap();
        assert_eq!(sealed.len(), NONCE_LEN + b"secret value".len() + 16);

        // One flipped bit anywhere: nonce, ciphertext or tag.
        for i in [0, NONCE_LEN, NONCE_LEN + 3, sealed.len() - 1] {
            let mut flipped = sealed.clone();
            flipped[i] ^= 0x01;
            raw_put(&s, Table::Meta, b"k", &flipped);
            let err = s.get(Table::Meta, b"k").unwrap_err();
            assert!(
                matches!(err, StoreError::Corrupt { table: "meta" }),
                "{err}"
            );
            assert!(matches!(
                s.scan(Table::Meta, b""),
                Err(StoreError::Corrupt { .. })
            ));
        }
        for short in [&[][..], &sealed[..NONCE_LEN - 1], &sealed[..NONCE_LEN + 15]] {
            raw_put(&s, Table::Meta, b"k", short);
            assert!(matches!(
                s.get(Table::Meta, b"k"),
                Err(StoreError::Corrupt { .. })
            ));
        }
        // The error names the table, never the key bytes.
        raw_put(&s, Table::Meta, b"KEYBYTES", b"garbage");
        let msg = s.get(Table::Meta, b"KEYBYTES").unwrap_err().to_string();
        assert!(msg.contains("meta") && !msg.contains("KEYBYTES"), "{msg}");

        // The intact value copied under another key, or into another table, does not open.
        raw_put(&s, Table::Meta, b"k", &sealed);
        assert_eq!(
            &s.get(Table::Meta, b"k").unwrap().unwrap()[..],
            b"secret value"
        );
        raw_put(&s, Table::Meta, b"other", &sealed);
        raw_put(&s, Table::Groups, b"k", &sealed);
        assert!(matches!(
            s.get(Table::Meta, b"other"),
            Err(StoreError::Corrupt { table: "meta" })
        ));
        assert!(matches!(
            s.get(Table::Groups, b"k"),
            Err(StoreError::Corrupt { table: "groups" })
        ));
    }

    #[test]
    fn a_byte_flipped_in_the_file_itself_never_panics_or_yields_wrong_data() {
        let tmp = tempfile::tempdir().unwrap();
        let value = b"a value somebody will tamper with";
        {
            let s = Store::open_unprotected(tmp.path()).unwrap();
            s.write(vec![put(Table::Peers, b"p", value)]).unwrap();
        }
        let path = tmp.path().join(STORE_FILE);
        let original = std::fs::read(&path).unwrap();
        let start = crate::pagefile::SLOT_REGION_LEN as usize;
        for at in (start..original.len()).step_by(997) {
            let mut bytes = original.clone();
            bytes[at] ^= 0x40;
            std::fs::write(&path, &bytes).unwrap();
            // redb's checksums may refuse the file at open, or the value is refused, or
            // (a block redb no longer uses) nothing shows; never a wrong value.
            match Store::open_unprotected(tmp.path()) {
                Err(e) => assert!(matches!(e, StoreError::Db(_)), "{e}"),
                Ok(s) => match s.get(Table::Peers, b"p") {
                    Ok(Some(v)) => assert_eq!(&v[..], value),
                    Ok(None) => {}
                    Err(e) => assert!(
                        matches!(e, StoreError::Corrupt { .. } | StoreError::Db(_)),
                        "{e}"
                    ),
                },
            }
        }
    }

    #[test]
    fn on_disk_format_is_pinned() {
        // HKDF-SHA256(ikm = 32 x 0x42, salt = "", info = "hearth v1 storage value key"),
        // computed independently with Python's hmac/hashlib.
        let okm: [u8; 32] =
            hex::decode("fcac95d08327bf0a39b4dc0277bd3829f99dface07a917e01ba90d9bd91c4b0a")
                .unwrap()
                .try_into()
                .unwrap();

        // A value written by the store opens with nothing but the documented recipe.
        let tmp = tempfile::tempdir().unwrap();
        Vault::new(tmp.path())
            .store_plain(&StorageKey::from_slice(&[0x42; 32]))
            .unwrap();
        let s = Store::open_unprotected(tmp.path()).unwrap();
        s.write(vec![put(
            Table::EpochKeys,
            b"g\x00\x01",
            b"epoch key bytes",
        )])
        .unwrap();
        let sealed = raw_get(&s, Table::EpochKeys, b"g\x00\x01").unwrap();
        let cipher = XChaCha20Poly1305::new((&okm).into());
        let opened = cipher
            .decrypt(
                XNonce::from_slice(&sealed[..24]),
                Payload {
                    msg: &sealed[24..],
                    aad: b"hearth v1 storeepoch_keys\x00g\x00\x01",
                },
            )
            .unwrap();
        assert_eq!(opened, b"epoch key bytes");
        // Two writes of one value use fresh nonces.
        s.write(vec![put(
            Table::EpochKeys,
            b"g\x00\x01",
            b"epoch key bytes",
        )])
        .unwrap();
        assert_ne!(raw_get(&s, Table::EpochKeys, b"g\x00\x01").unwrap(), sealed);
        drop(s);

        // And every page of the file opens with the documented page recipe:
        // HKDF-SHA256(ikm = 32 x 0x42, info = "hearth v2 storage page key"), computed with
        // Python's hmac/hashlib, mixed with the file's secret (below); logical block i >= 1
        // at physical position i + 1 after the key slots, aad "hearth v2 page" || i u64 LE
        // || copy 0.
        let base: [u8; 32] =
            hex::decode("3aeab3cb9e15252f693e997d1f5c1be8fe7be8a88222f4628ec3a3d9c1fa9434")
                .unwrap()
                .try_into()
                .unwrap();
        let file = std::fs::read(tmp.path().join(STORE_FILE)).unwrap();
        // Then HKDF-SHA256(salt = the file's secret, the last of its 256 key slots, ikm =
        // that, info = "hearth v2 storage page key").
        let secret = &file[255 * 32..256 * 32];
        let mut page_key = [0u8; 32];
        hkdf::Hkdf::<sha2::Sha256>::new(Some(secret), &base)
            .expand(b"hearth v2 storage page key", &mut page_key)
            .unwrap();
        let pages = &file[crate::pagefile::SLOT_REGION_LEN as usize..];
        let block = crate::pagefile::PHYSICAL_BLOCK_LEN;
        assert!(
            pages.len() / block >= 3,
            "a store has pages beyond the header"
        );
        let cipher = XChaCha20Poly1305::new((&page_key).into());
        for i in 1..(pages.len() / block - 1) {
            let physical = &pages[(i + 1) * block..(i + 2) * block];
            let aad = [&b"hearth v2 page"[..], &(i as u64).to_le_bytes(), &[0]].concat();
            let plain = cipher
                .decrypt(
                    XNonce::from_slice(&physical[..24]),
                    Payload {
                        msg: &physical[24..],
                        aad: &aad,
                    },
                )
                .unwrap_or_else(|_| panic!("page {i} does not open"));
            assert_eq!(plain.len(), 8 + 4096);
        }
    }

    #[test]
    fn debug_output_shows_no_values() {
        let op = put(Table::Invites, b"id", b"SECRET-INVITE");
        let shown = format!("{op:?}");
        assert!(
            !shown.contains("SECRET") && !shown.contains("83, 69"),
            "{shown}"
        );
        assert!(shown.contains("Invites"), "{shown}");
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open_unprotected(tmp.path()).unwrap();
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("cipher") && !shown.contains("key"),
            "{shown}"
        );
    }

    /// Survives kill -9 right after `write` returns, and the dead process's lock is gone.
    #[test]
    fn data_written_survives_sigkill() {
        let tmp = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["store::tests::sigkill_child", "--exact", "--ignored"])
            .env("HEARTH_STORE_SIGKILL_DIR", tmp.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        let s = Store::open_unprotected(tmp.path()).unwrap();
        assert_eq!(&s.get(Table::Peers, b"h").unwrap().unwrap()[..], b"durable");
    }

    #[test]
    #[ignore = "run by data_written_survives_sigkill in a child process"]
    fn sigkill_child() {
        let Some(dir) = std::env::var_os("HEARTH_STORE_SIGKILL_DIR") else {
            return;
        };
        let s = Store::open_unprotected(Path::new(&dir)).unwrap();
        s.write(vec![put(Table::Peers, b"h", b"durable")]).unwrap();
        // SAFETY: kill(2) on our own pid; nothing after it runs.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        unreachable!();
    }

    fn table() -> impl Strategy<Value = Table> {
        proptest::sample::select(Table::ALL.to_vec())
    }

    /// Short keys from a small alphabet, so ops collide and prefixes overlap.
    fn small_key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0u8..3, 0..4)
    }

    fn op() -> impl Strategy<Value = (bool, Table, Vec<u8>, Vec<u8>)> {
        let value = prop_oneof![
            8 => proptest::collection::vec(any::<u8>(), 0..48),
            1 => proptest::collection::vec(any::<u8>(), 4000..9000),
        ];
        (prop::bool::weighted(0.7), table(), small_key(), value)
    }

    type Model = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

    fn check_against(s: &Store, model: &Model, prefix: &[u8]) -> Result<(), TestCaseError> {
        // The store's own entry (its alias key) is not the model's.
        let plain = |entries: Vec<Entry>| -> Vec<(Vec<u8>, Vec<u8>)> {
            plain(entries)
                .into_iter()
                .filter(|(k, _)| k.as_slice() != ALIAS_KEY_ENTRY)
                .collect()
        };
        for t in Table::ALL {
            let want: Vec<(Vec<u8>, Vec<u8>)> = model
                .range((t, Vec::new())..)
                .take_while(|((mt, _), _)| *mt == t)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect();
            prop_assert_eq!(plain(s.scan(t, &[]).unwrap()), want.clone());
            let want_prefixed: Vec<_> = want
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .cloned()
                .collect();
            prop_assert_eq!(plain(s.scan(t, prefix).unwrap()), want_prefixed);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn writes_match_a_map_model(
            batches in proptest::collection::vec(proptest::collection::vec(op(), 0..6), 1..8),
            prefix in small_key(),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let mut model = Model::new();
            let mut touched = Vec::new();
            {
                let s = Store::open_unprotected(tmp.path()).unwrap();
                for batch in batches {
                    let mut ops = Vec::new();
                    for (is_put, t, key, value) in batch {
                        touched.push((t, key.clone()));
                        if is_put {
                            ops.push(put(t, &key, &value));
                            model.insert((t, key), value);
                        } else {
                            ops.push(del(t, &key));
                            model.remove(&(t, key));
                        }
                    }
                    s.write(ops).unwrap();
                }
                for (t, key) in &touched {
                    let got = s.get(*t, key).unwrap().map(|v| v.to_vec());
                    prop_assert_eq!(got.as_ref(), model.get(&(*t, key.clone())));
                }
                check_against(&s, &model, &prefix)?;
            }
            let s = Store::open_unprotected(tmp.path()).unwrap();
            check_against(&s, &model, &prefix)?;
        }
    }
}
