//! Reading a store an older hearthd wrote, once, to move it into the current layout.
//!
//! That layout was `storage.key` (the storage key, 32 bytes, 0600), `group-keys/<alias in
//! hex>` (one 32-byte key file per group, whose values were sealed under
//! HKDF(file, "hearth v1 storage group value key")) and `hearth.redb` (plain redb, with
//! readable table names and keys, every value sealed as the current store seals them).
//! The storage key moves into the key file unchanged, so aliases and value seals stay
//! valid; everything else is read here and written into the new store.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::XNonce;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use redb::{Database, ReadableDatabase, ReadableTable};
use zeroize::Zeroizing;

use super::{Entry, NONCE_LEN, StoreError, Table, aad, derive, io, mode_of, value_cipher};
use crate::vault::StorageKey;

pub const KEY_FILE: &str = "storage.key";
const GROUP_KEYS_DIR: &str = "group-keys";
pub const DB_FILE: &str = "hearth.redb";
const GROUP_VALUE_KEY_INFO: &[u8] = b"hearth v1 storage group value key";
const KEY_LEN: usize = 32;

/// Whether anything of the old layout is left in `dir`.
pub fn present(dir: &Path) -> bool {
    [KEY_FILE, GROUP_KEYS_DIR, DB_FILE]
        .iter()
        .any(|name| std::fs::symlink_metadata(dir.join(name)).is_ok())
}

/// Whether the old database exists and holds anything.
pub fn has_data(dir: &Path) -> bool {
    std::fs::metadata(dir.join(DB_FILE)).is_ok_and(|m| m.len() > 0)
}

/// The storage key the old layout kept in `storage.key`, if there is one. An empty file
/// beside no data (a first start that died before writing it) counts as none.
pub fn storage_key(dir: &Path) -> Result<Option<StorageKey>, StoreError> {
    let path = dir.join(KEY_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::fs::symlink_metadata(&path).is_ok() {
                // A dangling symlink: the key lives elsewhere and is not reachable now.
                return Err(StoreError::KeyFileMissing { path });
            }
            return Ok(None);
        }
        Err(e) => {
            return Err(StoreError::Io {
                context: format!("opening {}", path.display()),
                source: e,
            });
        }
    };
    match read_key(&path, file)? {
        Some(key) if key.len() == KEY_LEN => Ok(Some(StorageKey::from_slice(
            key[..].try_into().expect("checked length"),
        ))),
        Some(key) => Err(StoreError::KeyFileLength {
            path,
            len: key.len() as u64,
        }),
        None if has_data(dir) => Err(StoreError::KeyFileLength { path, len: 0 }),
        None => Ok(None),
    }
}

/// A key file's bytes (at most one more than a key, to tell a longer file), refusing one
/// other users can read. `None` when it is empty.
fn read_key(path: &Path, mut file: File) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
    let meta = file
        .metadata()
        .map_err(io(format!("reading {}", path.display())))?;
    let mode = mode_of(&meta);
    if mode & 0o077 != 0 {
        return Err(StoreError::KeyFilePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let mut key = Zeroizing::new(Vec::with_capacity(KEY_LEN + 1));
    Read::by_ref(&mut file)
        .take(KEY_LEN as u64 + 1)
        .read_to_end(&mut key)
        .map_err(io(format!("reading {}", path.display())))?;
    Ok((!key.is_empty()).then_some(key))
}

/// The old database, open for reading, with the keys to open its values.
pub struct LegacyStore {
    db: Database,
    cipher: XChaCha20Poly1305,
    group_ciphers: HashMap<[u8; 16], XChaCha20Poly1305>,
}

impl LegacyStore {
    pub fn open(dir: &Path, key: &StorageKey) -> Result<LegacyStore, StoreError> {
        let db = redb::Builder::new()
            .set_check_integrity_on_open(true)
            .open(dir.join(DB_FILE))
            .map_err(super::db_err)?;
        Ok(LegacyStore {
            db,
            cipher: value_cipher(key.expose()),
            group_ciphers: load_group_keys(&dir.join(GROUP_KEYS_DIR))?,
        })
    }

    /// The aliases of the groups whose values have keys of their own.
    pub fn group_aliases(&self) -> Vec<[u8; 16]> {
        self.group_ciphers.keys().copied().collect()
    }

    /// Every entry of `table`, opened. A table the old store never made is empty.
    pub fn entries(&self, table: Table) -> Result<Vec<Entry>, StoreError> {
        let txn = self.db.begin_read().map_err(super::db_err)?;
        let t = match txn.open_table(table.definition()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(super::db_err(e)),
        };
        let mut out = Vec::new();
        for entry in t.iter().map_err(super::db_err)? {
            let (k, v) = entry.map_err(super::db_err)?;
            let key = k.value().to_vec();
            let cipher = table
                .group_scoped()
                .then(|| key.get(..16).and_then(|a| <[u8; 16]>::try_from(a).ok()))
                .flatten()
                .and_then(|alias| self.group_ciphers.get(&alias))
                .unwrap_or(&self.cipher);
            let sealed = v.value();
            let corrupt = || StoreError::Corrupt {
                table: table.name(),
            };
            let (nonce, ct) = sealed.split_at_checked(NONCE_LEN).ok_or_else(corrupt)?;
            let plain = cipher
                .decrypt(
                    XNonce::from_slice(nonce),
                    Payload {
                        msg: ct,
                        aad: &aad(table, &key),
                    },
                )
                .map_err(|_| corrupt())?;
            out.push((key, Zeroizing::new(plain)));
        }
        Ok(out)
    }
}

/// Loads every group key file (named by a group alias in hex, 32 bytes, 0600).
fn load_group_keys(dir: &Path) -> Result<HashMap<[u8; 16], XChaCha20Poly1305>, StoreError> {
    let mut out = HashMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(StoreError::Io {
                context: format!("reading {}", dir.display()),
                source: e,
            });
        }
    };
    for entry in entries {
        let entry = entry.map_err(io(format!("reading {}", dir.display())))?;
        let Some(alias) = entry
            .file_name()
            .to_str()
            .and_then(|n| hex::decode(n).ok())
            .and_then(|v| <[u8; 16]>::try_from(v).ok())
        else {
            continue;
        };
        let path = entry.path();
        let file = File::open(&path).map_err(io(format!("opening {}", path.display())))?;
        match read_key(&path, file)? {
            Some(key) if key.len() == KEY_LEN => {
                let value_key = derive(&key, GROUP_VALUE_KEY_INFO);
                out.insert(alias, XChaCha20Poly1305::new((&*value_key).into()));
            }
            _ => {
                return Err(StoreError::KeyFileLength {
                    path,
                    len: entry.metadata().map_or(0, |m| m.len()),
                });
            }
        }
    }
    Ok(out)
}

/// Destroys what is left of the old layout: the group key files and the storage key file
/// are overwritten, synced and removed, then the database is overwritten and removed (its
/// table names, keys and sizes were readable, and its values open under the storage key,
/// which the new store still uses until a passphrase is set).
pub fn destroy(dir: &Path) -> Result<(), StoreError> {
    let keys_dir = dir.join(GROUP_KEYS_DIR);
    if let Ok(entries) = std::fs::read_dir(&keys_dir) {
        for entry in entries.flatten() {
            super::shred_file(&entry.path())?;
        }
        let _ = std::fs::remove_dir(&keys_dir);
    }
    super::shred_file(&dir.join(KEY_FILE))?;
    let db = dir.join(DB_FILE);
    match super::overwrite_whole(&db) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(StoreError::Io {
                context: format!("destroying {}", db.display()),
                source: e,
            });
        }
    }
    super::remove_if_there(&db)?;
    super::fsync_dir(dir)
}
