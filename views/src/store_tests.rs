//! Property test of materialized views through the real store: random events committed in random
//! batches, the view created at a random point (its past folded by catch-up), restarts at random
//! points (the store reopened from disk, the log redelivering from an earlier offset, commits made
//! before the view is loaded again); after every run the view equals the same SELECT computed by
//! DataFusion over the stream table.

use crate::ShardSource;
use crate::SqlEngine;
use crate::materialized_tests::{Ev, VIEWS, event, rows_text};
use datafusion::common::ScalarValue;
use futures::TryStreamExt;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use strata_proto::{Event, Record, StreamInfo, StreamName};
use strata_store::{Store, StoreConfig};

fn open(dir: &std::path::Path) -> (Arc<Store>, Arc<SqlEngine>) {
    let store = Store::open(
        dir,
        StoreConfig {
            block_rows: 16,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let name = StreamName::new("s").unwrap();
    let info = StreamInfo {
        name: name.clone(),
        partitions: 3,
        fields: vec![],
    };
    store.set_catalog(Arc::new(BTreeMap::from([(name, info)])));
    let engine = Arc::new(SqlEngine::new(store.clone(), None).unwrap());
    (store, engine)
}

async fn rows(engine: &SqlEngine, sql: &str) -> Vec<String> {
    let out = engine.query(sql).await.unwrap();
    let batches: Vec<_> = out.batches.try_collect().await.unwrap();
    rows_text(&batches)
}

/// The log: every partition's records, in offset order.
fn log_of(events: &[(Ev, Option<String>)]) -> Vec<Vec<Record>> {
    let mut log = vec![Vec::new(); 3];
    for (e, id) in events {
        let p = e.partition as usize;
        let offset = log[p].len() as u64;
        log[p].push(Record {
            partition: p as u32,
            offset,
            event: Event {
                time_ms: e.time,
                key: e.key.clone(),
                id: id.clone(),
                event_type: None,
                data: e.data.clone(),
                condition: None,
            },
        });
    }
    log
}

async fn create(engine: &SqlEngine) {
    for (i, sql) in VIEWS.iter().enumerate() {
        let ddl = format!("CREATE MATERIALIZED VIEW v{i} AS {sql}");
        engine.query(&ddl).await.unwrap();
    }
}

#[derive(Clone, Debug)]
enum Step {
    /// Commit up to this many more records of a partition.
    Commit(usize, usize),
    /// Restart: reopen the store; the log redelivers from this many records before the shard's
    /// offset; commits may come before the views are loaded again.
    Restart(usize, bool),
    /// Let the background catch-up run.
    CatchUp,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0usize..3, 1usize..40).prop_map(|(p, n)| Step::Commit(p, n)),
        1 => (0usize..20, any::<bool>()).prop_map(|(back, load)| Step::Restart(back, load)),
        1 => Just(Step::CatchUp),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    #[test]
    fn views_survive_restarts_and_equal_recomputation(
        events in prop::collection::vec((event(), prop::option::of(0u8..40)), 0..150),
        steps in prop::collection::vec(step(), 1..25),
        create_at in 0usize..25,
    ) {
        let events: Vec<(Ev, Option<String>)> = events
            .into_iter()
            .map(|(e, id)| (e, id.map(|i| format!("id{i}"))))
            .collect();
        let log = log_of(&events);
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let (mut store, mut engine) = open(dir.path());
            let mut created = false;
            let all_steps = steps.iter().cloned().chain((0..3).map(|p| Step::Commit(p, usize::MAX)));
            for (i, step) in all_steps.enumerate() {
                if i == create_at && !created {
                    create(&engine).await;
                    created = true;
                }
                match step {
                    Step::Commit(p, n) => {
                        let from = store.next_offset(&StreamName::new("s").unwrap(), p as u32).unwrap() as usize;
                        let records: Vec<Record> = log[p].iter().skip(from).take(n).cloned().collect();
                        if !records.is_empty() {
                            store.commit(&StreamName::new("s").unwrap(), p as u32, records).unwrap();
                        }
                    }
                    Step::Restart(back, load) => {
                        drop(engine);
                        drop(store);
                        (store, engine) = open(dir.path());
                        // The log redelivers records the shard holds already.
                        for (p, records) in log.iter().enumerate() {
                            let from = store.next_offset(&StreamName::new("s").unwrap(), p as u32).unwrap() as usize;
                            let again: Vec<Record> = records[from.saturating_sub(back)..from].to_vec();
                            if !again.is_empty() {
                                store.commit(&StreamName::new("s").unwrap(), p as u32, again).unwrap();
                            }
                        }
                        if load {
                            engine.attach_views().await;
                        }
                    }
                    Step::CatchUp => {
                        engine.attach_views().await;
                        engine.catch_up_views().await;
                    }
                }
            }
            if !created {
                create(&engine).await;
            }
            engine.attach_views().await;
            engine.catch_up_views().await;
            for (i, sql) in VIEWS.iter().enumerate() {
                let view = rows(&engine, &format!("SELECT * FROM v{i}")).await;
                let recomputed = rows(&engine, sql).await;
                prop_assert_eq!(view, recomputed, "{}", sql);
            }
            // A rebuild and a drop-and-create give the same rows.
            let (tx, _rx) = tokio::sync::watch::channel(Default::default());
            engine.rebuild_view("v0", tx).await.unwrap();
            engine.query("DROP MATERIALIZED VIEW v1").await.unwrap();
            engine.query(&format!("CREATE MATERIALIZED VIEW v1 AS {}", VIEWS[1])).await.unwrap();
            engine.catch_up_views().await;
            for (i, sql) in VIEWS.iter().enumerate().take(2) {
                prop_assert_eq!(
                    rows(&engine, &format!("SELECT * FROM v{i}")).await,
                    rows(&engine, sql).await,
                    "after rebuild/recreate: {}", sql
                );
            }
            Ok(())
        })?;
    }
}

/// A store with 50 events of stream `s` (keys k0–k4, ten each) and the view `by_key` over them.
async fn by_key(dir: &std::path::Path) -> (Arc<Store>, Arc<SqlEngine>) {
    let (store, engine) = open(dir);
    let s = StreamName::new("s").unwrap();
    let records: Vec<Record> = (0..50u64)
        .map(|i| Record {
            partition: 0,
            offset: i,
            event: Event {
                time_ms: 1_700_000_000_000 + i as i64,
                key: Some(format!("k{}", i % 5)),
                id: None,
                event_type: None,
                data: format!("{{\"qty\": {i}}}"),
                condition: None,
            },
        })
        .collect();
    store.commit(&s, 0, records).unwrap();
    engine
        .query("CREATE MATERIALIZED VIEW by_key AS SELECT key, count(*) AS n, sum(json_get_int(data, 'qty')) AS qty FROM s GROUP BY key")
        .await
        .unwrap();
    engine.catch_up_views().await;
    (store, engine)
}

#[tokio::test]
async fn a_key_lookup_reads_one_group_and_agrees_with_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = by_key(dir.path()).await;
    // Twice: planned in full (or as a shape) the first time, from the kept plan the second.
    for (filter, expected) in [
        ("key = 'k3'", vec!["k3|10|255"]),
        ("'k3' = key", vec!["k3|10|255"]),
        ("key IN ('k1', 'k4')", vec!["k1|10|235", "k4|10|265"]),
        ("key = 'nope'", vec![]),
        ("key > 'k3'", vec!["k4|10|265"]),
        // The point read applies the pinning equality exactly; the others still apply.
        ("key = 'k3' AND key = 'k1'", vec![]),
        ("key IN ('k1', 'k1')", vec!["k1|10|235"]),
        ("key = 'k3' AND n > 10", vec![]),
        ("key = 'k3' AND n = 10", vec!["k3|10|255"]),
        ("key IN ('k1', 'k4') AND qty > 250", vec!["k4|10|265"]),
        ("key = NULL", vec![]),
        ("key IN ('k1', NULL)", vec!["k1|10|235"]),
        ("key = 'k1'", vec!["k1|10|235"]),
        ("'k2' = key", vec!["k2|10|245"]),
        ("key = 'k4' AND key = 'k1'", vec![]),
        ("key = 'k4' AND n = 10", vec!["k4|10|265"]),
        ("key = 'k4' AND n = 11", vec![]),
    ] {
        for _ in 0..2 {
            let got = rows(&engine, &format!("SELECT * FROM by_key WHERE {filter}")).await;
            assert_eq!(got, expected, "{filter}");
        }
    }
    // What the view table reads, before DataFusion applies the filters again: one group for a
    // lookup, every group otherwise.
    use datafusion::catalog::TableProvider;
    use datafusion::prelude::{col, lit};
    let table = crate::ViewTable::new(
        store.clone(),
        "by_key".into(),
        engine.views.get("by_key").unwrap(),
    );
    let state = engine.ctx.state();
    for (filter, read) in [
        (col("key").eq(lit("k3")), 1),
        (col("key").in_list(vec![lit("k1"), lit("k2")], false), 2),
        (col("key").gt(lit("k3")), 5),
    ] {
        let exec = table
            .scan(&state, None, std::slice::from_ref(&filter), None)
            .await
            .unwrap();
        let batches = datafusion::physical_plan::collect(exec, engine.ctx.task_ctx())
            .await
            .unwrap();
        let n: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(n, read, "{filter}");
    }
    // An equality on a group column the point read does not apply is applied by the scan
    // itself (DataFusion was told the scan applies it exactly).
    for filters in [
        vec![col("key").eq(lit("k3")), col("key").eq(lit("k1"))],
        vec![col("key").eq(lit(3i64))],
    ] {
        let exec = table
            .scan(&state, Some(&vec![1]), &filters, None)
            .await
            .unwrap();
        let batches = datafusion::physical_plan::collect(exec, engine.ctx.task_ctx())
            .await
            .unwrap();
        assert_eq!(
            batches.iter().map(|b| b.num_rows()).sum::<usize>(),
            0,
            "{filters:?}"
        );
    }
    // Planning reads nothing; running the plan reads the view once.
    let counting = Arc::new(CountingSource {
        store: store.clone(),
        reads: AtomicUsize::new(0),
    });
    let table = crate::ViewTable::new(
        counting.clone(),
        "by_key".into(),
        engine.views.get("by_key").unwrap(),
    );
    let exec = table.scan(&state, None, &[], None).await.unwrap();
    assert_eq!(counting.reads.load(Ordering::Relaxed), 0);
    datafusion::physical_plan::collect(exec, engine.ctx.task_ctx())
        .await
        .unwrap();
    assert_eq!(counting.reads.load(Ordering::Relaxed), 1);
    // EXPLAIN shows the read and its lookup.
    let explained = rows(&engine, "EXPLAIN SELECT * FROM by_key WHERE key = 'k3'")
        .await
        .join("\n");
    assert!(
        explained.contains("ViewScanExec: view=by_key, lookup=1 groups"),
        "{explained}"
    );
    // The lookup applies its filter: nothing filters (or repartitions to filter) above it.
    assert!(
        !explained.contains("FilterExec") && !explained.contains("RepartitionExec"),
        "{explained}"
    );
}

/// The store as a [`ShardSource`], counting the view reads.
#[derive(Debug)]
struct CountingSource {
    store: Arc<Store>,
    reads: AtomicUsize,
}

impl ShardSource for CountingSource {
    fn catalog(&self) -> strata_proto::Catalog {
        ShardSource::catalog(self.store.as_ref())
    }

    fn scan(
        &self,
        stream: &StreamName,
        partition: u32,
        request: strata_store::ScanRequest,
    ) -> crate::Result<crate::Batches> {
        ShardSource::scan(self.store.as_ref(), stream, partition, request)
    }

    fn status(&self, stream: &StreamName) -> crate::Result<Vec<strata_store::ShardStatus>> {
        ShardSource::status(self.store.as_ref(), stream)
    }

    fn view_groups(
        &self,
        stream: &StreamName,
        name: &str,
        after: &crate::ViewAfter,
    ) -> crate::Result<Vec<Vec<u8>>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        ShardSource::view_groups(self.store.as_ref(), stream, name, after)
    }

    fn view_get(
        &self,
        stream: &StreamName,
        name: &str,
        keys: &[Vec<u8>],
        after: &crate::ViewAfter,
    ) -> crate::Result<Vec<Vec<u8>>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        ShardSource::view_get(self.store.as_ref(), stream, name, keys, after)
    }

    fn view_progress(
        &self,
        stream: &StreamName,
        name: &str,
    ) -> crate::Result<Vec<crate::ViewProgress>> {
        ShardSource::view_progress(self.store.as_ref(), stream, name)
    }

    fn progress(
        &self,
        stream: &StreamName,
        partition: u32,
    ) -> crate::Result<tokio::sync::watch::Receiver<u64>> {
        ShardSource::progress(self.store.as_ref(), stream, partition)
    }

    fn views_behind(
        &self,
        stream: &StreamName,
        partition: u32,
        offset: u64,
    ) -> Option<(String, u64)> {
        ShardSource::views_behind(self.store.as_ref(), stream, partition, offset)
    }
}

#[tokio::test]
async fn a_lookup_plan_is_kept_by_shape_and_left_when_its_view_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, engine) = by_key(dir.path()).await;
    let lookup = |k: &str| format!("SELECT key, n FROM by_key WHERE key = '{k}'");
    assert_eq!(rows(&engine, &lookup("k1")).await, ["k1|10"]);
    // Kept with the key as a placeholder that the view's scan applies (a point read once the
    // key is in): nothing filters above the scan.
    let kept = engine.plans.kept();
    assert_eq!(kept.len(), 1);
    assert!(
        kept[0].contains("full_filters=[by_key.key = $1]") && !kept[0].contains("Filter:"),
        "{}",
        kept[0]
    );
    // Another key, the same shape: the kept plan answers with this key.
    assert_eq!(rows(&engine, &lookup("k2")).await, ["k2|10"]);
    assert_eq!(rows(&engine, &lookup("nope")).await, Vec::<String>::new());
    // Spacing and the case of keywords are not part of a shape.
    let spaced = "select key,  n\n FROM by_key where key='k3'";
    assert_eq!(rows(&engine, spaced).await, ["k3|10"]);
    assert_eq!(engine.plans.kept().len(), 1);
    // Another column list is another shape.
    assert_eq!(
        rows(&engine, "SELECT n FROM by_key WHERE key = 'k3'").await,
        ["10"]
    );
    assert_eq!(engine.plans.kept().len(), 2);
    // A query with placeholders of its own (as PostgreSQL and Flight SQL clients send them) is
    // its own shape, with the values given: here the shape of the literal lookups above, whose
    // kept plan answers it. A value of another type is not bound into it.
    let with_params = |key: ScalarValue| {
        let engine = &engine;
        async move {
            let access = crate::Access::all();
            let out = engine
                .run(crate::Query {
                    sql: "SELECT key, n FROM by_key WHERE key = $1",
                    access: &access,
                    after: None,
                    params: Some(vec![key].into()),
                    flavor: crate::Flavor::Plain,
                })
                .await?;
            let batches: Vec<_> = out.batches.try_collect().await?;
            Ok::<_, crate::Error>(rows_text(&batches))
        }
    };
    let utf8 = |k: &str| ScalarValue::Utf8(Some(k.into()));
    assert_eq!(with_params(utf8("k1")).await.unwrap(), ["k1|10"]);
    assert_eq!(with_params(utf8("k2")).await.unwrap(), ["k2|10"]);
    assert_eq!(engine.plans.kept().len(), 2);
    assert!(with_params(ScalarValue::Int64(Some(1))).await.is_err());
    assert_eq!(with_params(utf8("k4")).await.unwrap(), ["k4|10"]);
    // With placeholders of its own in another place: kept as a shape of its own.
    let sql = "SELECT n FROM by_key WHERE key = $1 AND n = 10";
    let access = crate::Access::all();
    for k in ["k0", "k1"] {
        let out = engine
            .run(crate::Query {
                sql,
                access: &access,
                after: None,
                params: Some(vec![utf8(k)].into()),
                flavor: crate::Flavor::Plain,
            })
            .await
            .unwrap();
        let batches: Vec<_> = out.batches.try_collect().await.unwrap();
        assert_eq!(rows_text(&batches), ["10"]);
    }
    assert_eq!(engine.plans.kept().len(), 3);
    // Grants are checked on the kept plan too.
    let other = crate::Access {
        admin: false,
        streams: Some(["t".to_owned()].into()),
    };
    let refused = engine.query_as(&lookup("k1"), &other).await.err().unwrap();
    assert!(matches!(refused, crate::Error::Forbidden(_)), "{refused}");
    // Not kept: stream scans, functions that are not immutable (the optimiser folds `now()`).
    for sql in [
        "SELECT count(*) AS n FROM s WHERE key = 'k1'",
        "SELECT key, now() > TIMESTAMP '2000-01-01' AS later FROM by_key WHERE key = 'k1'",
    ] {
        rows(&engine, sql).await;
    }
    // A placeholder outside the view's scan (`n` is not a group column): the optimised plan is
    // kept, not the physical one.
    let both = |n: u32| format!("SELECT key FROM by_key WHERE n = {n} AND key = 'k0'");
    assert_eq!(rows(&engine, &both(10)).await, ["k0"]);
    assert_eq!(rows(&engine, &both(9)).await, Vec::<String>::new());
    let kept = engine.plans.kept();
    assert_eq!(kept.len(), 4);
    assert_eq!(kept.iter().filter(|k| k.starts_with("physical")).count(), 2);
    // The view replaced by another definition: the shape is planned again over the new one.
    engine.query("DROP MATERIALIZED VIEW by_key").await.unwrap();
    engine
        .query("CREATE MATERIALIZED VIEW by_key AS SELECT key, max(json_get_int(data, 'qty')) AS n FROM s GROUP BY key")
        .await
        .unwrap();
    engine.catch_up_views().await;
    assert_eq!(rows(&engine, &lookup("k1")).await, ["k1|46"]);
    assert_eq!(rows(&engine, &lookup("k2")).await, ["k2|47"]);
}
