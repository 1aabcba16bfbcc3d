//! Scenario 6: materialized views.
//!
//! In process, on one core: folding batches of stored events into a view (count/sum by key)
//! against recomputing the same SELECT with DataFusion over all events after every batch, and the
//! cost a view adds to store commits. Through the server: append → visible-in-view latency at half
//! the ingest rate, key lookups as the stream grows, and folding a view's past (backfill).

use crate::server::Strata;
use crate::{Result, Row, Section, ms, progress, rate, row};
use arrow::array::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_proto::{Record, StreamInfo, StreamName};
use strata_store::{ScanRequest, Store, StoreConfig, ViewFold};
use strata_views::ViewPlan;
use strata_views::materialized::Maintainer;

/// The view the scenario maintains: count and sum by key (100,000 customers).
pub const BY_CUSTOMER: &str = "SELECT key AS customer, count(*) AS orders, sum(json_get_float(data, 'amount')) AS revenue FROM orders GROUP BY key";
const BY_COUNTRY: &str = "SELECT json_get_str(data, 'country') AS country, count(*) AS orders, sum(json_get_float(data, 'amount')) AS revenue FROM orders GROUP BY 1";
const COMMIT: usize = 8192;

/// The first `n` events of the data set, decoded as an append decodes them, as partition 0's
/// records.
fn records(events: &Path, n: u64) -> Result<Vec<Record>> {
    let events = crate::kafka::decode(&crate::read_batches(events, n)?)?;
    Ok(events
        .into_iter()
        .enumerate()
        .map(|(offset, event)| Record {
            partition: 0,
            offset: offset as u64,
            event,
        })
        .collect())
}

fn open_store(dir: &Path) -> Result<Arc<Store>> {
    let store = Store::open(dir, StoreConfig::default()).map_err(|e| e.to_string())?;
    let name = StreamName::new("orders").map_err(|e| e.to_string())?;
    let info = StreamInfo {
        name: name.clone(),
        partitions: 1,
        fields: vec![],
    };
    store.set_catalog(Arc::new(BTreeMap::from([(name, info)])));
    Ok(store)
}

/// Commits `records` in commits of [`COMMIT`]; returns the time taken.
fn commit_all(store: &Store, records: &[Record]) -> Result<Duration> {
    let stream = StreamName::new("orders").map_err(|e| e.to_string())?;
    let started = Instant::now();
    for chunk in records.chunks(COMMIT) {
        store
            .commit(&stream, 0, chunk.to_vec())
            .map_err(|e| e.to_string())?;
    }
    Ok(started.elapsed())
}

fn context(batches: Vec<RecordBatch>) -> Result<SessionContext> {
    let mut ctx = SessionContext::new_with_config(
        datafusion::prelude::SessionConfig::new().with_target_partitions(1),
    );
    datafusion_functions_json::register_all(&mut ctx).map_err(|e| e.to_string())?;
    let table = MemTable::try_new(strata_store::schema::table_schema(), vec![batches])
        .map_err(|e| e.to_string())?;
    ctx.register_table("orders", Arc::new(table))
        .map_err(|e| e.to_string())?;
    Ok(ctx)
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn lookups(strata: &Strata, n: usize) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let customer = format!("c{:06}", (i as u64 * 7919) % crate::data::CUSTOMERS);
        let started = Instant::now();
        let rows = strata
            .sql(&format!(
                "SELECT * FROM by_customer WHERE customer = '{customer}'"
            ))
            .await?;
        times.push(started.elapsed());
        if rows.len() > 1 {
            return Err(format!("lookup of {customer} returned {} rows", rows.len()));
        }
    }
    times.sort();
    Ok(times)
}

/// Waits until every view is ready with no lag; returns how long that took.
pub async fn wait_views(strata: &Strata, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let views: Vec<serde_json::Value> = strata.get_json("/v1/views").await?;
        if views
            .iter()
            .all(|v| v["status"] == "ready" && v["lag"] == 0)
        {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err("views did not catch up".into())
}

/// Key lookups at the stream's size now (run once when the view is created, once at the end).
pub async fn lookup_p99(strata: &Strata, quick: bool) -> Result<Duration> {
    let times = lookups(strata, if quick { 50 } else { 1000 }).await?;
    Ok(percentile(&times, 0.99))
}

/// The in-process part: folding against recomputation, and the view's cost in store commits.
/// Returns the report rows and the number of events used.
pub async fn in_process(
    quick: bool,
    work: &Path,
    events: &Path,
    total_n: u64,
) -> Result<(Vec<Row>, u64)> {
    let n = if quick { 20_000 } else { 1_000_000 }.min(total_n);
    progress(&format!("scenario 6: views, in process over {n} events"));
    let records = records(events, n)?;
    // Store commits without and with the view.
    let plain = open_store(&work.join("views-plain"))?;
    let plain_time = commit_all(&plain, &records)?;
    let with_view = open_store(&work.join("views-with"))?;
    let ctx = context(vec![])?;
    let plan = Arc::new(
        ViewPlan::new(&ctx, BY_CUSTOMER)
            .await
            .map_err(|e| e.to_string())?,
    );
    let stream = StreamName::new("orders").map_err(|e| e.to_string())?;
    with_view
        .create_view(
            "by_customer",
            &stream,
            BY_CUSTOMER,
            false,
            Arc::new(Maintainer(plan.clone())),
        )
        .map_err(|e| e.to_string())?;
    let view_time = commit_all(&with_view, &records)?;

    // The stored events as the table's batches, in commit-sized pieces.
    let scan = plain
        .scan(
            &stream,
            0,
            ScanRequest {
                projection: (0..strata_store::schema::FIELDS).collect(),
                ..ScanRequest::all()
            },
        )
        .map_err(|e| e.to_string())?;
    let mut batches = Vec::new();
    for b in scan {
        let b = b.map_err(|e| e.to_string())?;
        let mut at = 0;
        while at < b.num_rows() {
            let len = COMMIT.min(b.num_rows() - at);
            batches.push(b.slice(at, len));
            at += len;
        }
    }

    // The stores' background work stops before the in-memory part is timed.
    drop((plain, with_view));

    // Folding only (delta + merge into the stored encoding), one core.
    let maintainer = Maintainer(plan.clone());
    let mut groups: ahash::AHashMap<Vec<u8>, Vec<u8>> = Default::default();
    let started = Instant::now();
    for b in &batches {
        let updates = maintainer
            .fold(b, &mut |k| Ok(groups.get(k).cloned()))
            .map_err(|e| e.to_string())?;
        groups.extend(updates);
    }
    let fold_time = started.elapsed();

    // Recomputing the SELECT over every event so far after each batch.
    progress(&format!(
        "scenario 6 peer: recomputing the view with DataFusion after each of {} batches",
        batches.len()
    ));
    let started = Instant::now();
    for i in 0..batches.len() {
        let ctx = context(batches[..=i].to_vec())?;
        let rows = ctx
            .sql(BY_CUSTOMER)
            .await
            .map_err(|e| e.to_string())?
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        if i + 1 == batches.len() {
            let total: usize = rows.iter().map(|b| b.num_rows()).sum();
            if total != groups.len() {
                return Err(format!(
                    "recomputation has {total} groups, the view {}",
                    groups.len()
                ));
            }
        }
    }
    let recompute_time = started.elapsed();

    let per_event = |d: Duration| d.as_secs_f64() / n as f64;
    let overhead = (per_event(view_time) - per_event(plain_time)).max(1e-12);
    let fold_rate = n as f64 / fold_time.as_secs_f64();
    let cheaper = recompute_time.as_secs_f64() / fold_time.as_secs_f64();
    let rows = vec![
        row(
            "fold into a count/sum-by-key view (100k groups), events/s on one core",
            rate(n as f64, fold_time.as_secs_f64()),
            "",
            None,
            "≥ 1M/s",
            Some(fold_rate >= 1e6),
        ),
        row(
            format!(
                "keeping the view over {} batches of {COMMIT}: fold vs recompute the SELECT after each",
                batches.len()
            ),
            ms(fold_time.as_secs_f64()),
            ms(recompute_time.as_secs_f64()),
            Some(1.0 / cheaper),
            "≥ 10× cheaper (≤ 0.1×)",
            Some(cheaper >= 10.0),
        ),
        row(
            "store commits without a view → with it, events/s (the view's cost in the commit)",
            format!(
                "{} → {}",
                rate(n as f64, plain_time.as_secs_f64()),
                rate(n as f64, view_time.as_secs_f64())
            ),
            "",
            None,
            "",
            None,
        ),
        row(
            "view maintenance inside store commits, events/s of added cost",
            rate(1.0, overhead),
            "",
            None,
            "",
            None,
        ),
    ];
    Ok((rows, n))
}

/// The in-process part and the server part; `strata` holds `total_n` events and the
/// `by_customer` view, created when it held `early_n` events (its lookup p99 then: `early_p99`).
pub async fn scenario(
    quick: bool,
    work: &Path,
    events: &Path,
    strata: &Strata,
    (early_n, early_p99): (u64, Duration),
    total_n: u64,
    ingest_rate: f64,
) -> Result<Section> {
    // The node's background work would share the cores with the in-process part.
    strata.wait_idle(Duration::from_secs(120)).await;
    let (mut rows, n) = in_process(quick, work, events, total_n).await?;

    // Through the server: append → visible in the view at half the ingest rate.
    let target = (ingest_rate / 2.0).max(1000.0);
    let seconds = if quick { 2.0 } else { 10.0 };
    progress(&format!(
        "scenario 6: append → visible latency at {target:.0} events/s for {seconds} s"
    ));
    let latencies = strata
        .paced_appends_visible(total_n, target, seconds)
        .await?;
    let backfill = {
        progress("scenario 6: creating a view over every stored event (backfill)");
        let started = Instant::now();
        strata
            .sql(&format!(
                "CREATE MATERIALIZED VIEW by_country AS {BY_COUNTRY}"
            ))
            .await?;
        wait_views(strata, Duration::from_secs(1800)).await?;
        started.elapsed()
    };
    // Lookups are timed on a node done with background work (compaction after the backfill).
    strata.wait_idle(Duration::from_secs(300)).await;
    let late_p99 = lookup_p99(strata, quick).await?;

    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    let stored_after = total_n + latencies.len() as u64 * 100;
    rows.extend([
        row(
            format!(
                "append → visible in the view, p50 / p99, at {target:.0} events/s (half the ingest rate)"
            ),
            format!("{} / {}", ms(p50.as_secs_f64()), ms(p99.as_secs_f64())),
            "",
            None,
            "p99 ≤ 50 ms",
            Some(p99 <= Duration::from_millis(50)),
        ),
        row(
            format!("view lookup by key, p99 (over HTTP), at {early_n} → {stored_after} events"),
            format!(
                "{} → {}",
                ms(early_p99.as_secs_f64()),
                ms(late_p99.as_secs_f64())
            ),
            "",
            None,
            "< 1 ms, flat",
            Some(late_p99 < Duration::from_millis(1) && early_p99 < Duration::from_millis(1)),
        ),
        row(
            format!("backfill: a new view over {stored_after} stored events, until ready"),
            ms(backfill.as_secs_f64()),
            "",
            None,
            "",
            None,
        ),
        row(
            "backfill rate, events/s",
            rate(stored_after as f64, backfill.as_secs_f64()),
            "",
            None,
            "",
            None,
        ),
    ]);
    Ok(Section {
        title: format!("6. Materialized views: count/sum by key, {n} events in process; latency, lookups and backfill through the server"),
        peer: "DataFusion recomputing the same SELECT over all events after every batch (in process, one partition)".into(),
        rows,
        notes: vec![
            "The lookup figure is the whole HTTP round trip of `POST /v1/sql` (parse, plan, point read, JSON answer).".into(),
        ],
    })
}
