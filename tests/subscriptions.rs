//! Subscriptions (`GET /v1/streams/{s}/events?follow=true`) followed by a real HTTP client
//! (curl): catch-up then live, resuming by cursor after the client and the server die, filters,
//! heartbeats, Server-Sent Events resuming through `Last-Event-ID`, and `strata replay --follow`
//! reconnecting by itself across a `kill -9` of the server.

use crate::common::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A `curl -N` following a URL; its output lines arrive on a channel. Killed by PID on drop.
pub(crate) struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    pub(crate) fn start(url: &str, headers: &[&str]) -> Follower {
        let mut cmd = Command::new("curl");
        cmd.args(["-sSN", "--max-time", "120"]);
        for h in headers {
            cmd.args(["-H", h]);
        }
        Self::spawn(cmd.arg(url))
    }

    /// `strata replay STREAM --follow ARGS…` against `server`.
    fn cli(server: &str, stream: &str, args: &[&str]) -> Follower {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
        cmd.args(["--server", server, "replay", stream, "--follow"])
            .args(args);
        Self::spawn(&mut cmd)
    }

    /// `strata subscribe NAME` against `server`.
    pub(crate) fn cli_subscribe(server: &str, name: &str) -> Follower {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
        cmd.args(["--server", server, "subscribe", name, "--takeover"]);
        Self::spawn(&mut cmd)
    }

    fn spawn(cmd: &mut Command) -> Follower {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("curl (scripts/clients.sh installs it)");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Follower { child, lines }
    }

    /// The next line, waiting at most `within`.
    pub(crate) fn line(&self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }

    /// NDJSON lines until `n` events have arrived (heartbeats are kept too), bounded.
    pub(crate) fn events(&self, n: usize) -> (Vec<Value>, Vec<Value>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut events, mut beats) = (Vec::new(), Vec::new());
        while events.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .line(left)
                .unwrap_or_else(|| panic!("{} of {n} events arrived", events.len()));
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert!(v.get("error").is_none(), "{v}");
            if v.get("offset").is_some() {
                events.push(v);
            } else {
                beats.push(v);
            }
        }
        (events, beats)
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn event(i: usize) -> Value {
    json!({
        "key": format!("k{}", i % 7),
        "id": format!("e{i}"),
        "type": if i.is_multiple_of(3) { "refund" } else { "order" },
        "data": {"country": (["NL", "DE"][i % 2]), "n": i},
    })
}

pub(crate) fn append_range(server: &Server, stream: &str, range: std::ops::Range<usize>) {
    let body: String = range.map(|i| format!("{}\n", event(i))).collect();
    append_ok(server, stream, &body);
}

fn follow_url(server: &Server, stream: &str, query: &str) -> String {
    server.url(&format!("/v1/streams/{stream}/events?follow=true&{query}"))
}

/// Each event's `n`, checking that offsets rise within each partition.
fn ns_in_order(events: &[Value]) -> Vec<usize> {
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    for e in events {
        let (p, o) = (
            e["partition"].as_u64().unwrap(),
            e["offset"].as_u64().unwrap(),
        );
        if let Some(prev) = last.insert(p, o) {
            assert!(o > prev, "partition {p}: offset {o} after {prev}");
        }
    }
    events
        .iter()
        .map(|e| e["data"]["n"].as_u64().unwrap() as usize)
        .collect()
}

#[test]
fn a_subscription_catches_up_follows_and_resumes_by_cursor_across_restarts() {
    for backend in backends() {
        let (_tmp, dir) = data_dir();
        let mut server = Server::start(backend, &dir, "");
        create_stream(&server, "orders", 3);
        append_range(&server, "orders", 0..40);

        // Catch up, then live.
        let first = Follower::start(&follow_url(&server, "orders", "heartbeat_ms=500"), &[]);
        let (caught_up, _) = first.events(40);
        append_range(&server, "orders", 40..70);
        let (live, _) = first.events(30);
        let mut seen: Vec<Value> = caught_up.into_iter().chain(live).collect();
        let mut ns = ns_in_order(&seen);
        ns.sort_unstable();
        assert_eq!(ns, (0..70).collect::<Vec<_>>(), "{backend:?}");
        // Every event's cursor is the stream-wide position right after it.
        let last = seen.last().unwrap();
        let cursor = last["cursor"].as_str().unwrap().to_owned();
        assert!(
            cursor.contains(&format!(
                ".{}-{}",
                last["partition"],
                last["offset"].as_u64().unwrap() + 1
            )),
            "{cursor}"
        );
        drop(first);

        // The client died after event 55 (in delivery order): resuming from its cursor gives
        // exactly what it had not seen, including what was appended meanwhile.
        let cut = 55;
        let cursor = seen[cut - 1]["cursor"].as_str().unwrap().to_owned();
        seen.truncate(cut);
        append_range(&server, "orders", 70..90);
        let resumed = Follower::start(
            &follow_url(&server, "orders", &format!("cursor={cursor}")),
            &[],
        );
        let (rest, _) = resumed.events(90 - cut);
        seen.extend(rest);
        let cursor = seen.last().unwrap()["cursor"].as_str().unwrap().to_owned();
        drop(resumed);

        // The server dies (kill -9); the cursor still resumes exactly.
        server.kill9();
        server.restart();
        append_range(&server, "orders", 90..100);
        let after_crash = Follower::start(
            &follow_url(&server, "orders", &format!("cursor={cursor}")),
            &[],
        );
        let (rest, _) = after_crash.events(10);
        seen.extend(rest);
        // Nothing more than the stream arrives.
        assert!(
            after_crash
                .line(Duration::from_millis(700))
                .is_none_or(|l| !l.contains("\"offset\"")),
            "{backend:?}: an extra event"
        );
        let ns = ns_in_order(&seen);
        let unique: HashSet<usize> = ns.iter().copied().collect();
        assert_eq!(unique.len(), ns.len(), "{backend:?}: duplicates");
        assert_eq!(unique, (0..100).collect(), "{backend:?}");

        // from=end delivers only what comes next.
        let tail = Follower::start(
            &follow_url(&server, "orders", "from=end&heartbeat_ms=100"),
            &[],
        );
        // The first heartbeat says the subscription has started (and where).
        let (_, beats) = tail.events(0);
        assert!(beats.is_empty());
        let beat = tail.line(Duration::from_secs(30)).expect("a heartbeat");
        assert!(beat.starts_with("{\"cursor\""), "{beat}");
        append_range(&server, "orders", 100..103);
        let (next, _) = tail.events(3);
        let mut ns = ns_in_order(&next);
        ns.sort_unstable();
        assert_eq!(ns, vec![100, 101, 102], "{backend:?}");
    }
}

#[test]
fn subscription_filters_heartbeats_and_bad_requests() {
    for backend in backends() {
        let (_tmp, dir) = data_dir();
        let server = Server::start(backend, &dir, "");
        create_stream(&server, "orders", 2);
        append_range(&server, "orders", 0..30);

        // type and where filter on the server; the rest still moves the cursor.
        let filtered = Follower::start(
            &follow_url(
                &server,
                "orders",
                "type=order&where=json_get_str(data,%27country%27)%3D%27NL%27&heartbeat_ms=300",
            ),
            &[],
        );
        let expected: Vec<usize> = (0..30).filter(|i| i % 3 != 0 && i % 2 == 0).collect();
        let (events, _) = filtered.events(expected.len());
        let mut ns = ns_in_order(&events);
        ns.sort_unstable();
        assert_eq!(ns, expected, "{backend:?}");

        // Nothing matches: heartbeats come anyway, and their cursor reaches the stream's end.
        let none = Follower::start(
            &follow_url(&server, "orders", "type=nothing&heartbeat_ms=200"),
            &[],
        );
        let end = stream_info(&server, "orders")["offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| format!("{}-{}", o["partition"], o["stored_offset"]))
            .collect::<Vec<_>>()
            .join(".");
        let beat = eventually("a heartbeat at the end", || {
            let line = none.line(Duration::from_secs(2))?;
            let v: Value = serde_json::from_str(&line).unwrap();
            assert!(v.get("offset").is_none(), "filtered event delivered: {v}");
            (v["cursor"] == format!("v1.orders.{end}")).then_some(v)
        });
        assert_eq!(beat.as_object().unwrap().len(), 1, "{beat}");

        // A key's subscription reads its partition; the other keys' events move its cursor too.
        let keyed = Follower::start(
            &follow_url(&server, "orders", "key=k3&heartbeat_ms=200"),
            &[],
        );
        let (mine, _) = keyed.events((0..30).filter(|i| i % 7 == 3).count());
        assert!(mine.iter().all(|e| e["key"] == "k3"), "{mine:?}");
        let p = mine[0]["partition"].as_u64().unwrap();
        let stored = stream_info(&server, "orders")["offsets"][p as usize]["stored_offset"].clone();
        eventually("the key's cursor at its partition's end", || {
            let line = keyed.line(Duration::from_secs(2))?;
            let v: Value = serde_json::from_str(&line).unwrap();
            (v["cursor"] == format!("v1.orders.{p}-{stored}")).then_some(())
        });

        // Refused before anything is delivered, with the reason.
        let other = "v1.payments.0-3";
        for (query, status, says) in [
            ("where=nonsense%20%3E%201", 400, "nonsense"),
            ("where=count(*)%20%3E%201", 400, "aggregate"),
            ("where=json_get_str(data,%27country%27)", 400, "boolean"),
            ("cursor=garbage", 400, "token"),
            (&format!("cursor={other}")[..], 400, "payments"),
            ("cursor=v1.orders.5-1", 400, "partition 5"),
            ("from=3", 400, "partition"),
            ("from=end&cursor=v1.orders.0-1", 400, "one of"),
            ("heartbeat_ms=5", 400, "heartbeat_ms"),
            ("limit=5", 400, "limit"),
        ] {
            let resp = http()
                .get(follow_url(&server, "orders", query))
                .send()
                .unwrap();
            assert_eq!(resp.status().as_u16(), status, "{query}");
            let body = resp.text().unwrap();
            assert!(body.contains(says), "{query}: {body}");
        }
        let (status, body) = replay(&server, "orders", "cursor=v1.orders.0-1");
        assert_eq!(status, 400);
        assert!(body[0].to_string().contains("follow=true"), "{body:?}");
    }
}

#[test]
fn server_sent_events_resume_through_last_event_id() {
    for backend in backends() {
        let (_tmp, dir) = data_dir();
        let server = Server::start(backend, &dir, "");
        create_stream(&server, "orders", 2);
        append_range(&server, "orders", 0..20);
        let url = follow_url(&server, "orders", "heartbeat_ms=300");
        let sse = Follower::start(&url, &["Accept: text/event-stream"]);
        // Frames: `id: CURSOR`, `data: EVENT`, a blank line; heartbeats are a comment and an id.
        let mut frames: Vec<(String, Value)> = Vec::new();
        let mut id = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        while frames.len() < 12 {
            let line = sse
                .line(deadline.saturating_duration_since(Instant::now()))
                .expect("SSE frames");
            if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_owned());
            } else if let Some(data) = line.strip_prefix("data: ") {
                frames.push((id.clone().unwrap(), serde_json::from_str(data).unwrap()));
            }
        }
        drop(sse);
        // An EventSource reconnects with the last id it saw: the rest follows, then new events.
        let last_id = frames.last().unwrap().0.clone();
        append_range(&server, "orders", 20..25);
        let resumed = Follower::start(
            &url,
            &[
                "Accept: text/event-stream",
                &format!("Last-Event-ID: {last_id}"),
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while frames.len() < 25 {
            let line = resumed
                .line(deadline.saturating_duration_since(Instant::now()))
                .expect("SSE frames after resuming");
            if let Some(data) = line.strip_prefix("data: ") {
                frames.push((String::new(), serde_json::from_str(data).unwrap()));
            }
        }
        let events: Vec<Value> = frames.into_iter().map(|(_, v)| v).collect();
        let mut ns = ns_in_order(&events);
        ns.sort_unstable();
        assert_eq!(ns, (0..25).collect::<Vec<_>>(), "{backend:?}");
    }
}

#[test]
fn the_cli_follows_and_reconnects_from_its_cursor_after_a_kill() {
    for backend in backends() {
        let (_tmp, dir) = data_dir();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut server = Server::start_with(backend, &dir, "", &["--http", &addr]);
        create_stream(&server, "orders", 2);
        append_range(&server, "orders", 0..10);
        let cli = Follower::cli(
            &server.base,
            "orders",
            &["--where", "json_get_str(data, 'country') = 'NL'"],
        );
        let (mut seen, beats) = cli.events(5);
        assert!(beats.is_empty(), "heartbeats are not printed: {beats:?}");
        server.kill9();
        append_range(server_after(&mut server), "orders", 10..20);
        let (rest, _) = cli.events(5);
        seen.extend(rest);
        let mut ns = ns_in_order(&seen);
        ns.sort_unstable();
        assert_eq!(ns, (0..20).step_by(2).collect::<Vec<_>>(), "{backend:?}");
        assert!(
            cli.line(Duration::from_millis(500)).is_none(),
            "{backend:?}: more than the stream"
        );
    }
}

/// The server started again on its address.
fn server_after(server: &mut Server) -> &Server {
    server.restart();
    server
}

/// On Tansu with one ingest and three store nodes: a subscriber connected to a store node that
/// is killed resumes from its cursor on another node; what it got from both is the stream, in
/// order per partition, without duplicates. The resumed subscription waits out the takeover of
/// the killed node's partitions (heartbeats meanwhile) instead of failing.
#[test]
fn a_cluster_subscription_resumes_on_another_node_after_its_node_dies() {
    let Some(mut cluster) = crate::cluster::Cluster::start("") else {
        eprintln!("no Kafka broker (STRATA_TEST_KAFKA_BROKERS); skipped");
        return;
    };
    create_stream(cluster.ingest(), "orders", 4);
    append_range(cluster.ingest(), "orders", 0..200);
    // Once every partition is served, a subscription on a store node holding some of them gets
    // them all; that node (the victim) dies, another store node (the survivor) takes over.
    eventually("every partition served", || {
        let (status, body) = sql(&cluster.nodes[1], "SELECT count(*) AS n FROM orders");
        (status == 200 && body[0]["n"] == 200).then_some(())
    });
    let (_, map) = crate::cluster::http_json(cluster.ingest(), None, "/v1/cluster");
    let victim = (1..=3)
        .find(|i| {
            map["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["stream"] == "orders" && p["node"] == format!("s{i}").as_str())
        })
        .expect("a store node holding orders");
    let survivor = if victim == 1 { 2 } else { 1 };
    let first = Follower::start(
        &follow_url(&cluster.nodes[victim], "orders", "heartbeat_ms=500"),
        &[],
    );
    let (mut seen, _) = first.events(150);
    let cursor = seen.last().unwrap()["cursor"].as_str().unwrap().to_owned();
    drop(first);
    cluster.nodes[victim].kill9();
    append_range(cluster.ingest(), "orders", 200..300);
    // Through another store node, then through the ingest node (which holds nothing itself).
    let second = Follower::start(
        &follow_url(
            &cluster.nodes[survivor],
            "orders",
            &format!("cursor={cursor}&heartbeat_ms=500"),
        ),
        &[],
    );
    let resumed = Instant::now();
    let (rest, beats) = second.events(100);
    let resumed = resumed.elapsed();
    seen.extend(rest);
    let cursor = seen.last().unwrap()["cursor"].as_str().unwrap().to_owned();
    drop(second);
    append_range(cluster.ingest(), "orders", 300..320);
    let third = Follower::start(
        &follow_url(cluster.ingest(), "orders", &format!("cursor={cursor}")),
        &[],
    );
    let (rest, _) = third.events(70);
    seen.extend(rest);
    // Caught up, the subscription waits for the holders to say a partition stored more: over an
    // idle second and a half it reads nothing (polling every 50 ms made ~120 reads of its four
    // partitions), and an event appended then still arrives. (While the killed node's partitions
    // are still changing hands it retries them every 250 ms: a quiet window is waited for.)
    let reads =
        |node: &Server| metric_value(node, "strata_subscription_reads_total{stream=\"orders\"}");
    let mut idle = f64::MAX;
    for _ in 0..8 {
        let before = reads(cluster.ingest());
        std::thread::sleep(Duration::from_millis(1500));
        idle = idle.min(reads(cluster.ingest()) - before);
        if idle < 10.0 {
            break;
        }
    }
    assert!(idle < 10.0, "{idle} reads while idle, at the fewest");
    let appended = Instant::now();
    append_range(cluster.ingest(), "orders", 320..321);
    let (rest, _) = third.events(1);
    let delivered = appended.elapsed();
    seen.extend(rest);
    let ns = ns_in_order(&seen);
    let unique: HashSet<usize> = ns.iter().copied().collect();
    assert_eq!(unique.len(), ns.len(), "duplicates");
    assert_eq!(unique, (0..321).collect());
    eprintln!(
        "cluster subscription: resumed on another node after a kill -9: the 150 events it had not seen in {resumed:?}, {} heartbeats meanwhile; idle: {idle} reads in 1.5 s; an event appended then delivered through the ingest node in {delivered:?}",
        beats.len()
    );

    // A durable subscription made on one node is served and acknowledged on others (its state
    // is in the catalog topic).
    let others: Vec<usize> = (1..=3).filter(|&i| i != victim).collect();
    let (ingest, s2, s3) = (
        cluster.ingest(),
        &cluster.nodes[others[0]],
        &cluster.nodes[others[1]],
    );
    let created = http()
        .put(ingest.url("/v1/subscriptions/audit"))
        .json(&json!({"stream": "orders", "type": "refund"}))
        .send()
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    // Each node learns the catalog topic's records asynchronously: wait for s2 and s3 to know
    // the subscription. s3 then acknowledges without waiting to know s2's hold: its record must
    // not drop that hold (it only moves the cursor, see `SubscriptionState::applied_over`).
    let subscriptions = |node: &Server| -> Option<Vec<Value>> {
        http()
            .get(node.url("/v1/subscriptions"))
            .send()
            .ok()?
            .json()
            .ok()
    };
    let listed = |node: &Server, consumer: bool| {
        subscriptions(node)?
            .iter()
            .any(|s| s["name"] == "audit" && (!consumer || s["consumer"].is_object()))
            .then_some(())
    };
    eventually("the subscription known on s2", || listed(s2, false));
    eventually("the subscription known on s3", || listed(s3, false));
    let consumer = Follower::start(&s2.url("/v1/subscriptions/audit/events"), &[]);
    let (refunds, _) = consumer.events(20);
    assert!(refunds.iter().all(|e| e["type"] == "refund"));
    let cursor = refunds.last().unwrap()["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let acked = http()
        .post(s3.url("/v1/subscriptions/audit/ack"))
        .json(&json!({ "cursor": cursor }))
        .send()
        .unwrap();
    assert_eq!(acked.status().as_u16(), 200);
    eventually("the acknowledgement seen from the ingest node", || {
        let all = subscriptions(ingest)?;
        (all[0]["cursor"] == cursor.as_str() && all[0]["consumer"].is_object()).then_some(())
    });
    eventually("s2's hold known on s3", || listed(s3, true));
    let refused = http()
        .get(s3.url("/v1/subscriptions/audit/events"))
        .send()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 409, "one consumer across nodes");
    drop(consumer);

    // A view followed through the ingest node (which holds no partition) merges every holder.
    let (status, body) = crate::cluster::query(
        ingest,
        None,
        "CREATE MATERIALIZED VIEW by_type AS SELECT type, count(*) AS n FROM orders GROUP BY 1",
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let view = Follower::start(
        &ingest.url("/v1/views/by_type/changes?follow=true&heartbeat_ms=500"),
        &[],
    );
    let total = eventually("the view's rows, complete", || {
        let line = view.line(Duration::from_secs(5))?;
        let v: Value = serde_json::from_str(&line).unwrap();
        assert!(v.get("error").is_none(), "{v}");
        (v["row"]["type"] == "order").then(|| v["row"]["n"].as_u64().unwrap())
    });
    assert!(total <= 320 - 320 / 3);
    // Each later change arrives too: the follower asks the holders to say when they store more
    // (a holder's published status alone would tell it only every `refresh_ms`).
    let count = |expected: u64| {
        eventually("the view's change", || {
            let line = view.line(Duration::from_secs(5))?;
            let v: Value = serde_json::from_str(&line).unwrap();
            assert!(v.get("error").is_none(), "{v}");
            (v["row"]["type"] == "order" && v["row"]["n"] == expected).then_some(())
        });
    };
    if total < 214 {
        count(214);
    }
    let mut latencies = Vec::new();
    for (i, expected) in [(322, 215), (323, 216), (325, 217)] {
        let appended = Instant::now();
        append_range(ingest, "orders", i..i + 1);
        count(expected);
        latencies.push(appended.elapsed());
    }
    eprintln!(
        "cluster view follower: appended → changed row delivered through the ingest node in {latencies:?}"
    );
}

/// The resident set of `pid` now, in bytes (`VmRSS`).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// `strata_subscriptions{stream="orders"}` from /metrics (0 when absent).
fn subscriptions_gauge(server: &Server) -> f64 {
    metric_value(server, "strata_subscriptions{stream=\"orders\"}")
}

/// A reader taking 1M pending events at 64 KiB/s holds the server to a few reads' worth of
/// memory: the subscription reads the shards as the client takes data. When the reader goes
/// away, so does the subscription. (The embedded log only: the subscription reads the shards,
/// which are the same on either log.)
#[test]
fn a_slow_reader_with_a_million_pending_events_keeps_server_memory_bounded() {
    const EVENTS: usize = 1_000_000;
    const PER_REQUEST: usize = 100_000;
    const BOUND: u64 = 64 << 20;
    let (_tmp, dir) = data_dir();
    let server = Server::start(Backend::Embedded, &dir, "");
    create_stream(&server, "orders", 2);
    for start in (0..EVENTS).step_by(PER_REQUEST) {
        let body: String = (start..start + PER_REQUEST)
            .map(|i| format!("{{\"key\":\"k{}\",\"data\":{{\"n\":{i}}}}}\n", i % 97))
            .collect();
        append_ok(&server, "orders", &body);
    }
    wait_stored(&server, "orders");
    let before = rss(server.pid());
    let mut slow = Command::new("curl");
    slow.args(["-sSN", "--limit-rate", "64K", "--max-time", "60"])
        .arg(follow_url(&server, "orders", ""));
    let slow = Follower::spawn(&mut slow);
    let mut peak = before;
    let mut received = 0usize;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        while slow.lines.try_recv().is_ok() {
            received += 1;
        }
        peak = peak.max(rss(server.pid()));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(subscriptions_gauge(&server), 1.0);
    eprintln!(
        "slow reader: {received} of {EVENTS} events taken in 6 s; server RSS {} MiB before, peak {} MiB",
        before >> 20,
        peak >> 20
    );
    assert!(received > 0 && received < EVENTS / 2, "{received}");
    assert!(
        peak < before + BOUND,
        "RSS rose from {} MiB to {} MiB",
        before >> 20,
        peak >> 20
    );
    // The reader goes away: the subscription ends.
    drop(slow);
    eventually("the subscription to end", || {
        (subscriptions_gauge(&server) == 0.0).then_some(())
    });
}

/// `GET /v1/views/{name}/changes?follow=true`: the view's rows, then only the rows a commit
/// changed, each with the cursor it reflects.
#[test]
fn a_followed_view_sends_its_rows_then_each_change() {
    for backend in backends() {
        let (_tmp, dir) = data_dir();
        let server = Server::start(backend, &dir, "");
        create_stream(&server, "orders", 2);
        append_range(&server, "orders", 0..20);
        let (status, body) = sql(
            &server,
            "CREATE MATERIALIZED VIEW by_country AS SELECT json_get_str(data, 'country') AS country, count(*) AS n FROM orders GROUP BY 1",
        );
        assert_eq!(status, 200, "{body}");
        let url = server.url("/v1/views/by_country/changes?follow=true&heartbeat_ms=300");
        let follower = Follower::start(&url, &[]);
        let next_rows = |want: usize| -> Vec<Value> {
            let mut rows = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while rows.len() < want {
                let line = follower
                    .line(deadline.saturating_duration_since(Instant::now()))
                    .expect("view changes");
                let v: Value = serde_json::from_str(&line).unwrap();
                assert!(v.get("error").is_none(), "{v}");
                assert!(
                    v["cursor"].as_str().unwrap().starts_with("v1.orders."),
                    "{v}"
                );
                if v.get("row").is_some() {
                    rows.push(v["row"].clone());
                }
            }
            rows
        };
        let mut first = next_rows(2);
        first.sort_by_key(|r| r["country"].as_str().unwrap().to_owned());
        assert_eq!(
            first,
            vec![
                json!({"country": "DE", "n": 10}),
                json!({"country": "NL", "n": 10})
            ],
            "{backend:?}"
        );
        // Only the group a commit touched comes again.
        append_ok(
            &server,
            "orders",
            "{\"data\": {\"country\": \"FR\", \"n\": 100}}\n",
        );
        assert_eq!(
            next_rows(1),
            vec![json!({"country": "FR", "n": 1})],
            "{backend:?}"
        );
        append_range(&server, "orders", 20..23);
        let rows = eventually("NL at 12 and DE at 11", || {
            let row = next_rows(1).pop()?;
            assert_ne!(row["country"], "FR", "an unchanged row came again");
            Some(row)
        });
        let mut latest: BTreeMap<String, Value> = BTreeMap::from([(
            rows["country"].as_str().unwrap().to_owned(),
            rows["n"].clone(),
        )]);
        while latest.get("NL") != Some(&json!(12)) || latest.get("DE") != Some(&json!(11)) {
            let row = next_rows(1).pop().unwrap();
            assert_ne!(row["country"], "FR", "an unchanged row came again");
            latest.insert(
                row["country"].as_str().unwrap().to_owned(),
                row["n"].clone(),
            );
        }

        for (path, status) in [
            ("/v1/views/nowhere/changes?follow=true", 404),
            ("/v1/views/by_country/changes", 400),
        ] {
            let resp = http().get(server.url(path)).send().unwrap();
            assert_eq!(resp.status().as_u16(), status, "{path}");
        }
    }
}
