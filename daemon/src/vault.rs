//! The key file: the 32-byte storage key every other at-rest key derives from, kept either
//! in the clear (no passphrase; the file is 0600) or wrapped under a passphrase.
//!
//! `keys` in the data directory, written whole and replaced by rename, is
//! `body || BLAKE3(body)[..16]`, where `body` is
//!
//! ```text
//! "hearth-keys" || version (2) || mode
//! mode 0, no passphrase:  storage key [32]
//! mode 1, passphrase:     m_cost u32 LE (KiB) || t_cost u32 LE || p_cost u32 LE || salt [16]
//!                         || slot [73] || slot [73]
//! ```
//!
//! A slot is `nonce[24] || XChaCha20-Poly1305(wrap key, nonce, kind || key[32],
//! aad = "hearth v2 key slot" || the body up to the first slot)`, where the wrap key is
//! HKDF-SHA256(ikm = Argon2id(passphrase, salt, m, t, p), info = "hearth v2 passphrase
//! wrap key"). `kind` 1 holds the storage key; kind 2 marks the duress passphrase (its 32
//! bytes are random and unused). A file always has two slots: with no duress passphrase
//! the second is random bytes, and the two are in random order, so the file does not say
//! whether a duress passphrase exists.
//!
//! The trailing checksum is not for secrecy: it tells a file cut short by a crash (or
//! overwritten by `panic`) from a good one, so a half-written replacement is never taken
//! for the key. Replacing the file always writes the new one beside it first, then
//! overwrites the old one in place, then renames; [`Vault::recover`] finishes a
//! replacement a crash interrupted.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hearth_protocol::api::Passphrase;
use rand_core::{OsRng, RngCore};
use zeroize::{Zeroize, Zeroizing};

pub const KEY_FILE: &str = "keys";
/// A replacement of [`KEY_FILE`] being written (passphrase set, changed or removed).
const NEW_FILE: &str = "keys.new";
/// A fresh install's key file being written by a duress unlock: finishing it also means
/// destroying the store, which the fresh key cannot open.
const FRESH_FILE: &str = "keys.fresh";

const MAGIC: &[u8] = b"hearth-keys";
const VERSION: u8 = 2;
const MODE_PLAIN: u8 = 0;
const MODE_WRAPPED: u8 = 1;
const KEY_LEN: usize = 32;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const SLOT_LEN: usize = NONCE_LEN + 1 + KEY_LEN + 16;
const CHECK_LEN: usize = 16;
const HEADER_LEN: usize = MAGIC.len() + 2;
const PARAMS_LEN: usize = 12 + SALT_LEN;
const PLAIN_LEN: usize = HEADER_LEN + KEY_LEN + CHECK_LEN;
const WRAPPED_LEN: usize = HEADER_LEN + PARAMS_LEN + 2 * SLOT_LEN + CHECK_LEN;
const SLOT_AAD: &[u8] = b"hearth v2 key slot";
const WRAP_KEY_INFO: &[u8] = b"hearth v2 passphrase wrap key";
const KIND_STORAGE: u8 = 1;
const KIND_DURESS: u8 = 2;

/// The shortest passphrase accepted, in characters.
pub const MIN_PASSPHRASE_CHARS: usize = 8;

/// Argon2id's cost. The default takes about half a second on a 2-core machine of 2026
/// (256 MiB, two passes): slow for someone trying guesses against a copied key file,
/// quick enough for a person unlocking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams {
            m_cost_kib: 256 * 1024,
            t_cost: 2,
            p_cost: 1,
        }
    }
}

/// The most a key file may ask for, so a damaged or planted one cannot make the daemon
/// allocate without bound or spin for hours.
const MAX_M_COST_KIB: u32 = 4 * 1024 * 1024;
const MAX_T_COST: u32 = 64;
const MAX_P_COST: u32 = 16;

/// 32 secret bytes on the heap, wiped on drop. On the heap so that moving a key moves a
/// pointer: a moved array would leave copies of itself on the stack.
#[derive(Clone)]
struct Secret32(Box<[u8; KEY_LEN]>);

impl Secret32 {
    fn zero() -> Secret32 {
        Secret32(Box::new([0u8; KEY_LEN]))
    }
}

impl Drop for Secret32 {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// The key every at-rest key is derived from. Wiped on drop.
pub struct StorageKey(Secret32);

impl StorageKey {
    pub fn random() -> StorageKey {
        let mut key = Secret32::zero();
        OsRng.fill_bytes(&mut key.0[..]);
        StorageKey(key)
    }

    pub fn from_slice(bytes: &[u8; KEY_LEN]) -> StorageKey {
        let mut key = Secret32::zero();
        key.0.copy_from_slice(bytes);
        StorageKey(key)
    }

    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0.0
    }
}

impl std::fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorageKey(..)")
    }
}

/// What the key file holds.
#[derive(Debug)]
pub enum KeyFile {
    /// No passphrase: the key itself.
    Plain(StorageKey),
    /// Wrapped under a passphrase (and perhaps a duress passphrase).
    Wrapped(Wrapped),
}

#[derive(Clone)]
pub struct Wrapped {
    params: KdfParams,
    salt: [u8; SALT_LEN],
    slots: [[u8; SLOT_LEN]; 2],
}

impl KeyFile {
    /// A key file's bytes as read from disk, or `None` when they are not a whole,
    /// well-formed key file (for tools and the fuzzer; [`Vault::read`] reads the file).
    pub fn parse(bytes: &[u8]) -> Option<KeyFile> {
        parse(bytes)
    }

    /// Tries `passphrase` on a wrapped key file (one Argon2id derivation, at the cost the
    /// file names).
    pub fn open(&self, passphrase: &Passphrase) -> Result<Opened, VaultError> {
        match self {
            KeyFile::Plain(_) => Err(VaultError::NotProtected),
            KeyFile::Wrapped(w) => open_slots(w, passphrase).map(|(opened, _, _)| opened),
        }
    }

    /// The Argon2id cost a wrapped key file asks for.
    pub fn params(&self) -> Option<KdfParams> {
        match self {
            KeyFile::Plain(_) => None,
            KeyFile::Wrapped(w) => Some(w.params),
        }
    }
}

impl std::fmt::Debug for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wrapped")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// What a passphrase opened.
pub enum Opened {
    Storage(StorageKey),
    /// The duress passphrase; [`Vault::start_fresh`] takes the key it derived.
    Duress(WrapKey),
}

/// A passphrase's wrap key for one salt. Wiped on drop; on the heap, as [`StorageKey`].
pub struct WrapKey {
    key: Secret32,
    params: KdfParams,
    salt: [u8; SALT_LEN],
}

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("that passphrase is not right")]
    WrongPassphrase,

    #[error("no passphrase protects this store; set one with `hearth passphrase set`")]
    NotProtected,

    #[error("a passphrase must have at least {MIN_PASSPHRASE_CHARS} characters")]
    TooShort,

    #[error("the duress passphrase must differ from the passphrase")]
    SameAsPassphrase,

    #[error(
        "that is the duress passphrase; choose a new passphrase that differs from it (or \
         set a new duress passphrase afterwards)"
    )]
    SameAsDuress,

    #[error("hearth's keys on this device were destroyed")]
    Destroyed,

    #[error(
        "{} is damaged (cut short, overwritten or from another program); the data beside it \
         cannot be opened without it: restore the data directory from a backup, or move it \
         aside to start afresh",
        path.display()
    )]
    Damaged { path: PathBuf },

    #[error(
        "{} can be read by other users (mode {mode:03o}); run `chmod 600 {}` and start hearthd again",
        path.display(),
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VaultError {
    let context = context.into();
    move |source| VaultError::Io { context, source }
}

/// A key file written beside the current one and not yet installed: the next step of a
/// re-key ([`Vault::stage`]).
pub struct Staged(Zeroizing<Vec<u8>>);

/// A replacement of the key file that a crash left, found by [`Vault::pending`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    None,
    /// `keys.new`: a passphrase set, changed or removed, or a re-key's new key.
    Staged,
    /// `keys.fresh`: a duress unlock had destroyed the real key; the store goes next.
    Fresh,
}

/// The key file of one data directory. Clones share one lock, under which every write
/// happens, and which [`Vault::destroy`] closes for good: a passphrase change racing a
/// panic can never write a key after the panic destroyed the files.
#[derive(Debug, Clone)]
pub struct Vault {
    dir: PathBuf,
    /// `true` once destroyed.
    writes: std::sync::Arc<std::sync::Mutex<bool>>,
}

impl Vault {
    pub fn new(dir: &Path) -> Vault {
        Vault {
            dir: dir.to_owned(),
            writes: std::sync::Arc::new(std::sync::Mutex::new(false)),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Runs a write under the lock, unless the files were destroyed.
    fn writing<T>(&self, f: impl FnOnce() -> Result<T, VaultError>) -> Result<T, VaultError> {
        let destroyed = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        if *destroyed {
            return Err(VaultError::Destroyed);
        }
        f()
    }

    /// What a crash left half done. A replacement cut short before it was synced is
    /// destroyed here (the file it would have replaced is still whole).
    pub fn pending(&self) -> Result<Pending, VaultError> {
        self.writing(|| {
            for (name, pending) in [(FRESH_FILE, Pending::Fresh), (NEW_FILE, Pending::Staged)] {
                let path = self.path(name);
                match read_file(&path)? {
                    None => {}
                    Some(bytes) if parse(&bytes).is_some() => return Ok(pending),
                    Some(_) => destroy_file(&path)?,
                }
            }
            Ok(Pending::None)
        })
    }

    /// The key file, or `None` when there is none.
    pub fn read(&self) -> Result<Option<KeyFile>, VaultError> {
        let path = self.path(KEY_FILE);
        let Some(bytes) = read_file(&path)? else {
            return Ok(None);
        };
        parse(&bytes).map(Some).ok_or(VaultError::Damaged { path })
    }

    /// Makes a new storage key, kept in the clear (no passphrase yet).
    pub fn create_plain(&self) -> Result<StorageKey, VaultError> {
        let key = StorageKey::random();
        self.replace(&plain_bytes(&key))?;
        Ok(key)
    }

    /// Keeps `key` in the clear (an older layout's key moved in).
    pub fn store_plain(&self, key: &StorageKey) -> Result<(), VaultError> {
        self.replace(&plain_bytes(key))
    }

    /// The key file for `new_key` wrapped under a first `passphrase`, with a new salt:
    /// [`Vault::stage`] writes it once the store is re-keyed.
    pub fn prepare_protect(
        &self,
        new_key: &StorageKey,
        passphrase: &Passphrase,
        params: KdfParams,
    ) -> Result<Staged, VaultError> {
        check_length(passphrase)?;
        let mut salt = [0u8; SALT_LEN];
        OsRng.fill_bytes(&mut salt);
        let wrap = derive(passphrase, params, salt)?;
        let mut random = [0u8; SLOT_LEN];
        OsRng.fill_bytes(&mut random);
        let slot = seal_slot(&wrap, KIND_STORAGE, new_key.expose());
        Ok(Staged(wrapped_bytes(&wrap, slot, random)))
    }

    /// The wrapped key file, or [`VaultError::NotProtected`].
    pub fn wrapped(&self) -> Result<Wrapped, VaultError> {
        match self.read()? {
            Some(KeyFile::Wrapped(w)) => Ok(w),
            _ => Err(VaultError::NotProtected),
        }
    }

    /// Replaces the passphrase `current` (which must open the storage key) by `new`,
    /// wrapping the same storage key: nothing stored is re-encrypted. The salt and the other
    /// slot stay, so a duress passphrase survives the change; `new` may not be the duress
    /// passphrase (one passphrase would then both open the data and destroy it).
    pub fn change(&self, current: &Passphrase, new: &Passphrase) -> Result<(), VaultError> {
        check_length(new)?;
        let wrapped = self.wrapped()?;
        let (Opened::Storage(key), _, index) = open_slots(&wrapped, current)? else {
            return Err(VaultError::WrongPassphrase);
        };
        let wrap = derive(new, wrapped.params, wrapped.salt)?;
        if opens(&wrap, &wrapped.slots[1 - index]) {
            return Err(VaultError::SameAsDuress);
        }
        let mut slots = wrapped.slots;
        slots[index] = seal_slot(&wrap, KIND_STORAGE, key.expose());
        self.replace(&wrapped_bytes(&wrap, slots[0], slots[1]))
    }

    /// Writes `staged` beside the key file (synced), to be installed by
    /// [`Vault::install_staged`]; a start after a crash in between finishes the re-key
    /// (`store::recover`).
    pub fn stage(&self, staged: &Staged) -> Result<(), VaultError> {
        self.writing(|| {
            write_new(&self.path(NEW_FILE), &staged.0)?;
            // Its name durable too, before the old store is destroyed.
            fsync_dir(&self.dir)
        })
    }

    /// Installs what [`Vault::stage`] wrote, after `first` (the store's half of a re-key),
    /// both under the lock, so a panic meanwhile waits for them or stops them.
    pub fn install_staged<E: From<VaultError>>(
        &self,
        first: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        let destroyed = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        if *destroyed {
            return Err(VaultError::Destroyed.into());
        }
        first()?;
        self.install(&self.path(NEW_FILE))?;
        drop(destroyed);
        Ok(())
    }

    /// Takes the passphrase `current` away (and any duress passphrase with it): the
    /// storage key is kept in the clear again.
    pub fn unprotect(&self, current: &Passphrase) -> Result<(), VaultError> {
        let wrapped = self.wrapped()?;
        let (Opened::Storage(key), _, _) = open_slots(&wrapped, current)? else {
            return Err(VaultError::WrongPassphrase);
        };
        self.replace(&plain_bytes(&key))
    }

    /// Adds (or replaces) the duress passphrase beside `current`, which must open the
    /// storage key.
    pub fn add_duress(&self, current: &Passphrase, duress: &Passphrase) -> Result<(), VaultError> {
        check_length(duress)?;
        let wrapped = self.wrapped()?;
        let (Opened::Storage(_), real, index) = open_slots(&wrapped, current)? else {
            return Err(VaultError::WrongPassphrase);
        };
        let duress_wrap = derive(duress, wrapped.params, wrapped.salt)?;
        if bool::from(subtle::ConstantTimeEq::ct_eq(
            &duress_wrap.key.0[..],
            &real.key.0[..],
        )) {
            return Err(VaultError::SameAsPassphrase);
        }
        let mut unused = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(&mut unused[..]);
        let mut slots = wrapped.slots;
        slots[1 - index] = seal_slot(&duress_wrap, KIND_DURESS, &unused);
        self.replace(&wrapped_bytes(&real, slots[0], slots[1]))
    }

    /// Tries `passphrase` on the key file: the storage key, the duress mark, or
    /// [`VaultError::WrongPassphrase`]. Costs one Argon2id derivation.
    pub fn unlock(&self, passphrase: &Passphrase) -> Result<Opened, VaultError> {
        let wrapped = self.wrapped()?;
        open_slots(&wrapped, passphrase).map(|(opened, _, _)| opened)
    }

    /// The first step of a duress unlock: writes beside the key file a fresh one, with a
    /// new storage key wrapped under the duress passphrase alone, then destroys the real
    /// key. [`Vault::finish_fresh`] installs the fresh file once the old store is gone.
    pub fn start_fresh(&self, duress: &WrapKey) -> Result<StorageKey, VaultError> {
        self.writing(|| {
            let key = StorageKey::random();
            let mut random = [0u8; SLOT_LEN];
            OsRng.fill_bytes(&mut random);
            let slot = seal_slot(duress, KIND_STORAGE, key.expose());
            write_new(&self.path(FRESH_FILE), &wrapped_bytes(duress, slot, random))?;
            fsync_dir(&self.dir)?;
            // The real key goes first, so that whatever happens next nothing opens the data.
            destroy_contents(&self.path(KEY_FILE))?;
            Ok(key)
        })
    }

    /// Installs the fresh key file [`Vault::start_fresh`] wrote.
    pub fn finish_fresh(&self) -> Result<(), VaultError> {
        self.writing(|| self.install(&self.path(FRESH_FILE)))
    }

    /// Destroys every key file: each is overwritten with random bytes, synced and removed.
    /// No write through any clone of this vault succeeds afterwards.
    pub fn destroy(&self) -> Result<(), VaultError> {
        let mut destroyed = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        *destroyed = true;
        // Every file, whatever happened to the one before; the first error is returned.
        let mut outcome = Ok(());
        for name in [KEY_FILE, NEW_FILE, FRESH_FILE] {
            if let Err(e) = destroy_file(&self.path(name)) {
                outcome = outcome.and(Err(e));
            }
        }
        outcome.and(fsync_dir(&self.dir))
    }

    /// Writes `bytes` as `keys.new`, then replaces the key file with it.
    fn replace(&self, bytes: &[u8]) -> Result<(), VaultError> {
        self.writing(|| {
            let path = self.path(NEW_FILE);
            write_new(&path, bytes)?;
            self.install(&path)
        })
    }

    /// Overwrites the current key file in place (so its old contents are not left in the
    /// blocks a rename would free), then renames `from` over it. Callers hold the lock.
    fn install(&self, from: &Path) -> Result<(), VaultError> {
        let to = self.path(KEY_FILE);
        // The new file's name is durable before the old key is overwritten.
        fsync_dir(&self.dir)?;
        // Writable, should someone have made it read-only: a re-key destroys the old store
        // before this, so failing here would leave the key file naming a store that is gone.
        let _ = std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600));
        destroy_contents(&to)?;
        std::fs::rename(from, &to).map_err(io(format!(
            "replacing {} with {}",
            to.display(),
            from.display()
        )))?;
        fsync_dir(&self.dir)
    }
}

fn check_length(passphrase: &Passphrase) -> Result<(), VaultError> {
    if passphrase.expose().chars().count() < MIN_PASSPHRASE_CHARS {
        return Err(VaultError::TooShort);
    }
    Ok(())
}

fn derive(
    passphrase: &Passphrase,
    params: KdfParams,
    salt: [u8; SALT_LEN],
) -> Result<WrapKey, VaultError> {
    let bad = || VaultError::Damaged {
        path: PathBuf::from(KEY_FILE),
    };
    let argon_params = argon2::Params::new(
        params.m_cost_kib,
        params.t_cost,
        params.p_cost,
        Some(KEY_LEN),
    )
    .map_err(|_| bad())?;
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon_params,
    );
    let mut stretched = Zeroizing::new([0u8; KEY_LEN]);
    argon
        .hash_password_into(passphrase.expose().as_bytes(), &salt, &mut stretched[..])
        .map_err(|_| bad())?;
    let mut key = Secret32::zero();
    hkdf::Hkdf::<sha2::Sha256>::new(None, &stretched[..])
        .expand(WRAP_KEY_INFO, &mut key.0[..])
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    Ok(WrapKey { key, params, salt })
}

fn header_bytes(params: KdfParams, salt: &[u8; SALT_LEN]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + PARAMS_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(MODE_WRAPPED);
    out.extend_from_slice(&params.m_cost_kib.to_le_bytes());
    out.extend_from_slice(&params.t_cost.to_le_bytes());
    out.extend_from_slice(&params.p_cost.to_le_bytes());
    out.extend_from_slice(salt);
    out
}

fn slot_aad(header: &[u8]) -> Vec<u8> {
    [SLOT_AAD, header].concat()
}

fn seal_slot(wrap: &WrapKey, kind: u8, key: &[u8; KEY_LEN]) -> [u8; SLOT_LEN] {
    let aad = slot_aad(&header_bytes(wrap.params, &wrap.salt));
    let mut plain = Zeroizing::new([0u8; 1 + KEY_LEN]);
    plain[0] = kind;
    plain[1..].copy_from_slice(key);
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let ct = XChaCha20Poly1305::new((&*wrap.key.0).into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &plain[..],
                aad: &aad,
            },
        )
        .expect("XChaCha20-Poly1305 cannot fail to seal an in-memory buffer");
    let mut slot = [0u8; SLOT_LEN];
    slot[..NONCE_LEN].copy_from_slice(&nonce);
    slot[NONCE_LEN..].copy_from_slice(&ct);
    slot
}

/// Whether `wrap` opens `slot`.
fn opens(wrap: &WrapKey, slot: &[u8; SLOT_LEN]) -> bool {
    let aad = slot_aad(&header_bytes(wrap.params, &wrap.salt));
    let (nonce, ct) = slot.split_at(NONCE_LEN);
    XChaCha20Poly1305::new((&*wrap.key.0).into())
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
        .map(Zeroizing::new)
        .is_ok()
}

/// Opens whichever slot `passphrase` opens: what it holds, the wrap key, and its index.
/// Should both open (no file this code writes is so), the storage key wins, so no
/// passphrase can both open the data and destroy it.
fn open_slots(
    wrapped: &Wrapped,
    passphrase: &Passphrase,
) -> Result<(Opened, WrapKey, usize), VaultError> {
    let wrap = derive(passphrase, wrapped.params, wrapped.salt)?;
    let aad = slot_aad(&header_bytes(wrapped.params, &wrapped.salt));
    let cipher = XChaCha20Poly1305::new((&*wrap.key.0).into());
    let mut duress = None;
    for (index, slot) in wrapped.slots.iter().enumerate() {
        let (nonce, ct) = slot.split_at(NONCE_LEN);
        let Ok(plain) = cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
        else {
            continue;
        };
        let plain = Zeroizing::new(plain);
        match plain[0] {
            KIND_STORAGE => {
                let key = StorageKey::from_slice(
                    plain[1..].try_into().expect("a slot holds 1 + 32 bytes"),
                );
                return Ok((Opened::Storage(key), wrap, index));
            }
            KIND_DURESS => duress = Some(index),
            _ => {
                return Err(VaultError::Damaged {
                    path: PathBuf::from(KEY_FILE),
                });
            }
        }
    }
    match duress {
        Some(index) => {
            let again = WrapKey {
                key: wrap.key.clone(),
                params: wrap.params,
                salt: wrap.salt,
            };
            Ok((Opened::Duress(again), wrap, index))
        }
        None => Err(VaultError::WrongPassphrase),
    }
}

/// A wrapped key file with these two slots, in random order.
fn wrapped_bytes(wrap: &WrapKey, a: [u8; SLOT_LEN], b: [u8; SLOT_LEN]) -> Zeroizing<Vec<u8>> {
    let mut slots = [a, b];
    if OsRng.next_u32() & 1 == 1 {
        slots.swap(0, 1);
    }
    let mut body = Zeroizing::new(header_bytes(wrap.params, &wrap.salt));
    body.extend_from_slice(&slots[0]);
    body.extend_from_slice(&slots[1]);
    with_check(body)
}

fn plain_bytes(key: &StorageKey) -> Zeroizing<Vec<u8>> {
    let mut body = Zeroizing::new(Vec::with_capacity(PLAIN_LEN));
    body.extend_from_slice(MAGIC);
    body.push(VERSION);
    body.push(MODE_PLAIN);
    body.extend_from_slice(key.expose());
    with_check(body)
}

fn with_check(mut body: Zeroizing<Vec<u8>>) -> Zeroizing<Vec<u8>> {
    let check = blake3::hash(&body);
    body.extend_from_slice(&check.as_bytes()[..CHECK_LEN]);
    body
}

/// A key file's contents, or `None` when they are not a whole, well-formed one.
fn parse(bytes: &[u8]) -> Option<KeyFile> {
    let (body, check) = bytes.split_at_checked(bytes.len().checked_sub(CHECK_LEN)?)?;
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        &blake3::hash(body).as_bytes()[..CHECK_LEN],
        check,
    )) {
        return None;
    }
    let rest = body.strip_prefix(MAGIC)?;
    let (&[version, mode], rest) = rest.split_first_chunk::<2>()?;
    if version != VERSION {
        return None;
    }
    match mode {
        MODE_PLAIN => Some(KeyFile::Plain(StorageKey::from_slice(
            rest.try_into().ok()?,
        ))),
        MODE_WRAPPED => {
            if rest.len() != PARAMS_LEN + 2 * SLOT_LEN {
                return None;
            }
            let word = |i: usize| u32::from_le_bytes(rest[4 * i..4 * i + 4].try_into().unwrap());
            let params = KdfParams {
                m_cost_kib: word(0),
                t_cost: word(1),
                p_cost: word(2),
            };
            if params.m_cost_kib > MAX_M_COST_KIB
                || params.t_cost > MAX_T_COST
                || params.p_cost > MAX_P_COST
            {
                return None;
            }
            let salt = rest[12..PARAMS_LEN].try_into().ok()?;
            let slot = |i: usize| -> Option<[u8; SLOT_LEN]> {
                rest[PARAMS_LEN + i * SLOT_LEN..PARAMS_LEN + (i + 1) * SLOT_LEN]
                    .try_into()
                    .ok()
            };
            Some(KeyFile::Wrapped(Wrapped {
                params,
                salt,
                slots: [slot(0)?, slot(1)?],
            }))
        }
        _ => None,
    }
}

/// A key file's bytes, `None` when it does not exist. Refuses one other users can read.
fn read_file(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, VaultError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(VaultError::Io {
                context: format!("opening {}", path.display()),
                source: e,
            });
        }
    };
    let meta = file
        .metadata()
        .map_err(io(format!("reading {}", path.display())))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(VaultError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(WRAPPED_LEN + 1));
    Read::by_ref(&mut file)
        .take(WRAPPED_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io(format!("reading {}", path.display())))?;
    Ok(Some(bytes))
}

/// Writes a new 0600 file (replacing a leftover one) and syncs it.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), VaultError> {
    destroy_file(path)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io(format!("creating {}", path.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io(format!("writing {}", path.display())))
}

/// Overwrites a file's contents in place with random bytes and syncs; a missing file is
/// fine. (A symlink is followed: the key may live on removable media.)
fn destroy_contents(path: &Path) -> Result<(), VaultError> {
    let ctx = || format!("destroying {}", path.display());
    let mut file = match OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(VaultError::Io {
                context: ctx(),
                source: e,
            });
        }
    };
    let len = file.metadata().map_err(io(ctx()))?.len().min(1 << 20) as usize;
    let mut noise = vec![0u8; len.max(WRAPPED_LEN)];
    OsRng.fill_bytes(&mut noise);
    file.write_all(&noise)
        .and_then(|()| file.sync_all())
        .map_err(io(ctx()))
}

/// [`destroy_contents`] (made writable first, should someone have made it read-only),
/// then removes the file whether or not the overwrite worked.
fn destroy_file(path: &Path) -> Result<(), VaultError> {
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    let overwritten = destroy_contents(path);
    match std::fs::remove_file(path) {
        Ok(()) => overwritten,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => overwritten,
        Err(e) => Err(VaultError::Io {
            context: format!("removing {}", path.display()),
            source: e,
        }),
    }
}

/// Whether any key file (current, staged or fresh) is left in `dir`.
pub fn any_key_file(dir: &Path) -> bool {
    [KEY_FILE, NEW_FILE, FRESH_FILE]
        .iter()
        .any(|name| std::fs::symlink_metadata(dir.join(name)).is_ok())
}

fn fsync_dir(dir: &Path) -> Result<(), VaultError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing directory {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap enough for tests; the format stores whatever parameters were used.
    const QUICK: KdfParams = KdfParams {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
    };

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.to_owned())
    }

    fn storage(opened: Opened) -> [u8; KEY_LEN] {
        match opened {
            Opened::Storage(k) => *k.expose(),
            Opened::Duress(_) => panic!("expected the storage key"),
        }
    }

    /// Stages and installs a key file, as a re-key does once the store is copied.
    fn install(vault: &Vault, staged: &Staged) {
        vault.stage(staged).unwrap();
        vault.install_staged(|| Ok::<(), VaultError>(())).unwrap();
    }

    /// A vault whose key is wrapped under "correct horse".
    fn protected(dir: &Path) -> (Vault, [u8; KEY_LEN]) {
        let vault = Vault::new(dir);
        let key = StorageKey::random();
        let staged = vault
            .prepare_protect(&key, &pass("correct horse"), QUICK)
            .unwrap();
        install(&vault, &staged);
        (vault, *key.expose())
    }

    fn change(vault: &Vault, current: &str, new: &str) -> Result<(), VaultError> {
        vault.change(&pass(current), &pass(new))
    }

    #[test]
    fn a_plain_key_survives_reading_back() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::new(dir.path());
        assert!(vault.read().unwrap().is_none());
        let key = vault.create_plain().unwrap();
        let Some(KeyFile::Plain(back)) = vault.read().unwrap() else {
            panic!("expected a plain key file");
        };
        assert_eq!(back.expose(), key.expose());
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            vault.unlock(&pass("anything at all")),
            Err(VaultError::NotProtected)
        ));
    }

    #[test]
    fn the_passphrase_opens_the_key_and_a_wrong_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (vault, key) = protected(dir.path());
        let before = std::fs::read(dir.path().join(KEY_FILE)).unwrap();
        assert!(!before.windows(KEY_LEN).any(|w| w == key));
        assert!(matches!(
            vault.unlock(&pass("wrong horse")),
            Err(VaultError::WrongPassphrase)
        ));
        assert_eq!(std::fs::read(dir.path().join(KEY_FILE)).unwrap(), before);
        assert_eq!(storage(vault.unlock(&pass("correct horse")).unwrap()), key);
    }

    #[test]
    fn change_and_remove_rewrap_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let (vault, key) = protected(dir.path());
        let before = std::fs::read(dir.path().join(KEY_FILE)).unwrap();
        assert!(matches!(
            change(&vault, "not it at all", "battery staple"),
            Err(VaultError::WrongPassphrase)
        ));
        assert_eq!(std::fs::read(dir.path().join(KEY_FILE)).unwrap(), before);
        change(&vault, "correct horse", "battery staple").unwrap();
        assert!(vault.unlock(&pass("correct horse")).is_err());
        assert_eq!(storage(vault.unlock(&pass("battery staple")).unwrap()), key);
        vault.unprotect(&pass("battery staple")).unwrap();
        let Some(KeyFile::Plain(back)) = vault.read().unwrap() else {
            panic!("expected a plain key file");
        };
        assert_eq!(*back.expose(), key);
    }

    #[test]
    fn a_duress_passphrase_is_told_apart_and_survives_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let (vault, key) = protected(dir.path());
        assert!(matches!(
            vault.add_duress(&pass("correct horse"), &pass("correct horse")),
            Err(VaultError::SameAsPassphrase)
        ));
        vault
            .add_duress(&pass("correct horse"), &pass("all is well"))
            .unwrap();
        assert!(matches!(
            vault.unlock(&pass("all is well")).unwrap(),
            Opened::Duress(_)
        ));
        change(&vault, "correct horse", "battery staple").unwrap();
        assert!(matches!(
            vault.unlock(&pass("all is well")).unwrap(),
            Opened::Duress(_)
        ));
        assert_eq!(storage(vault.unlock(&pass("battery staple")).unwrap()), key);
        // The passphrase cannot become the duress one: one passphrase would then both
        // open the data and destroy it.
        assert!(matches!(
            change(&vault, "battery staple", "all is well"),
            Err(VaultError::SameAsDuress)
        ));
        assert_eq!(storage(vault.unlock(&pass("battery staple")).unwrap()), key);
        assert!(matches!(
            vault.unlock(&pass("all is well")).unwrap(),
            Opened::Duress(_)
        ));
    }

    #[test]
    fn no_write_succeeds_after_destroy() {
        let dir = tempfile::tempdir().unwrap();
        let (vault, _) = protected(dir.path());
        let other = vault.clone();
        let key = StorageKey::random();
        let staged = vault
            .prepare_protect(&key, &pass("battery staple"), QUICK)
            .unwrap();
        vault.destroy().unwrap();
        assert!(matches!(other.stage(&staged), Err(VaultError::Destroyed)));
        assert!(matches!(
            other.store_plain(&key),
            Err(VaultError::Destroyed)
        ));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_fresh_start_leaves_only_the_duress_passphrase_and_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let (vault, key) = protected(dir.path());
        vault
            .add_duress(&pass("correct horse"), &pass("all is well"))
            .unwrap();
        let Opened::Duress(wrap) = vault.unlock(&pass("all is well")).unwrap() else {
            panic!("expected the duress mark");
        };
        let fresh = vault.start_fresh(&wrap).unwrap();
        // Interrupted here: the real key is already gone.
        assert!(matches!(vault.read(), Err(VaultError::Damaged { .. })));
        assert_eq!(vault.pending().unwrap(), Pending::Fresh);
        vault.finish_fresh().unwrap();
        assert_eq!(vault.pending().unwrap(), Pending::None);
        assert_ne!(*fresh.expose(), key);
        assert_eq!(
            storage(vault.unlock(&pass("all is well")).unwrap()),
            *fresh.expose()
        );
        assert!(matches!(
            vault.unlock(&pass("correct horse")),
            Err(VaultError::WrongPassphrase)
        ));
        // The fresh file is the same shape as any other protected one.
        let other = tempfile::tempdir().unwrap();
        protected(other.path());
        assert_eq!(
            std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().len(),
            std::fs::metadata(other.path().join(KEY_FILE))
                .unwrap()
                .len()
        );
    }

    #[test]
    fn a_replacement_cut_short_is_thrown_away_and_a_whole_one_finished() {
        let dir = tempfile::tempdir().unwrap();
        let (vault, key) = protected(dir.path());
        std::fs::write(dir.path().join(NEW_FILE), b"hearth-keys\x02\x01half").unwrap();
        std::fs::set_permissions(
            dir.path().join(NEW_FILE),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        assert_eq!(vault.pending().unwrap(), Pending::None);
        assert!(!dir.path().join(NEW_FILE).exists());
        assert_eq!(storage(vault.unlock(&pass("correct horse")).unwrap()), key);

        let whole = plain_bytes(&StorageKey::from_slice(&key));
        write_new(&dir.path().join(NEW_FILE), &whole).unwrap();
        assert_eq!(vault.pending().unwrap(), Pending::Staged);
        vault.install_staged(|| Ok::<(), VaultError>(())).unwrap();
        assert!(matches!(vault.read().unwrap(), Some(KeyFile::Plain(_))));
    }

    #[test]
    fn destroy_leaves_no_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let (vault, _) = protected(dir.path());
        vault.destroy().unwrap();
        assert!(vault.read().unwrap().is_none());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn short_passphrases_and_readable_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::new(dir.path());
        let key = vault.create_plain().unwrap();
        assert!(matches!(
            vault.prepare_protect(&key, &pass("short"), QUICK),
            Err(VaultError::TooShort)
        ));
        std::fs::set_permissions(
            dir.path().join(KEY_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(matches!(vault.read(), Err(VaultError::Permissions { .. })));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn any_damaged_byte_is_noticed(index in 0usize..WRAPPED_LEN, flip in 1u8..=255) {
            let wrap = WrapKey { key: Secret32(Box::new([7; KEY_LEN])), params: QUICK, salt: [1; SALT_LEN] };
            let mut bytes = wrapped_bytes(&wrap, [2; SLOT_LEN], [3; SLOT_LEN]).to_vec();
            proptest::prop_assert!(parse(&bytes).is_some());
            bytes[index] ^= flip;
            proptest::prop_assert!(parse(&bytes).is_none());
        }
    }
}
