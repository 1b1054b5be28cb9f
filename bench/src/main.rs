//! `hearth-bench`: hearth's end-to-end benchmarks. Each scenario runs real hearthd
//! processes on loopback (the store scenario: hearthd's store, in this process) and, in the
//! same run, its baseline (automerge's own plaintext sync, save and load; the passphrase's
//! key derivation alone; redb on a plain file), several times; it prints medians and
//! hearth/baseline ratios, and with `--json PATH` writes them as one JSON object.
//! docs/performance.md explains each scenario and the figures.

mod api;
mod baseline;
mod fleet;
mod proxy;
mod report;
mod scenario;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::report::Report;
use crate::scenario::{catchup, history, idle, join, live, locking, rotation, store};
use crate::stats::{median, percentile};

#[derive(Parser)]
#[command(name = "hearth-bench", version, about)]
struct Cli {
    /// A small version of every scenario, to check the harness works (as CI does): its
    /// figures are not comparable with a full run's
    #[arg(long)]
    quick: bool,
    /// Also write the figures to PATH as one JSON object
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// How many times each timed scenario runs (medians are reported) [default: 3, or 1
    /// with --quick]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=50))]
    runs: Option<u32>,
    /// Members in the rotation scenario's group [default: 32, or 4 with --quick]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(3..=64))]
    group_size: Option<u32>,
    /// Run only these scenarios (comma-separated)
    #[arg(long, value_delimiter = ',', value_name = "SCENARIO")]
    only: Vec<Scenario>,
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand)]
enum Role {
    /// (internal) The baseline's other process: sync an empty automerge document with
    /// the harness at ADDR
    #[command(hide = true)]
    BaselinePeer { addr: SocketAddr },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Catchup,
    Live,
    Join,
    Disk,
    Idle,
    Rotation,
    Locking,
    Store,
}

/// The sizes of one run of the harness.
struct Sizes {
    changes: usize,
    edits: usize,
    idle: idle::Shape,
    group_size: usize,
    locking: locking::Shape,
    store: store::Shape,
    runs: usize,
}

impl Sizes {
    fn new(quick: bool, runs: Option<u32>) -> Sizes {
        let runs = runs.map_or(if quick { 1 } else { 3 }, |r| r as usize);
        if quick {
            Sizes {
                changes: 300,
                edits: 30,
                idle: idle::Shape {
                    groups: 2,
                    peers: 2,
                    settle: Duration::from_secs(2),
                    window: Duration::from_secs(1),
                },
                group_size: 4,
                locking: locking::Shape { agreements: 20 },
                store: store::Shape {
                    writes: 100,
                    value_len: 1024,
                },
                runs,
            }
        } else {
            Sizes {
                changes: 10_000,
                edits: 1_000,
                idle: idle::Shape {
                    groups: 20,
                    peers: 5,
                    settle: Duration::from_secs(5),
                    window: Duration::from_secs(10),
                },
                group_size: 32,
                locking: locking::Shape { agreements: 200 },
                store: store::Shape {
                    writes: 2_000,
                    value_len: 1024,
                },
                runs,
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hearth-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cli.role {
        Some(Role::BaselinePeer { addr }) => rt.block_on(baseline::serve_peer(addr)),
        None => run(&cli, &rt),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hearth-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli, rt: &tokio::runtime::Runtime) -> Result<()> {
    let mut sizes = Sizes::new(cli.quick, cli.runs);
    if let Some(n) = cli.group_size {
        sizes.group_size = n as usize;
    }
    let wanted = |s: Scenario| cli.only.is_empty() || cli.only.contains(&s);
    let tmp = tempfile::Builder::new()
        .prefix("hearth-bench-")
        .tempdir()
        .context("making a scratch directory")?;
    let root = tmp.path();
    let mut report = Report::new(cli.quick, sizes.runs);
    // A scenario that fails is reported and the others still run.
    let mut failed: Vec<String> = Vec::new();
    let mut attempt = |name: &str, outcome: Result<()>| {
        if let Err(e) = outcome {
            say(&format!("{name} failed: {e:#}"));
            failed.push(name.to_owned());
        }
    };

    let needs_history = [Scenario::Catchup, Scenario::Join, Scenario::Disk]
        .into_iter()
        .any(wanted);
    if needs_history {
        let outcome = history_scenarios(root, &sizes, &wanted, &mut report, rt);
        attempt("catch-up/join/disk", outcome);
    }
    if wanted(Scenario::Live) {
        say(&format!("live, {} edits", sizes.edits));
        let outcome = (|| {
            let samples = live::hearth(&root.join("live"), sizes.edits, rt)?;
            let base = live::baseline(sizes.edits, rt)?;
            let l = report::Live {
                p50_ms: median(&samples),
                p99_ms: percentile(&samples, 99.0),
                baseline_p50_ms: median(&base),
                baseline_p99_ms: percentile(&base, 99.0),
            };
            say(&format!(
                "live: p50 {:.2} ms, p99 {:.2} ms",
                l.p50_ms, l.p99_ms
            ));
            report.live = Some(l);
            Ok(())
        })();
        attempt("live", outcome);
    }
    if wanted(Scenario::Idle) {
        say(&format!(
            "idle, {} groups and {} peers",
            sizes.idle.groups, sizes.idle.peers
        ));
        let outcome = (|| {
            let busy = idle::hearth(&root.join("idle"), &sizes.idle)?;
            let lone = idle::baseline(&root.join("idle-lone"), &sizes.idle)?;
            say(&format!(
                "idle: {:.1} MiB, {:.2} % CPU",
                busy.rss_mib, busy.cpu_percent
            ));
            report.idle = Some((busy, lone));
            Ok(())
        })();
        attempt("idle", outcome);
    }
    if wanted(Scenario::Rotation) {
        say(&format!("rotation, a group of {}", sizes.group_size));
        let outcome = (|| {
            let mut group = rotation::build(&root.join("rotation"), sizes.group_size, rt)?;
            for r in 0..sizes.runs.min(sizes.group_size.saturating_sub(2)) {
                let size = group.size();
                let ms = group.remove_one(rt)?;
                say(&format!(
                    "rotation, run {}: one of {size} removed in {ms:.1} ms",
                    r + 1
                ));
                report.rotation.push((size, ms));
            }
            group.stop();
            Ok(())
        })();
        attempt("rotation", outcome);
    }
    if wanted(Scenario::Locking) {
        say(&format!(
            "locking, a daemon with {} agreements",
            sizes.locking.agreements
        ));
        let outcome = (|| {
            let dir = root.join("locking");
            let mut fixture = locking::build(&dir, &sizes.locking, rt)?;
            report.locking_params = Some(fixture.params);
            report.locking_data_bytes = Some(fixture.data_bytes);
            for r in 0..sizes.runs {
                let run = fixture.run(&dir.join(format!("run{r}")), rt)?;
                say(&format!(
                    "locking, run {}: unlock {:.1} ms against Argon2id alone {:.1} ms \
                     (wiping its memory {:.1} ms); lock {:.1} ms; panic answered in {:.1} ms, \
                     exited in {:.1} ms, {} bytes destroyed",
                    r + 1,
                    run.unlock_ms,
                    run.kdf_ms,
                    run.wipe_ms,
                    run.lock_ms,
                    run.panic_answer_ms,
                    run.panic_exit_ms,
                    run.panic_bytes
                ));
                report.locking.push(run);
            }
            fixture.stop();
            Ok(())
        })();
        attempt("locking", outcome);
    }
    if wanted(Scenario::Store) {
        say(&format!(
            "store, {} writes of {} bytes",
            sizes.store.writes, sizes.store.value_len
        ));
        let outcome = (|| {
            for r in 0..sizes.runs {
                let run = store::run(&root.join(format!("store{r}")), &sizes.store, r)?;
                say(&format!(
                    "store, run {}: one write {:.2} ms (page file {:.2}, plain {:.2}), \
                     open {:.1} ms (page file {:.1}, plain {:.1}), \
                     scan {:.1} ms (page file {:.1}, plain {:.1}), \
                     {} bytes (page file {}, plain {})",
                    r + 1,
                    run.store.write_ms,
                    run.paged.write_ms,
                    run.plain.write_ms,
                    run.store.open_ms,
                    run.paged.open_ms,
                    run.plain.open_ms,
                    run.store.scan_ms,
                    run.paged.scan_ms,
                    run.plain.scan_ms,
                    run.store.bytes,
                    run.paged.bytes,
                    run.plain.bytes,
                ));
                report.store.push(run);
            }
            report.store_shape = Some((sizes.store.writes, sizes.store.value_len));
            Ok(())
        })();
        attempt("store", outcome);
    }

    print!("{}", report.table());
    if let Some(path) = &cli.json {
        let json = serde_json::to_string_pretty(&report.json())?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if !failed.is_empty() {
        anyhow::bail!("these scenarios failed: {}", failed.join(", "));
    }
    Ok(())
}

fn say(what: &str) {
    eprintln!("hearth-bench: {what}");
}

/// Catch-up, join and disk: one long history, then each run on fresh copies of it.
fn history_scenarios(
    root: &std::path::Path,
    sizes: &Sizes,
    wanted: &dyn Fn(Scenario) -> bool,
    report: &mut Report,
    rt: &tokio::runtime::Runtime,
) -> Result<()> {
    say(&format!(
        "writing a history of {} agreements through A's API",
        sizes.changes
    ));
    let h = history::build(&root.join("history"), sizes.changes, rt)?;
    report.write_ms_each = Some(h.writing.as_secs_f64() * 1e3 / sizes.changes as f64);
    let plain = history::as_automerge(sizes.changes)?;
    if wanted(Scenario::Disk) {
        let d = report::Disk {
            hearth_bytes: h.a_bytes_after - h.a_bytes_before,
            baseline_bytes: plain.save().len() as u64,
        };
        say(&format!(
            "disk: {} bytes against save()'s {}",
            d.hearth_bytes, d.baseline_bytes
        ));
        report.disk = Some(d);
    }
    for r in 0..sizes.runs {
        if wanted(Scenario::Catchup) {
            let run = catchup::hearth(&root.join(format!("catchup{r}")), &h, rt)?;
            let base = catchup::baseline(&plain, rt)?;
            let apply = catchup::apply_floor(&plain)?;
            say(&format!(
                "catch-up, run {}: {:.1} ms and {} bytes, baseline {:.1} ms and {} bytes, \
                 automerge apply alone {apply:.1} ms",
                r + 1,
                run.ms,
                run.bytes,
                base.ms,
                base.bytes
            ));
            report.catchup.push((run, base));
            report.catchup_apply.push(apply);
        }
        if wanted(Scenario::Join) {
            let ms = join::hearth(&root.join(format!("join{r}")), &h, rt)?;
            let base = join::baseline(&plain)?;
            say(&format!(
                "join, run {}: {ms:.1} ms, save + load {base:.1} ms",
                r + 1
            ));
            report.join.push((ms, base));
        }
    }
    Ok(())
}
