//! Resource limits end to end: each over-limit request gets its status and a clear message,
//! nothing is written, and the server goes on answering.

use crate::common::*;
use serde_json::json;
use std::time::{Duration, Instant};

fn count(server: &Server, stream: &str) -> serde_json::Value {
    rows(server, &format!("SELECT count(*) AS n FROM {stream}"))[0]["n"].clone()
}

#[test]
fn an_oversized_event_gets_413_and_changes_nothing() {
    for backend in backends() {
        let (_tmp, dir) = data_dir();
        let server = Server::start(backend, &dir, "[limits]\nmax_event_bytes = 100\n");
        append_ok(&server, "s", "{\"id\": \"small\", \"data\": 1}\n");
        let big = format!(
            "{{\"id\": \"ok\", \"data\": 2}}\n{{\"id\": \"big\", \"data\": \"{}\"}}\n",
            "x".repeat(200)
        );
        let (status, err) = append(&server, "s", &big);
        assert_eq!(status, 413, "{err}");
        let message = err["error"].as_str().unwrap();
        assert!(
            message.contains("line 2") && message.contains("over the limit of 100"),
            "{message}"
        );
        // The same as a JSON array names the element.
        let array = format!("[{{\"data\": \"{}\"}}]", "y".repeat(200));
        let (status, err) = append(&server, "s", &array);
        assert_eq!(status, 413, "{err}");
        assert!(
            err["error"].as_str().unwrap().contains("element 1"),
            "{err}"
        );
        wait_stored(&server, "s");
        assert_eq!(count(&server, "s"), 1);
    }
}

#[test]
fn slow_queries_hit_the_time_limit_and_busy_servers_answer_503() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(
        Backend::Embedded,
        &dir,
        "[limits]\nquery_timeout_ms = 2000\nmax_concurrent_requests = 1\n",
    );
    append_ok(&server, "s", "{\"data\": 1}\n");
    wait_stored(&server, "s");
    let slow = "SELECT sum(value) AS s FROM generate_series(1, 100000000000)";
    std::thread::scope(|scope| {
        let running = scope.spawn(|| {
            let started = Instant::now();
            let (status, err) = sql(&server, slow);
            (status, err, started.elapsed())
        });
        // While it runs (it is given half a second to start), other requests are turned away
        // at once; health is not.
        std::thread::sleep(Duration::from_millis(500));
        let (status, refused) = append(&server, "s", "{\"id\": \"refused\", \"data\": 2}\n");
        assert_eq!(status, 503, "{refused}");
        assert!(
            refused["error"]
                .as_str()
                .unwrap()
                .contains("1 requests at once"),
            "{refused}"
        );
        let resp = http().get(server.url("/v1/streams")).send().unwrap();
        assert_eq!(resp.status().as_u16(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_eq!(
            http()
                .get(server.url("/healthz"))
                .send()
                .unwrap()
                .status()
                .as_u16(),
            200
        );
        let (status, err, took) = running.join().unwrap();
        assert_eq!(status, 422, "{err}");
        assert!(
            err["error"]
                .as_str()
                .unwrap()
                .contains("limit of 2000 ms (limits.query_timeout_ms)"),
            "{err}"
        );
        assert!(took < Duration::from_secs(20), "{took:?}");
    });
    // The server lives, and the refused append wrote nothing.
    let ids = rows(&server, "SELECT count(*) AS n FROM s WHERE id = 'refused'");
    assert_eq!(ids, vec![json!({"n": 0})]);
    assert_eq!(rows(&server, "SELECT 1 AS one"), vec![json!({"one": 1})]);
}

#[test]
fn a_query_over_the_memory_limit_fails_and_the_server_lives() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(
        Backend::Embedded,
        &dir,
        "[limits]\nquery_memory_bytes = 4000000\n",
    );
    let (status, err) = sql(
        &server,
        "SELECT value % 1000000 AS k, count(*) AS n FROM generate_series(1, 3000000) GROUP BY 1",
    );
    assert_eq!(status, 422, "{err}");
    let message = err["error"].as_str().unwrap();
    assert!(message.contains("resource limit"), "{message}");
    let (status, err) = sql(
        &server,
        "SELECT value FROM generate_series(1, 3000000) ORDER BY value DESC",
    );
    assert_eq!(status, 422, "{err}");
    // Small queries still run.
    assert_eq!(
        rows(
            &server,
            "SELECT count(DISTINCT value) AS n FROM generate_series(1, 1000)"
        ),
        vec![json!({"n": 1000})]
    );
}
