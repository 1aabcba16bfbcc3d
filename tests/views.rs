//! Materialized views through the real binary, on both logs: create (with a past to fold in),
//! append, read your writes, key lookups, `kill -9` during appends and restart, drop and
//! re-create, rebuild through the CLI, listings, and refusals.

use crate::common::*;
use serde_json::{Value, json};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const REVENUE: &str = "SELECT json_get_str(data, 'country') AS country, count(*) AS orders, \
    sum(json_get_float(data, 'amount')) AS revenue, max(json_get_float(data, 'amount')) AS biggest, \
    count(DISTINCT key) AS customers FROM orders GROUP BY 1";
const MINUTES: &str = "SELECT date_bin(INTERVAL '1 minute', time) AS minute, count(*) AS n, \
    avg(json_get_float(data, 'amount')) AS mean FROM orders WHERE json_get_str(data, 'country') <> 'XX' GROUP BY 1";

fn events(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| {
            let country = ["NL", "DE", "FR", "XX"][i % 4];
            let mut data = json!({"country": country});
            if i % 5 != 0 {
                data["amount"] = json!(i as f64 / 4.0);
            }
            if i % 11 == 0 {
                data = json!({"amount": null});
            }
            format!(
                "{}\n",
                json!({"id": format!("o{i}"), "key": format!("c{}", i % 13),
                       "time": 1_700_000_000_000i64 + (i as i64) * 7_000, "data": data})
            )
        })
        .collect()
}

/// Runs SQL once the store (and its views) applied `tokens`.
fn rows_after(server: &Server, query: &str, tokens: &[Value]) -> Vec<Value> {
    let resp = http()
        .post(server.url("/v1/sql"))
        .json(&json!({"sql": query, "after": tokens, "timeout_ms": 30_000}))
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().unwrap_or(Value::Null);
    assert_eq!(status, 200, "{query}: {body}");
    body.as_array().cloned().unwrap_or_default()
}

/// One token covering every token of `tokens` (each partition's highest offset), as a client
/// that made many appends would keep it.
fn merged_token(tokens: &[Value]) -> Value {
    let mut stream = String::new();
    let mut offsets = std::collections::BTreeMap::<u32, u64>::new();
    for t in tokens.iter().filter_map(Value::as_str) {
        let mut parts = t.split('.');
        assert_eq!(parts.next(), Some("v1"), "{t}");
        stream = parts.next().unwrap().to_owned();
        for pair in parts {
            let (p, n) = pair.split_once('-').unwrap();
            let n: u64 = n.parse().unwrap();
            let at = offsets.entry(p.parse().unwrap()).or_default();
            *at = (*at).max(n);
        }
    }
    let pairs: Vec<String> = offsets.iter().map(|(p, n)| format!("{p}-{n}")).collect();
    Value::String(format!("v1.{stream}.{}", pairs.join(".")))
}

/// Rows as sorted text with floats rounded, so summation order does not matter.
fn canonical(rows: Vec<Value>) -> Vec<String> {
    let mut out: Vec<String> = rows
        .into_iter()
        .map(|r| {
            let cells: Vec<String> = r
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| match v.as_f64() {
                    Some(x) if v.is_f64() => format!("{k}={x:.6}"),
                    _ => format!("{k}={v}"),
                })
                .collect();
            cells.join(",")
        })
        .collect();
    out.sort();
    out
}

/// Waits (bounded) until view `name` equals its definition computed over the stream.
fn assert_view_converges(server: &Server, name: &str, definition: &str) {
    let mut last = (Vec::new(), Vec::new());
    for _ in 0..300 {
        let view = canonical(rows(server, &format!("SELECT * FROM {name}")));
        let recomputed = canonical(rows(server, definition));
        if view == recomputed && !view.is_empty() {
            return;
        }
        last = (view, recomputed);
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "view {name} never equalled its recomputation\nview:       {:?}\nrecomputed: {:?}",
        last.0, last.1
    );
}

/// Each country's lookup in `revenue_by_country` equals the same rows of its recomputation.
fn assert_lookups_agree(server: &Server) {
    for country in ["NL", "DE", "FR", "XX"] {
        let looked_up = rows(
            server,
            &format!("SELECT * FROM revenue_by_country WHERE country = '{country}'"),
        );
        assert_eq!(looked_up.len(), 1, "{country}: {looked_up:?}");
        assert_eq!(
            canonical(looked_up),
            canonical(rows(
                server,
                &format!("SELECT * FROM ({REVENUE}) WHERE country = '{country}'")
            )),
            "{country}"
        );
    }
}

fn listing(server: &Server) -> Vec<Value> {
    http()
        .get(server.url("/v1/views"))
        .send()
        .unwrap()
        .json::<Vec<Value>>()
        .unwrap()
}

fn cli(server: &Server, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--server")
        .arg(&server.base)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn views_are_maintained_exactly_once_through_kill_9_and_rebuild() {
    for backend in backends() {
        let (_tmp, dir) = data_dir();
        let mut server = Server::start(backend, &dir, "[store]\nblock_rows = 64\n");
        http()
            .put(server.url("/v1/streams/orders"))
            .json(&json!({"partitions": 3}))
            .send()
            .unwrap();
        // A past to fold in, then the views, then more events maintained in the commits.
        let first = append_ok(&server, "orders", &events(0, 400));
        for (name, definition) in [("revenue_by_country", REVENUE), ("per_minute", MINUTES)] {
            let (status, body) = sql(
                &server,
                &format!("CREATE MATERIALIZED VIEW {name} AS {definition}"),
            );
            assert_eq!(status, 200, "{body}");
        }
        let second = append_ok(&server, "orders", &events(400, 300));
        let tokens = vec![first["token"].clone(), second["token"].clone()];
        // Read your writes: with the tokens, the views hold every event appended.
        let view = canonical(rows_after(
            &server,
            "SELECT * FROM revenue_by_country",
            &tokens,
        ));
        assert_eq!(view, canonical(rows(&server, REVENUE)));
        let orders: u64 =
            rows_after(&server, "SELECT sum(n) AS n FROM per_minute", &tokens)[0]["n"]
                .as_u64()
                .unwrap();
        assert_eq!(
            orders,
            rows(
                &server,
                "SELECT count(*) AS n FROM orders WHERE json_get_str(data, 'country') <> 'XX'"
            )[0]["n"]
                .as_u64()
                .unwrap()
        );
        assert_view_converges(&server, "per_minute", MINUTES);
        // Lookups by group key: the first plans the lookup's shape, the others put their key
        // into the kept plan (and answer as the recomputation does).
        let hits = "strata_query_plan_cache_total{outcome=\"hit\"}";
        let hits_before = metric_value(&server, hits);
        assert_lookups_agree(&server);
        assert!(metric_value(&server, hits) >= hits_before + 3.0);
        let (status, body) = sql(&server, "SHOW VIEWS");
        assert_eq!(status, 200, "{body}");
        let shown: Vec<&str> = body
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(shown, ["per_minute", "revenue_by_country"]);
        let listed = listing(&server);
        let revenue = listed
            .iter()
            .find(|v| v["name"] == "revenue_by_country")
            .unwrap();
        assert_eq!(revenue["stream"], "orders");
        assert_eq!(revenue["rows"], 4 + 1, "{revenue}"); // four countries and NULL
        assert_eq!(revenue["partitions"].as_array().unwrap().len(), 3);
        assert_eq!(revenue["lag"], 0, "{revenue}");
        assert_eq!(revenue["status"], "ready", "{revenue}");

        // kill -9 while clients append.
        let outcomes = Mutex::new(Vec::new());
        let stop = AtomicBool::new(false);
        let base = server.base.clone();
        std::thread::scope(|s| {
            for client in 0..3usize {
                let (outcomes, stop, base) = (&outcomes, &stop, base.clone());
                s.spawn(move || {
                    let http = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(10))
                        .build()
                        .unwrap();
                    for batch in 0..10_000usize {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let from = 10_000 + (client * 10_000 + batch) * 20;
                        match http
                            .post(format!("{base}/v1/streams/orders/events"))
                            .body(events(from, 20))
                            .send()
                        {
                            Ok(r) if r.status().is_success() => outcomes
                                .lock()
                                .unwrap()
                                .push(r.json::<Value>().unwrap_or_default()),
                            _ => break,
                        }
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(1200));
            server.kill9();
            stop.store(true, Ordering::Relaxed);
        });
        let outcomes = outcomes.into_inner().unwrap();
        assert!(outcomes.len() > 3, "too few appends before the kill");
        server.restart();
        for outcome in &outcomes {
            server.note_append("orders", outcome);
        }
        let tokens: Vec<Value> = outcomes.iter().map(|o| o["token"].clone()).collect();
        let tokens = vec![merged_token(&tokens)];
        let view = rows_after(
            &server,
            "SELECT sum(orders) AS n FROM revenue_by_country",
            &tokens,
        );
        assert!(view[0]["n"].as_u64().unwrap() >= 700 + 20 * outcomes.len() as u64);
        wait_stored(&server, "orders");
        assert_view_converges(&server, "revenue_by_country", REVENUE);
        assert_view_converges(&server, "per_minute", MINUTES);

        // Drop and create again: the past is folded in again, to the same rows.
        let before = canonical(rows(&server, "SELECT * FROM revenue_by_country"));
        let (status, body) = sql(&server, "DROP MATERIALIZED VIEW revenue_by_country");
        assert_eq!(status, 200, "{body}");
        let (status, body) = sql(&server, "SELECT * FROM revenue_by_country");
        assert!(status == 400 || status == 404, "{status} {body}");
        assert_eq!(listing(&server).len(), 1);
        let (status, body) = sql(
            &server,
            &format!("CREATE MATERIALIZED VIEW revenue_by_country AS {REVENUE}"),
        );
        assert_eq!(status, 200, "{body}");
        assert_view_converges(&server, "revenue_by_country", REVENUE);
        assert_eq!(
            canonical(rows(&server, "SELECT * FROM revenue_by_country")),
            before
        );
        // A plan kept over the dropped view is not used for the new one.
        assert_lookups_agree(&server);

        // Rebuild through the CLI, with its progress bar.
        let out = cli(&server, &["views", "rebuild", "revenue_by_country"]);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{stdout}{stderr}");
        assert!(
            stdout.contains("rebuilt revenue_by_country: 5 rows"),
            "{stdout}"
        );
        assert!(
            stderr.contains("events") && stderr.contains("ev/s"),
            "{stderr}"
        );
        assert_eq!(
            canonical(rows(&server, "SELECT * FROM revenue_by_country")),
            before
        );
        let out = cli(&server, &["views"]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("revenue_by_country"),
            "{out:?}"
        );

        // Refusals and conflicts.
        for (definition, reason) in [
            (
                "SELECT key, count(*) FROM orders GROUP BY key ORDER BY key",
                "ORDER BY",
            ),
            (
                "SELECT key, count(*) FROM orders GROUP BY key LIMIT 5",
                "LIMIT",
            ),
            ("SELECT * FROM orders", "must aggregate"),
            (
                "SELECT a.key, count(*) FROM orders a JOIN orders b ON a.key = b.key GROUP BY a.key",
                "joins",
            ),
            (
                "SELECT key, row_number() OVER (ORDER BY time) FROM orders",
                "window",
            ),
            (
                "SELECT key, median(offset) FROM orders GROUP BY key",
                "median",
            ),
            (
                "SELECT country, count(*) FROM revenue_by_country GROUP BY 1",
                "streams only",
            ),
        ] {
            let (status, body) = sql(
                &server,
                &format!("CREATE MATERIALIZED VIEW bad AS {definition}"),
            );
            assert_eq!(status, 400, "{definition}: {body}");
            let message = body["error"].as_str().unwrap_or_default();
            assert!(
                message.contains("cannot be maintained incrementally") && message.contains(reason),
                "{definition}: {message}"
            );
        }
        assert!(!listing(&server).iter().any(|v| v["name"] == "bad"));
        let (status, _) = sql(
            &server,
            &format!("CREATE MATERIALIZED VIEW per_minute AS {MINUTES}"),
        );
        assert_eq!(status, 409);
        let (status, _) = sql(
            &server,
            &format!("CREATE MATERIALIZED VIEW orders AS {MINUTES}"),
        );
        assert_eq!(status, 409);
        let (status, _) = sql(&server, "DROP MATERIALIZED VIEW nope");
        assert_eq!(status, 404);
        let resp = http()
            .post(server.url("/v1/views/nope/rebuild"))
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 404);
    }
}
