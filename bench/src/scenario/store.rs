//! Store: what the store's encryption costs, in this process, against redb on a plain file
//! with the same table, the same writes and the same durability.
//!
//! Three stores take the same values, in a different order each run so that drift in the
//! machine's load falls on each in turn:
//! - **plain**: `redb::Database` on a plain file (the baseline);
//! - **page file**: redb on hearthd's encrypted page file (`hearthd::pagefile::PageFile`),
//!   values as given: the cost of the page encryption alone;
//! - **store**: `hearthd::store::Store`, the page file plus every value sealed again: what
//!   the daemon runs.
//!
//! Each gets `writes` durable transactions of one value each (timed one by one), is
//! closed, opened once untimed (which compacts it, as the daemon does at start), closed and
//! opened again (timed: what an unlock pays for the store), then scanned whole (timed).
//! Its file's length is taken last.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use hearthd::pagefile::PageFile;
use hearthd::store::{Store, Table, WriteOp};
use rand_core::{OsRng, RngCore};
use redb::{Database, ReadableDatabase, TableDefinition};

use crate::stats::median;

const VALUES: TableDefinition<'static, &'static [u8], &'static [u8]> =
    TableDefinition::new("envelopes");

pub struct Shape {
    pub writes: usize,
    pub value_len: usize,
}

/// One store's figures in one run.
#[derive(Clone, Copy)]
pub struct Figures {
    /// Median of the single-value durable transactions, in milliseconds.
    pub write_ms: f64,
    /// All of them added up, in milliseconds.
    pub writes_ms: f64,
    /// Opening the closed, compacted store, in milliseconds.
    pub open_ms: f64,
    /// Reading every value back, in milliseconds.
    pub scan_ms: f64,
    /// The file's length at the end.
    pub bytes: u64,
}

/// One run: plain redb, redb on the page file, and the store.
pub struct Run {
    pub plain: Figures,
    pub paged: Figures,
    pub store: Figures,
}

#[derive(Clone, Copy)]
enum Kind {
    Plain,
    Paged,
    Store,
}

/// The same keys and values for every store of a run: keys as the daemon's envelope keys
/// (a 16-byte group alias, then a sequence number), values random.
fn workload(shape: &Shape) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut alias = [0u8; 16];
    OsRng.fill_bytes(&mut alias);
    (0..shape.writes as u64)
        .map(|i| {
            let mut value = vec![0u8; shape.value_len];
            OsRng.fill_bytes(&mut value);
            ([&alias[..], &i.to_be_bytes()].concat(), value)
        })
        .collect()
}

pub fn run(root: &Path, shape: &Shape, run: usize) -> Result<Run> {
    let work = workload(shape);
    let order = [Kind::Plain, Kind::Paged, Kind::Store];
    let mut out = [const { None }; 3];
    for k in 0..3 {
        let i = (k + run) % 3;
        let dir = root.join(format!("{i}"));
        std::fs::create_dir_all(&dir)?;
        out[i] = Some(match order[i] {
            Kind::Plain => redb_figures(&work, || {
                redb_builder()
                    .create(dir.join("plain.redb"))
                    .context("creating plain redb")
            })
            .map(|f| (f, dir.join("plain.redb")))?,
            Kind::Paged => {
                let mut key = [0u8; 32];
                OsRng.fill_bytes(&mut key);
                let path = dir.join("paged");
                redb_figures(&work, || {
                    let file = PageFile::create_or_open(&path, &key)?;
                    redb_builder()
                        .create_with_backend(file)
                        .context("creating redb on the page file")
                })
                .map(|f| (f, path))?
            }
            Kind::Store => store_figures(&work, &dir.join("store"))
                .map(|f| (f, dir.join("store").join("store")))?,
        });
    }
    let [plain, paged, store] = out.map(|o| {
        let (mut figures, path) = o.expect("every store ran");
        figures.bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        figures
    });
    Ok(Run {
        plain,
        paged,
        store,
    })
}

/// How hearthd opens its database: every page checksum verified at open.
fn redb_builder() -> redb::Builder {
    let mut builder = redb::Builder::new();
    builder.set_check_integrity_on_open(true);
    builder
}

/// Opens a database as `Store::open` does: then makes every table exist, then compacts it.
fn open_like_the_store(open: &dyn Fn() -> Result<Database>) -> Result<Database> {
    let mut db = open()?;
    let txn = db.begin_write()?;
    for table in Table::ALL {
        txn.open_table(TableDefinition::<&[u8], &[u8]>::new(table.name()))?;
    }
    txn.commit()?;
    while db.compact().context("compacting")? {}
    Ok(db)
}

fn redb_figures(
    work: &[(Vec<u8>, Vec<u8>)],
    open: impl Fn() -> Result<Database>,
) -> Result<Figures> {
    let db = open_like_the_store(&open)?;
    let mut each = Vec::with_capacity(work.len());
    for (key, value) in work {
        let start = Instant::now();
        let txn = db.begin_write()?;
        {
            let mut t = txn.open_table(VALUES)?;
            t.insert(key.as_slice(), value.as_slice())?;
        }
        txn.commit()?;
        each.push(start.elapsed().as_secs_f64() * 1e3);
    }
    drop(db);
    drop(open_like_the_store(&open)?);

    let start = Instant::now();
    let db = open_like_the_store(&open)?;
    let open_ms = start.elapsed().as_secs_f64() * 1e3;

    let start = Instant::now();
    let scanned = {
        let txn = db.begin_read()?;
        let t = txn.open_table(VALUES)?;
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        // As `Store::scan` with an empty prefix: every entry, key and value copied out.
        for entry in t.range::<&[u8]>(&[][..]..)? {
            let (k, v) = entry?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        out
    };
    let scan_ms = start.elapsed().as_secs_f64() * 1e3;
    ensure!(
        scanned == work,
        "the scan did not give back what was written"
    );
    Ok(Figures {
        write_ms: median(&each),
        writes_ms: each.iter().sum(),
        open_ms,
        scan_ms,
        bytes: 0,
    })
}

fn store_figures(work: &[(Vec<u8>, Vec<u8>)], dir: &Path) -> Result<Figures> {
    let store = Store::open_unprotected(dir)?;
    let mut each = Vec::with_capacity(work.len());
    for (key, value) in work {
        // The op is made outside the timing, as the daemon makes it before storing.
        let op = WriteOp::Put {
            table: Table::Envelopes,
            key: key.clone(),
            value: value.clone(),
        };
        let start = Instant::now();
        store.write(vec![op])?;
        each.push(start.elapsed().as_secs_f64() * 1e3);
    }
    drop(store);
    drop(Store::open_unprotected(dir)?);

    let start = Instant::now();
    let store = Store::open_unprotected(dir)?;
    let open_ms = start.elapsed().as_secs_f64() * 1e3;

    let start = Instant::now();
    let scanned = store.scan(Table::Envelopes, &[])?;
    let scan_ms = start.elapsed().as_secs_f64() * 1e3;
    ensure!(
        scanned.len() == work.len()
            && scanned
                .iter()
                .zip(work)
                .all(|((k, v), (key, value))| k == key && v[..] == value[..]),
        "the scan did not give back what was written"
    );
    Ok(Figures {
        write_ms: median(&each),
        writes_ms: each.iter().sum(),
        open_ms,
        scan_ms,
        bytes: 0,
    })
}
