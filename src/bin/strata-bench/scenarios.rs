//! Scenarios 1 to 4: durable ingest, SQL analytics, replay and recovery (5 is in `kafka.rs`,
//! 6 in `views.rs`). Each runs against a live node and its peer and returns its report section.

use crate::peers::{
    arrow_bodies, duckdb_peer, fdatasync_peer, python_peer, read_batches, read_file_peer,
};
use crate::report::{Section, mib, ms, progress, rate, row};
use crate::server::Strata;
use crate::{Args, BATCH, CLIENTS, Result};
use std::path::Path;
use std::time::Duration;

/// One query of scenario 2, in strata's SQL and in DuckDB's.
pub(crate) struct Query {
    pub(crate) name: &'static str,
    pub(crate) what: &'static str,
    pub(crate) strata: &'static str,
    pub(crate) duckdb: &'static str,
}

pub(crate) const QUERIES: [Query; 5] = [
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

/// Scenario 1, durable ingest of the first `ingest_n` events against append + fdatasync;
/// returns the section and strata's acknowledged rate (events/s).
pub(crate) async fn ingest(
    args: &Args,
    strata: &Strata,
    events_path: &Path,
    ingest_n: u64,
) -> Result<(Section, f64)> {
    let batches = read_batches(events_path, ingest_n)?;
    let ingest_bytes: usize = batches.iter().map(String::len).sum();
    strata.reset_peak_rss();
    progress(&format!(
        "scenario 1: ingesting {ingest_n} events, {BATCH} per request from {CLIENTS} clients"
    ));
    let cpu_before = strata.cpu_split().await?;
    let acked = strata
        .append_concurrently(&batches, CLIENTS as usize)
        .await?;
    let visible = strata
        .wait_count(ingest_n, Duration::from_secs(600))
        .await?;
    let cpu_after = strata.cpu_split().await?;
    let store_cpu = cpu_after.1 - cpu_before.1;
    let ingest_cpu = (cpu_after.0 - cpu_before.0) - store_cpu;
    let per_event_us = |seconds: f64| format!("{:.2}", seconds * 1e6 / ingest_n as f64);
    let ingest_rss = strata.peak_rss();
    progress("scenario 1 peer: append + fdatasync of the same batches to a file");
    let peer = fdatasync_peer(&args.work.join("peer.log"), &batches)?;
    progress("scenario 1: the same events as Arrow IPC appends");
    let bodies = arrow_bodies(&batches)?;
    let arrow = strata
        .post_concurrently("orders_arrow", bodies, ARROW_STREAM, CLIENTS as usize)
        .await?;
    // The store catches up first, so that PostgreSQL has the cores to itself.
    strata
        .wait_count_of("orders_arrow", ingest_n, Duration::from_secs(600))
        .await?;
    progress("scenario 1 peer: PostgreSQL COPY of the same events, fsync on");
    let postgres = postgres_copy(args, &batches).await?;
    drop(batches);
    let (acked_s, visible_s, peer_s) = (
        acked.as_secs_f64(),
        (acked + visible).as_secs_f64(),
        peer.as_secs_f64(),
    );
    let ratio = (ingest_n as f64 / acked_s) / (ingest_n as f64 / peer_s);
    let section = Section {
        title: format!(
            "1. Durable ingest: {ingest_n} events over HTTP, {BATCH} per request, {CLIENTS} concurrent clients"
        ),
        peer:
            "append + fdatasync of the same bytes in the same batches to a plain file, one writer"
                .into(),
        rows: vec![
            row(
                "events/s until all acknowledged",
                rate(ingest_n as f64, acked_s),
                rate(ingest_n as f64, peer_s),
                Some(ratio),
                "≥ 0.5×",
                Some(ratio >= 0.5),
            ),
            row(
                "events/s until all visible to `count(*)`",
                rate(ingest_n as f64, visible_s),
                "",
                Some((ingest_n as f64 / visible_s) / (ingest_n as f64 / peer_s)),
                "",
                None,
            ),
            row(
                "MB/s of request bodies until acknowledged",
                format!("{:.1}", ingest_bytes as f64 / acked_s / 1e6),
                format!("{:.1}", ingest_bytes as f64 / peer_s / 1e6),
                None,
                "",
                None,
            ),
            row(
                "events/s until all acknowledged, against PostgreSQL `COPY` (peer column)",
                rate(ingest_n as f64, acked_s),
                rate(ingest_n as f64, postgres),
                Some(postgres / acked_s),
                "≥ 2×",
                Some(postgres / acked_s >= 2.0),
            ),
            row(
                "events/s until all visible, against PostgreSQL `COPY`",
                rate(ingest_n as f64, visible_s),
                rate(ingest_n as f64, postgres),
                Some(postgres / visible_s),
                "≥ 1.5×",
                Some(postgres / visible_s >= 1.5),
            ),
            row(
                "Arrow IPC appends: events/s until acknowledged, against PostgreSQL `COPY`",
                rate(ingest_n as f64, arrow.as_secs_f64()),
                rate(ingest_n as f64, postgres),
                Some(postgres / arrow.as_secs_f64()),
                "≥ 5×",
                Some(postgres / arrow.as_secs_f64() >= 5.0),
            ),
            row(
                "Arrow IPC appends against NDJSON appends (peer column: NDJSON)",
                rate(ingest_n as f64, arrow.as_secs_f64()),
                rate(ingest_n as f64, acked_s),
                Some(acked_s / arrow.as_secs_f64()),
                "",
                None,
            ),
            row(
                "CPU µs per event, write path (HTTP, decoding, dedupe, log append)",
                per_event_us(ingest_cpu),
                "",
                None,
                "",
                None,
            ),
            row(
                "CPU µs per event, store path (commits, blocks, fjall flushes and compactions)",
                per_event_us(store_cpu),
                "",
                None,
                "",
                None,
            ),
            row("peak RSS of strata", mib(ingest_rss), "", None, "", None),
        ],
        notes: vec![],
    };

    Ok((section, ingest_n as f64 / acked_s))
}

const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// PostgreSQL (fsync on) loading the same events with `CLIENTS` parallel `COPY` streams into
/// `orders (seq bigserial primary key, id text unique, key text, type text, time_ms bigint,
/// data jsonb)`; returns its seconds.
async fn postgres_copy(args: &Args, batches: &[String]) -> Result<f64> {
    let mut files = Vec::new();
    for c in 0..CLIENTS as usize {
        let path = args.work.join(format!("copy-{c}.ndjson"));
        let share: String = batches
            .iter()
            .skip(c)
            .step_by(CLIENTS as usize)
            .map(String::as_str)
            .collect();
        std::fs::write(&path, share).map_err(|e| e.to_string())?;
        files.push(path.into_os_string());
    }
    let mut argv = vec![CLIENTS.to_string().into()];
    argv.extend(files.iter().cloned());
    let out = python_peer(
        args,
        "ingest_peer.py",
        include_str!("ingest_peer.py"),
        &argv,
    )
    .await;
    for f in files {
        let _ = std::fs::remove_file(f);
    }
    let out = out?;
    out["seconds"]
        .as_f64()
        .ok_or_else(|| format!("the PostgreSQL peer printed {out}"))
}

/// Scenario 4, recovery: `kill -9`, then the time to healthy and to every event queryable.
pub(crate) async fn recovery(strata: &mut Strata, total_n: u64) -> Result<Section> {
    progress("scenario 4: kill -9 and restart");
    strata.kill9();
    let (healthy, queryable) = strata.restart_timed(total_n).await?;
    Ok(Section {
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
    })
}

/// Scenario 2, SQL analytics on a node that is done with background work (as DuckDB is), against DuckDB.
pub(crate) async fn analytics(
    args: &Args,
    strata: &Strata,
    events_path: &Path,
    total_n: u64,
    runs: usize,
) -> Result<Section> {
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
    let duck = duckdb_peer(args, events_path, runs).await?;
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
    Ok(Section {
        title: format!("2. SQL analytics over {total_n} stored events"),
        peer: "DuckDB (PyPI) over the same events exported to Parquet, and over the NDJSON".into(),
        rows: rows_out,
        notes,
    })
}

/// Scenario 3, replay of every stored event over HTTP against reading the NDJSON file.
pub(crate) async fn replay(strata: &Strata, events_path: &Path, total_n: u64) -> Result<Section> {
    progress(&format!("scenario 3: replaying {total_n} events over HTTP"));
    strata.reset_peak_rss();
    let (replay_secs, replay_lines, replay_bytes) = strata.replay_all().await?;
    let replay_rss = strata.peak_rss();
    progress("scenario 3 peer: reading the NDJSON file");
    let (peer_secs, peer_lines, peer_bytes) = read_file_peer(events_path)?;
    let ratio = (replay_lines as f64 / replay_secs) / (peer_lines as f64 / peer_secs);
    Ok(Section {
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
    })
}
