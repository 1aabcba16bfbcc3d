//! Cluster-wide materialized views on the real broker (Tansu): a view created on one node is
//! defined in the log's catalog, maintained per partition by every store node for the partitions
//! it holds, and read from any node by merging the holders' partial states. After `kill -9` of a
//! store node and the rebalance, and after that node comes back with its store wiped, every
//! node's view read equals a recomputation: nothing lost, nothing counted twice.

use crate::cluster::{BASE_MS, COUNTRIES, Cluster, Data, append_lines, http_json, load, query};
use crate::common::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const VIEW: &str = "SELECT json_get_str(data, 'country') AS c, count(*) AS n, \
    sum(json_get_int(data, 'amount')) AS s, max(json_get_int(data, 'amount')) AS m, \
    avg(json_get_float(data, 'amount')) AS a, count(DISTINCT key) AS k FROM orders GROUP BY 1";

/// Order `i`, shaped as [`Data`]'s orders (unique ids past the loaded ones).
fn order(i: usize) -> Value {
    json!({
        "key": format!("k{}", i % 50),
        "id": format!("o{i}"),
        "time": BASE_MS + i as i64 * 1000,
        "data": {"country": COUNTRIES[(i * 7 + i / 3) % 4], "amount": (i * 13) % 97},
    })
}

/// The view's rows over `orders`, by country, as the view shows them.
fn recompute(orders: &[Value]) -> Value {
    let mut groups: BTreeMap<String, (u64, u64, u64, BTreeSet<String>)> = BTreeMap::new();
    for o in orders {
        let g = groups
            .entry(o["data"]["country"].as_str().unwrap().to_owned())
            .or_default();
        let amount = o["data"]["amount"].as_u64().unwrap();
        g.0 += 1;
        g.1 += amount;
        g.2 = g.2.max(amount);
        g.3.insert(o["key"].as_str().unwrap().to_owned());
    }
    Value::Array(
        groups
            .into_iter()
            .map(|(c, (n, s, m, keys))| {
                json!({"c": c, "n": n, "s": s, "m": m, "a": s as f64 / n as f64, "k": keys.len()})
            })
            .collect(),
    )
}

/// Waits (bounded) until `node` reads the view as `expected`, in full and by point lookups;
/// returns how many reads were a retryable 503 meanwhile.
fn converges(node: &Server, expected: &Value, within: Duration) -> u32 {
    let deadline = Instant::now() + within;
    let mut unavailable = 0;
    let lookup = "SELECT n, s FROM by_country WHERE c = 'NL'";
    let nl = expected
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["c"] == "NL")
        .map(|r| json!([{"n": r["n"], "s": r["s"]}]))
        .unwrap();
    loop {
        let (status, body) = query(node, None, "SELECT * FROM by_country ORDER BY c", &[]);
        if status == 200 && same(&body, expected) {
            let (status, body) = query(node, None, lookup, &[]);
            if status == 200 && body == nl {
                return unavailable;
            }
        }
        match status {
            200 => {}
            503 => {
                assert!(body["error"].as_str().unwrap().contains("retry"), "{body}");
                unavailable += 1;
            }
            other => panic!("{other} reading the view on {}: {body}", node.base),
        }
        assert!(
            Instant::now() < deadline,
            "the view on {} did not converge: {body}\nexpected {expected}",
            node.base
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Equal JSON, numbers compared as floats (an average may print as `48` or `48.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-9 * x.abs().max(1.0)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Appends orders `range`; returns the consistency token.
fn append(cluster: &Cluster, orders: &mut Vec<Value>, range: std::ops::Range<usize>) -> String {
    let new: Vec<Value> = range.map(order).collect();
    let token = append_lines(cluster.ingest(), None, "orders", &Data::lines(&new));
    orders.extend(new);
    token
}

#[test]
fn views_are_cluster_wide_and_survive_losing_a_store_node() {
    let Some(mut cluster) = Cluster::start("") else {
        eprintln!("no Kafka broker (STRATA_TEST_KAFKA_BROKERS); skipped");
        return;
    };
    let data = Data::new(1500);
    load(&cluster, None, &data);
    let mut orders = data.orders.clone();

    // Created on one store node: every node reads it, merged over every partition.
    let (status, body) = query(
        &cluster.nodes[1],
        None,
        &format!("CREATE MATERIALIZED VIEW by_country AS {VIEW}"),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = query(
        &cluster.nodes[2],
        None,
        &format!("CREATE MATERIALIZED VIEW by_country AS {VIEW}"),
        &[],
    );
    assert_eq!(status, 409, "a second node sees the name taken: {body}");
    append(&cluster, &mut orders, 1500..1800);
    let expected = recompute(&orders);
    for node in &cluster.nodes {
        converges(node, &expected, Duration::from_secs(60));
    }

    // Read-your-writes: with the append's token, the first read through the ingest node (which
    // holds no partition) already shows the new events, waited for on each holder.
    let token = append(&cluster, &mut orders, 1800..1900);
    let expected = recompute(&orders);
    let sql = "SELECT * FROM by_country ORDER BY c";
    let (status, body) = query(cluster.ingest(), None, sql, &[token]);
    assert_eq!(status, 200, "{body}");
    assert!(same(&body, &expected), "{body}\nexpected {expected}");

    // Listed once, with each partition's holder and no lag once caught up.
    let (status, listing) = http_json(cluster.ingest(), None, "/v1/views");
    assert_eq!(status, 200, "{listing}");
    let views = listing.as_array().unwrap();
    assert_eq!(views.len(), 1, "{listing}");
    let partitions = views[0]["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 6, "{listing}");
    let holders: BTreeSet<&str> = partitions
        .iter()
        .map(|p| p["node"].as_str().unwrap())
        .collect();
    assert!(
        holders.iter().all(|h| ["s1", "s2", "s3"].contains(h)),
        "{listing}"
    );
    assert_eq!(views[0]["rows"], 4, "{listing}");
    let (status, shown) = query(&cluster.nodes[2], None, "SHOW VIEWS", &[]);
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown.as_array().unwrap().len(), 1, "{shown}");
    let applied = shown[0]["applied"].as_str().unwrap();
    assert_eq!(applied.matches("@s").count(), 6, "{shown}");
    assert_eq!(shown[0]["status"], "ready", "{shown}");

    // kill -9 of a store node: once its partitions moved, every live node reads the view whole.
    cluster.nodes[3].kill9();
    append(&cluster, &mut orders, 1900..2100);
    let expected = recompute(&orders);
    let mut unavailable = 0;
    for node in &cluster.nodes[..3] {
        unavailable += converges(node, &expected, Duration::from_secs(90));
    }
    eprintln!(
        "after kill -9 of a store node: {unavailable} view reads were a 503 until the rebalance"
    );

    // It comes back with its store wiped: it gets the view from the log, refolds its partitions'
    // share from its shards, and nothing is counted twice.
    std::fs::remove_dir_all(&cluster.nodes[3].data_dir).unwrap();
    cluster.nodes[3].restart();
    append(&cluster, &mut orders, 2100..2300);
    let expected = recompute(&orders);
    for node in &cluster.nodes {
        converges(node, &expected, Duration::from_secs(90));
    }
    let (status, listing) = http_json(&cluster.nodes[3], None, "/v1/views");
    assert_eq!(status, 200);
    assert_eq!(listing.as_array().unwrap().len(), 1, "{listing}");

    // A rebuild asked of the ingest node runs on every store node and reports as one; the view
    // reads the same afterwards.
    let resp = http()
        .post(cluster.ingest().url("/v1/views/by_country/rebuild"))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["finished"], true, "{text}");
    // Every node refolds every partition in its store, also those it kept from while it held
    // them (their state must stay true to its shards should they come back).
    let done = last["done"].as_u64().unwrap();
    assert!(
        done >= orders.len() as u64,
        "every stored event refolded: {text}"
    );
    assert_eq!(last["rows"], 4, "{text}");
    for node in &cluster.nodes {
        converges(node, &expected, Duration::from_secs(30));
    }

    // Dropped on the ingest node: gone everywhere.
    let (status, body) = query(
        cluster.ingest(),
        None,
        "DROP MATERIALIZED VIEW by_country",
        &[],
    );
    assert_eq!(status, 200, "{body}");
    for node in &cluster.nodes {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, _) = query(node, None, "SELECT * FROM by_country", &[]);
            let (_, listing) = http_json(node, None, "/v1/views");
            if status != 200 && listing == json!([]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} still has the view",
                node.base
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
