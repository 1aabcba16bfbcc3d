//! The HTTP contract: append → SQL → replay, all-or-nothing batches, ids, ordering, replay filters.

use crate::common::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};

const SMALL_BLOCKS: &str = "[store]\nblock_rows = 16\ncommit_max_events = 7\n";

fn event(i: usize) -> Value {
    json!({
        "key": format!("c{}", i % 5),
        "id": format!("e{i}"),
        "type": if i.is_multiple_of(2) { "order" } else { "refund" },
        "time": 1_714_521_600_000i64 + i as i64 * 60_000,
        "data": {"country": (["NL", "DE", "FR"][i % 3]), "amount": i, "n": i},
    })
}

fn ndjson(events: impl IntoIterator<Item = Value>) -> String {
    events.into_iter().map(|e| format!("{e}\n")).collect()
}

#[test]
fn append_sql_replay_round_trip() {
    for backend in backends() {
        let (_tmp, dir) = data_dir();
        let server = Server::start(backend, &dir, SMALL_BLOCKS);
        let created = http()
            .put(server.url("/v1/streams/orders"))
            .json(&json!({"partitions": 3}))
            .send()
            .unwrap();
        assert_eq!(created.status().as_u16(), 201);
        let again = http()
            .put(server.url("/v1/streams/orders"))
            .json(&json!({"partitions": 3}))
            .send()
            .unwrap();
        assert_eq!(again.status().as_u16(), 200);

        let out = append_ok(&server, "orders", &ndjson((0..60).map(event)));
        assert_eq!(out["appended"], 60);
        assert_eq!(out["duplicates"], 0);
        let parts = out["partitions"].as_array().unwrap();
        assert_eq!(
            parts
                .iter()
                .map(|p| p["count"].as_u64().unwrap())
                .sum::<u64>(),
            60
        );
        for p in parts {
            assert_eq!(
                p["last_offset"].as_u64().unwrap() - p["first_offset"].as_u64().unwrap() + 1,
                p["count"].as_u64().unwrap()
            );
        }
        // A JSON array body works too.
        let array = Value::Array((60..100).map(event).collect()).to_string();
        assert_eq!(append_ok(&server, "orders", &array)["appended"], 40);
        wait_stored(&server, "orders");

        assert_eq!(
            rows(&server, "SELECT count(*) AS n FROM orders"),
            vec![json!({"n": 100})]
        );
        let by_country = rows(
            &server,
            "SELECT json_get_str(data, 'country') AS country, count(*) AS n, sum(json_get_int(data, 'amount')) AS total FROM orders GROUP BY 1 ORDER BY 1",
        );
        let mut expected: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for i in 0..100u64 {
            let e = expected
                .entry(["NL", "DE", "FR"][i as usize % 3])
                .or_default();
            e.0 += 1;
            e.1 += i;
        }
        let want: Vec<Value> = expected
            .iter()
            .map(|(c, (n, t))| json!({"country": c, "n": n, "total": t}))
            .collect();
        assert_eq!(by_country, want);
        let hourly = rows(
            &server,
            "SELECT date_bin(INTERVAL '1 hour', time) AS hour, count(*) AS n FROM orders GROUP BY 1 ORDER BY 1",
        );
        assert_eq!(hourly[0], json!({"hour": "2024-05-01T00:00:00Z", "n": 60}));
        assert_eq!(hourly[1], json!({"hour": "2024-05-01T01:00:00Z", "n": 40}));
        let types = rows(
            &server,
            "SELECT type, count(*) AS n FROM orders WHERE key = 'c1' GROUP BY type ORDER BY type",
        );
        assert_eq!(
            types,
            vec![
                json!({"type": "order", "n": 10}),
                json!({"type": "refund", "n": 10})
            ]
        );

        // Arrow IPC on request.
        let resp = http()
            .post(server.url("/v1/sql"))
            .header("accept", "application/vnd.apache.arrow.stream")
            .json(&json!({"sql": "SELECT \"offset\", key FROM orders WHERE partition = 0"}))
            .send()
            .unwrap();
        assert_eq!(
            resp.headers()["content-type"],
            "application/vnd.apache.arrow.stream"
        );
        let reader = arrow::ipc::reader::StreamReader::try_new(
            std::io::Cursor::new(resp.bytes().unwrap()),
            None,
        )
        .unwrap();
        assert_eq!(reader.schema().field(1).name(), "key");
        let n: usize = reader.map(|b| b.unwrap().num_rows()).sum();

        // Replay every partition: contiguous offsets from 0, the events as appended.
        let mut seen = 0;
        for p in 0..3 {
            let (status, lines) = replay(&server, "orders", &format!("partition={p}"));
            assert_eq!(status, 200);
            if p == 0 {
                assert_eq!(lines.len(), n);
            }
            for (i, line) in lines.iter().enumerate() {
                assert_eq!(line["partition"], p);
                assert_eq!(line["offset"], i as u64);
                let k: usize = line["id"].as_str().unwrap()[1..].parse().unwrap();
                let e = event(k);
                assert_eq!(line["key"], e["key"]);
                assert_eq!(line["type"], e["type"]);
                assert_eq!(line["data"], e["data"]);
                let t =
                    chrono::DateTime::parse_from_rfc3339(line["time"].as_str().unwrap()).unwrap();
                assert_eq!(t.timestamp_millis(), e["time"].as_i64().unwrap());
            }
            seen += lines.len();
        }
        assert_eq!(seen, 100);
        // Straight from the log, the same records as from the shards (but for `version`, which
        // the store assigns).
        for p in 0..3 {
            let (_, mut stored) = replay(&server, "orders", &format!("partition={p}"));
            for line in &mut stored {
                assert!(line["version"].as_u64().is_some_and(|v| v > 0), "{line}");
                line.as_object_mut().unwrap().remove("version");
            }
            let (status, logged) = replay(&server, "orders", &format!("partition={p}&source=log"));
            assert_eq!(status, 200);
            assert_eq!(logged, stored, "partition {p}");
        }
        // Offsets and limits.
        let (_, tail) = replay(&server, "orders", "partition=1&from=5&limit=3");
        assert_eq!(
            tail.iter()
                .map(|l| l["offset"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            vec![5, 6, 7]
        );
        // A limit past the first partition goes on into the next one and ends inside it.
        let (status, lines) = replay(&server, "orders", &format!("limit={}", n + 2));
        assert_eq!(status, 200);
        let at: Vec<(u64, u64)> = lines
            .iter()
            .map(|l| {
                (
                    l["partition"].as_u64().unwrap(),
                    l["offset"].as_u64().unwrap(),
                )
            })
            .collect();
        let want: Vec<(u64, u64)> = (0..n as u64)
            .map(|o| (0, o))
            .chain([(1, 0), (1, 1)])
            .collect();
        assert_eq!(at, want);
        let (_, none) = replay(&server, "orders", "limit=0");
        assert!(none.is_empty());
        let (_, past) = replay(&server, "orders", "partition=1&from=100000");
        assert!(past.is_empty());
    }
}

#[test]
fn a_bad_line_rejects_the_whole_batch() {
    for backend in backends() {
        let (_tmp, dir) = data_dir();
        let server = Server::start(backend, &dir, "");
        append_ok(&server, "s", "{\"data\": 1}\n");
        let body =
            "{\"data\": 1}\n{\"data\": 2}\n{\"data\": 3, \"time\": \"yesterday\"}\n{\"data\": 4}\n";
        let (status, err) = append(&server, "s", body);
        assert_eq!(status, 400);
        let msg = err["error"].as_str().unwrap();
        assert!(
            msg.starts_with("line 3: `time` \"yesterday\" is not RFC 3339"),
            "{msg}"
        );
        for (body, needle) in [
            (
                "{\"data\":1}\nnot json\n",
                "line 2: an event must be a JSON object",
            ),
            ("{\"key\":\"k\"}", "line 1: missing `data`"),
            ("{\"data\":1,\"key\":7}", "line 1: `key` must be a string"),
            (
                "[{\"data\":1},{\"data\":2,\"extra\":1}]",
                "element 2: unknown field `extra`",
            ),
            ("\n\n", "holds no events"),
        ] {
            let (status, err) = append(&server, "s", body);
            assert_eq!(status, 400, "{body}");
            assert!(
                err["error"].as_str().unwrap().contains(needle),
                "{body}: {err}"
            );
        }
        // Bad names and partition counts.
        let (status, _) = append(&server, "Not_Valid", "{\"data\":1}");
        assert_eq!(status, 400);
        let resp = http()
            .put(server.url("/v1/streams/zero"))
            .json(&json!({"partitions": 0}))
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400);
        wait_stored(&server, "s");
        assert_eq!(
            rows(&server, "SELECT count(*) AS n FROM s"),
            vec![json!({"n": 1})]
        );
        if backend == Backend::Embedded {
            // (Kafka brokers' end offsets are shown, not relied on; Tansu's are off.)
            assert_eq!(
                stream_info(&server, "s")["offsets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o["next_offset"].as_u64().unwrap())
                    .sum::<u64>(),
                1
            );
        }
    }
}

#[test]
fn too_large_bodies_get_413_and_change_nothing() {
    for backend in backends() {
        let (_tmp, dir) = data_dir();
        let server = Server::start(
            backend,
            &dir,
            "[limits]\nmax_body_bytes = 2000\nmax_batch_events = 10\n",
        );
        append_ok(&server, "s", "{\"data\": 1}\n");
        let big = ndjson((0..200).map(|i| json!({"data": {"i": i}})));
        let (status, err) = append(&server, "s", &big);
        assert_eq!(status, 413, "{err}");
        assert!(
            err["error"]
                .as_str()
                .unwrap()
                .contains("over the limit of 2000 bytes"),
            "{err}"
        );
        let many = ndjson((0..11).map(|i| json!({"data": i})));
        let (status, err) = append(&server, "s", &many);
        assert_eq!(status, 413, "{err}");
        wait_stored(&server, "s");
        assert_eq!(
            rows(&server, "SELECT count(*) AS n FROM s"),
            vec![json!({"n": 1})]
        );
    }
}

#[test]
fn duplicate_ids_are_stored_once() {
    for backend in backends() {
        let (_tmp, dir) = data_dir();
        let server = Server::start(backend, &dir, SMALL_BLOCKS);
        let batch = ndjson((0..30).map(event));
        assert_eq!(append_ok(&server, "d", &batch)["appended"], 30);
        // A retry of the same batch, and a batch repeating an id inside itself.
        let retry = append_ok(&server, "d", &batch);
        assert_eq!(
            (retry["appended"].clone(), retry["duplicates"].clone()),
            (json!(0), json!(30))
        );
        let inner = ndjson([event(100), event(100), event(5), event(101)]);
        let out = append_ok(&server, "d", &inner);
        assert_eq!(
            (out["appended"].clone(), out["duplicates"].clone()),
            (json!(2), json!(2))
        );
        wait_stored(&server, "d");
        // Still caught once stored, and after a restart.
        let mut server = server;
        server.restart();
        assert_eq!(append_ok(&server, "d", &batch)["duplicates"], 30);
        wait_stored(&server, "d");
        assert_eq!(
            rows(
                &server,
                "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM d"
            ),
            vec![json!({"n": 32, "ids": 32})]
        );
    }
}

#[test]
fn events_of_one_key_keep_their_order() {
    for backend in backends() {
        let (_tmp, dir) = data_dir();
        let server = Server::start(backend, &dir, SMALL_BLOCKS);
        http()
            .put(server.url("/v1/streams/k"))
            .json(&json!({"partitions": 4}))
            .send()
            .unwrap();
        // Four clients, each appending its own key's sequence in many small requests.
        std::thread::scope(|s| {
            for c in 0..4 {
                let server = &server;
                s.spawn(move || {
                    for batch in 0..10 {
                        let body = ndjson((0..5).map(
                            |i| json!({"key": format!("key{c}"), "data": {"seq": batch * 5 + i}}),
                        ));
                        append_ok(server, "k", &body);
                    }
                });
            }
        });
        wait_stored(&server, "k");
        for c in 0..4 {
            let (status, lines) = replay(&server, "k", &format!("key=key{c}"));
            assert_eq!(status, 200);
            let seqs: Vec<u64> = lines
                .iter()
                .map(|l| l["data"]["seq"].as_u64().unwrap())
                .collect();
            assert_eq!(seqs, (0..50).collect::<Vec<_>>(), "key{c}");
            let partitions: HashSet<u64> = lines
                .iter()
                .map(|l| l["partition"].as_u64().unwrap())
                .collect();
            assert_eq!(partitions.len(), 1);
            let offsets: Vec<u64> = lines
                .iter()
                .map(|l| l["offset"].as_u64().unwrap())
                .collect();
            assert!(offsets.windows(2).all(|w| w[0] < w[1]));
        }
    }
}

#[test]
fn replay_from_time_and_by_key() {
    for backend in backends() {
        let (_tmp, dir) = data_dir();
        let server = Server::start(backend, &dir, SMALL_BLOCKS);
        http()
            .put(server.url("/v1/streams/r"))
            .json(&json!({"partitions": 1}))
            .send()
            .unwrap();
        append_ok(&server, "r", &ndjson((0..50).map(event)));
        wait_stored(&server, "r");
        // Event i is at minute i: from minute 30 on.
        let (status, lines) = replay(&server, "r", "from_time=2024-05-01T00:30:00Z");
        assert_eq!(status, 200);
        assert_eq!(lines.first().unwrap()["offset"], 30);
        assert_eq!(lines.len(), 20);
        let (_, lines) = replay(&server, "r", "from_time=2024-05-01T02:29:30%2B02:00");
        assert_eq!(lines.first().unwrap()["offset"], 30);
        let (_, none) = replay(&server, "r", "from_time=2030-01-01T00:00:00Z");
        assert!(none.is_empty());
        let (_, keyed) = replay(&server, "r", "key=c3&from=20");
        let offsets: Vec<u64> = keyed
            .iter()
            .map(|l| l["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offsets, vec![23, 28, 33, 38, 43, 48]);
        let (_, keyed_time) = replay(&server, "r", "key=c3&from_time=2024-05-01T00:40:00Z");
        assert_eq!(
            keyed_time
                .iter()
                .map(|l| l["offset"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            vec![43, 48]
        );
        for (query, status) in [
            ("partition=1", 400),
            ("from=-1", 400),
            ("from=abc&partition=0", 400),
            ("from_time=yesterday", 400),
            ("colour=red", 400),
            ("source=disk", 400),
        ] {
            assert_eq!(replay(&server, "r", query).0, status, "{query}");
        }
        assert_eq!(replay(&server, "missing", "").0, 404);
    }
}

#[test]
fn sql_is_read_only_and_errors_are_clear() {
    for backend in backends() {
        let (_tmp, dir) = data_dir();
        let server = Server::start(backend, &dir, "");
        append_ok(&server, "t", "{\"data\": {\"a\": 1}}");
        for query in [
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
            "COPY (SELECT 1) TO '/tmp/strata-copy.csv'",
            "INSERT INTO t VALUES (1)",
            "CREATE TABLE x AS SELECT 1",
            "DROP TABLE t",
            "SET datafusion.execution.batch_size = 1",
        ] {
            let (status, err) = sql(&server, query);
            assert_eq!(status, 400, "{query}");
            assert!(
                err["error"].as_str().unwrap().contains("read-only"),
                "{query}: {err}"
            );
        }
        assert!(!std::path::Path::new("/tmp/strata-copy.csv").exists());
        let (status, err) = sql(&server, "SELECT nope FROM t");
        assert_eq!(status, 400);
        assert!(err["error"].as_str().unwrap().contains("nope"), "{err}");
        assert_eq!(sql(&server, "SELECT * FROM missing").0, 400);
        let resp = http()
            .post(server.url("/v1/sql"))
            .body("{\"query\": 1}")
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400);
        // Health and metrics.
        assert_eq!(
            http()
                .get(server.url("/healthz"))
                .send()
                .unwrap()
                .status()
                .as_u16(),
            200
        );
        wait_stored(&server, "t");
        rows(&server, "SELECT count(*) FROM t");
        let mut names = vec![
            "strata_events_appended_total",
            "strata_bytes_appended_total",
            "strata_store_lag_events",
            "strata_queries_total",
            "strata_query_seconds_bucket",
        ];
        if backend == Backend::Embedded {
            names.extend(["strata_log_fsyncs_total", "strata_log_fsync_seconds_bucket"]);
        }
        // (On Kafka the lag gauge appears once the client has seen the log's end.)
        eventually("every metric in /metrics", || {
            let metrics = http()
                .get(server.url("/metrics"))
                .send()
                .ok()?
                .text()
                .ok()?;
            names
                .iter()
                .all(|name| metrics.contains(name))
                .then_some(())
        });
        // Streams listing, with auto-created streams at the default partition count.
        let list: Value = http()
            .get(server.url("/v1/streams"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(list[0]["name"], "t");
        assert_eq!(list[0]["partitions"], 4);
    }
}

#[test]
fn a_query_after_an_appends_token_sees_its_events() {
    for backend in backends() {
        let (_tmp, dir) = data_dir();
        let server = Server::start(backend, &dir, SMALL_BLOCKS);
        http()
            .put(server.url("/v1/streams/ryw"))
            .json(&json!({"partitions": 3}))
            .send()
            .unwrap();
        let mut tokens = Vec::new();
        for round in 0..3 {
            let out = append_ok(
                &server,
                "ryw",
                &ndjson((round * 20..round * 20 + 20).map(event)),
            );
            let token = out["token"].as_str().unwrap().to_owned();
            assert!(token.starts_with("v1.ryw."), "{token}");
            // No polling: the query itself waits for the token.
            let resp = http()
                .post(server.url("/v1/sql"))
                .json(&json!({"sql": "SELECT count(*) AS n FROM ryw", "after": token, "timeout_ms": 60000}))
                .send()
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            let rows: Value = resp.json().unwrap();
            assert_eq!(rows, json!([{"n": (round + 1) * 20}]));
            tokens.push(token);
        }
        // Several tokens at once.
        let resp = http()
            .post(server.url("/v1/sql"))
            .json(&json!({"sql": "SELECT count(*) AS n FROM ryw", "after": tokens}))
            .send()
            .unwrap();
        assert_eq!(resp.json::<Value>().unwrap(), json!([{"n": 60}]));
        // A token not reached in time, and tokens that do not parse.
        let resp = http()
            .post(server.url("/v1/sql"))
            .json(&json!({"sql": "SELECT 1", "after": "v1.ryw.0-1000000", "timeout_ms": 200}))
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 408);
        let err: Value = resp.json().unwrap();
        assert!(
            err["error"]
                .as_str()
                .unwrap()
                .contains("partition 0 of ryw is applied up to offset"),
            "{err}"
        );
        for bad in ["nope", "v1.ryw.0-x", "v1.ryw.9-1"] {
            let (status, err) = {
                let resp = http()
                    .post(server.url("/v1/sql"))
                    .json(&json!({"sql": "SELECT 1", "after": bad, "timeout_ms": 200}))
                    .send()
                    .unwrap();
                (resp.status().as_u16(), resp.json::<Value>().unwrap())
            };
            assert_eq!(status, 400, "{bad}: {err}");
        }
    }
}
