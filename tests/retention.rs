//! Retention of the embedded log: sealed segments past retention are deleted once the shards
//! hold their events (and never before); the shards keep serving everything, and replay straight
//! from the log says clearly where the log now starts.

use crate::common::*;
use serde_json::json;

fn segments(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("log/s/0"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .count()
}

#[test]
fn embedded_retention_deletes_only_what_the_shards_hold() {
    let (_tmp, dir) = data_dir();
    let mut server = Server::start(
        Backend::Embedded,
        &dir,
        "[log.embedded]\nsegment_bytes = 20000\nretention_bytes = 1\n",
    );
    create_stream(&server, "s", 1);
    for batch in 0..20 {
        let body: String = (0..100)
            .map(|i| {
                json!({"id": format!("e{batch}-{i}"), "data": {"pad": "x".repeat(100)}}).to_string()
                    + "\n"
            })
            .collect();
        append_ok(&server, "s", &body);
    }
    wait_stored(&server, "s");
    eventually("sealed segments deleted", || {
        (segments(&dir) == 1).then_some(())
    });
    assert_eq!(
        rows(
            &server,
            "SELECT count(*) AS n, min(\"offset\") AS first FROM s"
        ),
        vec![json!({"n": 2000, "first": 0})]
    );
    let (status, lines) = replay(&server, "s", "partition=0&source=log");
    assert_eq!(status, 410, "{lines:?}");
    let (status, stored) = replay(&server, "s", "partition=0");
    assert_eq!((status, stored.len()), (200, 2000));
    // After kill -9 the log starts where retention left it and appends go on from its end.
    server.kill9();
    server.restart();
    let out = append_ok(&server, "s", "{\"id\": \"after\", \"data\": 1}\n");
    assert_eq!(out["partitions"][0]["first_offset"], 2000);
    wait_stored(&server, "s");
    assert_eq!(
        rows(&server, "SELECT count(*) AS n FROM s"),
        vec![json!({"n": 2001})]
    );
}
