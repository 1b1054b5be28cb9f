//! The encrypted page file: a redb [`StorageBackend`] that keeps every byte redb writes
//! (its header, table names, keys, values, free-space bookkeeping) under one page key, so
//! that whoever holds the disk learns the store's total size and nothing else.
//!
//! # Layout
//!
//! ```text
//! [key-slot region: KEY_SLOTS x 32 bytes][physical block 0][physical block 1]...
//! ```
//!
//! **Key slots.** The file starts with [`KEY_SLOTS`] (256) slots of 32 bytes, stored raw (not
//! under the page key). On creation every slot is filled with random bytes, so a used slot
//! and an unused one look alike. The store keeps each group's own value key in a slot and
//! destroys it by overwriting that slot in place with fresh random bytes. Slots exist because
//! redb is copy-on-write: a key kept inside redb would survive in freed pages, and could not
//! be destroyed. [`PageFile::wipe_slots`] overwrites the whole region without the page key
//! (the panic button).
//!
//! **Blocks.** redb sees logical storage in blocks of 4096 bytes (its page size). Each
//! physical block is
//!
//! ```text
//! nonce[24] || XChaCha20-Poly1305(page key, nonce,
//!                plaintext = generation u64 LE || 4096 data bytes,
//!                aad = "hearth v2 page" || logical block index u64 LE || copy u8)
//! ```
//!
//! 24 + 8 + 4096 + 16 = 4144 bytes, with a fresh random nonce for every write. The index and
//! copy in the associated data bind a block to its position: a block moved or copied
//! elsewhere fails authentication.
//!
//! **Block 0 has two copies.** Logical block 0 holds redb's 320-byte header with its two
//! commit slots. redb relies on the disk writing that header atomically (it fits in one
//! sector); a 4144-byte block does not, and a write torn by a power loss would fail
//! authentication and lose the database. So block 0 has two physical copies, copy 0 and
//! copy 1, at physical positions 0 and 1. A read uses the authentic copy with the highest
//! generation. A write goes to the other copy with that generation + 1, so the copy it
//! replaces is the older one and a torn write leaves the previous header readable.
//! Refinement: the copy that held the newest header at the last `sync_data` (or at open,
//! which syncs first) is never overwritten before the next `sync_data` while it is
//! authentic; further writes of block 0 in between go to the same other copy. Then even two
//! header writes without a sync between them (redb may write a buffered header back early)
//! cannot leave both copies torn.
//! The fill of a new block 0 (below) is generation 0 and every real write has a generation of
//! at least 1.
//!
//! **Other blocks have one copy.** Logical block i >= 1 is physical block i + 1, copy 0,
//! generation 0. redb never overwrites a page the last durable commit refers to (it is
//! copy-on-write, and frees a page for reuse only once a later commit is durable), so a torn
//! write can only hit a page of an unfinished commit, which redb's own recovery already
//! discards; such pages need no second copy.
//!
//! **Length.** `len()` is the number of logical blocks times 4096, derived from the physical
//! length (whole physical blocks only; a partial one at the end is ignored; the two copies of
//! block 0 count once). `set_len(n)` rounds `n` up to whole blocks and truncates, or grows:
//! each new physical block is written as a sealed page of zeros, so the file has no holes and
//! a never-used page looks like any other. (A sparse file, or zero-filled blocks, would show
//! which pages redb has written so far, and so how much the store holds beyond its size.)
//! A write past the end grows the file the same way first.
//!
//! **Failures read as zeros.** A physical block that is all zero bytes (a hole left by a crash
//! during growth) reads as zeros. A block that fails authentication also reads as zeros, is
//! counted ([`PageFile::failed_blocks`]) and logs a warning that names the block index and no
//! content. redb's own checksums then decide: a torn page of an unfinished commit is what its
//! crash recovery already handles, and a page of a durable commit that reads as zeros fails
//! its checksum (the store opens with `check_integrity_on_open`). A tampered block can never
//! inject data. If both copies of block 0 fail, block 0 reads as zeros and redb refuses the
//! file ("not a redb database"); it is never taken for an empty database.
//!
//! **What an attacker learns or can do.** Reading the disk once: the file's total size, and
//! nothing else (the slots are random-looking whether used or not). Reading it twice: also
//! which blocks and slots changed in between. Writing the disk: roll any block back to an
//! earlier version of itself, or destroy blocks (redb then refuses the file or falls back to
//! an older commit), or truncate the file (cut to its slot region, it is an empty store, as
//! a deleted file would be); never read or forge data. A wrong page key looks like a file
//! whose every block was destroyed: redb refuses it and `failed_blocks()` is non-zero.
//!
//! **Assumptions.** Like redb on a plain file, this relies on the disk writing a sector
//! atomically (old or new content after a power loss). Physical blocks are 4144 bytes, not
//! sector-aligned, so a sector can hold the end of one block and the start of the next; a
//! write rewrites such a sector with the neighbour's bytes unchanged, which is safe under that
//! assumption and not if a device garbles a whole sector in flight. Overwriting a key slot
//! destroys the key on the file as the filesystem presents it; a copy-on-write filesystem or
//! an SSD's wear levelling may keep the old bytes on the medium for a while.
//!
//! **Concurrency.** redb calls the backend from several threads. A `RwLock` orders block I/O:
//! writes and `set_len` are exclusive, reads shared, so a read never sees a half-written
//! block. I/O is positional (`read_at`/`write_at`). One process at a time: the store's own
//! lock file keeps a second hearthd out, and this backend takes no locks (redb then runs in
//! its exclusive-writer mode).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use redb::StorageBackend;
use zeroize::Zeroizing;

/// Number of key slots at the start of the file.
pub const KEY_SLOTS: usize = 256;
/// The slot that holds the file's own secret ([`PageFile::create_or_open_with`]); the
/// others are free for the store's keys.
pub const FILE_SECRET_SLOT: usize = KEY_SLOTS - 1;
/// Bytes in one key slot.
pub const SLOT_LEN: usize = 32;
/// Bytes of the key-slot region, where the first physical block starts.
pub const SLOT_REGION_LEN: u64 = (KEY_SLOTS * SLOT_LEN) as u64;
/// Bytes in a logical block: redb's page size.
pub const BLOCK_LEN: usize = 4096;
/// Bytes in a physical block: nonce, sealed generation and data, tag.
pub const PHYSICAL_BLOCK_LEN: usize = NONCE_LEN + GENERATION_LEN + BLOCK_LEN + TAG_LEN;

const NONCE_LEN: usize = 24;
const GENERATION_LEN: usize = 8;
const TAG_LEN: usize = 16;
const AAD_LABEL: &[u8; 14] = b"hearth v2 page";
const AAD_LEN: usize = AAD_LABEL.len() + 8 + 1;
/// Physical blocks moved by one positional read or write (about 265 KB).
const BATCH_BLOCKS: u64 = 64;

const BLOCK: u64 = BLOCK_LEN as u64;
const PHYSICAL: u64 = PHYSICAL_BLOCK_LEN as u64;
/// Where the sealed part (generation and data) of a physical block starts and ends.
const SEALED: std::ops::Range<usize> = NONCE_LEN..NONCE_LEN + GENERATION_LEN + BLOCK_LEN;
/// Where the data bytes of an opened physical block are.
const DATA: std::ops::Range<usize> = NONCE_LEN + GENERATION_LEN..SEALED.end;

/// What went wrong opening or using a page file.
#[derive(Debug, thiserror::Error)]
pub enum PageFileError {
    #[error(
        "{} is {len} bytes, shorter than the {SLOT_REGION_LEN}-byte key-slot region every \
         hearth store file starts with: the file is damaged; restore it from a backup, or move \
         it aside to start a new, empty store",
        path.display()
    )]
    Damaged { path: PathBuf, len: u64 },

    #[error(
        "key slot {index} does not exist (a store file has {KEY_SLOTS}); this is a bug in hearthd, please report it"
    )]
    NoSuchSlot { index: usize },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> PageFileError {
    let context = context.into();
    move |source| PageFileError::Io { context, source }
}

/// The encrypted page file. A cheap `Clone` handle: give one to redb
/// (`Builder::create_with_backend`) and keep another for the key slots.
#[derive(Clone)]
pub struct PageFile {
    inner: Arc<Inner>,
}

struct Inner {
    file: File,
    path: PathBuf,
    /// Wipes its key on drop (chacha20poly1305 zeroizes it unconditionally).
    cipher: XChaCha20Poly1305,
    /// Orders block I/O (writes exclusive, reads shared) and guards block 0's copy choice.
    blocks: RwLock<HeaderCopies>,
    /// Serialises key-slot reads and writes, apart from block I/O.
    slots: Mutex<()>,
    failed: AtomicU64,
}

/// Which copy of block 0 a write may replace.
#[derive(Debug, Default)]
struct HeaderCopies {
    /// The copy that held the newest header at the last sync (or at open): not overwritten
    /// until a later sync has made another copy durable.
    durable: Option<u8>,
    /// The copy the block-0 writes since that sync went to.
    pending: Option<u8>,
    /// Block-0 writes (and resets) so far, so a sync knows whether one raced it.
    writes: u64,
}

/// What reading both copies of block 0 found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct HeaderRead {
    /// The authentic copy with the highest generation, and that generation.
    newest: Option<(u8, u64)>,
    /// Which copies are authentic.
    authentic: [bool; 2],
}

/// What opening one physical block found.
enum Opened {
    /// All zero bytes: never written. Reads as zeros.
    Blank,
    /// Failed authentication (counted and logged). Reads as zeros.
    Failed,
    /// Authentic; the plaintext data is at [`DATA`] of the buffer.
    Authentic { generation: u64 },
}

impl fmt::Debug for PageFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageFile")
            .field("path", &self.inner.path)
            .field("failed_blocks", &self.failed_blocks())
            .finish_non_exhaustive()
    }
}

impl PageFile {
    /// Opens the page file at `path`, creating it (mode 0600, every key slot random) when it
    /// is missing or empty. The file's blocks are not checked here: ones that fail
    /// authentication read as zeros and are counted by [`Self::failed_blocks`].
    pub fn create_or_open(path: &Path, page_key: &[u8; 32]) -> Result<PageFile, PageFileError> {
        PageFile::create_or_open_with(path, |_| Zeroizing::new(*page_key))
    }

    /// [`PageFile::create_or_open`] with a page key made from this file's own secret: the
    /// last key slot ([`FILE_SECRET_SLOT`]), random like the others. The store mixes it into
    /// its page key, so that wiping the slots leaves every page this file ever held
    /// unreadable, even to whoever has the storage key: the pages of the file as it is,
    /// and those its truncations gave back to the filesystem.
    pub fn create_or_open_with(
        path: &Path,
        page_key: impl FnOnce(&[u8; SLOT_LEN]) -> Zeroizing<[u8; 32]>,
    ) -> Result<PageFile, PageFileError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        let meta = file
            .metadata()
            .map_err(io_err(format!("reading {}", path.display())))?;
        if meta.permissions().mode() & 0o777 != 0o600 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io_err(format!(
                    "making {} private (chmod 600)",
                    path.display()
                )))?;
        }
        let len = meta.len();
        if len == 0 {
            let mut slots = vec![0u8; SLOT_REGION_LEN as usize];
            fill_random(&mut slots).map_err(io_err("drawing random key slots"))?;
            file.write_all_at(&slots, 0).map_err(io_err(format!(
                "writing the key slots of {}",
                path.display()
            )))?;
            sync_new_file(&file, path)
                .map_err(io_err(format!("syncing the new {}", path.display())))?;
        } else if len < SLOT_REGION_LEN {
            return Err(PageFileError::Damaged {
                path: path.to_owned(),
                len,
            });
        } else {
            // Whatever an earlier process left in the page cache is made durable first, so
            // the newest copy of block 0 found below really is the durable one.
            file.sync_data()
                .map_err(io_err(format!("syncing {}", path.display())))?;
        }
        let mut secret = Zeroizing::new([0u8; SLOT_LEN]);
        file.read_exact_at(&mut secret[..], slot_offset(FILE_SECRET_SLOT)?)
            .map_err(io_err(format!("reading {}", path.display())))?;
        let page_key = page_key(&secret);
        let inner = Inner {
            file,
            path: path.to_owned(),
            cipher: XChaCha20Poly1305::new(Key::from_slice(&page_key[..])),
            blocks: RwLock::new(HeaderCopies::default()),
            slots: Mutex::new(()),
            failed: AtomicU64::new(0),
        };
        let mut header = Zeroizing::new([0u8; BLOCK_LEN]);
        let read = inner
            .read_block0(&mut header)
            .map_err(io_err(format!("reading {}", path.display())))?;
        inner.write_blocks().durable = read.newest.map(|(copy, _)| copy);
        Ok(PageFile {
            inner: Arc::new(inner),
        })
    }

    /// Reads key slot `index` (0..[`KEY_SLOTS`]).
    pub fn read_slot(&self, index: usize) -> Result<Zeroizing<[u8; SLOT_LEN]>, PageFileError> {
        let offset = slot_offset(index)?;
        let _slots = self.inner.lock_slots();
        let mut slot = Zeroizing::new([0u8; SLOT_LEN]);
        self.inner
            .file
            .read_exact_at(slot.as_mut_slice(), offset)
            .map_err(io_err(format!(
                "reading key slot {index} of {}",
                self.inner.path.display()
            )))?;
        Ok(slot)
    }

    /// Overwrites key slot `index` in place with `value`, then syncs. To destroy a key,
    /// write fresh random bytes over its slot.
    pub fn write_slot(&self, index: usize, value: &[u8; SLOT_LEN]) -> Result<(), PageFileError> {
        let offset = slot_offset(index)?;
        let _slots = self.inner.lock_slots();
        let context = || {
            format!(
                "writing key slot {index} of {} (is the disk full or failing?)",
                self.inner.path.display()
            )
        };
        self.inner
            .file
            .write_all_at(value, offset)
            .map_err(io_err(context()))?;
        self.inner.file.sync_data().map_err(io_err(context()))
    }

    /// Overwrites every key slot of the file at `path` with fresh random bytes and syncs,
    /// without the page key: afterwards no group's value key can be recovered from the file.
    /// Fails with `NotFound` when there is no file.
    pub fn wipe_slots(path: &Path) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        let mut slots = vec![0u8; SLOT_REGION_LEN as usize];
        fill_random(&mut slots)?;
        file.write_all_at(&slots, 0)?;
        file.sync_data()
    }

    /// Blocks that failed authentication since this file was opened (each read of one counts
    /// again). Non-zero means the file was damaged or altered, or the page key is wrong.
    pub fn failed_blocks(&self) -> u64 {
        self.inner.failed.load(Ordering::Relaxed)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

impl StorageBackend for PageFile {
    fn len(&self) -> io::Result<u64> {
        let _blocks = self.inner.read_blocks();
        self.inner.len_locked()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let _blocks = self.inner.read_blocks();
        self.inner.read_locked(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut blocks = self.inner.write_blocks();
        self.inner.resize_locked(&mut blocks, len)
    }

    fn sync_data(&self) -> io::Result<()> {
        let (pending, writes) = {
            let blocks = self.inner.read_blocks();
            (blocks.pending, blocks.writes)
        };
        self.inner.file.sync_data()?;
        let mut blocks = self.inner.write_blocks();
        // Only a copy whose write finished before the sync began, and was not written again
        // since, is known to be durable.
        if let Some(copy) = pending
            && blocks.writes == writes
        {
            blocks.durable = Some(copy);
            blocks.pending = None;
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut blocks = self.inner.write_blocks();
        self.inner.write_locked(&mut blocks, offset, data)
    }
}

impl Inner {
    fn read_blocks(&self) -> RwLockReadGuard<'_, HeaderCopies> {
        self.blocks.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_blocks(&self) -> RwLockWriteGuard<'_, HeaderCopies> {
        self.blocks.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, ()> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn len_locked(&self) -> io::Result<u64> {
        Ok(logical_blocks(self.file.metadata()?.len()) * BLOCK)
    }

    fn read_locked(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let end = offset
            .checked_add(out.len() as u64)
            .ok_or_else(offset_too_large)?;
        if end > self.len_locked()? {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the store file",
            ));
        }
        if out.is_empty() {
            return Ok(());
        }
        let last = (end - 1) / BLOCK;
        let mut block = offset / BLOCK;
        if block == 0 {
            let mut data = Zeroizing::new([0u8; BLOCK_LEN]);
            self.read_block0(&mut data)?;
            copy_out(&data[..], 0, offset, out);
            block = 1;
        }
        while block <= last {
            let count = BATCH_BLOCKS.min(last - block + 1);
            let mut buf = Zeroizing::new(vec![0u8; (count * PHYSICAL) as usize]);
            self.read_physical(physical_of(block, 0), &mut buf)?;
            for (k, phys) in buf.chunks_exact_mut(PHYSICAL_BLOCK_LEN).enumerate() {
                let index = block + k as u64;
                if !matches!(self.open_in_place(phys, index, 0), Opened::Authentic { .. }) {
                    phys.fill(0);
                }
                copy_out(&phys[DATA], index * BLOCK, offset, out);
            }
            block += count;
        }
        Ok(())
    }

    fn write_locked(&self, state: &mut HeaderCopies, offset: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(offset_too_large)?;
        if end > self.len_locked()? {
            self.resize_locked(state, end)?;
        }
        let last = (end - 1) / BLOCK;
        let mut block = offset / BLOCK;
        if block == 0 {
            self.write_block0(state, |page| copy_in(page, 0, offset, data))?;
            block = 1;
        }
        while block <= last {
            let count = BATCH_BLOCKS.min(last - block + 1);
            let mut buf = vec![0u8; (count * PHYSICAL) as usize];
            for (k, phys) in buf.chunks_exact_mut(PHYSICAL_BLOCK_LEN).enumerate() {
                let index = block + k as u64;
                let start = index * BLOCK;
                if offset <= start && start + BLOCK <= end {
                    let from = (start - offset) as usize;
                    self.seal_into(phys, index, 0, 0, &data[from..from + BLOCK_LEN])?;
                } else {
                    // A partial block: decrypt, modify, re-encrypt.
                    let mut page = Zeroizing::new([0u8; BLOCK_LEN]);
                    self.read_block(index, &mut page)?;
                    copy_in(&mut page[..], start, offset, data);
                    self.seal_into(phys, index, 0, 0, &page[..])?;
                }
            }
            self.file
                .write_all_at(&buf, physical_offset(physical_of(block, 0))?)?;
            block += count;
        }
        Ok(())
    }

    /// Sets the logical length to `len` rounded up to whole blocks. New physical blocks are
    /// sealed pages of zeros.
    fn resize_locked(&self, state: &mut HeaderCopies, len: u64) -> io::Result<()> {
        let logical = len.div_ceil(BLOCK);
        let wanted = physical_blocks(logical);
        let wanted_len = physical_offset(wanted)?;
        let current_len = self.file.metadata()?.len();
        let present = current_len.saturating_sub(SLOT_REGION_LEN) / PHYSICAL;
        if wanted_len != current_len {
            self.file.set_len(wanted_len)?;
        }
        if logical == 0 {
            // Block 0 is gone: no copy is left to protect.
            *state = HeaderCopies {
                writes: state.writes + 1,
                ..HeaderCopies::default()
            };
        }
        let zeros = [0u8; BLOCK_LEN];
        let mut next = present;
        while next < wanted {
            let count = BATCH_BLOCKS.min(wanted - next);
            let mut buf = vec![0u8; (count * PHYSICAL) as usize];
            for (k, phys) in buf.chunks_exact_mut(PHYSICAL_BLOCK_LEN).enumerate() {
                let (index, copy) = logical_of(next + k as u64);
                self.seal_into(phys, index, copy, 0, &zeros)?;
            }
            self.file.write_all_at(&buf, physical_offset(next)?)?;
            next += count;
        }
        Ok(())
    }

    /// Reads logical block `index` >= 1 into `page` (zeros when blank or not authentic).
    fn read_block(&self, index: u64, page: &mut [u8; BLOCK_LEN]) -> io::Result<()> {
        let mut phys = Zeroizing::new([0u8; PHYSICAL_BLOCK_LEN]);
        self.read_physical(physical_of(index, 0), &mut phys[..])?;
        match self.open_in_place(&mut phys[..], index, 0) {
            Opened::Authentic { .. } => page.copy_from_slice(&phys[DATA]),
            Opened::Blank | Opened::Failed => page.fill(0),
        }
        Ok(())
    }

    /// Reads block 0 from its newest authentic copy into `page` (zeros when there is none).
    fn read_block0(&self, page: &mut [u8; BLOCK_LEN]) -> io::Result<HeaderRead> {
        let mut both = Zeroizing::new([0u8; 2 * PHYSICAL_BLOCK_LEN]);
        self.read_physical(0, &mut both[..])?;
        let (first, second) = both.split_at_mut(PHYSICAL_BLOCK_LEN);
        let mut read = HeaderRead::default();
        for (copy, phys) in [(0u8, &mut *first), (1u8, &mut *second)] {
            if let Opened::Authentic { generation } = self.open_in_place(phys, 0, copy) {
                read.authentic[usize::from(copy)] = true;
                if read.newest.is_none_or(|(_, g)| generation > g) {
                    read.newest = Some((copy, generation));
                    page.copy_from_slice(&phys[DATA]);
                }
            }
        }
        if read.newest.is_none() {
            page.fill(0);
        }
        Ok(read)
    }

    /// Rewrites block 0 with `change` applied, into the copy that may be replaced.
    fn write_block0(
        &self,
        state: &mut HeaderCopies,
        change: impl FnOnce(&mut [u8]),
    ) -> io::Result<()> {
        let mut page = Zeroizing::new([0u8; BLOCK_LEN]);
        let read = self.read_block0(&mut page)?;
        change(&mut page[..]);
        let target = match (state.durable, read.newest) {
            // Keep the durable copy while it is intact.
            (Some(durable), _) if read.authentic[usize::from(durable)] => 1 - durable,
            // Otherwise keep the newest authentic one, if any.
            (_, Some((newest, _))) => 1 - newest,
            (_, None) => 0,
        };
        let generation = read.newest.map_or(1, |(_, g)| g.saturating_add(1));
        let mut phys = [0u8; PHYSICAL_BLOCK_LEN];
        self.seal_into(&mut phys, 0, target, generation, &page[..])?;
        self.file
            .write_all_at(&phys, physical_offset(u64::from(target))?)?;
        state.pending = Some(target);
        state.writes += 1;
        Ok(())
    }

    /// Reads physical blocks from `first` on into `buf`; what lies past the end of the file
    /// reads as zeros (a blank block).
    fn read_physical(&self, first: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut offset = physical_offset(first)?;
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset) {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf[done..].fill(0);
        Ok(())
    }

    /// Authenticates and decrypts one physical block in place.
    fn open_in_place(&self, phys: &mut [u8], index: u64, copy: u8) -> Opened {
        if phys.iter().all(|&b| b == 0) {
            return Opened::Blank;
        }
        let (nonce, rest) = phys.split_at_mut(NONCE_LEN);
        let (sealed, tag) = rest.split_at_mut(GENERATION_LEN + BLOCK_LEN);
        let opened = self.cipher.decrypt_in_place_detached(
            XNonce::from_slice(nonce),
            &aad(index, copy),
            sealed,
            Tag::from_slice(tag),
        );
        let mut generation = [0u8; GENERATION_LEN];
        generation.copy_from_slice(&sealed[..GENERATION_LEN]);
        let generation = u64::from_le_bytes(generation);
        // Only block 0 is ever written with a generation other than 0.
        if opened.is_ok() && (index == 0 || generation == 0) {
            return Opened::Authentic { generation };
        }
        sealed.fill(0);
        let failed = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(
            block = index,
            failed,
            "a block of the store file failed authentication and reads as zeros: \
             the file was damaged or altered, or the storage key is wrong"
        );
        Opened::Failed
    }

    /// Seals `data` as logical block `index`, `copy`, into the physical block `out`.
    fn seal_into(
        &self,
        out: &mut [u8],
        index: u64,
        copy: u8,
        generation: u64,
        data: &[u8],
    ) -> io::Result<()> {
        let (nonce, rest) = out.split_at_mut(NONCE_LEN);
        let (sealed, tag) = rest.split_at_mut(GENERATION_LEN + BLOCK_LEN);
        fill_random(nonce)?;
        sealed[..GENERATION_LEN].copy_from_slice(&generation.to_le_bytes());
        sealed[GENERATION_LEN..].copy_from_slice(data);
        let sealed_tag = self
            .cipher
            .encrypt_in_place_detached(XNonce::from_slice(nonce), &aad(index, copy), sealed)
            .map_err(|_| io::Error::other("sealing a store block failed"))?;
        tag.copy_from_slice(&sealed_tag);
        Ok(())
    }
}

fn aad(index: u64, copy: u8) -> [u8; AAD_LEN] {
    let mut aad = [0u8; AAD_LEN];
    aad[..AAD_LABEL.len()].copy_from_slice(AAD_LABEL);
    aad[AAD_LABEL.len()..AAD_LEN - 1].copy_from_slice(&index.to_le_bytes());
    aad[AAD_LEN - 1] = copy;
    aad
}

/// Copies the part of `block` (the block starting at logical byte `start`) that overlaps the
/// read of `out.len()` bytes at `offset` into `out`.
fn copy_out(block: &[u8], start: u64, offset: u64, out: &mut [u8]) {
    let lo = start.max(offset);
    let hi = (start + BLOCK).min(offset + out.len() as u64);
    if lo < hi {
        out[(lo - offset) as usize..(hi - offset) as usize]
            .copy_from_slice(&block[(lo - start) as usize..(hi - start) as usize]);
    }
}

/// Copies the part of the write of `data` at `offset` that overlaps `block` (the block
/// starting at logical byte `start`) into it.
fn copy_in(block: &mut [u8], start: u64, offset: u64, data: &[u8]) {
    let lo = start.max(offset);
    let hi = (start + BLOCK).min(offset + data.len() as u64);
    if lo < hi {
        block[(lo - start) as usize..(hi - start) as usize]
            .copy_from_slice(&data[(lo - offset) as usize..(hi - offset) as usize]);
    }
}

/// Logical blocks held by a file of `file_len` bytes: whole physical blocks, the two copies
/// of block 0 counting once (a file whose copy 1 is missing still holds block 0).
fn logical_blocks(file_len: u64) -> u64 {
    let physical = file_len.saturating_sub(SLOT_REGION_LEN) / PHYSICAL;
    if physical >= 2 {
        physical - 1
    } else {
        physical
    }
}

/// Physical blocks that hold `logical` logical blocks.
fn physical_blocks(logical: u64) -> u64 {
    if logical == 0 { 0 } else { logical + 1 }
}

/// The physical block of logical block `index`, `copy`.
fn physical_of(index: u64, copy: u8) -> u64 {
    if index == 0 {
        u64::from(copy)
    } else {
        index + 1
    }
}

/// The logical block and copy that physical block `physical` holds.
fn logical_of(physical: u64) -> (u64, u8) {
    match physical {
        0 => (0, 0),
        1 => (0, 1),
        p => (p - 1, 0),
    }
}

fn physical_offset(physical: u64) -> io::Result<u64> {
    physical
        .checked_mul(PHYSICAL)
        .and_then(|o| o.checked_add(SLOT_REGION_LEN))
        .ok_or_else(offset_too_large)
}

fn offset_too_large() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "offset beyond what a store file can hold",
    )
}

fn slot_offset(index: usize) -> Result<u64, PageFileError> {
    if index >= KEY_SLOTS {
        return Err(PageFileError::NoSuchSlot { index });
    }
    Ok((index * SLOT_LEN) as u64)
}

fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    OsRng
        .try_fill_bytes(buf)
        .map_err(|e| io::Error::other(format!("the system's random number generator failed: {e}")))
}

/// Syncs a file just created and the directory entry that names it.
fn sync_new_file(file: &File, path: &Path) -> io::Result<()> {
    file.sync_all()?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use redb::{
        Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata,
        TableDefinition,
    };
    use std::collections::BTreeMap;
    use tempfile::TempDir;

    const KEY: [u8; 32] = [7; 32];
    const GROUPS_NAME: &str = "groups-table-name-c41d";
    const RECORDS_NAME: &str = "records-table-name-88e0";
    const GROUPS: TableDefinition<&str, &str> = TableDefinition::new(GROUPS_NAME);
    const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new(RECORDS_NAME);
    const KEY_MARKER: &str = "key-marker-5b1f0e7d";
    const VALUE_MARKER: &str = "value-marker-93c2aa61";

    const _: () = {
        const fn send_sync_clone<T: Send + Sync + Clone + 'static>() {}
        send_sync_clone::<PageFile>();
        send_sync_clone::<Arc<PageFileError>>();
    };

    fn open(path: &Path) -> PageFile {
        PageFile::create_or_open(path, &KEY).unwrap()
    }

    /// redb over a page file, as the store opens it.
    fn open_db(file: &PageFile) -> Result<Database, DatabaseError> {
        redb::Builder::new()
            .set_check_integrity_on_open(true)
            .create_with_backend(file.clone())
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// Overwrites physical block `physical` of the file at `path` with `fill`.
    fn overwrite_physical(path: &Path, physical: u64, fill: u8) {
        let file = OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(
            &[fill; PHYSICAL_BLOCK_LEN],
            physical_offset(physical).unwrap(),
        )
        .unwrap();
    }

    /// Flips one bit in the middle of physical block `physical`.
    fn flip_bit(path: &Path, physical: u64) {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let at = physical_offset(physical).unwrap() + PHYSICAL / 2;
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, at).unwrap();
        byte[0] ^= 0x10;
        file.write_all_at(&byte, at).unwrap();
    }

    fn newest_block0(file: &PageFile) -> Option<(u8, u64)> {
        let mut page = [0u8; BLOCK_LEN];
        file.inner.read_block0(&mut page).unwrap().newest
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        Read(u64, usize),
        SetLen(u64),
        Sync,
        Reopen,
    }

    fn offset() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..45_000, (0u64..11).prop_map(|b| b * BLOCK)]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (offset(), prop::collection::vec(any::<u8>(), 0..9_000))
                .prop_map(|(o, d)| Op::Write(o, d)),
            4 => (offset(), 0usize..9_000).prop_map(|(o, l)| Op::Read(o, l)),
            1 => offset().prop_map(Op::SetLen),
            1 => Just(Op::Sync),
            1 => Just(Op::Reopen),
        ]
    }

    fn round_up(len: u64) -> usize {
        (len.div_ceil(BLOCK) * BLOCK) as usize
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]

        /// Any sequence of writes, reads and resizes, with reopens between them, reads back
        /// what a plain byte vector (grown in whole blocks) holds.
        #[test]
        fn pagefile_matches_a_byte_vector(ops in prop::collection::vec(op(), 1..24)) {
            let dir = TempDir::new().unwrap();
            let path = dir.path().join("store");
            let mut file = open(&path);
            let mut model: Vec<u8> = Vec::new();
            for op in ops {
                match op {
                    Op::Write(offset, data) => {
                        file.write(offset, &data).unwrap();
                        if !data.is_empty() {
                            let end = offset as usize + data.len();
                            if end > model.len() {
                                model.resize(round_up(end as u64), 0);
                            }
                            model[offset as usize..end].copy_from_slice(&data);
                        }
                    }
                    Op::Read(offset, len) => {
                        let mut out = vec![0xEE; len];
                        let read = file.read(offset, &mut out);
                        if offset as usize + len > model.len() {
                            prop_assert!(read.is_err());
                        } else {
                            read.unwrap();
                            prop_assert!(out == model[offset as usize..offset as usize + len]);
                        }
                    }
                    Op::SetLen(len) => {
                        file.set_len(len).unwrap();
                        model.resize(round_up(len), 0);
                    }
                    Op::Sync => file.sync_data().unwrap(),
                    Op::Reopen => {
                        drop(file);
                        file = open(&path);
                    }
                }
                prop_assert_eq!(file.len().unwrap(), model.len() as u64);
                prop_assert_eq!(file.failed_blocks(), 0);
            }
        }
    }

    #[test]
    fn the_length_counts_whole_blocks_and_block_0_once() {
        let cases = [
            (0, 0),
            (SLOT_REGION_LEN - 1, 0),
            (SLOT_REGION_LEN, 0),
            (SLOT_REGION_LEN + PHYSICAL - 1, 0),
            // Copy 1 missing: block 0 is still there.
            (SLOT_REGION_LEN + PHYSICAL, 1),
            (SLOT_REGION_LEN + 2 * PHYSICAL, 1),
            (SLOT_REGION_LEN + 3 * PHYSICAL - 1, 1),
            (SLOT_REGION_LEN + 3 * PHYSICAL, 2),
            (SLOT_REGION_LEN + 3 * PHYSICAL + 5, 2),
        ];
        for (file_len, blocks) in cases {
            assert_eq!(logical_blocks(file_len), blocks, "{file_len}");
        }
        for logical in [0, 1, 2, 100] {
            let file_len = physical_offset(physical_blocks(logical)).unwrap();
            assert_eq!(logical_blocks(file_len), logical);
        }
        for physical in 0..5 {
            let (index, copy) = logical_of(physical);
            assert_eq!(physical_of(index, copy), physical);
        }
        assert!(physical_offset(u64::MAX / 2).is_err());
    }

    #[test]
    fn a_new_file_is_private_and_holds_random_slots() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("store");
        let file = open(&path);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), SLOT_REGION_LEN);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(file.len().unwrap(), 0);
        let slots: Vec<_> = (0..KEY_SLOTS)
            .map(|i| *file.read_slot(i).unwrap())
            .collect();
        for (i, slot) in slots.iter().enumerate() {
            assert_ne!(slot, &[0u8; SLOT_LEN]);
            assert!(!slots[..i].contains(slot));
        }
        assert!(matches!(
            file.read_slot(KEY_SLOTS),
            Err(PageFileError::NoSuchSlot { index: KEY_SLOTS })
        ));
        assert!(file.write_slot(KEY_SLOTS, &[1; SLOT_LEN]).is_err());
    }

    #[test]
    fn a_file_shorter_than_the_slot_region_is_damaged() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("store");
        std::fs::write(&path, [1u8; 100]).unwrap();
        let err = PageFile::create_or_open(&path, &KEY).unwrap_err();
        assert!(matches!(err, PageFileError::Damaged { len: 100, .. }));
        assert!(err.to_string().contains("damaged"), "{err}");
        // Left as it was.
        assert_eq!(std::fs::read(&path).unwrap(), [1u8; 100]);
    }

    #[test]
    fn slots_survive_a_reopen_and_wipe_changes_every_one() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("store");
        let file = open(&path);
        file.set_len(3 * BLOCK).unwrap();
        file.write(100, b"page data").unwrap();
        file.write_slot(3, &[0xAB; SLOT_LEN]).unwrap();
        file.write_slot(KEY_SLOTS - 1, &[0xCD; SLOT_LEN]).unwrap();
        drop(file);

        let file = open(&path);
        assert_eq!(*file.read_slot(3).unwrap(), [0xAB; SLOT_LEN]);
        assert_eq!(*file.read_slot(KEY_SLOTS - 1).unwrap(), [0xCD; SLOT_LEN]);
        let before: Vec<_> = (0..KEY_SLOTS)
            .map(|i| *file.read_slot(i).unwrap())
            .collect();

        // Works while the file is open, and without the key.
        PageFile::wipe_slots(&path).unwrap();
        for (i, old) in before.iter().enumerate() {
            assert_ne!(&*file.read_slot(i).unwrap(), old, "slot {i}");
        }
        // The pages are untouched.
        let mut out = [0u8; 9];
        file.read(100, &mut out).unwrap();
        assert_eq!(&out, b"page data");
        assert_eq!(file.failed_blocks(), 0);

        let missing = dir.path().join("missing");
        assert_eq!(
            PageFile::wipe_slots(&missing).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(!missing.exists());
    }

    #[test]
    fn growth_leaves_no_holes_and_blank_or_forged_blocks_read_as_zeros() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("store");
        let file = open(&path);
        file.set_len(4 * BLOCK).unwrap();
        let raw = std::fs::read(&path).unwrap();
        assert_eq!(raw.len() as u64, SLOT_REGION_LEN + 5 * PHYSICAL);
        for (p, block) in raw[SLOT_REGION_LEN as usize..]
            .chunks(PHYSICAL_BLOCK_LEN)
            .enumerate()
        {
            // No run of zeros a never-written block would show.
            assert!(!contains(block, &[0u8; 64]), "physical block {p}");
        }

        file.write(BLOCK, &[0x11; BLOCK_LEN]).unwrap();
        file.write(2 * BLOCK, &[0x22; BLOCK_LEN]).unwrap();
        // Blank: reads as zeros and is no failure.
        overwrite_physical(&path, physical_of(1, 0), 0);
        let mut out = vec![0xEE; BLOCK_LEN];
        file.read(BLOCK, &mut out).unwrap();
        assert_eq!(out, [0u8; BLOCK_LEN]);
        assert_eq!(file.failed_blocks(), 0);
        // Forged, or moved to another position: reads as zeros and counts.
        flip_bit(&path, physical_of(2, 0));
        file.read(2 * BLOCK, &mut out).unwrap();
        assert_eq!(out, [0u8; BLOCK_LEN]);
        assert_eq!(file.failed_blocks(), 1);
        file.write(3 * BLOCK, &[0x33; BLOCK_LEN]).unwrap();
        let mut moved = vec![0u8; PHYSICAL_BLOCK_LEN];
        let raw_file = File::open(&path).unwrap();
        raw_file
            .read_exact_at(&mut moved, physical_offset(physical_of(3, 0)).unwrap())
            .unwrap();
        let writer = OpenOptions::new().write(true).open(&path).unwrap();
        writer
            .write_all_at(&moved, physical_offset(physical_of(1, 0)).unwrap())
            .unwrap();
        file.read(BLOCK, &mut out).unwrap();
        assert_eq!(out, [0u8; BLOCK_LEN]);
        assert_eq!(file.failed_blocks(), 2);
        // Reading past the end is an error; a truncated tail is not part of the length.
        assert!(file.read(4 * BLOCK - 1, &mut [0u8; 2]).is_err());
        writer
            .set_len(SLOT_REGION_LEN + 4 * PHYSICAL + 100)
            .unwrap();
        assert_eq!(file.len().unwrap(), 3 * BLOCK);
    }

    #[test]
    fn the_durable_header_copy_survives_unsynced_rewrites() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("store");
        let file = open(&path);
        file.set_len(2 * BLOCK).unwrap();
        file.write(0, b"header A").unwrap();
        file.sync_data().unwrap();
        let (durable, generation) = newest_block0(&file).unwrap();
        assert_eq!(generation, 1);
        let durable_offset = physical_offset(u64::from(durable)).unwrap();
        let raw = |at: u64| {
            let mut block = vec![0u8; PHYSICAL_BLOCK_LEN];
            File::open(&path)
                .unwrap()
                .read_exact_at(&mut block, at)
                .unwrap();
            block
        };
        let sealed_a = raw(durable_offset);

        // Two header writes without a sync between them both go to the other copy.
        file.write(0, b"header B").unwrap();
        file.write(0, b"header C").unwrap();
        assert_eq!(raw(durable_offset), sealed_a);
        assert_eq!(newest_block0(&file), Some((1 - durable, 3)));
        let mut out = [0u8; 8];
        file.read(0, &mut out).unwrap();
        assert_eq!(&out, b"header C");
        drop(file);

        // Power lost mid-write: the other copy is torn, and A is what is left.
        flip_bit(&path, u64::from(1 - durable));
        let file = open(&path);
        file.read(0, &mut out).unwrap();
        assert_eq!(&out, b"header A");
        assert!(file.failed_blocks() >= 1);

        // After a sync the newer copy is the durable one, and the next write replaces A.
        file.write(0, b"header D").unwrap();
        file.sync_data().unwrap();
        file.write(0, b"header E").unwrap();
        drop(file);
        let file = open(&path);
        file.read(0, &mut out).unwrap();
        assert_eq!(&out, b"header E");
        overwrite_physical(&path, u64::from(durable), 0x5A);
        file.read(0, &mut out).unwrap();
        assert_eq!(&out, b"header D");

        // The durable copy (E) is broken: the next write replaces it, not D, the only
        // authentic one.
        let other_offset = physical_offset(u64::from(1 - durable)).unwrap();
        let sealed_d = raw(other_offset);
        file.write(0, b"header F").unwrap();
        assert_eq!(raw(other_offset), sealed_d);
        file.read(0, &mut out).unwrap();
        assert_eq!(&out, b"header F");
    }

    #[test]
    fn concurrent_readers_never_see_a_half_written_block() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("store");
        let file = open(&path);
        file.set_len(8 * BLOCK).unwrap();
        for b in 0..8 {
            file.write(b * BLOCK, &[0; BLOCK_LEN]).unwrap();
        }
        std::thread::scope(|s| {
            let writer = file.clone();
            s.spawn(move || {
                for round in 1..=40u8 {
                    for b in 0..8 {
                        writer.write(b * BLOCK, &[round; BLOCK_LEN]).unwrap();
                    }
                }
            });
            for _ in 0..2 {
                let reader = file.clone();
                s.spawn(move || {
                    let mut out = vec![0u8; BLOCK_LEN];
                    for i in 0..400 {
                        reader.read((i % 8) * BLOCK, &mut out).unwrap();
                        assert!(out.iter().all(|&b| b == out[0]), "a torn read");
                    }
                });
            }
        });
        assert_eq!(file.failed_blocks(), 0);
    }

    /// Creates tables in one commit and fills them in another, through redb's `Database`.
    fn fill(db: &Database) {
        let txn = db.begin_write().unwrap();
        {
            let mut groups = txn.open_table(GROUPS).unwrap();
            groups.insert(KEY_MARKER, VALUE_MARKER).unwrap();
            let mut records = txn.open_table(RECORDS).unwrap();
            for i in 0..40u64 {
                records
                    .insert(i, VALUE_MARKER.repeat(60).as_bytes())
                    .unwrap();
            }
        }
        txn.commit().unwrap();
    }

    fn check_filled(db: &Database) {
        let txn = db.begin_read().unwrap();
        let groups = txn.open_table(GROUPS).unwrap();
        assert_eq!(
            groups.get(KEY_MARKER).unwrap().unwrap().value(),
            VALUE_MARKER
        );
        let records = txn.open_table(RECORDS).unwrap();
        assert_eq!(records.len().unwrap(), 40);
        for i in 0..40u64 {
            assert_eq!(
                records.get(i).unwrap().unwrap().value(),
                VALUE_MARKER.repeat(60).as_bytes()
            );
        }
    }

    #[test]
    fn redb_round_trips_and_the_file_shows_no_names_keys_or_values() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("store");
        {
            let file = open(&path);
            let db = open_db(&file).unwrap();
            fill(&db);
            check_filled(&db);
        }
        let file = open(&path);
        let db = open_db(&file).unwrap();
        check_filled(&db);
        drop(db);
        assert_eq!(file.failed_blocks(), 0);
        drop(file);

        // The same database on redb's own file shows all of them: the check below can see.
        let plain = dir.path().join("plain.redb");
        fill(&Database::create(&plain).unwrap());
        let needles: [&[u8]; 5] = [
            KEY_MARKER.as_bytes(),
            VALUE_MARKER.as_bytes(),
            GROUPS_NAME.as_bytes(),
            RECORDS_NAME.as_bytes(),
            b"redb\x1a",
        ];
        let plain = std::fs::read(&plain).unwrap();
        let raw = std::fs::read(&path).unwrap();
        for needle in needles {
            assert!(contains(&plain, needle));
            assert!(
                !contains(&raw, needle),
                "{}",
                String::from_utf8_lossy(needle)
            );
        }
    }

    fn set_value(db: &Database, value: &str) {
        let txn = db.begin_write().unwrap();
        txn.open_table(GROUPS).unwrap().insert("k", value).unwrap();
        txn.commit().unwrap();
    }

    fn get_value(db: &Database) -> Option<String> {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(GROUPS).unwrap();
        table.get("k").unwrap().map(|v| v.value().to_owned())
    }

    #[test]
    fn one_header_copy_destroyed_opens_the_other_and_both_fail_to_open() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("store");
        let image = dir.path().join("image");
        let file = open(&path);
        let db = open_db(&file).unwrap();
        set_value(&db, "first");
        set_value(&db, "second");
        // What the disk holds if the power goes now (the commit was synced).
        std::fs::copy(&path, &image).unwrap();
        drop(db);
        drop(file);
        let (newest, _) = newest_block0(&open(&image)).unwrap();

        let case = |destroy: &[u8], fill: u8| {
            let copy = dir.path().join("case");
            std::fs::copy(&image, &copy).unwrap();
            for &c in destroy {
                overwrite_physical(&copy, u64::from(c), fill);
            }
            let file = open(&copy);
            let value = open_db(&file).map(|db| get_value(&db));
            (value, file.failed_blocks())
        };

        // The newest copy gone: the header before it, which names the first commit.
        let (value, failed) = case(&[newest], 0xA5);
        assert_eq!(value.unwrap().as_deref(), Some("first"));
        assert!(failed >= 1);
        // The older copy gone: the last commit.
        let (value, failed) = case(&[1 - newest], 0xA5);
        assert_eq!(value.unwrap().as_deref(), Some("second"));
        assert!(failed >= 1);
        // Both gone, by garbage or by zeros: an error, never an empty database.
        assert!(case(&[0, 1], 0xA5).0.is_err());
        assert!(case(&[0, 1], 0).0.is_err());
    }

    #[test]
    fn a_wrong_key_is_refused_not_taken_for_an_empty_database() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("store");
        set_value(&open_db(&open(&path)).unwrap(), "v");
        let file = PageFile::create_or_open(&path, &[8; 32]).unwrap();
        assert!(open_db(&file).is_err());
        assert!(file.failed_blocks() >= 2);
        // And the right key still opens it.
        assert_eq!(
            get_value(&open_db(&open(&path)).unwrap()).as_deref(),
            Some("v")
        );
    }

    /// Every block redb wrote, tampered with one at a time: redb either refuses the file or
    /// returns one of the states that were committed; never anything else.
    #[test]
    fn a_tampered_page_is_an_error_or_an_earlier_commit_never_forged_data() {
        type State = (BTreeMap<String, String>, BTreeMap<u64, Vec<u8>>);
        fn state(db: &Database) -> Result<State, redb::Error> {
            let txn = db.begin_read()?;
            let groups = txn
                .open_table(GROUPS)?
                .iter()?
                .map(|e| e.map(|(k, v)| (k.value().to_owned(), v.value().to_owned())))
                .collect::<Result<_, _>>()?;
            let records = match txn.open_table(RECORDS) {
                Ok(t) => t
                    .iter()?
                    .map(|e| e.map(|(k, v)| (k.value(), v.value().to_vec())))
                    .collect::<Result<_, _>>()?,
                Err(redb::TableError::TableDoesNotExist(_)) => BTreeMap::new(),
                Err(e) => return Err(e.into()),
            };
            Ok((groups, records))
        }

        let dir = TempDir::new().unwrap();
        let path = dir.path().join("store");
        let mut committed = Vec::new();
        {
            let file = open(&path);
            let db = open_db(&file).unwrap();
            // A table the last commit does not touch, so its pages belong to both commits.
            let txn = db.begin_write().unwrap();
            {
                let mut groups = txn.open_table(GROUPS).unwrap();
                for i in 0..200 {
                    groups
                        .insert(format!("group {i}").as_str(), VALUE_MARKER)
                        .unwrap();
                }
            }
            txn.commit().unwrap();
            committed.push(state(&db).unwrap());
            let txn = db.begin_write().unwrap();
            {
                let mut records = txn.open_table(RECORDS).unwrap();
                for i in 0..30u64 {
                    records.insert(i, [i as u8; 700].as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
            committed.push(state(&db).unwrap());
        }

        // The blocks redb wrote something into.
        let file = open(&path);
        let blocks = file.len().unwrap() / BLOCK;
        let mut page = vec![0u8; BLOCK_LEN];
        let used: Vec<u64> = (1..blocks)
            .filter(|&b| {
                file.read(b * BLOCK, &mut page).unwrap();
                page.iter().any(|&x| x != 0)
            })
            .collect();
        drop(file);
        assert!(used.len() >= 5, "{used:?}");

        let (mut refused, mut earlier, mut intact) = (0, 0, 0);
        for b in used {
            let case = dir.path().join("case");
            std::fs::copy(&path, &case).unwrap();
            flip_bit(&case, physical_of(b, 0));
            let file = open(&case);
            match open_db(&file)
                .map_err(redb::Error::from)
                .and_then(|db| state(&db))
            {
                Err(_) => refused += 1,
                Ok(s) if s == committed[1] => intact += 1,
                Ok(s) => {
                    assert!(s == committed[0], "block {b}: a state never committed");
                    earlier += 1;
                }
            }
        }
        eprintln!("tampered blocks: {refused} refused, {earlier} earlier commit, {intact} intact");
        assert!(refused >= 1);
    }
}
