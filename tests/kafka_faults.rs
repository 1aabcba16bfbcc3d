//! Kafka faults on librdkafka's in-process mock cluster (3 brokers, replication factor 3): a broker
//! going down and partition leaders moving while appends run, produce requests failing so that
//! the producer retries, and every broker down for a while. Afterwards every acknowledged event is
//! in the shards exactly once. Also: records that are not events go to the dead-letter topic, and
//! a log whose retention ran ahead of a store node stalls that partition loudly.

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
fn node(cluster: &Mock, dir: &std::path::Path) -> Server {
    topics(cluster);
    start_node(cluster, dir, "")
}

type Mock = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

/// The mock's topics, made up front with replication factor 3.
fn topics(cluster: &Mock) {
    for topic in ["m.__catalog", "m.__nodes", "m.__dead_letters"] {
        cluster.create_topic(topic, 1, 3).unwrap();
    }
    cluster.create_topic("m.f", PARTITIONS, 3).unwrap();
}

/// A strata node on `cluster` with `extra` lines in its `[log.kafka]` section.
fn start_node(cluster: &Mock, dir: &std::path::Path, extra: &str) -> Server {
    let config = format!(
        "[log.kafka]\nbrokers = \"{}\"\ntopic_prefix = \"m.\"\ngroup_id = \"strata-mock\"\n\
         replication_factor = 3\nmin_insync_replicas = 2\nsession_timeout_ms = 6000\n\
         refresh_ms = 500\ndelivery_timeout_ms = 5000\n{extra}",
        cluster.bootstrap_servers()
    );
    let server = Server::start_with(Backend::Kafka, dir, &config, &[]);
    create_stream(&server, "f", PARTITIONS as u32);
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
        let last = if status == 200 {
            let ids: Vec<String> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect();
            let have: HashSet<&String> = ids.iter().collect();
            let missing: Vec<&String> = acked.iter().filter(|id| !have.contains(id)).collect();
            if missing.is_empty() {
                break ids;
            }
            format!(
                "{} of {} acknowledged ids missing (e.g. {:?}), {} rows stored",
                missing.len(),
                acked.len(),
                &missing[..missing.len().min(5)],
                ids.len()
            )
        } else {
            format!("the query answered {status}: {v}")
        };
        assert!(
            Instant::now() < deadline,
            "acknowledged events missing from the shards: {last}; log:\n{}",
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
            "--pg",
            "off",
            "--flight",
            "off",
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

/// A plain producer on the mock (as another team's service would be).
fn producer(cluster: &Mock) -> rdkafka::producer::BaseProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("message.timeout.ms", "10000")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

fn produce(producer: &rdkafka::producer::BaseProducer, partition: i32, values: &[Vec<u8>]) {
    use rdkafka::producer::{BaseRecord, Producer};
    for value in values {
        let mut record = Some(
            BaseRecord::<str, [u8]>::to("m.f")
                .partition(partition)
                .payload(value),
        );
        while let Some(r) = record.take() {
            if let Err((_, r)) = producer.send(r) {
                producer.poll(Duration::from_millis(20));
                record = Some(r);
            }
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// The stream listing's entry for partition `p` of `f`.
fn partition_info(server: &Server, p: usize) -> serde_json::Value {
    stream_info(server, "f")["offsets"][p].clone()
}

#[test]
fn records_that_are_not_events_go_to_the_dead_letter_topic_without_a_crash_loop() {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    let cluster = MockCluster::new(3).unwrap();
    let (_tmp, dir) = data_dir();
    topics(&cluster);
    let mut server = start_node(&cluster, &dir, "max_value_bytes = 1000\n");
    let values: Vec<Vec<u8>> = vec![
        br#"{"n": 1}"#.to_vec(),
        b"not json at all".to_vec(),
        vec![0xff, 0xfe, 0x00],
        format!("{{\"big\": \"{}\"}}", "x".repeat(2000)).into_bytes(),
        br#"{"n": 2}"#.to_vec(),
        b"trailing text".to_vec(),
    ];
    produce(&producer(&cluster), 0, &values);
    eventually("the two events stored", || {
        let (status, v) = sql(&server, "SELECT count(*) AS n FROM f");
        (status == 200 && v[0]["n"] == 2).then_some(())
    });
    assert_eq!(
        rows(&server, "SELECT \"offset\", data FROM f ORDER BY 1"),
        vec![
            json!({"offset": 0, "data": "{\"n\": 1}"}),
            json!({"offset": 4, "data": "{\"n\": 2}"})
        ]
    );
    // The shard moves past the trailing dead letter too: nothing is left to read there.
    eventually("partition 0 stored through offset 5", || {
        (partition_info(&server, 0)["stored_offset"] == 6).then_some(())
    });
    // The others are in the dead-letter topic, saying where they came from and why.
    let dead_letters = || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "dlq-reader")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset("m.__dead_letters", 0, rdkafka::Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut dead = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                let header = |name: &str| {
                    m.headers()
                        .and_then(|h| h.iter().find(|x| x.key == name))
                        .and_then(|x| x.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                dead.push((
                    header("strata-source-offset"),
                    header("strata-reason"),
                    header("strata-source-topic"),
                    m.payload().map(<[u8]>::to_vec),
                ));
            }
        }
        dead
    };
    let expected = vec![
        (
            "1".into(),
            "not_json".into(),
            "m.f".into(),
            Some(values[1].clone()),
        ),
        (
            "2".into(),
            "not_utf8".into(),
            "m.f".into(),
            Some(values[2].clone()),
        ),
        (
            "3".into(),
            "too_large".into(),
            "m.f".into(),
            Some(values[3].clone()),
        ),
        (
            "5".into(),
            "not_json".into(),
            "m.f".into(),
            Some(values[5].clone()),
        ),
    ];
    assert_eq!(dead_letters(), expected);
    let metrics = metrics_text(&server);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("strata_kafka_dead_letters_total")
                && l.contains("reason=\"not_json\"")
                && l.ends_with(" 2")),
        "{metrics}"
    );
    // Replay straight from the log leaves them out too; a restart neither stores nor copies
    // anything twice.
    let (status, logged) = replay(&server, "f", "partition=0&source=log");
    assert_eq!(status, 200);
    assert_eq!(logged.len(), 2, "{logged:?}");
    server.restart();
    produce(&producer(&cluster), 0, &[br#"{"n": 3}"#.to_vec()]);
    eventually("the third event stored", || {
        let (status, v) = sql(&server, "SELECT count(*) AS n FROM f");
        (status == 200 && v[0]["n"] == 3).then_some(())
    });
    assert_eq!(dead_letters(), expected);
}

#[test]
fn a_log_whose_retention_ran_ahead_stalls_the_partition_loudly_or_skips_when_told() {
    let cluster = MockCluster::new(3).unwrap();
    let (_tmp, dir) = data_dir();
    topics(&cluster);
    // The mock keeps 5 MB per partition: 8 MB to partition 0 deletes its first offsets before
    // any store node has read them.
    let chunk = format!("{{\"pad\": \"{}\"}}", "p".repeat(8000)).into_bytes();
    produce(&producer(&cluster), 0, &vec![chunk; 1000]);
    let mut server = start_node(&cluster, &dir, "");
    let stalled = eventually("partition 0 stalled", || {
        partition_info(&server, 0)["stalled"]
            .as_str()
            .map(str::to_owned)
    });
    assert!(
        stalled.contains("deleted by the log's retention") && stalled.contains("retention_gap"),
        "{stalled}"
    );
    assert_eq!(partition_info(&server, 0)["stored_offset"], 0);
    // The rest of the stream goes on, the node stays up, and says so in its log.
    let other = append_ok(
        &server,
        "f",
        "{\"key\": \"a\", \"data\": 1}\n{\"key\": \"b\", \"data\": 2}\n{\"key\": \"c\", \"data\": 3}\n",
    );
    let to_others = other["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["partition"] != 0)
        .map(|p| p["count"].as_u64().unwrap())
        .sum::<u64>();
    eventually("events of the other partitions stored", || {
        let (status, v) = sql(&server, "SELECT count(*) AS n FROM f WHERE partition > 0");
        (status == 200 && v[0]["n"] == to_others).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(partition_info(&server, 0)["stored_offset"], 0);
    assert!(server.log().contains("deleted by the log's retention"));
    assert!(
        std::process::Command::new("kill")
            .args(["-0", &server.pid().to_string()])
            .status()
            .unwrap()
            .success()
    );

    // Replay straight from the log says the same instead of starting later.
    let resp = http()
        .get(server.url("/v1/streams/f/events?partition=0&source=log"))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 410);
    let body = resp.text().unwrap();
    assert!(body.contains("deleted by the log's retention"), "{body}");

    // Told to skip, the node goes on from the log's start and counts what it skipped.
    assert!(server.stop());
    let (_tmp2, dir2) = data_dir();
    let server = start_node(&cluster, &dir2, "retention_gap = \"skip\"\n");
    let stored = eventually("partition 0 stored from the log's start", || {
        let info = partition_info(&server, 0);
        info["stored_offset"]
            .as_u64()
            .filter(|s| *s > 0 && info["stalled"].is_null())
    });
    assert!(stored > 0);
    let metrics = metrics_text(&server);
    assert!(
        metrics.contains("strata_store_retention_skipped_events_total"),
        "{metrics}"
    );
}
