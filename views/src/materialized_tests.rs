//! Property test of incremental view maintenance: random events in random batches, folded into a
//! view, equal the same SELECT computed by DataFusion over all the events.

use crate::materialized::ViewPlan;
use arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use proptest::prelude::*;
use std::sync::Arc;

pub(crate) const VIEWS: [&str; 4] = [
    "SELECT json_get_str(data, 'country') AS country, count(*) AS n, sum(json_get_int(data, 'qty')) AS qty, \
     min(json_get_float(data, 'amount')) AS lo, max(json_get_float(data, 'amount')) AS hi, \
     count(json_get_float(data, 'amount')) AS priced, count(DISTINCT key) AS keys \
     FROM s WHERE partition >= 0 GROUP BY 1",
    "SELECT date_bin(INTERVAL '1 minute', time) AS minute, key, count(*) AS n, sum(json_get_int(data, 'qty')) * 2 AS double_qty \
     FROM s GROUP BY 1, 2",
    "SELECT count(*) AS n, sum(json_get_int(data, 'qty')) AS qty, avg(json_get_int(data, 'qty')) AS mean FROM s WHERE key = 'k1'",
    "SELECT upper(key) AS k, approx_distinct(json_get_str(data, 'country')) AS countries FROM s WHERE json_get_int(data, 'qty') > 2 GROUP BY upper(key)",
];

#[derive(Clone, Debug)]
pub(crate) struct Ev {
    pub partition: i32,
    pub time: i64,
    pub key: Option<String>,
    pub data: String,
}

pub(crate) fn event() -> impl Strategy<Value = Ev> {
    (
        0i32..3,
        0i64..600_000,
        prop::option::of(prop::sample::select(vec!["k1", "k2", "k3"])),
        prop::option::of(prop::sample::select(vec!["NL", "DE", "FR"])),
        prop::option::of(-5i64..10),
        prop::option::of(-100.0f64..100.0),
    )
        .prop_map(|(partition, time, key, country, qty, amount)| {
            let mut data = serde_json::Map::new();
            if let Some(c) = country {
                data.insert("country".into(), c.into());
            }
            match qty {
                Some(q) => {
                    data.insert("qty".into(), q.into());
                }
                None => {
                    data.insert("qty".into(), serde_json::Value::Null);
                }
            }
            if let Some(a) = amount {
                data.insert("amount".into(), a.into());
            }
            Ev {
                partition,
                time: 1_700_000_000_000 + time,
                key: key.map(str::to_owned),
                data: serde_json::Value::Object(data).to_string(),
            }
        })
}

fn batch(events: &[Ev], first_offset: usize) -> RecordBatch {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(events.iter().map(|e| e.partition).collect::<Int32Array>()),
        Arc::new(
            (first_offset..first_offset + events.len())
                .map(|o| o as i64)
                .collect::<Int64Array>(),
        ),
        Arc::new(
            TimestampMillisecondArray::from(events.iter().map(|e| e.time).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ),
        Arc::new(
            events
                .iter()
                .map(|e| e.key.clone())
                .collect::<StringArray>(),
        ),
        Arc::new(
            events
                .iter()
                .map(|_| None::<String>)
                .collect::<StringArray>(),
        ),
        Arc::new(
            events
                .iter()
                .map(|_| None::<String>)
                .collect::<StringArray>(),
        ),
        Arc::new(
            events
                .iter()
                .map(|e| Some(e.data.clone()))
                .collect::<StringArray>(),
        ),
        arrow::array::new_null_array(&arrow::datatypes::DataType::Int64, events.len()),
    ];
    RecordBatch::try_new(strata_store::schema::table_schema(), columns).unwrap()
}

fn context(rows: Vec<RecordBatch>) -> SessionContext {
    let mut ctx = SessionContext::new();
    datafusion_functions_json::register_all(&mut ctx).unwrap();
    let table = MemTable::try_new(strata_store::schema::table_schema(), vec![rows]).unwrap();
    ctx.register_table("s", Arc::new(table)).unwrap();
    ctx
}

/// Rows as sorted text, floats rounded so that summation order does not matter.
pub(crate) fn rows_text(batches: &[RecordBatch]) -> Vec<String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let formatters: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            let cells: Vec<String> = formatters
                .iter()
                .map(|f| {
                    let v = f.value(r).to_string();
                    match v.parse::<f64>() {
                        Ok(x) if v.contains('.') => format!("{x:.6}"),
                        _ => v,
                    }
                })
                .collect();
            out.push(cells.join("|"));
        }
    }
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn incremental_views_equal_recomputation(
        events in prop::collection::vec(event(), 0..120),
        cuts in prop::collection::vec(0usize..120, 0..6),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let all = batch(&events, 0);
            let full = context(vec![all]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(events.len())).collect();
            cuts.push(0);
            cuts.push(events.len());
            cuts.sort_unstable();
            for sql in VIEWS {
                // Each batch's delta merged into encoded group states (as the store does in its
                // commit batch): by one plan, then by a fresh plan after each batch (a restart at
                // every commit), read back by a fresh plan.
                let recomputed = rows_text(&full.sql(sql).await.unwrap().collect().await.unwrap());
                for restart in [false, true] {
                    let mut plan = ViewPlan::new(&context(vec![]), sql).await.unwrap();
                    let mut stored: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
                    for w in cuts.windows(2) {
                        if restart {
                            plan = ViewPlan::new(&context(vec![]), sql).await.unwrap();
                        }
                        let delta = plan.delta(&batch(&events[w[0]..w[1]], w[0])).unwrap();
                        for (key, d) in delta {
                            let merged = plan.merge_stored(&key, stored.get(&key).map(Vec::as_slice), d).unwrap();
                            stored.insert(key, merged);
                        }
                    }
                    let reloaded = ViewPlan::new(&context(vec![]), sql).await.unwrap();
                    let rows = reloaded.rows_of(stored.values().map(Vec::as_slice)).unwrap();
                    prop_assert_eq!(rows_text(&[rows]), recomputed.clone(), "restart {}: {}", restart, sql);
                }
                // State kept per partition (each batch on one of three partitions, as store nodes
                // keep it): a read merges the partitions' states of each group.
                let plan = ViewPlan::new(&context(vec![]), sql).await.unwrap();
                let mut partitions: Vec<std::collections::BTreeMap<Vec<u8>, Vec<u8>>> = vec![Default::default(); 3];
                for (i, w) in cuts.windows(2).enumerate() {
                    let stored = &mut partitions[i % 3];
                    for (key, d) in plan.delta(&batch(&events[w[0]..w[1]], w[0])).unwrap() {
                        let merged = plan.merge_stored(&key, stored.get(&key).map(Vec::as_slice), d).unwrap();
                        stored.insert(key, merged);
                    }
                }
                let all: Vec<&[u8]> = partitions.iter().flat_map(|p| p.values().map(Vec::as_slice)).collect();
                let rows = plan.rows_of(all.iter().copied()).unwrap();
                prop_assert_eq!(rows_text(&[rows]), recomputed.clone(), "per partition: {}", sql);
                let groups = plan.count_groups(all.iter().copied()).unwrap();
                let expected = recomputed.len() as u64;
                prop_assert!(groups == expected || (groups == 0 && expected == 1), "{} groups, {} rows: {}", groups, expected, sql);
            }
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn definitions_that_cannot_be_maintained_are_refused_with_the_reason() {
    let ctx = context(vec![]);
    for (sql, reason) in [
        (
            "SELECT key, count(*) FROM s GROUP BY key ORDER BY key",
            "ORDER BY",
        ),
        ("SELECT key, count(*) FROM s GROUP BY key LIMIT 3", "LIMIT"),
        ("SELECT * FROM s", "must aggregate"),
        (
            "SELECT a.key, count(*) FROM s a JOIN s b ON a.key = b.key GROUP BY a.key",
            "joins",
        ),
        (
            "SELECT key, row_number() OVER (ORDER BY time) FROM s",
            "window",
        ),
        (
            "SELECT key, median(offset) FROM s GROUP BY key",
            "median() is not supported",
        ),
        (
            "SELECT key, count(*) AS n FROM s GROUP BY key HAVING count(*) > 1",
            "HAVING",
        ),
        ("SELECT DISTINCT key FROM s", "DISTINCT"),
    ] {
        let err = match ViewPlan::new(&ctx, sql).await {
            Ok(_) => panic!("{sql} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("cannot be maintained incrementally"),
            "{sql}: {err}"
        );
        assert!(err.contains(reason), "{sql}: {err}");
    }
}

#[test]
fn view_statements_are_recognized() {
    use crate::materialized::{ViewStatement, parse_view_statement};
    assert_eq!(
        parse_view_statement(
            "CREATE MATERIALIZED VIEW revenue AS SELECT key, count(*) AS n FROM s GROUP BY key"
        )
        .unwrap(),
        Some(ViewStatement::Create {
            name: "revenue".into(),
            query: "SELECT key, count(*) AS n FROM s GROUP BY key".into(),
            if_not_exists: false,
        })
    );
    assert_eq!(
        parse_view_statement("DROP MATERIALIZED VIEW IF EXISTS revenue").unwrap(),
        Some(ViewStatement::Drop {
            name: "revenue".into(),
            if_exists: true
        })
    );
    assert_eq!(parse_view_statement("SELECT 1").unwrap(), None);
    assert_eq!(
        parse_view_statement("CREATE VIEW v AS SELECT 1").unwrap(),
        None
    );
    assert!(parse_view_statement("CREATE MATERIALIZED VIEW \"Bad Name\" AS SELECT 1").is_err());
    assert!(parse_view_statement("CREATE OR REPLACE MATERIALIZED VIEW v AS SELECT 1").is_err());
}

proptest::proptest! {
    /// Fuzz target: view statements with any name, and SQL text cut anywhere, are recognized,
    /// refused with a message, or left to the engine; never a panic. A name is accepted exactly
    /// when it is a valid stream name.
    #[test]
    fn fuzz_view_statements(name in proptest::prop_oneof!["[a-z][a-z0-9_]{0,70}", "\\PC{0,30}", "\"[^\"]{0,20}\""], cut in proptest::prelude::any::<proptest::sample::Index>()) {
        for sql in [
            format!("CREATE MATERIALIZED VIEW {name} AS SELECT key, count(*) FROM s GROUP BY key"),
            format!("DROP MATERIALIZED VIEW IF EXISTS {name}"),
        ] {
            match crate::materialized::parse_view_statement(&sql) {
                Ok(Some(_)) => proptest::prop_assert!(strata_proto::StreamName::new(&name).is_ok(), "{}", sql),
                Ok(None) => {}
                Err(e) => proptest::prop_assert!(!e.to_string().is_empty()),
            }
            let cut = cut.index(sql.len() + 1);
            if let Some(prefix) = sql.get(..cut) {
                let _ = crate::materialized::parse_view_statement(prefix);
            }
        }
    }
}
