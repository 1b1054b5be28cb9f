//! What the encrypted store file costs: one redb workload on redb's own `FileBackend` and on
//! `hearthd::pagefile::PageFile`, side by side, so the results read as a ratio.
//!
//! - `write`: 200 durable write transactions, each inserting 4 values of 1 KiB, into a new
//!   database (created untimed).
//! - `read`: opening that database and reading all 800 values back (redb's cache starts empty,
//!   so every page comes through the backend).
//!
//! Run: `cargo bench -p hearthd --bench store_backend -- --quick` (seconds), or without
//! `--quick` for tighter figures. `cargo test -p hearthd --benches` runs each once, as a
//! smoke test. Files live in a temporary directory on the default temp filesystem, so the
//! durable commits' fsyncs are included, as they are in the store.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use hearthd::pagefile::PageFile;
use redb::backends::FileBackend;
use redb::{Database, ReadableDatabase, TableDefinition};
use tempfile::TempDir;

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("values");
const TRANSACTIONS: u64 = 200;
const PER_TRANSACTION: u64 = 4;
const VALUE_LEN: usize = 1024;
const PAGE_KEY: [u8; 32] = [0x42; 32];

#[derive(Clone, Copy)]
enum Backend {
    Plain,
    Encrypted,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Plain => "redb_file_backend",
            Backend::Encrypted => "pagefile",
        }
    }

    fn open(self, path: &Path) -> Database {
        let builder = redb::Builder::new();
        match self {
            Backend::Plain => {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .expect("opening the plain file");
                builder.create_with_backend(FileBackend::new(file).expect("file backend"))
            }
            Backend::Encrypted => builder.create_with_backend(
                PageFile::create_or_open(path, &PAGE_KEY).expect("opening the page file"),
            ),
        }
        .expect("opening the database")
    }
}

fn value(i: u64) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; VALUE_LEN];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

fn write_all(db: &Database) {
    for t in 0..TRANSACTIONS {
        let txn = db.begin_write().expect("begin_write");
        {
            let mut table = txn.open_table(TABLE).expect("open_table");
            for k in 0..PER_TRANSACTION {
                let i = t * PER_TRANSACTION + k;
                table.insert(i, value(i).as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
}

/// Reads every value back; returns how many matched.
fn read_all(db: &Database) -> u64 {
    let txn = db.begin_read().expect("begin_read");
    let table = txn.open_table(TABLE).expect("open_table");
    let mut matched = 0;
    for i in 0..TRANSACTIONS * PER_TRANSACTION {
        let v = table.get(i).expect("get").expect("present");
        if v.value() == value(i).as_slice() {
            matched += 1;
        }
    }
    matched
}

fn store_backend(c: &mut Criterion) {
    let backends = [Backend::Plain, Backend::Encrypted];
    let dir = TempDir::new().expect("tempdir");
    // One database per backend for the reads, checked once, untimed: the workload
    // round-trips on it.
    let paths = backends.map(|backend| {
        let path = dir.path().join(backend.name());
        write_all(&backend.open(&path));
        assert_eq!(
            read_all(&backend.open(&path)),
            TRANSACTIONS * PER_TRANSACTION
        );
        path
    });

    let mut group = c.benchmark_group("write_200_txns_x4_1k");
    for backend in backends {
        group.bench_function(backend.name(), |b| {
            b.iter_batched(
                || {
                    let dir = TempDir::new().expect("tempdir");
                    let db = backend.open(&dir.path().join("store"));
                    (dir, db)
                },
                |(dir, db)| {
                    write_all(&db);
                    (dir, db)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();

    let mut group = c.benchmark_group("open_and_read_800_values");
    for (backend, path) in backends.into_iter().zip(&paths) {
        group.bench_function(backend.name(), |b| {
            b.iter(|| {
                let db = backend.open(path);
                black_box(read_all(&db))
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = store_backend
}
criterion_main!(benches);
