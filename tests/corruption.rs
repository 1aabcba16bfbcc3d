//! Damaged files are found by checksum and reported with where they are, never served: a log
//! segment damaged in the middle stops the node at start (file and byte named); a damaged shard
//! file fails the reads that touch it (shard and directory named) until the shard is rebuilt
//! from the log.

use crate::common::*;
use serde_json::json;
use std::path::{Path, PathBuf};

/// Flips `n` bytes in the middle of `path`.
fn damage(path: &Path, n: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + n] {
        *b ^= 0xff;
    }
    std::fs::write(path, bytes).unwrap();
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Event `i`'s data: its number and `pad` hex digits that do not compress.
fn data(i: usize, pad: usize) -> serde_json::Value {
    let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let text: String = (0..pad.div_ceil(16))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{x:016x}")
        })
        .collect();
    json!({"i": i, "pad": &text[..pad]})
}

fn body(from: usize, n: usize, pad: usize) -> String {
    (from..from + n)
        .map(|i| json!({"id": format!("e{i}"), "data": data(i, pad)}).to_string() + "\n")
        .collect()
}

#[test]
fn a_segment_damaged_in_the_middle_stops_the_node_naming_file_and_byte() {
    let (_tmp, dir) = data_dir();
    let mut server = Server::start(Backend::Embedded, &dir, "");
    for i in 0..5 {
        append_ok(&server, "s", &body(i * 100, 100, 10));
    }
    assert!(server.stop());
    let segments: Vec<PathBuf> = files_under(&dir.join("log/s"))
        .into_iter()
        .filter(|p| {
            p.extension().is_some_and(|e| e == "log") && std::fs::metadata(p).unwrap().len() > 0
        })
        .collect();
    assert!(!segments.is_empty());
    let segment = &segments[0];
    damage(segment, 1);

    let config = dir.with_extension("toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--pg",
            "off",
            "--flight",
            "off",
            "--data-dir",
        ])
        .arg(&dir)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = segment.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        stderr.contains(&name)
            && stderr.contains("at byte ")
            && stderr.contains("checksum mismatch"),
        "{stderr}"
    );
    assert!(
        stderr.contains("acknowledged events are damaged"),
        "{stderr}"
    );
}

#[test]
fn a_damaged_shard_file_fails_reads_with_its_location_until_rebuilt_from_the_log() {
    let (_tmp, dir) = data_dir();
    let mut server = Server::start(Backend::Embedded, &dir, "");
    create_stream(&server, "s", 1);
    // Enough data (about 12 MB) that the shard's memtables are flushed to table files.
    let n = 60_000;
    for i in (0..n).step_by(10_000) {
        append_ok(&server, "s", &body(i, 10_000, 200));
    }
    wait_stored(&server, "s");
    let bytes: usize = (0..n).map(|i| data(i, 200).to_string().len()).sum();
    let total = json!([{"n": n, "bytes": bytes, "offsets": n * (n - 1) / 2, "ids": n, "times": n}]);
    // Reads every column that is stored apart (in blob files): data, offset, id, time.
    let query = "SELECT count(*) AS n, sum(length(data)) AS bytes, sum(offset) AS offsets, \
                 count(id) AS ids, count(time) AS times FROM s";
    assert_eq!(json!(rows(&server, query)), total);
    assert!(server.stop());
    // Every large table and blob file of the shard (its blocks, in the bulk database, and its row
    // tail; not fjall's own keyspace 0 of either database).
    let own = [
        dir.join("store/keyspaces/0"),
        dir.join("store/bulk/keyspaces/0"),
    ];
    let tables: Vec<PathBuf> = files_under(&dir.join("store"))
        .into_iter()
        .filter(|p| {
            p.parent()
                .is_some_and(|d| d.ends_with("tables") || d.ends_with("blobs"))
                && !own.iter().any(|o| p.starts_with(o))
                && std::fs::metadata(p).unwrap().len() > 1_000_000
        })
        .collect();
    assert!(
        tables.iter().any(|p| p.starts_with(dir.join("store/bulk"))),
        "no block file in the bulk database: {tables:?}"
    );
    assert!(!tables.is_empty(), "no flushed table file");
    for table in &tables {
        damage(table, 8);
    }

    server.restart();
    let (status, err) = sql(&server, query);
    assert_eq!(status, 500, "{err}");
    let message = err["error"].as_str().unwrap();
    assert!(
        message.contains("corrupt shard data at shard s/0")
            && message.contains("keyspaces")
            && message.contains("ChecksumMismatch"),
        "{message}"
    );
    let metrics = metrics_text(&server);
    assert!(
        metrics.contains("strata_store_corruption_total"),
        "{metrics}"
    );

    // The log still holds every event: a shard rebuilt from it serves them all again.
    assert!(server.stop());
    std::fs::remove_dir_all(dir.join("store")).unwrap();
    server.restart();
    wait_stored(&server, "s");
    assert_eq!(json!(rows(&server, query)), total);
}
