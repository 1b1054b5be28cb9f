//! The encrypted store: redb tables whose every value is sealed under the storage key.
//!
//! Layout of the data directory (0700):
//! - `storage.key`: 32 random bytes (0600). The value-sealing key is derived from it with
//!   HKDF-SHA256, label `hearth v1 storage value key`.
//! - `hearth.redb`: the database. Each value is `nonce[24] || XChaCha20-Poly1305(value)` with
//!   associated data `"hearth v1 store" || table name || 0x00 || key`, so a value moved to
//!   another key or table does not open.
//! - `hearthd.lock`: holds an exclusive `flock` and the owner's pid while a daemon runs.
//!
//! Keys are stored in the clear: callers use only random ids and counters as keys, never
//! names or text.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use redb::{Database, ReadableDatabase, TableDefinition};
use zeroize::{Zeroize, Zeroizing};

const KEY_FILE: &str = "storage.key";
const DB_FILE: &str = "hearth.redb";
const LOCK_FILE: &str = "hearthd.lock";
const VALUE_KEY_LABEL: &[u8] = b"hearth v1 storage value key";
const AAD_PREFIX: &[u8] = b"hearth v1 store";
const NONCE_LEN: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Table {
    Meta,
    Groups,
    Envelopes,
    Heads,
    EpochKeys,
    Invites,
    Peers,
}

impl Table {
    const ALL: [Table; 7] = [
        Table::Meta,
        Table::Groups,
        Table::Envelopes,
        Table::Heads,
        Table::EpochKeys,
        Table::Invites,
        Table::Peers,
    ];

    fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Groups => "groups",
            Table::Envelopes => "envelopes",
            Table::Heads => "heads",
            Table::EpochKeys => "epoch_keys",
            Table::Invites => "invites",
            Table::Peers => "peers",
        }
    }

    fn definition(self) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        TableDefinition::new(self.name())
    }
}

/// A key and its opened value.
pub type Entry = (Vec<u8>, Zeroizing<Vec<u8>>);

#[derive(Debug)]
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

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "another hearthd (pid {pid}) is already using {}; stop it first or pass a different --data-dir",
        dir.display()
    )]
    AlreadyRunning { dir: PathBuf, pid: String },
    #[error(
        "{} is readable by other users (mode {mode:o}); run `chmod 600 {}` and start again",
        path.display(),
        path.display()
    )]
    KeyFilePermissions { path: PathBuf, mode: u32 },
    #[error("{} is not a hearth storage key (it must be exactly 32 bytes)", path.display())]
    KeyFileLength { path: PathBuf },
    #[error("a value in table {table} does not decrypt: the store is damaged or was tampered with")]
    Corrupt { table: &'static str },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Db(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

fn db_err<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

/// The key that seals values; wiped on drop.
struct ValueKey(Zeroizing<[u8; 32]>);

pub struct Store {
    dir: PathBuf,
    db: Database,
    key: ValueKey,
    // Held for the store's lifetime: the flock is released when the file closes.
    _lock: File,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.dir.display())
    }
}

impl Store {
    /// Opens or creates the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        prepare_dir(data_dir)?;
        let lock = take_lock(data_dir)?;
        let file_key = load_or_create_key(&data_dir.join(KEY_FILE))?;
        let key = derive_value_key(&file_key);
        let database = Database::create(data_dir.join(DB_FILE)).map_err(db_err)?;
        // Make every table exist so reads on a fresh store find empty tables.
        let txn = database.begin_write().map_err(db_err)?;
        for t in Table::ALL {
            txn.open_table(t.definition()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(Store {
            dir: data_dir.to_owned(),
            db: database,
            key,
            _lock: lock,
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(table.definition()).map_err(db_err)?;
        match t.get(key).map_err(db_err)? {
            Some(v) => Ok(Some(self.open_value(table, key, v.value())?)),
            None => Ok(None),
        }
    }

    /// All entries whose key starts with `prefix`, in key order.
    pub fn scan(&self, table: Table, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
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
    /// kill -9 and power loss.
    pub fn write(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        for op in ops {
            match op {
                WriteOp::Put { table, key, value } => {
                    let sealed = self.seal_value(table, &key, &value);
                    let mut value = value;
                    value.zeroize();
                    let mut t = txn.open_table(table.definition()).map_err(db_err)?;
                    t.insert(key.as_slice(), sealed.as_slice())
                        .map_err(db_err)?;
                }
                WriteOp::Delete { table, key } => {
                    let mut t = txn.open_table(table.definition()).map_err(db_err)?;
                    t.remove(key.as_slice()).map_err(db_err)?;
                }
            }
        }
        txn.commit().map_err(db_err)
    }

    fn aad(table: Table, key: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(AAD_PREFIX.len() + 16 + key.len());
        aad.extend_from_slice(AAD_PREFIX);
        aad.extend_from_slice(table.name().as_bytes());
        aad.push(0);
        aad.extend_from_slice(key);
        aad
    }

    fn seal_value(&self, table: Table, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let cipher = XChaCha20Poly1305::new((&*self.key.0).into());
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: &Self::aad(table, key),
                },
            )
            .expect("encryption of an in-memory buffer cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        out
    }

    fn open_value(
        &self,
        table: Table,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let corrupt = StoreError::Corrupt {
            table: table.name(),
        };
        if sealed.len() < NONCE_LEN {
            return Err(corrupt);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new((&*self.key.0).into());
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: &Self::aad(table, key),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| corrupt)
    }
}

fn prepare_dir(dir: &Path) -> Result<(), StoreError> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    let mode = std::fs::metadata(dir)
        .map_err(io(format!("reading {}", dir.display())))?
        .permissions()
        .mode();
    if mode & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("making {} private (0700)", dir.display())))?;
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
        .open(&path)
        .map_err(io(format!("opening {}", path.display())))?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(StoreError::AlreadyRunning {
                dir: dir.to_owned(),
                pid: if pid.is_empty() {
                    "unknown".into()
                } else {
                    pid.to_owned()
                },
            });
        }
        return Err(StoreError::Io {
            context: format!("locking {}", path.display()),
            source: err,
        });
    }
    file.set_len(0).map_err(io("writing the lock file"))?;
    file.rewind().map_err(io("writing the lock file"))?;
    write!(file, "{}", std::process::id()).map_err(io("writing the lock file"))?;
    Ok(file)
}

fn load_or_create_key(path: &Path) -> Result<Zeroizing<[u8; 32]>, StoreError> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            let mut key = Zeroizing::new([0u8; 32]);
            OsRng.fill_bytes(&mut *key);
            file.write_all(&*key)
                .and_then(|()| file.sync_all())
                .map_err(io(format!("writing {}", path.display())))?;
            if let Some(dir) = path.parent() {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io(format!("syncing {}", dir.display())))?;
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mut file = File::open(path).map_err(io(format!("opening {}", path.display())))?;
            let mode = file
                .metadata()
                .map_err(io(format!("reading {}", path.display())))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(StoreError::KeyFilePermissions {
                    path: path.to_owned(),
                    mode: mode & 0o777,
                });
            }
            let mut bytes = Zeroizing::new(Vec::with_capacity(33));
            Read::by_ref(&mut file)
                .take(33)
                .read_to_end(&mut bytes)
                .map_err(io(format!("reading {}", path.display())))?;
            let key: [u8; 32] =
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| StoreError::KeyFileLength {
                        path: path.to_owned(),
                    })?;
            Ok(Zeroizing::new(key))
        }
        Err(e) => Err(StoreError::Io {
            context: format!("creating {}", path.display()),
            source: e,
        }),
    }
}

fn derive_value_key(file_key: &[u8; 32]) -> ValueKey {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, file_key);
    let mut out = Zeroizing::new([0u8; 32]);
    hk.expand(VALUE_KEY_LABEL, &mut *out)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    ValueKey(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn put(table: Table, key: &[u8], value: &[u8]) -> WriteOp {
        WriteOp::Put {
            table,
            key: key.to_vec(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn round_trip_scan_delete_and_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        {
            let s = Store::open(&dir).unwrap();
            assert!(s.get(Table::Meta, b"x").unwrap().is_none());
            s.write(vec![
                put(Table::Envelopes, b"a1", b"one"),
                put(Table::Envelopes, b"a2", b"two"),
                put(Table::Envelopes, b"b1", b"other"),
            ])
            .unwrap();
            let a: Vec<_> = s
                .scan(Table::Envelopes, b"a")
                .unwrap()
                .into_iter()
                .map(|(k, v)| (k, v.to_vec()))
                .collect();
            assert_eq!(
                a,
                vec![
                    (b"a1".to_vec(), b"one".to_vec()),
                    (b"a2".to_vec(), b"two".to_vec())
                ]
            );
            s.write(vec![WriteOp::Delete {
                table: Table::Envelopes,
                key: b"a1".to_vec(),
            }])
            .unwrap();
        }
        let s = Store::open(&dir).unwrap();
        assert!(s.get(Table::Envelopes, b"a1").unwrap().is_none());
        assert_eq!(
            &s.get(Table::Envelopes, b"a2").unwrap().unwrap()[..],
            b"two"
        );
    }

    #[test]
    fn second_open_is_refused_while_first_is_alive() {
        let tmp = tempfile::tempdir().unwrap();
        let _first = Store::open(tmp.path()).unwrap();
        let err = Store::open(tmp.path()).unwrap_err();
        assert!(matches!(err, StoreError::AlreadyRunning { .. }), "{err}");
        assert!(err.to_string().contains(&std::process::id().to_string()));
    }

    #[test]
    fn permissions_are_private_and_loose_key_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        drop(Store::open(&dir).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        std::fs::set_permissions(dir.join(KEY_FILE), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        assert!(matches!(
            Store::open(&dir),
            Err(StoreError::KeyFilePermissions { .. })
        ));
    }

    #[test]
    fn no_plaintext_in_any_file() {
        let tmp = tempfile::tempdir().unwrap();
        let marker = b"STORE-MARKER-5a8c0e1f";
        {
            let s = Store::open(tmp.path()).unwrap();
            s.write(vec![put(Table::Groups, b"g", marker)]).unwrap();
        }
        for entry in std::fs::read_dir(tmp.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(!bytes.windows(marker.len()).any(|w| w == marker));
        }
    }

    #[test]
    fn tampered_or_moved_values_are_corrupt_not_panics() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        s.write(vec![put(Table::Meta, b"k", b"secret value")])
            .unwrap();
        // Read the sealed bytes directly, then flip one and copy it under another key.
        let sealed = {
            let txn = s.db.begin_read().unwrap();
            let t = txn.open_table(Table::Meta.definition()).unwrap();
            t.get(&b"k"[..]).unwrap().unwrap().value().to_vec()
        };
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let txn = s.db.begin_write().unwrap();
        {
            let mut t = txn.open_table(Table::Meta.definition()).unwrap();
            t.insert(&b"k"[..], flipped.as_slice()).unwrap();
            t.insert(&b"moved"[..], sealed.as_slice()).unwrap();
        }
        {
            let mut t = txn.open_table(Table::Groups.definition()).unwrap();
            t.insert(&b"k"[..], sealed.as_slice()).unwrap();
        }
        txn.commit().unwrap();
        assert!(matches!(
            s.get(Table::Meta, b"k"),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            s.get(Table::Meta, b"moved"),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            s.get(Table::Groups, b"k"),
            Err(StoreError::Corrupt { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn writes_match_a_map_model(
            ops in proptest::collection::vec(
                (any::<bool>(), 0u8..8, proptest::collection::vec(any::<u8>(), 0..40)),
                1..40,
            )
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let s = Store::open(tmp.path()).unwrap();
            let mut model = BTreeMap::new();
            for chunk in ops.chunks(5) {
                let mut batch = Vec::new();
                for (is_put, k, v) in chunk {
                    let key = vec![*k];
                    if *is_put {
                        model.insert(key.clone(), v.clone());
                        batch.push(put(Table::Envelopes, &key, v));
                    } else {
                        model.remove(&key);
                        batch.push(WriteOp::Delete { table: Table::Envelopes, key });
                    }
                }
                s.write(batch).unwrap();
            }
            let stored: BTreeMap<Vec<u8>, Vec<u8>> = s
                .scan(Table::Envelopes, &[])
                .unwrap()
                .into_iter()
                .map(|(k, v)| (k, v.to_vec()))
                .collect();
            prop_assert_eq!(stored, model);
        }
    }
}
