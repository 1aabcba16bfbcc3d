//! A full disk: the embedded log's directory on a small tmpfs. Appends fail with 507 and a clear
//! message once it is full, nothing acknowledged is lost, and appends resume when space returns.
//! The store's directory on a small tmpfs: once fjall cannot write, the node stops with an error
//! (fjall refuses all writes until reopened), and a restart once space returns recovers every
//! acknowledged event from the log.
//! Needs to mount a tmpfs (root, or CAP_SYS_ADMIN); set STRATA_TEST_NO_MOUNT=1 to skip it on a
//! machine that cannot.

use crate::common::*;
use serde_json::json;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs of `size` mounted at a directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        if std::env::var_os("STRATA_TEST_NO_MOUNT").is_some() {
            eprintln!("STRATA_TEST_NO_MOUNT is set: the full-disk test is skipped");
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("the mount command");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs for the full-disk test (needs root or CAP_SYS_ADMIN; \
             STRATA_TEST_NO_MOUNT=1 skips it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn batch(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| {
            json!({"id": format!("e{i}"), "data": {"i": i, "pad": "x".repeat(200)}}).to_string()
                + "\n"
        })
        .collect()
}

#[test]
fn a_full_disk_refuses_appends_with_507_loses_nothing_and_recovers() {
    let (_tmp, dir) = data_dir();
    let log_dir = dir.join("log");
    let Some(_tmpfs) = Tmpfs::mount(&log_dir, "8m") else {
        return;
    };
    let mut server = Server::start(Backend::Embedded, &dir, "");
    create_stream(&server, "s", 1);
    // Most of the space goes to a filler file, so the log fills after a few appends.
    let filler = log_dir.join("filler");
    std::fs::write(&filler, vec![1u8; 6 << 20]).unwrap();

    let mut acked = HashSet::new();
    let mut next = 0;
    let refused = loop {
        assert!(next < 100_000, "the disk never filled");
        let (status, body) = append(&server, "s", &batch(next, 500));
        match status {
            200 => {
                assert_eq!(body["appended"], 500);
                acked.extend((next..next + 500).map(|i| format!("e{i}")));
                next += 500;
            }
            507 => break body,
            other => panic!("{other}: {body}"),
        }
    };
    let message = refused["error"].as_str().unwrap();
    assert!(
        message.contains("log storage is full") && message.contains("free space and retry"),
        "{message}"
    );
    // Still full: refused again, and reads go on.
    assert_eq!(append(&server, "s", &batch(next, 500)).0, 507);
    wait_stored(&server, "s");
    assert_eq!(
        rows(&server, "SELECT count(*) AS n FROM s"),
        vec![json!({"n": acked.len()})]
    );

    // Space returns: the refused batch is retried and goes through; after a kill -9 everything
    // acknowledged is there once.
    std::fs::remove_file(&filler).unwrap();
    append_ok(&server, "s", &batch(next, 500));
    acked.extend((next..next + 500).map(|i| format!("e{i}")));
    server.kill9();
    server.restart();
    wait_stored(&server, "s");
    let counts = rows(
        &server,
        "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM s",
    );
    assert_eq!(counts, vec![json!({"n": acked.len(), "ids": acked.len()})]);
    let (status, lines) = replay(&server, "s", "partition=0");
    assert_eq!(status, 200);
    let offsets: Vec<u64> = lines
        .iter()
        .map(|l| l["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (0..acked.len() as u64).collect::<Vec<_>>());
    drop(server);
}

#[test]
fn a_full_store_disk_stops_the_node_and_a_restart_recovers_everything() {
    let (_tmp, dir) = data_dir();
    let store_dir = dir.join("store");
    let Some(_tmpfs) = Tmpfs::mount(&store_dir, "96m") else {
        return;
    };
    let mut server = Server::start(Backend::Embedded, &dir, "");
    create_stream(&server, "s", 1);
    let filler = store_dir.join("filler");
    std::fs::write(&filler, vec![1u8; 80 << 20]).unwrap();

    // Appends go on to the log (another disk) until the store runs out of space and the node
    // stops by itself, with an error saying why.
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut acked = HashSet::new();
    let mut next = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = server.exited() {
            break status;
        }
        assert!(Instant::now() < deadline, "the node never stopped");
        let sent = http
            .post(server.url("/v1/streams/s/events"))
            .body(batch(next, 2000))
            .send();
        match sent {
            Ok(r) if r.status().is_success() => {
                let outcome: serde_json::Value = r.json().unwrap();
                server.note_append("s", &outcome);
                acked.extend((next..next + 2000).map(|i| format!("e{i}")));
                next += 2000;
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    assert!(!status.success());
    let log = server.log();
    assert!(
        log.contains("refuses writes") && log.contains("is its disk full?"),
        "{log}"
    );
    assert!(!acked.is_empty());

    std::fs::remove_file(&filler).unwrap();
    server.restart();
    wait_stored(&server, "s");
    assert_eq!(
        rows(
            &server,
            "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM s"
        ),
        vec![json!({"n": acked.len(), "ids": acked.len()})]
    );
}
