//! Kafka-only behaviour against the real broker (Tansu from scripts/test.sh): events published by a
//! plain Kafka producer, ingest and store roles, and two store nodes handing partitions over.

use crate::common::*;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

/// The count of `stream` from SQL, or `None` while the table is not there yet.
fn count(server: &Server, stream: &str) -> Option<u64> {
    let (status, v) = sql(server, &format!("SELECT count(*) AS n FROM {stream}"));
    (status == 200).then(|| v[0]["n"].as_u64().unwrap_or(0))
}

fn ids(server: &Server, stream: &str) -> Vec<String> {
    rows(server, &format!("SELECT id FROM {stream}"))
        .into_iter()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect()
}

/// Polls `f` until it returns `Some`, for at most `secs` seconds.
fn within<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn events_from_a_plain_kafka_producer_are_stored_like_http_ones() {
    let Some(brokers) = kafka_brokers() else {
        eprintln!("no Kafka broker (STRATA_TEST_KAFKA_BROKERS); skipped");
        return;
    };
    let (_tmp, dir) = data_dir();
    // Values that are not JSON are stored here (the default sets them aside as dead letters).
    let config = kafka_section(&unique("t"), &unique("g")) + "non_json = \"store\"\n";
    let server = Server::start(Backend::Kafka, &dir, &config);
    let topic = format!("{}ext", server.topic_prefix());
    // A topic made outside strata, with its own partition count.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let made = futures::executor::block_on(admin.create_topics(
        [&NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))
    .unwrap();
    assert!(made.iter().all(Result::is_ok), "{made:?}");

    // No strata code from here: a producer with Java's partitioner, as a Java client would be.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "20000")
        .create()
        .unwrap();
    let base = 1_714_521_600_000i64;
    let mut partition_of: BTreeMap<String, i32> = BTreeMap::new();
    for i in 0..30i64 {
        let key = format!("k{}", i % 5);
        let value = json!({"n": i, "country": (["NL", "DE"][i as usize % 2])}).to_string();
        let id = format!("x{i}");
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "id",
                value: Some(id.as_str()),
            })
            .insert(Header {
                key: "type",
                value: Some("ext"),
            });
        let record = FutureRecord::to(&topic)
            .key(&key)
            .payload(&value)
            .headers(headers)
            .timestamp(base + i * 1000);
        let delivered =
            futures::executor::block_on(producer.send(record, Duration::from_secs(20))).unwrap();
        partition_of.insert(key, delivered.partition);
    }
    // Values that are not compact JSON, and records without value or key.
    let odd: [Option<&[u8]>; 4] = [
        Some(b"plain text"),
        Some(&[0xff, 0xfe]),
        Some(b"{\n  \"n\": 100\n}"),
        None,
    ];
    for value in odd {
        let mut record = FutureRecord::<str, [u8]>::to(&topic)
            .key("odd")
            .partition(0);
        if let Some(v) = value {
            record = record.payload(v);
        }
        futures::executor::block_on(producer.send(record, Duration::from_secs(20))).unwrap();
    }
    futures::executor::block_on(
        producer.send(
            FutureRecord::<str, str>::to(&topic)
                .payload("{\"keyless\":true}")
                .partition(1),
            Duration::from_secs(20),
        ),
    )
    .unwrap();

    // strata adopts the topic and its store consumes it.
    within(60, "35 events in SQL", || {
        count(&server, "ext").filter(|n| *n == 35)
    });
    let info = stream_info(&server, "ext");
    assert_eq!(info["partitions"], 3, "{info}");
    assert_eq!(
        rows(
            &server,
            "SELECT count(*) AS n, count(DISTINCT id) AS ids, min(time) AS first FROM ext WHERE type = 'ext'"
        ),
        vec![json!({"n": 30, "ids": 30, "first": "2024-05-01T00:00:00Z"})]
    );
    assert_eq!(
        rows(
            &server,
            "SELECT json_get_str(data, 'country') AS c, sum(json_get_int(data, 'n')) AS s FROM ext WHERE type = 'ext' GROUP BY 1 ORDER BY 1"
        ),
        vec![json!({"c": "DE", "s": 225}), json!({"c": "NL", "s": 210})]
    );
    let odd_data: Vec<Value> = rows(
        &server,
        "SELECT data FROM ext WHERE key = 'odd' ORDER BY \"offset\"",
    )
    .into_iter()
    .map(|r| r["data"].clone())
    .collect();
    assert_eq!(
        odd_data,
        vec![
            json!("\"plain text\""),
            json!("\"//4=\""),
            json!("{\"n\":100}"),
            json!("null")
        ]
    );
    // Replay from the shards and straight from the log agree (but for the store's `version`).
    for p in 0..3 {
        let (status, mut stored) = replay(&server, "ext", &format!("partition={p}"));
        assert_eq!(status, 200);
        for line in &mut stored {
            line.as_object_mut().unwrap().remove("version");
        }
        let (status, logged) = replay(&server, "ext", &format!("partition={p}&source=log"));
        assert_eq!(status, 200);
        assert_eq!(stored, logged, "partition {p}");
    }
    let (_, k1) = replay(&server, "ext", "key=k1");
    assert_eq!(k1.len(), 6);
    assert!(k1.iter().all(|l| l["partition"] == partition_of["k1"]));
    // strata puts a key where a Java client does.
    for (key, partition) in &partition_of {
        let out = append_ok(
            &server,
            "ext",
            &format!("{}\n", json!({"key": key, "data": 1})),
        );
        assert_eq!(out["partitions"][0]["partition"], *partition, "{key}");
    }
    let metrics = metrics_text(&server);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("strata_kafka_non_json_values_total")
                && l.contains("kind=\"binary\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
}

#[test]
fn ingest_and_store_nodes_split_partitions_and_hand_them_over() {
    if kafka_brokers().is_none() {
        eprintln!("no Kafka broker (STRATA_TEST_KAFKA_BROKERS); skipped");
        return;
    }
    let kafka = kafka_section(&unique("t"), &unique("g"));
    let (_tmp, dir) = data_dir();
    let ingest = Server::start_with(
        Backend::Kafka,
        &dir.join("i"),
        &kafka,
        &["--role", "ingest"],
    );
    let s1 = Server::start_with(
        Backend::Kafka,
        &dir.join("s1"),
        &kafka,
        &["--role", "store"],
    );
    let mut s2 = Server::start_with(
        Backend::Kafka,
        &dir.join("s2"),
        &kafka,
        &["--role", "store"],
    );
    let created = http()
        .put(ingest.url("/v1/streams/r"))
        .json(&json!({"partitions": 4}))
        .send()
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);

    // Each role refuses what it does not do, clearly.
    let (status, err) = append(&s1, "r", "{\"data\": 1}");
    assert_eq!(status, 421, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("ingest node"),
        "{err}"
    );
    let (status, err) = sql(&ingest, "SELECT 1");
    assert_eq!(status, 421, "{err}");
    assert_eq!(replay(&ingest, "r", "").0, 421);

    // Both store nodes get partitions.
    let holders = |server: &Server| -> BTreeMap<u64, BTreeSet<String>> {
        let cluster: Value = http()
            .get(server.url("/v1/cluster"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let mut by_partition: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
        for p in cluster["partitions"].as_array().into_iter().flatten() {
            if p["stream"] == "r" {
                by_partition
                    .entry(p["partition"].as_u64().unwrap())
                    .or_default()
                    .insert(p["node"].as_str().unwrap().to_owned());
            }
        }
        by_partition
    };
    within(60, "both store nodes holding partitions", || {
        let h = holders(&ingest);
        let nodes: BTreeSet<&String> = h.values().flatten().collect();
        (h.len() == 4 && h.values().all(|n| n.len() == 1) && nodes.len() == 2).then_some(())
    });

    let mut acked = HashSet::new();
    let send = |acked: &mut HashSet<String>, from: usize, to: usize| {
        for batch in (from..to).step_by(50) {
            let body: String = (batch..batch + 50)
                .map(|i| format!("{}\n", json!({"id": format!("e{i}"), "key": format!("k{}", i % 13), "data": {"i": i}})))
                .collect();
            append_ok(&ingest, "r", &body);
            acked.extend((batch..batch + 50).map(|i| format!("e{i}")));
        }
    };
    send(&mut acked, 0, 200);
    within(60, "200 events stored across the two nodes", || {
        let (a, b) = (count(&s1, "r")?, count(&s2, "r")?);
        (a + b == 200 && a > 0 && b > 0).then_some(())
    });
    let union: HashSet<String> = ids(&s1, "r").into_iter().chain(ids(&s2, "r")).collect();
    assert_eq!(union, acked);

    // One store node dies; the other takes its partitions and catches up from the log.
    let s1_log_before = s1.log().len();
    s2.kill9();
    send(&mut acked, 200, 300);
    within(90, "the surviving node holding everything", || {
        (count(&s1, "r")? == 300).then_some(())
    });
    let stored = ids(&s1, "r");
    assert_eq!(stored.len(), 300, "an event was stored twice");
    assert_eq!(stored.into_iter().collect::<HashSet<_>>(), acked);
    within(60, "the cluster view showing one holder", || {
        let h = holders(&s1);
        let nodes: BTreeSet<&String> = h.values().flatten().collect();
        (h.len() == 4 && nodes.len() == 1).then_some(())
    });
    // Cooperative rebalancing: the survivor only gained partitions; the ones it held were
    // never revoked (the eager protocol would have revoked and re-assigned them all).
    let since_kill = &s1.log()[s1_log_before..];
    assert!(
        !since_kill.contains("partition revoked"),
        "the surviving node gave up partitions it kept:\n{since_kill}"
    );
}

/// A store node restarted after `kill -9` catches up the partitions it held straight from the log,
/// while the group still waits for its dead member's session to end; the group's consumer then
/// goes on where that catch-up ended, with nothing lost or stored twice.
#[test]
fn a_restarted_store_node_catches_up_before_the_group_gives_its_partitions_back() {
    if kafka_brokers().is_none() {
        eprintln!("no Kafka broker (STRATA_TEST_KAFKA_BROKERS); skipped");
        return;
    }
    let (_tmp, dir) = data_dir();
    let mut server = Server::start(Backend::Kafka, &dir.join("n"), "");
    create_stream(&server, "w", 4);
    let events = |from: u32, to: u32| -> String {
        (from..to)
            .map(|i| {
                json!({"id": format!("w{i}"), "key": format!("k{}", i % 7), "data": {"i": i}})
                    .to_string()
                    + "\n"
            })
            .collect()
    };
    let outcome = append_ok(&server, "w", &events(0, 200));
    server.note_append("w", &outcome);
    wait_stored(&server, "w");
    // The node notes the partitions the group gave it.
    let held = dir.join("n/store/kafka-held");
    within(60, "the held partitions noted", || {
        (std::fs::read_to_string(&held).ok()?.lines().count() == 4).then_some(())
    });

    server.kill9();
    server.restart();
    let restarted = Instant::now();
    let outcome = append_ok(&server, "w", &events(200, 500));
    server.note_append("w", &outcome);
    wait_stored(&server, "w");
    let caught_up = restarted.elapsed();
    let bridged: u64 = metrics_text(&server)
        .lines()
        .filter(|l| {
            l.starts_with("strata_store_warm_restart_events_total{") && l.contains("stream=\"w\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum();
    eprintln!(
        "restart → 300 new appends stored after {caught_up:?}, {bridged} of them by the warm-restart consumer"
    );
    // The group waits for the killed member's session (6 s) before it assigns anything.
    assert!(
        bridged >= 300,
        "{bridged} events caught up before the group's assignment"
    );

    // The group takes over where the catch-up ended.
    within(60, "the group's assignment", || {
        server
            .log()
            .contains("warm restart catch-up ended")
            .then_some(())
    });
    let outcome = append_ok(&server, "w", &events(500, 600));
    server.note_append("w", &outcome);
    wait_stored(&server, "w");
    let stored = ids(&server, "w");
    let unique: HashSet<&String> = stored.iter().collect();
    assert_eq!((stored.len(), unique.len()), (600, 600));
}
