//! `strata-bench`: strata against its peers, side by side in one run, on one data set.
//!
//! Scenarios (sizes for the full run; `--quick` shrinks them so the test suite can run it):
//! 1. durable ingest of 2M events over HTTP, 1,000 per request from 4 clients, against append +
//!    fdatasync of the same bytes in the same batches to a plain file;
//! 2. SQL analytics over 10M stored events against DuckDB over the same events in Parquet (and NDJSON);
//! 3. replay of every stored event over HTTP against reading the same NDJSON from a file;
//! 4. recovery: start to healthy after `kill -9` with every event stored;
//! 5. (with a broker) strata's Kafka path against a plain rdkafka producer;
//! 6. materialized views: folding against recomputation, append → visible latency, key lookups as
//!    the stream grows, backfill.
//!
//! Writes a markdown report (figures, ratios, goals, machine, date) to `--out`.

mod data;
mod kafka;
mod server;
mod views;

use server::Strata;
use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Command-line options.
#[derive(clap::Parser)]
#[command(
    name = "strata-bench",
    about = "Benchmarks strata against its peers in one run"
)]
struct Args {
    /// Tiny sizes, one run per query: checks that every scenario works, not how fast.
    #[arg(long)]
    quick: bool,
    /// The strata binary to run (a release build for real figures).
    #[arg(long, default_value = "target/release/strata")]
    strata: PathBuf,
    /// A Python with the `duckdb` package.
    #[arg(long, default_value = ".venv/bin/python")]
    python: PathBuf,
    /// Working directory for data sets and data directories (emptied first).
    #[arg(long, default_value = "target/bench")]
    work: PathBuf,
    /// Where the markdown report goes.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Events of the ingest scenario (default 2,000,000; quick 20,000).
    #[arg(long)]
    ingest_events: Option<u64>,
    /// Events stored for the query, replay and recovery scenarios (default 10,000,000; quick 60,000).
    #[arg(long)]
    events: Option<u64>,
    /// Timed runs per query; the median is reported (default 5; quick 1).
    #[arg(long)]
    runs: Option<usize>,
    /// A Kafka-protocol broker for scenario 5 (strata's Kafka path against a plain producer);
    /// without it the scenario is skipped.
    #[arg(long, env = "STRATA_BENCH_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Events of the Kafka scenario (default 500,000; quick 5,000).
    #[arg(long)]
    kafka_events: Option<u64>,
    /// Runs only the in-process part of scenario 6 (view folding against recomputation) and
    /// prints its rows; for profiling.
    #[arg(long)]
    views_in_process_only: bool,
}

const BATCH: u64 = 1000;
const CLIENTS: u64 = 4;

struct Query {
    name: &'static str,
    what: &'static str,
    strata: &'static str,
    duckdb: &'static str,
}

const QUERIES: [Query; 5] = [
    Query {
        name: "count",
        what: "`count(*)`",
        strata: "SELECT count(*) AS n FROM orders",
        duckdb: "SELECT count(*) AS n FROM orders",
    },
    Query {
        name: "by_country",
        what: "`GROUP BY country`: count, sum(amount)",
        strata: "SELECT country, count(*) AS orders, sum(amount) AS revenue FROM orders GROUP BY country ORDER BY country",
        duckdb: "SELECT country, count(*) AS orders, sum(amount) AS revenue FROM orders GROUP BY country ORDER BY country",
    },
    Query {
        name: "one_day",
        what: "one-day time-range count",
        strata: "SELECT count(*) AS n FROM orders WHERE time >= '2024-05-10T00:00:00Z' AND time < '2024-05-11T00:00:00Z'",
        duckdb: "SELECT count(*) AS n FROM orders WHERE time >= TIMESTAMP '2024-05-10 00:00:00' AND time < TIMESTAMP '2024-05-11 00:00:00'",
    },
    Query {
        name: "hourly",
        what: "`date_bin` hourly sum(amount)",
        strata: "SELECT date_bin(INTERVAL '1 hour', time) AS hour, sum(amount) AS revenue FROM orders GROUP BY 1 ORDER BY 1",
        duckdb: "SELECT time_bucket(INTERVAL '1 hour', time) AS hour, sum(amount) AS revenue FROM orders GROUP BY 1 ORDER BY 1",
    },
    Query {
        name: "top_customers",
        what: "`GROUP BY customer` top 10 by sum(amount)",
        strata: "SELECT key AS customer, sum(amount) AS revenue FROM orders GROUP BY key ORDER BY revenue DESC, customer LIMIT 10",
        duckdb: "SELECT customer, sum(amount) AS revenue FROM orders GROUP BY customer ORDER BY revenue DESC, customer LIMIT 10",
    },
];

/// One row of a report table.
struct Row {
    metric: String,
    strata: String,
    peer: String,
    ratio: String,
    goal: String,
    met: Option<bool>,
}

fn row(
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

struct Section {
    title: String,
    peer: String,
    rows: Vec<Row>,
    notes: Vec<String>,
}

fn progress(msg: &str) {
    eprintln!("[strata-bench] {msg}");
}

fn rate(n: f64, secs: f64) -> String {
    let r = n / secs.max(1e-9);
    if r >= 1e6 {
        format!("{:.2}M/s", r / 1e6)
    } else {
        format!("{:.0}k/s", r / 1e3)
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1 << 20) as f64)
}

fn ms(secs: f64) -> String {
    if secs < 1.0 {
        format!("{:.1} ms", secs * 1e3)
    } else {
        format!("{secs:.2} s")
    }
}

type Result<T> = std::result::Result<T, String>;

fn main() -> std::process::ExitCode {
    let args = <Args as clap::Parser>::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let ingest_n = args
        .ingest_events
        .unwrap_or(if args.quick { 20_000 } else { 2_000_000 });
    let total_n = args
        .events
        .unwrap_or(if args.quick { 60_000 } else { 10_000_000 })
        .max(ingest_n);
    let runs = args.runs.unwrap_or(if args.quick { 1 } else { 5 }).max(1);
    let _ = std::fs::remove_dir_all(&args.work);
    std::fs::create_dir_all(&args.work).map_err(|e| format!("{}: {e}", args.work.display()))?;
    let started = Instant::now();

    progress(&format!("generating {total_n} events"));
    let events_path = args.work.join("events.ndjson");
    let events_bytes = generate(&events_path, total_n)?;
    let mut sections = Vec::new();
    if args.views_in_process_only {
        let (rows, _) = views::in_process(args.quick, &args.work, &events_path, total_n).await?;
        for r in rows {
            println!("{} | {} | {} | {}", r.metric, r.strata, r.peer, r.ratio);
        }
        return Ok(());
    }

    // 1. Durable ingest.
    let config = args.work.join("strata.toml");
    std::fs::write(
        &config,
        if args.quick {
            "[store]\nblock_rows = 4096\n"
        } else {
            ""
        },
    )
    .map_err(|e| e.to_string())?;
    let mut strata = Strata::start(&args.strata, &args.work.join("data"), &config).await?;
    strata.create_orders().await?;
    let batches = read_batches(&events_path, ingest_n)?;
    let ingest_bytes: usize = batches.iter().map(String::len).sum();
    strata.reset_peak_rss();
    progress(&format!(
        "scenario 1: ingesting {ingest_n} events, {BATCH} per request from {CLIENTS} clients"
    ));
    let acked = strata
        .append_concurrently(&batches, CLIENTS as usize)
        .await?;
    let visible = strata
        .wait_count(ingest_n, Duration::from_secs(600))
        .await?;
    let ingest_rss = strata.peak_rss();
    progress("scenario 1 peer: append + fdatasync of the same batches to a file");
    let peer = fdatasync_peer(&args.work.join("peer.log"), &batches)?;
    drop(batches);
    let (acked_s, visible_s, peer_s) = (
        acked.as_secs_f64(),
        (acked + visible).as_secs_f64(),
        peer.as_secs_f64(),
    );
    let ratio = (ingest_n as f64 / acked_s) / (ingest_n as f64 / peer_s);
    sections.push(Section {
        title: format!("1. Durable ingest: {ingest_n} events over HTTP, {BATCH} per request, {CLIENTS} concurrent clients"),
        peer: "append + fdatasync of the same bytes in the same batches to a plain file, one writer".into(),
        rows: vec![
            row("events/s until all acknowledged", rate(ingest_n as f64, acked_s), rate(ingest_n as f64, peer_s), Some(ratio), "≥ 0.5×", Some(ratio >= 0.5)),
            row("events/s until all visible to `count(*)`", rate(ingest_n as f64, visible_s), "", Some((ingest_n as f64 / visible_s) / (ingest_n as f64 / peer_s)), "", None),
            row("MB/s of request bodies until acknowledged", format!("{:.1}", ingest_bytes as f64 / acked_s / 1e6), format!("{:.1}", ingest_bytes as f64 / peer_s / 1e6), None, "", None),
            row("peak RSS of strata", mib(ingest_rss), "", None, "", None),
        ],
        notes: vec![],
    });

    // The view of scenario 6 exists from here on, so the load below maintains it.
    strata
        .sql(&format!(
            "CREATE MATERIALIZED VIEW by_customer AS {}",
            views::BY_CUSTOMER
        ))
        .await?;
    views::wait_views(&strata, Duration::from_secs(600)).await?;
    strata.wait_idle(Duration::from_secs(300)).await;
    let early_lookup = (ingest_n, views::lookup_p99(&strata, args.quick).await?);
    let ingest_rate = ingest_n as f64 / acked_s;

    // Load the rest for the query scenarios.
    if total_n > ingest_n {
        progress(&format!(
            "loading events {ingest_n}..{total_n} for the query scenarios"
        ));
        let load = strata
            .load_file(&events_path, ingest_n, total_n, CLIENTS as usize)
            .await?;
        progress(&format!("loaded in {:.1} s", load.as_secs_f64()));
    }
    strata
        .wait_count(total_n, Duration::from_secs(1800))
        .await?;

    // 4. Recovery, run before 2 and 3: they then measure a node as it serves after a restart,
    // not the allocator's leftovers of the bulk load.
    progress("scenario 4: kill -9 and restart");
    strata.kill9();
    let (healthy, queryable) = strata.restart_timed(total_n).await?;
    sections.push(Section {
        title: format!("4. Recovery after `kill -9` with {total_n} events stored"),
        peer: "—".into(),
        rows: vec![
            row(
                "start to healthy (`/healthz` answers)",
                ms(healthy.as_secs_f64()),
                "",
                None,
                "≤ 2 s",
                Some(healthy <= Duration::from_secs(2)),
            ),
            row(
                "start to `count(*)` answering with every event",
                ms(queryable.as_secs_f64()),
                "",
                None,
                "",
                None,
            ),
        ],
        notes: vec![],
    });
    // 2. SQL analytics, timed on a node that is done with background work (as DuckDB is).
    let settled = strata.wait_idle(Duration::from_secs(300)).await;
    progress(&format!(
        "waited {:.1} s for the node to go idle",
        settled.as_secs_f64()
    ));
    progress(&format!(
        "scenario 2: {} queries over {total_n} events, {runs} runs each",
        QUERIES.len()
    ));
    strata.reset_peak_rss();
    let mut strata_times = Vec::new();
    for q in &QUERIES {
        let (secs, rows) = strata.time_query(q.strata, runs).await?;
        progress(&format!(
            "  strata {}: {} ({} rows)",
            q.name,
            ms(secs),
            rows.len()
        ));
        strata_times.push((secs, rows));
    }
    let query_rss = strata.peak_rss();
    progress("scenario 2 peer: DuckDB over Parquet and over NDJSON");
    let duck = duckdb_peer(&args, &events_path, runs).await?;
    let mut rows_out = Vec::new();
    let mut notes = Vec::new();
    for (q, (secs, rows)) in QUERIES.iter().zip(&strata_times) {
        let parquet = duck["parquet"][q.name]["seconds"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let ndjson = duck["ndjson"][q.name]["seconds"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let ratio = secs / parquet;
        rows_out.push(row(
            q.what,
            ms(*secs),
            format!("{} (NDJSON: {})", ms(parquet), ms(ndjson)),
            Some(ratio),
            "≤ 1.25× Parquet",
            Some(ratio <= 1.25),
        ));
        // Sanity: both engines must agree on the answer's size, and on counts exactly.
        let duck_rows = duck["parquet"][q.name]["rows"].as_u64().unwrap_or(0);
        let duck_first = duck["parquet"][q.name]["first"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let strata_count = rows.first().and_then(|r| r.get("n")).map(|v| v.to_string());
        if duck_rows != rows.len() as u64 || strata_count.is_some_and(|c| c != duck_first) {
            notes.push(format!(
                "result mismatch on {}: strata {} rows (n = {:?}), DuckDB {duck_rows} rows (first value {duck_first})",
                q.name,
                rows.len(),
                rows.first().and_then(|r| r.get("n"))
            ));
        }
    }
    rows_out.push(row(
        "peak RSS of strata over the queries",
        mib(query_rss),
        format!(
            "DuckDB process: {}",
            mib(duck["max_rss_bytes"].as_u64().unwrap_or(0))
        ),
        None,
        "≤ 1 GiB",
        Some(query_rss <= 1 << 30),
    ));
    notes.push(format!(
        "DuckDB {} with {} threads; exporting the NDJSON to Parquet took {:.1} s. Figures are medians of {runs} runs after a warm-up, measured by each client end to end (strata: HTTP request to last byte of the Arrow IPC answer). strata's queries start once the node has gone idle after the restart (background LSM compaction of the bulk load settled; waited {:.1} s).",
        duck["version"].as_str().unwrap_or("?"),
        duck["threads"],
        duck["export_seconds"].as_f64().unwrap_or(0.0),
        settled.as_secs_f64()
    ));
    sections.push(Section {
        title: format!("2. SQL analytics over {total_n} stored events"),
        peer: "DuckDB (PyPI) over the same events exported to Parquet, and over the NDJSON".into(),
        rows: rows_out,
        notes,
    });

    // 3. Replay.
    progress(&format!("scenario 3: replaying {total_n} events over HTTP"));
    strata.reset_peak_rss();
    let (replay_secs, replay_lines, replay_bytes) = strata.replay_all().await?;
    let replay_rss = strata.peak_rss();
    progress("scenario 3 peer: reading the NDJSON file");
    let (peer_secs, peer_lines, peer_bytes) = read_file_peer(&events_path)?;
    let ratio = (replay_lines as f64 / replay_secs) / (peer_lines as f64 / peer_secs);
    sections.push(Section {
        title: format!("3. Replay of all {total_n} events from offset 0 over HTTP"),
        peer:
            "reading the same events as NDJSON from a file (1 MiB buffered reads, counting lines)"
                .into(),
        rows: vec![
            row(
                "events/s",
                rate(replay_lines as f64, replay_secs),
                rate(peer_lines as f64, peer_secs),
                Some(ratio),
                "≥ 0.5×",
                Some(ratio >= 0.5),
            ),
            row(
                "MB/s",
                format!("{:.0}", replay_bytes as f64 / replay_secs / 1e6),
                format!("{:.0}", peer_bytes as f64 / peer_secs / 1e6),
                None,
                "",
                None,
            ),
            row(
                "events returned",
                replay_lines.to_string(),
                peer_lines.to_string(),
                None,
                "all",
                Some(replay_lines == total_n),
            ),
            row("peak RSS of strata", mib(replay_rss), "", None, "", None),
        ],
        notes: vec![],
    });

    sections.push(
        views::scenario(
            args.quick,
            &args.work,
            &events_path,
            &strata,
            early_lookup,
            total_n,
            ingest_rate,
        )
        .await?,
    );

    let data_size = dir_size(&args.work.join("data"));
    strata.stop();

    // 5. The Kafka path, with the main node stopped so that both sides have the machine.
    if let Some(brokers) = &args.kafka_brokers {
        let kafka_n = args
            .kafka_events
            .unwrap_or(if args.quick { 5_000 } else { 500_000 })
            .min(total_n);
        sections.push(kafka::scenario(&args, brokers, &events_path, kafka_n).await?);
    }

    sections.sort_by(|a, b| a.title.cmp(&b.title));
    let report = render(
        &args,
        &sections,
        total_n,
        events_bytes,
        data_size,
        started.elapsed(),
    );
    std::fs::write(&args.out, &report).map_err(|e| format!("{}: {e}", args.out.display()))?;
    println!("{report}");
    progress(&format!("report written to {}", args.out.display()));
    Ok(())
}

/// Writes events `0..n` as NDJSON; returns the file size.
fn generate(path: &Path, n: u64) -> Result<u64> {
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut line = String::with_capacity(512);
    let mut bytes = 0u64;
    for i in 0..n {
        line.clear();
        data::write_event(i, n, &mut line);
        bytes += line.len() as u64;
        out.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// The first `n` lines of `path` as request bodies of [`BATCH`] lines.
fn read_batches(path: &Path, n: u64) -> Result<Vec<String>> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut batches = Vec::new();
    let mut body = String::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        if i as u64 >= n {
            break;
        }
        body.push_str(&line.map_err(|e| e.to_string())?);
        body.push('\n');
        if (i as u64 + 1).is_multiple_of(BATCH) {
            batches.push(std::mem::take(&mut body));
        }
    }
    if !body.is_empty() {
        batches.push(body);
    }
    Ok(batches)
}

/// Appends each batch to a file and fdatasyncs it, like a durable log with one writer would.
fn fdatasync_peer(path: &Path, batches: &[String]) -> Result<Duration> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    for b in batches {
        file.write_all(b.as_bytes()).map_err(|e| e.to_string())?;
        file.sync_data().map_err(|e| e.to_string())?;
    }
    let elapsed = started.elapsed();
    let _ = std::fs::remove_file(path);
    Ok(elapsed)
}

/// Reads the NDJSON file counting lines; returns time, lines and bytes.
fn read_file_peer(path: &Path) -> Result<(f64, u64, u64)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut lines, mut bytes) = (0u64, 0u64);
    let started = Instant::now();
    loop {
        let n = file.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
    Ok((started.elapsed().as_secs_f64(), lines, bytes))
}

async fn duckdb_peer(args: &Args, events: &Path, runs: usize) -> Result<serde_json::Value> {
    let script = args.work.join("duckdb_peer.py");
    std::fs::write(&script, include_str!("duckdb_peer.py")).map_err(|e| e.to_string())?;
    let queries: serde_json::Map<String, serde_json::Value> = QUERIES
        .iter()
        .map(|q| (q.name.to_owned(), q.duckdb.into()))
        .collect();
    let ndjson_runs = 1;
    let output = tokio::process::Command::new(&args.python)
        .arg(&script)
        .arg(events)
        .arg(args.work.join("orders.parquet"))
        .arg(runs.to_string())
        .arg(serde_json::Value::Object(queries).to_string())
        .arg(ndjson_runs.to_string())
        .output()
        .await
        .map_err(|e| {
            format!(
                "cannot run {} (a Python with duckdb; scripts/bench.sh makes one): {e}",
                args.python.display()
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "the DuckDB peer failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("the DuckDB peer printed no JSON: {e}"))
}

fn dir_size(path: &Path) -> u64 {
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

fn machine() -> String {
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

fn render(
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
