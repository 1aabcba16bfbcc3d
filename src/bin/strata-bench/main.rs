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
//!    the stream grows, backfill;
//! 7. (with a broker) cluster-wide SQL: the scenario 2 queries through three store nodes against
//!    one holding every partition, the traffic between nodes, a view lookup through a node that
//!    holds no partition;
//! 8. analysts' tools: 1M rows through psycopg against a real PostgreSQL, over Flight SQL against
//!    HTTP Arrow IPC and DuckDB over Parquet, psql's connect-to-first-row;
//! 9. subscriptions: append → delivered to a follower at half the ingest rate, fan-out to 100.
//!
//! Writes a markdown report (figures, ratios, goals, machine, date) to `--out`.

mod analysts;
mod cluster;
mod conditional;
mod data;
mod kafka;
mod peers;
mod report;
mod scenarios;
mod server;
mod subscribe;
mod views;

pub(crate) use peers::read_batches;
pub(crate) use report::{Row, Section, mib, ms, progress, rate, row};
use server::Strata;
use std::path::PathBuf;
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
    /// Events of the cluster scenario (default: as many as `--events`; quick 20,000).
    #[arg(long)]
    cluster_events: Option<u64>,
    /// Runs only the in-process part of scenario 6 (view folding against recomputation) and
    /// prints its rows; for profiling.
    #[arg(long)]
    views_in_process_only: bool,
    /// Runs only scenario 1 (durable ingest against its peers) and prints its rows; for profiling.
    #[arg(long)]
    ingest_only: bool,
    /// Runs only scenario 9 (subscriptions) with appends paced at half of this ingest rate
    /// (events/s) and prints its rows; for profiling.
    #[arg(long)]
    subscribe_only: Option<f64>,
    /// Runs only scenario 5 (the Kafka path against a plain rdkafka producer, on
    /// `--kafka-brokers`) and prints its rows; for profiling.
    #[arg(long)]
    kafka_only: bool,
}

const BATCH: u64 = 1000;

/// Events of scenario 5.
fn kafka_events(args: &Args) -> u64 {
    args.kafka_events
        .unwrap_or(if args.quick { 5_000 } else { 500_000 })
}

/// Prints a section's rows, one per line (the `--…-only` runs).
fn print_rows(section: &Section) {
    for r in &section.rows {
        println!("{} | {} | {} | {}", r.metric, r.strata, r.peer, r.ratio);
    }
}
const CLIENTS: u64 = 4;

type Result<T> = std::result::Result<T, String>;

/// strata's allocator, set as the server sets it: the in-process scenarios (the view fold, store
/// commits) and their in-process peer then run on what a node runs on.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Disk a run takes per stored event at its peak (the events file, the node's log and shards,
/// the cluster's nodes, Parquet, PostgreSQL): 1.7 KB in full runs of 10M events.
const DISK_BYTES_PER_EVENT: u64 = 2_000;

/// Refuses to start a run that would fill the disk under `work` part-way (a node on a full disk
/// stops applying, and the scenario waiting on it fails half an hour later).
/// When the file system cannot be asked it says so and lets the run go on.
fn check_free_space(work: &std::path::Path, events: u64) -> Result<()> {
    let free = match rustix::fs::statvfs(work) {
        Ok(fs) => fs.f_bavail.saturating_mul(fs.f_frsize),
        Err(e) => {
            progress(&format!(
                "free disk not checked: statvfs {}: {e}",
                work.display()
            ));
            return Ok(());
        }
    };
    let needed = events.saturating_mul(DISK_BYTES_PER_EVENT);
    if free < needed {
        return Err(format!(
            "{} has {:.1} GB free; a run of {events} events needs about {:.1} GB \
             (free some space, or pass a smaller --events)",
            work.display(),
            free as f64 / 1e9,
            needed as f64 / 1e9
        ));
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    strata::allocator::tune();
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
    check_free_space(&args.work, total_n)?;
    let started = Instant::now();

    progress(&format!("generating {total_n} events"));
    let events_path = args.work.join("events.ndjson");
    let events_bytes = peers::generate(&events_path, total_n)?;
    let mut sections = Vec::new();
    if args.views_in_process_only {
        let (rows, _) = views::in_process(args.quick, &args.work, &events_path, total_n).await?;
        for r in rows {
            println!("{} | {} | {} | {}", r.metric, r.strata, r.peer, r.ratio);
        }
        return Ok(());
    }

    if args.kafka_only {
        let brokers = args
            .kafka_brokers
            .as_deref()
            .ok_or("--kafka-only needs --kafka-brokers (or STRATA_BENCH_KAFKA_BROKERS)")?;
        let kafka_n = kafka_events(&args).min(total_n);
        print_rows(&kafka::scenario(&args, brokers, &events_path, kafka_n).await?);
        return Ok(());
    }

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
    strata.create_orders(4).await?;
    if let Some(rate) = args.subscribe_only {
        print_rows(&subscribe::scenario(&strata, args.quick, rate).await?);
        strata.stop();
        return Ok(());
    }
    let (section, ingest_rate) = scenarios::ingest(&args, &strata, &events_path, ingest_n).await?;
    if args.ingest_only {
        print_rows(&section);
        strata.stop();
        return Ok(());
    }
    sections.push(section);

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

    // 4 runs before 2 and 3: they then measure a node as it serves after a restart, not the
    // allocator's leftovers of the bulk load.
    sections.push(scenarios::recovery(&mut strata, total_n).await?);
    sections.push(scenarios::analytics(&args, &strata, &events_path, total_n, runs).await?);
    sections.push(scenarios::replay(&strata, &events_path, total_n).await?);
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

    // The views scenario's appends leave the node working for a while (views, blocks, compaction);
    // the peer gets a vacuumed table, so strata gets a node that has finished its work.
    strata.wait_idle(Duration::from_secs(300)).await;
    sections.push(analysts::scenario(&args, &strata, total_n, runs).await?);
    strata.wait_idle(Duration::from_secs(300)).await;
    sections.push(subscribe::scenario(&strata, args.quick, ingest_rate).await?);

    let data_size = report::dir_size(&args.work.join("data"));
    strata.stop();

    // 5. The Kafka path, with the main node stopped so that both sides have the machine.
    if let Some(brokers) = &args.kafka_brokers {
        let kafka_n = kafka_events(&args).min(total_n);
        sections.push(kafka::scenario(&args, brokers, &events_path, kafka_n).await?);
        // 7. Cluster-wide SQL, on the same broker.
        let cluster_n = args
            .cluster_events
            .unwrap_or(if args.quick { 20_000 } else { total_n })
            .min(total_n);
        sections.push(cluster::scenario(&args, brokers, &events_path, cluster_n, runs).await?);
    }

    sections.sort_by(|a, b| a.title.cmp(&b.title));
    let report = report::render(
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_run_larger_than_the_free_space_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(super::check_free_space(dir.path(), 1_000).is_ok());
        let e = super::check_free_space(dir.path(), u64::MAX / 4).unwrap_err();
        assert!(e.contains("needs about") && e.contains("--events"), "{e}");
    }
}
