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

/// The peak resident set of `pid` so far, in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[test]
fn memory_bombs_fail_with_422_and_the_process_stays_under_the_limit() {
    const LIMIT: u64 = 64 << 20;
    // What the process may hold past its peak before the bombs besides the limit. DataFusion
    // accounts a hash table (`DISTINCT`, `count(DISTINCT …)`) after it grows: the growth the
    // limit refuses has already held the old and the new table (three times what was accounted)
    // in each aggregation running at once, and the allocator keeps what was freed for a second.
    // So up to three times the limit more, and 64 MiB for a debug build's buffers of one
    // request and batches in flight. Measured: `count(DISTINCT …)` +140-170 MiB alone, +236 MiB
    // once in CI beside the other tests (stop 42); `string_agg` +69-92 MiB since it reserves
    // its growth first.
    const SLACK: u64 = 3 * LIMIT + (64 << 20);
    let (_tmp, dir) = data_dir();
    let server = Server::start(
        Backend::Embedded,
        &dir,
        &format!("[limits]\nquery_memory_bytes = {LIMIT}\n"),
    );
    append_ok(
        &server,
        "s",
        "{\"data\": {\"t\": \"abc\"}}\n{\"data\": {\"t\": \"de\"}}\n",
    );
    wait_stored(&server, "s");
    // Warm up: plan and run a few ordinary queries so that the baseline holds what any query does.
    for _ in 0..3 {
        assert_eq!(
            rows(&server, "SELECT count(*) AS n FROM s"),
            vec![json!({"n": 2})]
        );
    }
    let before = peak_rss(server.pid());
    let bombs = [
        "SELECT length(repeat('x', 1000000000)) AS n",
        "SELECT length(lpad('x', 1000000000)) AS n",
        "SELECT length(rpad('x', 1000000000, 'yz')) AS n",
        "SELECT length(repeat(json_get_str(data, 't'), 500000000)) AS n FROM s",
        "SELECT cardinality(array_repeat(1, 1000000000)) AS n",
        "SELECT cardinality(array_resize([1], 1000000000, 0)) AS n",
        "SELECT cardinality(range(0, 1000000000)) AS n",
        "SELECT cardinality(generate_series(1, 1000000000)) AS n",
        "SELECT length(replace(repeat('a', 10000), 'a', repeat('b', 100000))) AS n",
        "SELECT length(regexp_replace(repeat('a', 10000), '', repeat('b', 100000), 'g')) AS n",
        "SELECT length(string_agg(repeat('x', 1000), ',')) AS n FROM generate_series(1, 1000000)",
        "SELECT cardinality(array_agg(value)) AS n FROM generate_series(1, 100000000)",
        // Not in order (sorted input is aggregated as it streams, in bounded memory).
        "SELECT count(DISTINCT value * 7919 % 100000007) AS n FROM generate_series(1, 100000000)",
        "SELECT count(DISTINCT (value * 7919 % 100000007)::text) AS n FROM generate_series(1, 100000000)",
        "SELECT count(*) AS n FROM (SELECT DISTINCT value * 7919 % 100000007 FROM generate_series(1, 100000000))",
        "SELECT count(DISTINCT value * 7919 % 100000007) AS n, count(DISTINCT value % 1000) AS m FROM generate_series(1, 100000000)",
    ];
    for bomb in bombs {
        let (status, err) = sql(&server, bomb);
        assert_eq!(status, 422, "{bomb}: {err}");
        let message = err["error"].as_str().unwrap_or_default();
        assert!(
            message.contains("limits.query_memory_bytes") || message.contains("resource limit"),
            "{bomb}: {message}"
        );
        let peak = peak_rss(server.pid());
        assert!(
            peak < before + LIMIT + SLACK,
            "{bomb}: peak RSS {} MiB, from {} MiB before the bombs (limit {} MiB + slack {} MiB)",
            peak >> 20,
            before >> 20,
            LIMIT >> 20,
            SLACK >> 20
        );
    }
    // The same limit over the PostgreSQL wire protocol: SQLSTATE 53200.
    let (host, port) = server.pg.rsplit_once(':').unwrap();
    let out = std::process::Command::new("psql")
        .args([
            "-X", "-h", host, "-p", port, "-U", "analyst", "-d", "strata",
        ])
        .args(["-v", "VERBOSITY=verbose", "-c"])
        .arg("SELECT length(repeat('x', 1000000000))")
        .env("PGPASSWORD", "x")
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ERROR:  53200") && stderr.contains("limits.query_memory_bytes"),
        "{stderr}"
    );
    assert!(peak_rss(server.pid()) < before + LIMIT + SLACK);
    // The node answers afterwards.
    assert_eq!(
        rows(&server, "SELECT count(*) AS n FROM s"),
        vec![json!({"n": 2})]
    );
}
