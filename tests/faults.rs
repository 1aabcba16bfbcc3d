//! The fault harness: sustained concurrent ingest into a stream with materialized views while the
//! node is killed with `kill -9` at random moments, over `STRATA_FAULT_ROUNDS` rounds (20 by
//! default; the test command runs 3; `scripts/faults.sh` runs the full 20 on both logs). After
//! every round it checks that each acknowledged event is stored exactly once, that each view
//! equals its recomputation from the stream, and that replay returns contiguous offsets; then it
//! prints the figures (rounds, events acknowledged, lost, duplicated, recovery time p50/max).
//! `STRATA_FAULT_SEED` repeats a run; `STRATA_FAULT_REPORT` names a file the summary is added to.

use crate::common::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 4;
const BY_KEY: &str =
    "SELECT key, count(*) AS n, sum(json_get_int(data, 'v')) AS total FROM h GROUP BY key";
const BY_MINUTE: &str = "SELECT date_bin(INTERVAL '1 minute', time) AS minute, count(*) AS n, \
    max(json_get_int(data, 'v')) AS top FROM h GROUP BY 1";

/// xorshift64*: random enough for kill moments, and repeatable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// What a run found.
#[derive(Default)]
struct Figures {
    rounds: usize,
    acked: usize,
    lost: usize,
    duplicated: usize,
    view_mismatches: usize,
    replay_gaps: usize,
    /// Restart → healthy, and restart → every acknowledged append applied by the store and the
    /// views (asked with their merged consistency token), per round.
    healthy: Vec<Duration>,
    recovered: Vec<Duration>,
}

fn percentile(values: &[Duration], p: f64) -> Duration {
    let mut v = values.to_vec();
    v.sort();
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

impl Figures {
    fn summary(&self, backend: Backend, seed: u64) -> String {
        format!(
            "fault harness ({backend:?} log, seed {seed}): rounds {}, events acknowledged {}, lost {}, \
             duplicated {}, view mismatches {}, replay gaps {}, recovery to healthy p50 {} max {}, \
             recovery to every acknowledged append applied p50 {} max {}",
            self.rounds,
            self.acked,
            self.lost,
            self.duplicated,
            self.view_mismatches,
            self.replay_gaps,
            ms(percentile(&self.healthy, 0.5)),
            ms(percentile(&self.healthy, 1.0)),
            ms(percentile(&self.recovered, 0.5)),
            ms(percentile(&self.recovered, 1.0)),
        )
    }
}

/// Appends from 4 clients until `stop` or until the server goes away: batches of 50 events with
/// unique ids; a batch counts once its append is acknowledged.
fn ingest(
    base: &str,
    round: usize,
    stop: &AtomicBool,
    acked: &Mutex<HashSet<String>>,
    tokens: &Mutex<BTreeMap<u32, u64>>,
) {
    std::thread::scope(|s| {
        for client in 0..4 {
            s.spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                for batch in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let ids: Vec<String> = (0..50)
                        .map(|i| format!("r{round}-c{client}-b{batch}-{i}"))
                        .collect();
                    let body: String = ids
                        .iter()
                        .enumerate()
                        .map(|(i, id)| {
                            json!({"id": id, "key": format!("k{}", (batch * 7 + i) % 23),
                                   "data": {"v": (batch * 50 + i) % 1000}})
                            .to_string()
                                + "\n"
                        })
                        .collect();
                    match http
                        .post(format!("{base}/v1/streams/h/events"))
                        .body(body)
                        .send()
                    {
                        Ok(r) if r.status().is_success() => {
                            let outcome: Value = r.json().unwrap_or_default();
                            merge_token(&mut tokens.lock().unwrap(), &outcome["token"]);
                            acked.lock().unwrap().extend(ids);
                        }
                        // Not acknowledged (a log that cannot take it now): not counted.
                        Ok(r) if r.status().is_server_error() => continue,
                        Ok(r) => panic!("append refused: {} {:?}", r.status(), r.text()),
                        // The node was killed under this request: its outcome is unknown.
                        Err(_) => break,
                    }
                }
            });
        }
    });
}

/// Merges a consistency token (`v1.h.P-N.P-N…`) into per-partition offsets.
fn merge_token(into: &mut BTreeMap<u32, u64>, token: &Value) {
    let Some(text) = token.as_str() else { return };
    for pair in text.split('.').skip(2) {
        if let Some((p, n)) = pair.split_once('-')
            && let (Ok(p), Ok(n)) = (p.parse::<u32>(), n.parse::<u64>())
        {
            let at = into.entry(p).or_default();
            *at = (*at).max(n);
        }
    }
}

/// Waits until the store (and the views) have applied every acknowledged append, asking with
/// one merged consistency token; returns how long that took.
fn wait_applied(server: &Server, tokens: &BTreeMap<u32, u64>) {
    if tokens.is_empty() {
        return;
    }
    let pairs: Vec<String> = tokens.iter().map(|(p, n)| format!("{p}-{n}")).collect();
    let token = format!("v1.h.{}", pairs.join("."));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let resp = http()
            .post(server.url("/v1/sql"))
            .json(&json!({"sql": "SELECT 1", "after": token, "timeout_ms": 10_000}))
            .send();
        if resp.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged appends never applied"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn canonical(rows: Vec<Value>) -> Vec<String> {
    let mut out: Vec<String> = rows.into_iter().map(|r| r.to_string()).collect();
    out.sort();
    out
}

/// Whether view `name` equals its recomputation within 60 s.
fn view_converges(server: &Server, name: &str, definition: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let (s1, view) = sql(server, &format!("SELECT * FROM {name}"));
        let (s2, recomputed) = sql(server, definition);
        if s1 == 200
            && s2 == 200
            && canonical(view.as_array().cloned().unwrap_or_default())
                == canonical(recomputed.as_array().cloned().unwrap_or_default())
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Replay's problems: the log's offsets must run 0, 1, 2, … to its end in every partition, and
/// the shards' replay must hold exactly the events SQL sees, in offset order.
fn replay_gaps(server: &Server) -> usize {
    let mut gaps = 0;
    for p in 0..PARTITIONS {
        let (status, logged) = replay(
            server,
            "h",
            &format!("partition={p}&source=log&limit=100000000"),
        );
        assert_eq!(status, 200);
        let offsets: Vec<u64> = logged
            .iter()
            .map(|l| l["offset"].as_u64().unwrap())
            .collect();
        if offsets != (0..offsets.len() as u64).collect::<Vec<_>>() {
            eprintln!("partition {p}: the log's offsets are not contiguous");
            gaps += 1;
        }
        let (status, stored) = replay(server, "h", &format!("partition={p}&limit=100000000"));
        assert_eq!(status, 200);
        let stored: Vec<u64> = stored
            .iter()
            .map(|l| l["offset"].as_u64().unwrap())
            .collect();
        let in_sql = rows(
            server,
            &format!("SELECT count(*) AS n FROM h WHERE partition = {p}"),
        )[0]["n"]
            .as_u64()
            .unwrap();
        if !stored.windows(2).all(|w| w[0] < w[1]) || stored.len() as u64 != in_sql {
            eprintln!("partition {p}: the shards' replay is out of order or incomplete");
            gaps += 1;
        }
    }
    gaps
}

fn run(backend: Backend, rounds: usize, seed: u64) -> Figures {
    let mut rng = Rng(seed | 1);
    let (_tmp, dir) = data_dir();
    let mut server = Server::start(backend, &dir, "[store]\nblock_rows = 256\n");
    create_stream(&server, "h", PARTITIONS);
    for (name, definition) in [("h_by_key", BY_KEY), ("h_by_minute", BY_MINUTE)] {
        let (status, body) = sql(
            &server,
            &format!("CREATE MATERIALIZED VIEW {name} AS {definition}"),
        );
        assert_eq!(status, 200, "{body}");
    }
    let mut figures = Figures::default();
    let acked = Mutex::new(HashSet::new());
    let tokens = Mutex::new(BTreeMap::new());
    for round in 0..rounds {
        let stop = AtomicBool::new(false);
        let base = server.base.clone();
        let kill_after = Duration::from_millis(rng.between(300, 2000));
        std::thread::scope(|s| {
            s.spawn(|| ingest(&base, round, &stop, &acked, &tokens));
            std::thread::sleep(kill_after);
            server.kill9();
            stop.store(true, Ordering::Relaxed);
        });
        let started = Instant::now();
        server.restart();
        figures.healthy.push(started.elapsed());
        let acked_now = acked.lock().unwrap().clone();
        wait_applied(&server, &tokens.lock().unwrap());
        figures.recovered.push(started.elapsed());
        // Every acknowledged event visible (bounded), then counted.
        let deadline = Instant::now() + Duration::from_secs(120);
        let stored: BTreeMap<String, u64> = loop {
            let (status, v) = sql(&server, "SELECT id, count(*) AS n FROM h GROUP BY id");
            if status == 200 {
                let stored: BTreeMap<String, u64> = v
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| {
                        (
                            r["id"].as_str().unwrap().to_owned(),
                            r["n"].as_u64().unwrap(),
                        )
                    })
                    .collect();
                if acked_now.iter().all(|id| stored.contains_key(id)) || Instant::now() > deadline {
                    break stored;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no answer to SQL after a restart"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let lost = acked_now
            .iter()
            .filter(|id| !stored.contains_key(*id))
            .count();
        let duplicated = stored.values().filter(|n| **n > 1).count();
        let views_ok = [("h_by_key", BY_KEY), ("h_by_minute", BY_MINUTE)]
            .iter()
            .filter(|(name, definition)| !view_converges(&server, name, definition))
            .count();
        let gaps = replay_gaps(&server);
        eprintln!(
            "round {}/{rounds} ({backend:?}): killed after {} ms, acknowledged so far {}, lost {lost}, \
             duplicated {duplicated}, views not matching {views_ok}, replay problems {gaps}, \
             recovered in {} ms",
            round + 1,
            kill_after.as_millis(),
            acked_now.len(),
            figures.recovered.last().unwrap().as_millis()
        );
        figures.rounds += 1;
        figures.acked = acked_now.len();
        figures.lost = figures.lost.max(lost);
        figures.duplicated = figures.duplicated.max(duplicated);
        figures.view_mismatches += views_ok;
        figures.replay_gaps += gaps;
    }
    figures
}

#[test]
fn kill_9_rounds_under_load_lose_and_duplicate_nothing() {
    let rounds: usize = std::env::var("STRATA_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("STRATA_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    for backend in backends() {
        let figures = run(backend, rounds, seed);
        let summary = figures.summary(backend, seed);
        eprintln!("{summary}");
        if let Ok(path) = std::env::var("STRATA_FAULT_REPORT") {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            writeln!(file, "{summary}").unwrap();
        }
        assert!(figures.acked > 0, "{summary}");
        assert_eq!(
            (
                figures.lost,
                figures.duplicated,
                figures.view_mismatches,
                figures.replay_gaps
            ),
            (0, 0, 0, 0),
            "{summary}"
        );
    }
}
