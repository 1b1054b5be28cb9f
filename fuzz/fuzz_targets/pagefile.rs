#![no_main]
//! The encrypted store file (`hearthd::pagefile::PageFile`) on hostile bytes: a disk holder
//! can write anything into the file, truncate it, or put back blocks of an older version of
//! it, and nothing may panic or read back as data that was never written.
//!
//! Input: `mode u8 | n u8 | size u16 LE | n % 8 ops of 7 bytes | rest`. An op is
//! `kind u8 | offset u32 LE | len u16 LE` (offsets taken modulo the file's length).
//! - mode % 3 == 0, a hostile file: the file is `rest` (after a key-slot region when
//!   mode & 4, and zero-padded to `size` bytes when mode & 8), opened under a fixed key. Each
//!   op reads (kind even) or writes `len` bytes of `kind` (kind odd) through the redb backend:
//!   a read inside `len()` succeeds, one past it fails, and a write reads back. Then redb opens
//!   it (check_integrity_on_open, as the store does) when it is not empty.
//! - mode % 3 == 1, tampered pages: the harness writes `size` bytes (`rest` repeated) through
//!   the backend into a new file, then each op tampers with the raw file (below). Reopened,
//!   every block reads as what was written or as zeros.
//! - mode % 3 == 2, a tampered database: a redb database the harness made (two commits) is
//!   tampered with by the ops, then opened by redb and read: an error, or only values that
//!   were committed.
//!
//! Tampering ops: kind % 3 == 0 XORs `kind | 1` into the byte at `offset`; 1 truncates the
//! file at `offset`; 2 puts back `len` bytes at `offset` from the file as it was one step
//! earlier (before the last write, or the first commit): a rollback.

use hearthd::pagefile::{BLOCK_LEN, PageFile, PageFileError, SLOT_REGION_LEN};
use libfuzzer_sys::fuzz_target;
use redb::{Database, ReadableDatabase, ReadableTable, StorageBackend, TableDefinition};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const KEY: [u8; 32] = [0x42; 32];
const BLOCK: u64 = BLOCK_LEN as u64;
const MAX_SIZE: usize = 40_000;
const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("fuzz");

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new("/dev/shm");
    let dir = if dir.is_dir() {
        dir.to_owned()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!(
        "hearth-fuzz-pagefile-{}-{name}",
        std::process::id()
    ))
}

fn path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| scratch("file"))
}

struct Op {
    kind: u8,
    offset: u64,
    len: usize,
}

fn open(path: &Path) -> Option<PageFile> {
    match PageFile::create_or_open(path, &KEY) {
        Ok(file) => Some(file),
        Err(PageFileError::Damaged { .. }) => None,
        Err(e) => panic!("opening the fuzz file: {e}"),
    }
}

fn open_db(file: &PageFile) -> Result<Database, redb::DatabaseError> {
    redb::Builder::new()
        .set_check_integrity_on_open(true)
        .create_with_backend(file.clone())
}

fn value(commit: u64, key: u64) -> Vec<u8> {
    vec![(commit * 64 + key) as u8; 300 + key as usize * 10]
}

/// A database after its first commit and after its second, as raw file bytes.
fn database_versions() -> &'static (Vec<u8>, Vec<u8>) {
    static VERSIONS: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    VERSIONS.get_or_init(|| {
        let path = scratch("template");
        let _ = std::fs::remove_file(&path);
        let file = open(&path).expect("a new file opens");
        let db = open_db(&file).expect("a new database");
        let mut versions = Vec::new();
        for commit in 0..2 {
            let txn = db.begin_write().expect("begin_write");
            {
                let mut table = txn.open_table(TABLE).expect("open_table");
                for key in 0..40 {
                    if commit == 0 || key % 3 == 0 {
                        table
                            .insert(key, value(commit, key).as_slice())
                            .expect("insert");
                    }
                }
            }
            txn.commit().expect("commit");
            versions.push(std::fs::read(&path).expect("reading the template"));
        }
        drop(db);
        drop(file);
        let _ = std::fs::remove_file(&path);
        let second = versions.pop().expect("two versions");
        (versions.pop().expect("two versions"), second)
    })
}

fuzz_target!(|data: &[u8]| {
    let [mode, n, s0, s1, rest @ ..] = data else {
        return;
    };
    let size = usize::from(u16::from_le_bytes([*s0, *s1])) % MAX_SIZE;
    let mut rest = rest;
    let mut ops = Vec::new();
    for _ in 0..n % 8 {
        let Some((op, tail)) = rest.split_first_chunk::<7>() else {
            break;
        };
        ops.push(Op {
            kind: op[0],
            offset: u64::from(u32::from_le_bytes([op[1], op[2], op[3], op[4]])),
            len: usize::from(u16::from_le_bytes([op[5], op[6]])) % (3 * BLOCK_LEN),
        });
        rest = tail;
    }
    let path = path();
    let _ = std::fs::remove_file(path);
    match mode % 3 {
        0 => hostile_file(path, *mode, size, rest, &ops),
        1 => tampered_pages(path, size, rest, &ops),
        _ => tampered_database(path, &ops),
    }
    let _ = std::fs::remove_file(path);
});

fn hostile_file(path: &Path, mode: u8, size: usize, rest: &[u8], ops: &[Op]) {
    let mut bytes = Vec::new();
    if mode & 4 != 0 {
        bytes.resize(SLOT_REGION_LEN as usize, 0x5A);
    }
    bytes.extend_from_slice(rest);
    if mode & 8 != 0 && bytes.len() < size {
        bytes.resize(size, 0);
    }
    std::fs::write(path, &bytes).expect("writing the fuzz file");
    let Some(file) = open(path) else {
        return;
    };
    for op in ops {
        let len = file.len().expect("len");
        let offset = op.offset % (len + 2 * BLOCK);
        if op.kind & 1 == 0 {
            let mut out = vec![0u8; op.len];
            let read = file.read(offset, &mut out);
            assert_eq!(
                read.is_ok(),
                offset + op.len as u64 <= len,
                "read at {offset}"
            );
        } else {
            file.write(offset, &vec![op.kind; op.len]).expect("write");
            if op.len > 0 {
                let mut out = vec![0u8; op.len];
                file.read(offset, &mut out).expect("reading back");
                assert!(out.iter().all(|&b| b == op.kind), "a write reads back");
            }
        }
    }
    if file.len().expect("len") > 0 {
        let _ = open_db(&file).map(|db| read_table(&db));
    }
}

/// Applies the tampering ops to the raw file at `path`; `earlier` is the file one step back.
fn tamper(path: &Path, earlier: &[u8], ops: &[Op]) {
    let raw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("opening the raw file");
    for op in ops {
        let raw_len = raw.metadata().expect("metadata").len();
        let at = op.offset % (raw_len + 1);
        match op.kind % 3 {
            0 => {
                let mut byte = [0u8];
                if raw.read_exact_at(&mut byte, at).is_ok() {
                    byte[0] ^= op.kind | 1;
                    raw.write_all_at(&byte, at).expect("tampering");
                }
            }
            1 => raw.set_len(at).expect("truncating"),
            _ => {
                let from = (at as usize).min(earlier.len());
                let to = (from + op.len).min(earlier.len());
                raw.write_all_at(&earlier[from..to], at)
                    .expect("rolling back");
            }
        }
    }
}

fn tampered_pages(path: &Path, size: usize, rest: &[u8], ops: &[Op]) {
    let plaintext: Vec<u8> = if rest.is_empty() {
        vec![0; size]
    } else {
        rest.iter().copied().cycle().take(size).collect()
    };
    let file = open(path).expect("a new file opens");
    file.set_len(plaintext.len() as u64).expect("set_len");
    file.sync_data().expect("sync");
    let earlier = std::fs::read(path).expect("reading the file");
    file.write(0, &plaintext).expect("write");
    file.sync_data().expect("sync");
    drop(file);

    tamper(path, &earlier, ops);

    let Some(file) = open(path) else {
        return;
    };
    let len = file.len().expect("len");
    let mut page = vec![0u8; BLOCK_LEN];
    let mut expected = vec![0u8; BLOCK_LEN];
    for block in 0..len / BLOCK {
        file.read(block * BLOCK, &mut page)
            .expect("reading a block");
        expected.fill(0);
        let start = (block * BLOCK) as usize;
        if start < plaintext.len() {
            let end = plaintext.len().min(start + BLOCK_LEN);
            expected[..end - start].copy_from_slice(&plaintext[start..end]);
        }
        assert!(
            page == expected || page.iter().all(|&b| b == 0),
            "block {block} reads as something never written"
        );
    }
}

/// Every entry of the table, or the first error.
fn read_table(db: &Database) -> Result<Vec<(u64, Vec<u8>)>, redb::Error> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(TABLE) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    table
        .iter()?
        .map(|e| e.map(|(k, v)| (k.value(), v.value().to_vec())))
        .collect::<Result<_, _>>()
        .map_err(Into::into)
}

fn tampered_database(path: &Path, ops: &[Op]) {
    let (first, second) = database_versions();
    std::fs::write(path, second).expect("writing the database");
    tamper(path, first, ops);
    let Some(file) = open(path) else {
        return;
    };
    let Ok(db) = open_db(&file) else {
        return;
    };
    if let Ok(entries) = read_table(&db) {
        for (key, v) in entries {
            assert!(
                v == value(0, key) || v == value(1, key),
                "key {key} reads as a value never committed"
            );
        }
    }
}
