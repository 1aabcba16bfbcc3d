//! The benchmark harness in --quick mode: every scenario and peer runs end to end (not how fast).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn quick_benchmark_runs_every_scenario() {
    let python = std::env::var("STRATA_BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    assert!(
        python.exists(),
        "no Python with duckdb at {} — run the tests through scripts/test.sh, which makes one",
        python.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("BENCHMARKS.md");
    let mut bench = Command::new(env!("CARGO_BIN_EXE_strata-bench"));
    // Scenarios 5 (the Kafka path) and 7 (cluster-wide SQL) run against the suite's broker.
    match crate::common::kafka_brokers() {
        Some(brokers) => bench.env("STRATA_BENCH_KAFKA_BROKERS", brokers),
        None => bench.env_remove("STRATA_BENCH_KAFKA_BROKERS"),
    };
    let status = bench
        .arg("--quick")
        .arg("--strata")
        .arg(env!("CARGO_BIN_EXE_strata"))
        .arg("--python")
        .arg(&python)
        .arg("--work")
        .arg(tmp.path().join("work"))
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "strata-bench --quick failed");
    let report = std::fs::read_to_string(&out).unwrap();
    for needle in [
        "## 1. Durable ingest",
        "events/s until all acknowledged",
        "events/s until all visible",
        "## 2. SQL analytics",
        "`count(*)`",
        "`GROUP BY country`",
        "one-day time-range count",
        "`date_bin` hourly",
        "`GROUP BY customer` top 10",
        "peak RSS of strata over the queries",
        "## 3. Replay",
        "## 4. Recovery",
        "start to healthy",
        "## 6. Materialized views",
        "fold into a count/sum-by-key view",
        "append → visible in the view",
        "view lookup by key, p99",
        "backfill rate",
        "## 8. Analysts' tools",
        "rows through psycopg 3 (text), strata vs PostgreSQL",
        "rows over Flight SQL (pyarrow.flight) vs HTTP Arrow IPC",
        "rows over Flight SQL through ADBC",
        "connect to first row (libpq through psycopg)",
        "psql process: start, connect, first row, exit",
        "## 9. Subscriptions",
        "append → delivered to a subscriber, p50 / p99",
        "fan-out: server CPU per delivered event",
    ] {
        assert!(
            report.contains(needle),
            "the report lacks {needle:?}:\n{report}"
        );
    }
    assert!(
        !report.contains("result mismatch"),
        "strata and DuckDB disagree:\n{report}"
    );
    assert!(
        report.contains("| events returned | 60000 | 60000 |"),
        "{report}"
    );
    if crate::common::kafka_brokers().is_some() {
        assert!(report.contains("## 5. Kafka path"), "{report}");
        for needle in [
            "## 7. Cluster-wide SQL",
            "(3 store nodes vs 1)",
            "moved between nodes: rows / bytes",
            "view point lookup p99 through the ingest node",
            "Estimate at 10× the data",
        ] {
            assert!(
                report.contains(needle),
                "the report lacks {needle:?}:\n{report}"
            );
        }
    }
}
