//! Kafka faults on librdkafka's in-process mock cluster (3 brokers, replication factor 3): a broker
//! going down and partition leaders moving while appends run, produce requests failing so that
//! the producer retries, and every broker down for a while. Afterwards every acknowledged event is
//! in the shards exactly once.

use crate::common::*;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::json;
use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 3;

/// A strata node on `cluster`, with stream `f` (3 partitions); the mock's topics are made up
/// front with replication factor 3.
fn node(
    cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    dir: &std::path::Path,
) -> Server {
    for topic in ["m.__catalog", "m.__nodes"] {
        cluster.create_topic(topic, 1, 3).unwrap();
    }
    cluster.create_topic("m.f", PARTITIONS, 3).unwrap();
    let config = format!(
        "[log.kafka]\nbrokers = \"{}\"\ntopic_prefix = \"m.\"\ngroup_id = \"strata-mock\"\n\
         replication_factor = 3\nmin_insync_replicas = 2\nsession_timeout_ms = 6000\n\
         refresh_ms = 500\ndelivery_timeout_ms = 5000\n",
        cluster.bootstrap_servers()
    );
    let server = Server::start_with(Backend::Kafka, dir, &config, &[]);
    let created = http()
        .put(server.url("/v1/streams/f"))
        .json(&json!({"partitions": PARTITIONS}))
        .send()
        .unwrap();
    assert!(created.status().is_success(), "{:?}", created.text());
    server
}

/// Appends from 4 clients until `stop`: batches of 20 events with unique ids, each retried (same
/// ids) after a failure until it is acknowledged. Returns the acknowledged ids and how many
/// appends failed.
fn appenders<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    base: &'s str,
    stop: &'s AtomicBool,
    acked: &'s Mutex<HashSet<String>>,
    failed: &'s AtomicUsize,
) {
    for client in 0..4 {
        scope.spawn(move || {
            let http = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            let mut batch = 0;
            while !stop.load(Ordering::Relaxed) {
                let ids: Vec<String> = (0..20).map(|i| format!("{client}-{batch}-{i}")).collect();
                let body: String = ids
                    .iter()
                    .map(|id| format!("{}\n", json!({"id": id, "key": id, "data": {"c": client}})))
                    .collect();
                // Retry until acknowledged: a retry of a batch that partly reached the log must
                // not store anything twice.
                let deadline = Instant::now() + Duration::from_secs(60);
                while Instant::now() < deadline {
                    match http
                        .post(format!("{base}/v1/streams/f/events"))
                        .body(body.clone())
                        .send()
                    {
                        Ok(r) if r.status().is_success() => {
                            acked.lock().unwrap().extend(ids.iter().cloned());
                            break;
                        }
                        Ok(r) => {
                            let status = r.status().as_u16();
                            assert_eq!(status, 503, "unexpected answer: {:?}", r.text());
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                batch += 1;
            }
        });
    }
}

/// Waits until the shards hold every acknowledged id, then checks nothing is there twice.
fn check_exactly_once(server: &Server, acked: &HashSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let stored: Vec<String> = loop {
        let (status, v) = sql(server, "SELECT id FROM f");
        if status == 200 {
            let ids: Vec<String> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect();
            let have: HashSet<&String> = ids.iter().collect();
            if acked.iter().all(|id| have.contains(id)) {
                break ids;
            }
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged events missing from the shards; log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let distinct: HashSet<&String> = stored.iter().collect();
    assert_eq!(distinct.len(), stored.len(), "an event was stored twice");
    let counts = rows(
        server,
        "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM f",
    );
    assert_eq!(counts[0]["n"], counts[0]["ids"]);
}

#[test]
fn a_broker_down_and_moving_leaders_lose_and_duplicate_nothing() {
    let cluster = MockCluster::new(3).unwrap();
    let (_tmp, dir) = data_dir();
    let server = node(&cluster, &dir);
    let (stop, acked, failed) = (
        AtomicBool::new(false),
        Mutex::new(HashSet::new()),
        AtomicUsize::new(0),
    );
    std::thread::scope(|s| {
        appenders(s, &server.base, &stop, &acked, &failed);
        std::thread::sleep(Duration::from_millis(1500));
        // Produce requests fail with retriable errors: the idempotent producer retries them.
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            ],
        );
        std::thread::sleep(Duration::from_millis(1000));
        // A broker goes down; the partitions' leaders move to the others.
        cluster.broker_down(1).unwrap();
        for p in 0..PARTITIONS {
            cluster.partition_leader("m.f", p, Some(2 + p % 2)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(2000));
        cluster.broker_up(1).unwrap();
        for p in 0..PARTITIONS {
            cluster.partition_leader("m.f", p, Some(1 + p % 3)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
    });
    let acked = acked.into_inner().unwrap();
    assert!(
        acked.len() >= 200,
        "too few appends went through: {}",
        acked.len()
    );
    check_exactly_once(&server, &acked);
    eprintln!(
        "mock cluster, broker down + leaders moved: {} events acknowledged, {} appends failed and were retried",
        acked.len(),
        failed.load(Ordering::Relaxed)
    );
}

#[test]
fn all_brokers_down_answers_503_then_appends_resume_without_loss() {
    let cluster = MockCluster::new(3).unwrap();
    let (_tmp, dir) = data_dir();
    let server = node(&cluster, &dir);
    let before = append_ok(&server, "f", "{\"id\": \"before\", \"data\": 1}\n");
    assert_eq!(before["appended"], 1);
    for b in 1..=3 {
        cluster.broker_down(b).unwrap();
    }
    let started = Instant::now();
    let (status, err) = append(&server, "f", "{\"id\": \"during\", \"data\": 2}\n");
    assert_eq!(status, 503, "{err}");
    let message = err["error"].as_str().unwrap();
    assert!(message.contains("brokers"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    for b in 1..=3 {
        cluster.broker_up(b).unwrap();
    }
    // Appends resume; retrying the refused one stores it once. Partitions come back one leader
    // at a time, so an append to another partition may still get 503 for a moment: retried too.
    let deadline = Instant::now() + Duration::from_secs(60);
    for body in [
        "{\"id\": \"during\", \"data\": 2}\n",
        "{\"id\": \"after\", \"data\": 3}\n",
    ] {
        loop {
            let (status, err) = append(&server, "f", body);
            if status == 200 {
                break;
            }
            assert_eq!(status, 503, "{err}");
            assert!(Instant::now() < deadline, "appends did not resume: {err}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let acked: HashSet<String> = ["before", "during", "after"].map(String::from).into();
    check_exactly_once(&server, &acked);
}

#[test]
fn a_node_whose_brokers_cannot_be_reached_exits_with_a_clear_error() {
    let (_tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.with_extension("toml");
    std::fs::write(
        &config,
        "[log.kafka]\nbrokers = \"127.0.0.1:1\"\ndelivery_timeout_ms = 1000\n",
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--log",
            "kafka",
            "--data-dir",
        ])
        .arg(&dir)
        .arg("--config")
        .arg(&config)
        .env_remove("STRATA_KAFKA_BROKERS")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("strata kept running without reachable brokers");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("Kafka") && last.contains("are the Kafka brokers reachable?"),
        "{stderr}"
    );
}
