//! Declared fields: typed SQL columns from `data`, validated at append, added later without a rewrite.

use crate::common::*;
use serde_json::{Value, json};

fn put(server: &Server, stream: &str, body: Value) -> (u16, Value) {
    let resp = http()
        .put(server.url(&format!("/v1/streams/{stream}")))
        .json(&body)
        .send()
        .unwrap();
    (resp.status().as_u16(), resp.json().unwrap_or(Value::Null))
}

fn order(i: u64) -> String {
    format!(
        "{}\n",
        json!({"key": format!("c{}", i % 3), "time": 1_714_521_600_000u64 + i * 1000,
               "data": {"country": (["NL", "DE"][(i % 2) as usize]), "amount": (i as f64 + 0.5), "paid": i.is_multiple_of(4), "n": i}})
    )
}

#[test]
fn declared_fields_are_typed_columns() {
    for backend in backends() {
        let (_tmp, dir) = data_dir();
        let mut server = Server::start(backend, &dir, "[store]\nblock_rows = 8\n");
        let (status, created) = put(
            &server,
            "orders",
            json!({"partitions": 2, "fields": [
            {"name": "country", "type": "string"}, {"name": "amount", "type": "double"}, {"name": "paid", "type": "boolean"}]}),
        );
        assert_eq!(status, 201, "{created}");
        assert_eq!(
            created["fields"],
            json!([{"name": "country", "type": "string"}, {"name": "amount", "type": "double"}, {"name": "paid", "type": "boolean"}])
        );

        // A type mismatch is refused with the field named, and nothing is written.
        let bad = format!("{}{}", order(0), "{\"data\": {\"amount\": \"cheap\"}}\n");
        let (status, err) = append(&server, "orders", &bad);
        assert_eq!(status, 400);
        assert_eq!(
            err["error"],
            "line 2: field `amount` must be a double, got a string"
        );

        let body: String = (0..30).map(order).collect();
        append_ok(&server, "orders", &body);
        // Missing and null members are NULL.
        append_ok(
            &server,
            "orders",
            "{\"data\": {\"country\": null}}\n{\"data\": [1, 2]}\n",
        );
        wait_stored(&server, "orders");
        let by_country = rows(
            &server,
            "SELECT country, count(*) AS n, sum(amount) AS total, count(paid) AS with_paid FROM orders GROUP BY country ORDER BY country NULLS LAST",
        );
        assert_eq!(
            by_country,
            vec![
                json!({"country": "DE", "n": 15, "total": 232.5, "with_paid": 15}),
                json!({"country": "NL", "n": 15, "total": 217.5, "with_paid": 15}),
                json!({"country": null, "n": 2, "total": null, "with_paid": 0}),
            ]
        );
        // That answer was grouped where each shard is read, by the blocks' dictionaries.
        let plan = rows(
            &server,
            "EXPLAIN SELECT country, count(*) AS n, sum(amount) AS total, count(paid) AS with_paid FROM orders GROUP BY country",
        );
        assert!(
            plan.iter().any(|r| r["plan"]
                .as_str()
                .is_some_and(|p| p.contains("ScanAggregateExec"))),
            "{plan:?}"
        );
        assert_eq!(
            rows(&server, "SELECT count(*) AS n FROM orders WHERE paid"),
            vec![json!({"n": 8})]
        );
        // Declared columns and `data` agree.
        assert_eq!(
            rows(
                &server,
                "SELECT count(*) AS n FROM orders WHERE amount <> json_get_float(data, 'amount')"
            ),
            vec![json!({"n": 0})]
        );

        // A field added later: old events read NULL, new ones have it, in blocks and in the tail.
        let (status, out) = put(
            &server,
            "orders",
            json!({"fields": [{"name": "n", "type": "long"}]}),
        );
        assert_eq!(status, 200, "{out}");
        assert_eq!(out["partitions"], 2);
        append_ok(
            &server,
            "orders",
            &(100..120).map(order).collect::<String>(),
        );
        wait_stored(&server, "orders");
        let counts = rows(
            &server,
            "SELECT count(*) AS n, count(n) AS with_n, min(n) AS lo FROM orders",
        );
        assert_eq!(counts, vec![json!({"n": 52, "with_n": 20, "lo": 100})]);
        let info = stream_info(&server, "orders");
        assert_eq!(info["fields"].as_array().unwrap().len(), 4);

        // The same after a restart and after rebuilding the store from the log.
        server.restart();
        assert_eq!(
            rows(
                &server,
                "SELECT count(*) AS n, count(n) AS with_n, min(n) AS lo FROM orders"
            ),
            counts
        );
        assert!(server.stop());
        std::fs::remove_dir_all(dir.join("store")).unwrap();
        server.restart();
        wait_stored(&server, "orders");
        assert_eq!(
            rows(
                &server,
                "SELECT count(*) AS n, count(n) AS with_n, min(n) AS lo FROM orders"
            ),
            counts
        );
        assert_eq!(
            rows(
                &server,
                "SELECT country, count(*) AS n, sum(amount) AS total, count(paid) AS with_paid FROM orders WHERE n IS NULL GROUP BY country ORDER BY country NULLS LAST"
            ),
            by_country
        );
    }
}

#[test]
fn bad_declarations_are_refused() {
    for backend in backends() {
        let (_tmp, dir) = data_dir();
        let server = Server::start(backend, &dir, "");
        assert_eq!(
            put(
                &server,
                "s",
                json!({"fields": [{"name": "amount", "type": "double"}]})
            )
            .0,
            201
        );
        for (body, status, needle) in [
            (
                json!({"fields": [{"name": "amount", "type": "long"}]}),
                409,
                "cannot change",
            ),
            (
                json!({"fields": [{"name": "time", "type": "long"}]}),
                400,
                "built-in column",
            ),
            (
                json!({"fields": [{"name": "Amount", "type": "long"}]}),
                400,
                "lowercase",
            ),
            (
                json!({"fields": [{"name": "x", "type": "decimal"}]}),
                400,
                "unknown variant",
            ),
            (
                json!({"fields": [{"name": "x"}]}),
                400,
                "missing field `type`",
            ),
            (
                json!({"partitions": 3}),
                409,
                "already exists with 4 partitions",
            ),
        ] {
            let (got, err) = put(&server, "s", body.clone());
            assert_eq!(got, status, "{body}: {err}");
            assert!(
                err["error"].as_str().unwrap().contains(needle),
                "{body}: {err}"
            );
        }
        // Undeclared streams keep working through `data`.
        append_ok(&server, "plain", "{\"data\": {\"amount\": 2}}");
        wait_stored(&server, "plain");
        assert_eq!(
            rows(
                &server,
                "SELECT sum(json_get_int(data, 'amount')) AS s FROM plain"
            ),
            vec![json!({"s": 2})]
        );
    }
}
