//! `kill -9` in the middle of concurrent appends loses nothing acknowledged and stores nothing twice.

use crate::common::*;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[test]
fn kill_9_mid_stream_loses_no_acknowledged_event() {
    for backend in backends() {
        let (_tmp, dir) = data_dir();
        let mut server = Server::start(backend, &dir, "[store]\nblock_rows = 64\n");
        http()
            .put(server.url("/v1/streams/c"))
            .json(&json!({"partitions": 3}))
            .send()
            .unwrap();
        let acked = Mutex::new(HashSet::new());
        let outcomes = Mutex::new(Vec::new());
        let stop = AtomicBool::new(false);
        let base = server.base.clone();
        std::thread::scope(|s| {
            for client in 0..4 {
                let (acked, outcomes, stop, base) = (&acked, &outcomes, &stop, base.clone());
                s.spawn(move || {
                    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
                    for batch in 0..10_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let ids: Vec<String> = (0..25).map(|i| format!("{client}-{batch}-{i}")).collect();
                        let body: String = ids
                            .iter()
                            .map(|id| format!("{}\n", json!({"id": id, "key": format!("k{}", id.len() % 7), "data": {"client": client}})))
                            .collect();
                        match http.post(format!("{base}/v1/streams/c/events")).body(body).send() {
                            Ok(r) if r.status().is_success() => {
                                acked.lock().unwrap().extend(ids);
                                outcomes.lock().unwrap().push(r.json::<serde_json::Value>().unwrap_or_default());
                            }
                            _ => break,
                        }
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(1500));
            server.kill9();
            stop.store(true, Ordering::Relaxed);
        });
        let acked = acked.into_inner().unwrap();
        assert!(
            acked.len() > 100,
            "too few appends before the kill: {}",
            acked.len()
        );

        server.restart();
        for outcome in outcomes.into_inner().unwrap() {
            server.note_append("c", &outcome);
        }
        wait_stored(&server, "c");
        let counts = rows(
            &server,
            "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM c",
        );
        let (n, ids) = (
            counts[0]["n"].as_u64().unwrap(),
            counts[0]["ids"].as_u64().unwrap(),
        );
        assert_eq!(n, ids, "an event was stored twice");
        let stored: HashSet<String> = rows(&server, "SELECT id FROM c")
            .into_iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();
        let lost: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
        assert!(
            lost.is_empty(),
            "{} acknowledged events lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        // Replay agrees with SQL and offsets are contiguous per partition.
        let mut replayed = 0;
        for p in 0..3 {
            let (_, lines) = replay(&server, "c", &format!("partition={p}"));
            assert!(
                lines
                    .iter()
                    .enumerate()
                    .all(|(i, l)| l["offset"] == i as u64),
                "gap in partition {p}"
            );
            replayed += lines.len() as u64;
        }
        assert_eq!(replayed, n);
        // And the node keeps taking appends.
        append_ok(&server, "c", "{\"data\": 1, \"id\": \"after\"}");
    }
}
