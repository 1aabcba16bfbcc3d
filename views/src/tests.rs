//! SQL over a real store.

use crate::{Error, SqlEngine};
use arrow::array::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use futures::TryStreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use strata_proto::{Event, Record, StreamInfo, StreamName};
use strata_store::{Store, StoreConfig};

fn setup(dir: &std::path::Path) -> (Arc<Store>, SqlEngine) {
    let store = Store::open(
        dir,
        StoreConfig {
            block_rows: 5,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let name = StreamName::new("orders").unwrap();
    store.set_catalog(Arc::new(BTreeMap::from([(
        name.clone(),
        StreamInfo {
            name: name.clone(),
            partitions: 2,
            fields: vec![],
        },
    )])));
    for p in 0..2u32 {
        let records = (0..12u64)
            .map(|o| Record {
                partition: p,
                offset: o,
                event: Event {
                    time_ms: 1_714_521_600_000 + (o as i64) * 1_800_000, // 2024-05-01, every 30 min
                    key: Some(format!("c{}", o % 3)),
                    id: None,
                    event_type: Some("order".into()),
                    data: format!(
                        "{{\"country\":\"{}\",\"amount\":{}}}",
                        if o % 2 == 0 { "NL" } else { "DE" },
                        o + u64::from(p)
                    ),
                    condition: None,
                },
            })
            .collect();
        store.commit(&name, p, records).unwrap();
    }
    let engine = SqlEngine::new(store.clone(), None).unwrap();
    (store, engine)
}

async fn run(engine: &SqlEngine, sql: &str) -> Result<Vec<RecordBatch>, Error> {
    let out = engine.query(sql).await?;
    out.batches.try_collect().await.map_err(Error::from)
}

async fn table(engine: &SqlEngine, sql: &str) -> String {
    let batches = run(engine, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pretty_format_batches(&batches).unwrap().to_string()
}

#[tokio::test]
async fn aggregates_json_and_time_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, engine) = setup(dir.path());
    assert!(
        table(&engine, "SELECT count(*) AS n FROM orders")
            .await
            .contains("| 24 |")
    );
    let by_country = table(&engine, "SELECT json_get_str(data, 'country') AS country, count(*) AS n, sum(json_get_int(data, 'amount')) AS total FROM orders GROUP BY 1 ORDER BY 1").await;
    assert!(
        by_country.contains("| DE      | 12 | 78    |"),
        "{by_country}"
    );
    assert!(
        by_country.contains("| NL      | 12 | 66    |"),
        "{by_country}"
    );
    let hourly = table(&engine, "SELECT date_bin(INTERVAL '1 hour', time) AS hour, count(*) AS n FROM orders GROUP BY 1 ORDER BY 1 LIMIT 2").await;
    assert!(hourly.contains("2024-05-01T00:00:00Z | 4 "), "{hourly}");
    let one = table(&engine, "SELECT partition, \"offset\", key, type FROM orders WHERE partition = 1 AND \"offset\" BETWEEN 6 AND 7 AND key = 'c0'").await;
    assert!(
        one.contains("| 1         | 6      | c0  | order |"),
        "{one}"
    );
    assert_eq!(one.lines().count(), 5, "{one}");
    let ranged = table(&engine, "SELECT count(*) AS n FROM orders WHERE time >= '2024-05-01T02:00:00Z' AND time < '2024-05-01T03:00:00Z'").await;
    assert!(ranged.contains("| 4 |"), "{ranged}");
    let tables = table(&engine, "SHOW TABLES").await;
    assert!(tables.contains("orders"), "{tables}");
}

#[tokio::test]
async fn filters_reach_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, engine) = setup(dir.path());
    let plan = table(&engine, "EXPLAIN SELECT data FROM orders WHERE partition = 1 AND \"offset\" > 3 AND time < '2024-05-02T00:00:00Z' AND key = 'c1'").await;
    // Only shard 1 is scanned, with the offset, time and key bounds.
    // The filters are applied exactly by the scan: no FilterExec above it, and only `data` read.
    assert!(plan.contains("StreamScanExec: stream=orders, shards=[1], projection=[data], offsets=4..18446744073709551615, time=[, 2024-05-01T23:59:59.999Z], key=\"c1\""), "{plan}");
    assert!(!plan.contains("FilterExec"), "{plan}");
}

#[tokio::test]
async fn writes_and_file_access_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, engine) = setup(dir.path());
    for sql in [
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
        "COPY (SELECT 1) TO '/tmp/x.csv'",
        "CREATE TABLE t AS SELECT 1",
        "CREATE VIEW v AS SELECT 1",
        "INSERT INTO orders VALUES (1)",
        "DROP TABLE orders",
        "SET datafusion.execution.batch_size = 1",
        "EXPLAIN COPY (SELECT 1) TO '/tmp/x.csv'",
    ] {
        match run(&engine, sql).await {
            Err(Error::ReadOnly(msg)) => assert!(msg.contains("not allowed"), "{sql}: {msg}"),
            other => panic!("{sql}: {:?}", other.map(|b| b.len())),
        }
    }
    for sql in [
        "SELECT * FROM 'data.parquet'",
        "SELECT * FROM nope",
        "SELEC 1",
        "SELECT nope FROM orders",
    ] {
        assert!(
            matches!(
                run(&engine, sql).await,
                Err(Error::Invalid(_)
                    | Error::Syntax(_)
                    | Error::UnknownTable(_)
                    | Error::UnknownColumn(_))
            ),
            "{sql}"
        );
    }
}

#[tokio::test]
async fn whole_stream_counts_come_from_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, engine) = setup(dir.path());
    let plan = table(&engine, "EXPLAIN SELECT count(*) FROM orders").await;
    assert!(
        !plan.contains("StreamScanExec"),
        "count(*) should not scan:\n{plan}"
    );
    // A partition filter only picks shards: their row counts still answer.
    let one_shard = table(
        &engine,
        "EXPLAIN SELECT count(*) FROM orders WHERE partition = 0",
    )
    .await;
    assert!(!one_shard.contains("StreamScanExec"), "{one_shard}");
    // A filter inside the shards has to scan.
    let filtered = table(
        &engine,
        "EXPLAIN SELECT count(*) FROM orders WHERE offset >= 1",
    )
    .await;
    assert!(filtered.contains("StreamScanExec"), "{filtered}");
    assert!(
        table(
            &engine,
            "SELECT count(*) AS n FROM orders WHERE partition = 0"
        )
        .await
        .contains("| 12 |")
    );
}

#[tokio::test]
async fn exact_pushdown_matches_filtering_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, engine) = setup(dir.path());
    // The same predicates, once pushed into the scan and once hidden from it (`+ 0`, `|| ''`).
    for (pushed, hidden) in [
        (
            "time > '2024-05-01T02:00:00Z' AND time <= '2024-05-01T04:30:00Z'",
            "time + INTERVAL '0 seconds' > '2024-05-01T02:00:00Z' AND time + INTERVAL '0 seconds' <= '2024-05-01T04:30:00Z'",
        ),
        (
            "\"offset\" >= 3 AND \"offset\" < 9 AND partition IN (0, 1)",
            "\"offset\" + 0 >= 3 AND \"offset\" + 0 < 9 AND partition + 0 IN (0, 1)",
        ),
        (
            "key = 'c2' AND time < '2024-05-01T03:00:00.001Z'",
            "key || '' = 'c2' AND time + INTERVAL '0 seconds' < '2024-05-01T03:00:00.001Z'",
        ),
        (
            "time = '2024-05-01T01:30:00Z'",
            "time + INTERVAL '0 seconds' = '2024-05-01T01:30:00Z'",
        ),
    ] {
        let q =
            |w: &str| format!("SELECT partition, \"offset\" FROM orders WHERE {w} ORDER BY 1, 2");
        let a = table(&engine, &q(pushed)).await;
        let b = table(&engine, &q(hidden)).await;
        assert_eq!(a, b, "{pushed}");
        assert!(a.lines().count() > 4, "{pushed} matched nothing:\n{a}");
        let plan = table(&engine, &format!("EXPLAIN {}", q(pushed))).await;
        assert!(
            !plan.contains("FilterExec"),
            "{pushed} was not pushed:\n{plan}"
        );
    }
    let limited = table(&engine, "SELECT \"offset\" FROM orders WHERE partition = 0 AND time >= '2024-05-01T01:00:00Z' LIMIT 3").await;
    assert_eq!(limited.lines().count(), 7, "{limited}");
}

/// A subscription's filter keeps exactly the rows SQL's WHERE keeps, and refuses what is not a
/// scalar boolean expression over the row.
#[tokio::test]
async fn event_filters_match_sql_and_refuse_non_scalar_expressions() {
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = setup(dir.path());
    let name = StreamName::new("orders").unwrap();
    let info = store.stream(&name).unwrap();
    let schema = strata_store::schema::stream_schema(&info);
    let scan = |p| {
        store
            .scan(&name, p, strata_store::ScanRequest::all())
            .unwrap()
            .map(|b| b.unwrap())
            .collect::<Vec<_>>()
    };
    let filter = engine
        .event_filter(
            schema.clone(),
            Some("order"),
            Some("json_get_str(data, 'country') = 'NL' AND \"offset\" > 3"),
        )
        .unwrap()
        .unwrap();
    let kept: usize = scan(0)
        .iter()
        .map(|b| filter.apply(b).unwrap().num_rows())
        .sum();
    // Offsets 4, 6, 8, 10 of partition 0 are in NL.
    assert_eq!(kept, 4);
    let other_type = engine
        .event_filter(schema.clone(), Some("refund"), None)
        .unwrap()
        .unwrap();
    assert!(
        scan(1)
            .iter()
            .all(|b| other_type.apply(b).unwrap().num_rows() == 0)
    );
    assert!(
        engine
            .event_filter(schema.clone(), None, None)
            .unwrap()
            .is_none()
    );
    for (bad, says) in [
        ("country = 'NL'", "country"),
        ("json_get_str(data, 'country')", "boolean"),
        ("\"offset\" IN (SELECT 1)", "subquery"),
        ("count(*) > 1", "aggregate"),
        ("\"offset\" > $1", "placeholder"),
        ("\"offset\" >", ""),
    ] {
        let err = engine
            .event_filter(schema.clone(), None, Some(bad))
            .unwrap_err();
        assert!(err.to_string().contains(says), "{bad}: {err}");
    }
}
