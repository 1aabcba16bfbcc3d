//! The report: rows, sections, number formats, the machine, and the markdown it all becomes.

use crate::Args;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// One row of a report table.
pub(crate) struct Row {
    pub(crate) metric: String,
    pub(crate) strata: String,
    pub(crate) peer: String,
    pub(crate) ratio: String,
    pub(crate) goal: String,
    pub(crate) met: Option<bool>,
}

pub(crate) fn row(
    metric: impl Into<String>,
    strata: impl Into<String>,
    peer: impl Into<String>,
    ratio: Option<f64>,
    goal: &str,
    met: Option<bool>,
) -> Row {
    Row {
        metric: metric.into(),
        strata: strata.into(),
        peer: peer.into(),
        ratio: ratio.map_or("—".into(), |r| format!("{r:.2}×")),
        goal: goal.into(),
        met,
    }
}

pub(crate) struct Section {
    pub(crate) title: String,
    pub(crate) peer: String,
    pub(crate) rows: Vec<Row>,
    pub(crate) notes: Vec<String>,
}

pub(crate) fn progress(msg: &str) {
    eprintln!("[strata-bench] {msg}");
}

pub(crate) fn rate(n: f64, secs: f64) -> String {
    let r = n / secs.max(1e-9);
    if r >= 1e6 {
        format!("{:.2}M/s", r / 1e6)
    } else {
        format!("{:.0}k/s", r / 1e3)
    }
}

pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1 << 20) as f64)
}

pub(crate) fn ms(secs: f64) -> String {
    if secs < 1.0 {
        format!("{:.1} ms", secs * 1e3)
    } else {
        format!("{secs:.2} s")
    }
}

pub(crate) fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<u64>().ok())
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {:.0} GiB RAM, Linux {}",
        mem as f64 / (1 << 20) as f64,
        kernel.trim()
    )
}

pub(crate) fn render(
    args: &Args,
    sections: &[Section],
    n: u64,
    events_bytes: u64,
    data_size: u64,
    elapsed: Duration,
) -> String {
    let mut out = String::new();
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    let _ = writeln!(out, "# strata benchmarks\n");
    let _ = writeln!(
        out,
        "{} run on {date}, {}. Machine: {}. strata binary: `{}`. Data set: {n} orders-like events ({:.2} GB of NDJSON; a customer key with 100k values, 50 countries, amount, status, a timestamp over one month, ~200 bytes of JSON `data` each); strata's data directory afterwards: {:.2} GB. Whole run: {:.0} s.\n",
        if args.quick {
            "Quick (sizes too small for the figures to mean anything)"
        } else {
            "Full"
        },
        env!("CARGO_PKG_VERSION"),
        machine(),
        args.strata.display(),
        events_bytes as f64 / 1e9,
        data_size as f64 / 1e9,
        elapsed.as_secs_f64(),
    );
    let _ = writeln!(
        out,
        "Reproduce with `scripts/bench.sh` (builds release, makes a venv with DuckDB and Tansu, starts Tansu, runs `strata-bench`). Ratios are strata ÷ peer for throughput and strata time ÷ peer time for latency; the goal column says which way is good.\n"
    );
    for s in sections {
        let _ = writeln!(out, "## {}\n\nPeer: {}.\n", s.title, s.peer);
        let _ = writeln!(
            out,
            "| metric | strata | peer | ratio | goal | met |\n|---|---|---|---|---|---|"
        );
        for r in &s.rows {
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                r.metric, r.strata, r.peer, r.ratio, r.goal, met
            );
        }
        for note in &s.notes {
            let _ = writeln!(out, "\n{note}");
        }
        out.push('\n');
    }
    out
}
