//! The figures of one harness run: printed as a table, written as JSON.

use std::fmt::Write as _;

use serde_json::{Value, json};

use hearthd::vault::KdfParams;

use crate::scenario::{catchup, idle, locking, store};
use crate::stats::{median, ratio};

pub struct Disk {
    pub hearth_bytes: u64,
    pub baseline_bytes: u64,
}

pub struct Live {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub baseline_p50_ms: f64,
    pub baseline_p99_ms: f64,
}

pub struct Report {
    quick: bool,
    runs: usize,
    /// Mean time of one agreement write through A's API while building the history.
    pub write_ms_each: Option<f64>,
    /// Per run: hearth, then the baseline.
    pub catchup: Vec<(catchup::Run, catchup::Run)>,
    /// Per run: automerge alone applying the same changes in one batch, in milliseconds.
    pub catchup_apply: Vec<f64>,
    /// Per run: hearth's join, then automerge's save + load, in milliseconds.
    pub join: Vec<(f64, f64)>,
    pub live: Option<Live>,
    pub disk: Option<Disk>,
    /// The busy daemon, then one with no groups.
    pub idle: Option<(idle::Usage, idle::Usage)>,
    /// Per run: the group's size before the removal, and the time in milliseconds.
    pub rotation: Vec<(usize, f64)>,
    /// Per run: unlock, lock and panic, and the derivation alone.
    pub locking: Vec<locking::Run>,
    /// The Argon2id parameters of the locking scenario's key file.
    pub locking_params: Option<KdfParams>,
    /// The locking scenario's data dir while locked, in bytes.
    pub locking_data_bytes: Option<u64>,
    /// Per run: the store, redb on the page file, and plain redb.
    pub store: Vec<store::Run>,
    /// The store scenario's writes and the length of each value.
    pub store_shape: Option<(usize, usize)>,
}

/// The medians of the locking runs.
struct LockingMedians {
    unlock: f64,
    kdf: f64,
    wipe: f64,
    lock: f64,
    panic_answer: f64,
    panic_exit: f64,
    panic_bytes: f64,
}

/// One figure of a store's run.
type Pick = dyn Fn(&store::Figures) -> f64;

/// The medians of one figure of the store runs: the store, the page file alone, plain.
struct Trio {
    store: f64,
    paged: f64,
    plain: f64,
}

impl Trio {
    fn json(&self) -> Value {
        json!({
            "store": self.store, "page_file": self.paged, "plain": self.plain,
            "ratio": ratio(self.store, self.plain),
            "page_file_ratio": ratio(self.paged, self.plain),
        })
    }
}

impl Report {
    pub fn new(quick: bool, runs: usize) -> Report {
        Report {
            quick,
            runs,
            write_ms_each: None,
            catchup: Vec::new(),
            catchup_apply: Vec::new(),
            join: Vec::new(),
            live: None,
            disk: None,
            idle: None,
            rotation: Vec::new(),
            locking: Vec::new(),
            locking_params: None,
            locking_data_bytes: None,
            store: Vec::new(),
            store_shape: None,
        }
    }

    fn locking_medians(&self) -> Option<LockingMedians> {
        if self.locking.is_empty() {
            return None;
        }
        let pick = |f: &dyn Fn(&locking::Run) -> f64| {
            median(&self.locking.iter().map(f).collect::<Vec<_>>())
        };
        Some(LockingMedians {
            unlock: pick(&|r| r.unlock_ms),
            kdf: pick(&|r| r.kdf_ms),
            wipe: pick(&|r| r.wipe_ms),
            lock: pick(&|r| r.lock_ms),
            panic_answer: pick(&|r| r.panic_answer_ms),
            panic_exit: pick(&|r| r.panic_exit_ms),
            panic_bytes: pick(&|r| r.panic_bytes as f64),
        })
    }

    fn store_medians(&self, f: &Pick) -> Option<Trio> {
        if self.store.is_empty() {
            return None;
        }
        let pick = |which: &dyn Fn(&store::Run) -> &store::Figures| {
            median(&self.store.iter().map(|r| f(which(r))).collect::<Vec<_>>())
        };
        Some(Trio {
            store: pick(&|r| &r.store),
            paged: pick(&|r| &r.paged),
            plain: pick(&|r| &r.plain),
        })
    }

    fn catchup_medians(&self) -> Option<[f64; 4]> {
        if self.catchup.is_empty() {
            return None;
        }
        let pick = |f: &dyn Fn(&(catchup::Run, catchup::Run)) -> f64| {
            median(&self.catchup.iter().map(f).collect::<Vec<_>>())
        };
        Some([
            pick(&|(h, _)| h.ms),
            pick(&|(_, b)| b.ms),
            pick(&|(h, _)| h.bytes as f64),
            pick(&|(_, b)| b.bytes as f64),
        ])
    }

    fn apply_median(&self) -> Option<f64> {
        (!self.catchup_apply.is_empty()).then(|| median(&self.catchup_apply))
    }

    fn join_medians(&self) -> Option<(f64, f64)> {
        (!self.join.is_empty()).then(|| {
            let hearth: Vec<f64> = self.join.iter().map(|j| j.0).collect();
            let base: Vec<f64> = self.join.iter().map(|j| j.1).collect();
            (median(&hearth), median(&base))
        })
    }

    fn rotation_median(&self) -> Option<f64> {
        (!self.rotation.is_empty())
            .then(|| median(&self.rotation.iter().map(|r| r.1).collect::<Vec<_>>()))
    }

    pub fn json(&self) -> Value {
        let catchup = self.catchup_medians().map(|[h, b, hb, bb]| {
            json!({
                "hearth_ms": h, "baseline_ms": b, "ratio": ratio(h, b),
                "hearth_bytes": hb, "baseline_bytes": bb, "bytes_ratio": ratio(hb, bb),
                "apply_ms": self.apply_median(), "apply_ratio": self.apply_median().map(|a| ratio(h, a)),
            })
        });
        let live = self.live.as_ref().map(|l| {
            json!({
                "p50_ms": l.p50_ms, "p99_ms": l.p99_ms,
                "baseline_p50_ms": l.baseline_p50_ms, "baseline_p99_ms": l.baseline_p99_ms,
            })
        });
        let disk = self.disk.as_ref().map(|d| {
            json!({
                "hearth_bytes": d.hearth_bytes, "baseline_bytes": d.baseline_bytes,
                "ratio": ratio(d.hearth_bytes as f64, d.baseline_bytes as f64),
            })
        });
        let idle = self.idle.as_ref().map(|(busy, lone)| {
            json!({
                "rss_mib": busy.rss_mib, "cpu_percent": busy.cpu_percent,
                "baseline_rss_mib": lone.rss_mib, "baseline_cpu_percent": lone.cpu_percent,
            })
        });
        let locking = self.locking_medians().map(|m| {
            json!({
                "unlock_ms": m.unlock, "kdf_ms": m.kdf, "ratio": ratio(m.unlock, m.kdf),
                "wipe_ms": m.wipe, "kdf_and_wipe_ratio": ratio(m.unlock, m.kdf + m.wipe),
                "lock_ms": m.lock,
                "panic_answer_ms": m.panic_answer, "panic_exit_ms": m.panic_exit,
                "panic_bytes": m.panic_bytes,
                "data_bytes": self.locking_data_bytes,
                "kdf_params": self.locking_params.map(|p| json!({
                    "m_cost_kib": p.m_cost_kib, "t_cost": p.t_cost, "p_cost": p.p_cost,
                })),
            })
        });
        let store = self.store_shape.map(|(writes, value_bytes)| {
            let trio = |f: &Pick| self.store_medians(f).map(|t| t.json());
            json!({
                "writes": writes, "value_bytes": value_bytes,
                "write_ms": trio(&|f| f.write_ms),
                "writes_ms": trio(&|f| f.writes_ms),
                "open_ms": trio(&|f| f.open_ms),
                "scan_ms": trio(&|f| f.scan_ms),
                "bytes": trio(&|f| f.bytes as f64),
            })
        });
        let join = self.join_medians();
        json!({
            "catchup": catchup,
            "live": live,
            "join_ms": join.map(|j| j.0),
            "join_baseline_ms": join.map(|j| j.1),
            "disk": disk,
            "idle": idle,
            "rotation_ms": self.rotation_median(),
            "rotation_group_sizes": self.rotation.iter().map(|r| r.0).collect::<Vec<_>>(),
            "write_ms_each": self.write_ms_each,
            "locking": locking,
            "store": store,
            "quick": self.quick,
            "runs": self.runs,
        })
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut row = |name: &str, hearth: String, base: String, r: String, target: &str| {
            let _ = writeln!(out, "{name:<22} {hearth:>14} {base:>14} {r:>8}   {target}");
        };
        row(
            "scenario",
            "hearth".into(),
            "baseline".into(),
            "ratio".into(),
            "target",
        );
        if let Some([h, b, hb, bb]) = self.catchup_medians() {
            row("catch-up time", ms(h), ms(b), x(ratio(h, b)), "<= 1.0x");
            if let Some(a) = self.apply_median() {
                row(
                    "catch-up vs apply",
                    ms(h),
                    ms(a),
                    x(ratio(h, a)),
                    "(automerge apply alone)",
                );
            }
            row(
                "catch-up bytes",
                kb(hb),
                kb(bb),
                x(ratio(hb, bb)),
                "<= 1.5x",
            );
        }
        if let Some(l) = &self.live {
            row(
                "live p50",
                ms(l.p50_ms),
                ms(l.baseline_p50_ms),
                x(ratio(l.p50_ms, l.baseline_p50_ms)),
                "<= 5 ms",
            );
            row(
                "live p99",
                ms(l.p99_ms),
                ms(l.baseline_p99_ms),
                x(ratio(l.p99_ms, l.baseline_p99_ms)),
                "<= 20 ms",
            );
        }
        if let Some((h, b)) = self.join_medians() {
            row("join", ms(h), ms(b), x(ratio(h, b)), "< 300 ms");
        }
        if let Some(d) = &self.disk {
            let (h, b) = (d.hearth_bytes as f64, d.baseline_bytes as f64);
            row("disk", kb(h), kb(b), x(ratio(h, b)), "<= 3x");
        }
        if let Some((busy, lone)) = &self.idle {
            row(
                "idle RSS",
                format!("{:.1} MiB", busy.rss_mib),
                format!("{:.1} MiB", lone.rss_mib),
                x(ratio(busy.rss_mib, lone.rss_mib)),
                "<= 30 MiB",
            );
            row(
                "idle CPU",
                format!("{:.2} %", busy.cpu_percent),
                format!("{:.2} %", lone.cpu_percent),
                String::new(),
                "no busy loop",
            );
        }
        if let Some(r) = self.rotation_median() {
            let sizes: Vec<String> = self.rotation.iter().map(|r| r.0.to_string()).collect();
            row(
                &format!("rotation ({})", sizes.join("/")),
                ms(r),
                "-".into(),
                String::new(),
                "< 50 ms",
            );
        }
        if let Some(w) = self.write_ms_each {
            row("one API write", ms(w), "-".into(), String::new(), "");
        }
        if let Some(m) = self.locking_medians() {
            let kdf = self.locking_params.map_or_else(String::new, |p| {
                format!(
                    "(Argon2id alone, {} MiB, t={}, p={})",
                    p.m_cost_kib / 1024,
                    p.t_cost,
                    p.p_cost
                )
            });
            row(
                "unlock",
                ms(m.unlock),
                ms(m.kdf),
                x(ratio(m.unlock, m.kdf)),
                &kdf,
            );
            row(
                "unlock vs kdf + wipe",
                ms(m.unlock),
                ms(m.kdf + m.wipe),
                x(ratio(m.unlock, m.kdf + m.wipe)),
                "(and zeroing its memory on free)",
            );
            row("lock", ms(m.lock), "-".into(), String::new(), "");
            row(
                "panic answer",
                ms(m.panic_answer),
                "-".into(),
                String::new(),
                "< 1 s",
            );
            row(
                &format!("panic exit ({})", kb(m.panic_bytes)),
                ms(m.panic_exit),
                "-".into(),
                String::new(),
                "< 1 s",
            );
        }
        if let Some((writes, len)) = self.store_shape {
            let show_ms: fn(f64) -> String = ms_fine;
            let figures = [
                ("store write", self.store_medians(&|f| f.write_ms), show_ms),
                ("store open", self.store_medians(&|f| f.open_ms), show_ms),
                ("store scan", self.store_medians(&|f| f.scan_ms), show_ms),
                ("store bytes", self.store_medians(&|f| f.bytes as f64), kb),
            ];
            for (i, (name, t, show)) in figures.into_iter().enumerate() {
                let Some(t) = t else {
                    continue;
                };
                let note = if i == 0 {
                    format!("(plain redb; {writes} writes of {len} bytes)")
                } else {
                    String::new()
                };
                row(
                    name,
                    show(t.store),
                    show(t.plain),
                    x(ratio(t.store, t.plain)),
                    &note,
                );
                row(
                    "  page file alone",
                    show(t.paged),
                    show(t.plain),
                    x(ratio(t.paged, t.plain)),
                    "",
                );
            }
        }
        if self.quick {
            out.push_str("(--quick: small sizes, to check the harness; not comparable)\n");
        }
        out
    }
}

fn ms(v: f64) -> String {
    format!("{v:.1} ms")
}

/// Milliseconds with two decimals, for figures of a few milliseconds.
fn ms_fine(v: f64) -> String {
    format!("{v:.2} ms")
}

fn kb(v: f64) -> String {
    format!("{:.1} KB", v / 1e3)
}

fn x(v: f64) -> String {
    format!("{v:.2}x")
}
