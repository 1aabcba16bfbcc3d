//! Expected-version appends through the real binary: concurrent writers on the same keys against
//! a serial model of the stored history, on both logs; two ingest nodes and a plain Kafka producer
//! on Tansu; `kill -9` and a store rebuild keeping every decision.

use crate::common::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

const KEYS: [&str; 3] = ["acct-a", "acct-b", "acct-c"];

/// A small deterministic generator (the seed is printed, so a failure can be replayed).
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One request a writer sent, and what it got (`None`: no answer, the server died).
#[derive(Clone, Debug)]
struct Sent {
    events: Vec<Value>,
    answer: Option<(u16, Value)>,
}

fn post(base: &str, stream: &str, events: &[Value]) -> Option<(u16, Value)> {
    let body: String = events.iter().map(|e| format!("{e}\n")).collect();
    let resp = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
        .post(format!("{base}/v1/streams/{stream}/events"))
        .body(body)
        .send()
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.json().unwrap_or(Value::Null)))
}

/// A writer: `requests` random requests on [`KEYS`], each to one of `bases`, expecting the
/// versions it last learned (so that some hold and some do not).
fn writer(bases: Vec<String>, stream: &str, w: usize, seed: u64, requests: usize) -> Vec<Sent> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut belief: HashMap<&str, u64> = HashMap::new();
    let mut out = Vec::new();
    for r in 0..requests {
        let key = KEYS[rng.next(KEYS.len() as u64) as usize];
        let id = |j: usize| format!("w{w}-{r}-{j}");
        let known = *belief.get(key).unwrap_or(&0);
        let events = match rng.next(6) {
            0 | 1 => {
                vec![json!({"key": key, "id": id(0), "data": {"w": w}, "expected_version": known})]
            }
            2 => vec![
                json!({"key": key, "id": id(0), "data": {"w": w}, "expected_version": known}),
                json!({"key": key, "id": id(1), "data": {"w": w}}),
            ],
            3 => vec![
                json!({"key": key, "id": id(0), "data": {"w": w}, "expect": if known == 0 { "none" } else { "exists" }}),
                json!({"id": id(1), "data": {"keyless": true}}),
            ],
            4 => vec![
                json!({"key": key, "id": id(0), "data": {"w": w}, "expected_version": known + rng.next(2)}),
            ],
            _ => vec![json!({"key": key, "id": id(0), "data": {"plain": w}})],
        };
        let base = &bases[rng.next(bases.len() as u64) as usize];
        let answer = post(base, stream, &events);
        match &answer {
            Some((200, body)) => {
                if let Some(v) = body["versions"][key].as_u64() {
                    belief.insert(key, v);
                }
            }
            Some((409, body)) => {
                for k in body["keys"].as_array().into_iter().flatten() {
                    if k["key"] == key {
                        belief.insert(key, k["actual"].as_u64().unwrap());
                    }
                }
            }
            // A cluster's partition without a holder for a moment (the id check before the
            // append, or the decision after it): the outcome is unknown, and checked as such.
            Some((503, _)) => {}
            Some((status, body)) => panic!("writer {w}: unexpected {status}: {body}"),
            None => {
                out.push(Sent { events, answer });
                return out;
            }
        }
        out.push(Sent { events, answer });
    }
    out
}

/// Runs `writers` concurrent writers; every request they sent.
fn run_writers(
    bases: &[String],
    stream: &str,
    writers: usize,
    requests: usize,
    seed: u64,
) -> Vec<Sent> {
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let bases = bases.to_vec();
            let stream = stream.to_owned();
            std::thread::spawn(move || writer(bases, &stream, w, seed + w as u64, requests))
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

/// Checks the stored history (a replay of every partition) against a serial model: in each
/// partition's offset order, every stored event's `version` is its key's count so far; every
/// stored conditional request held at its place and is stored whole, its events with no other
/// event between them; every `200` is stored with the versions it reported; every `409` is
/// absent; a request without an answer is stored whole or not at all. Returns how many
/// requests were accepted and rejected.
fn check_against_model(history: &[Value], sent: &[Sent]) -> (usize, usize) {
    let by_id: HashMap<&str, &Sent> = sent
        .iter()
        .flat_map(|s| s.events.iter().map(move |e| (e["id"].as_str().unwrap(), s)))
        .collect();
    let stored: HashSet<&str> = history.iter().filter_map(|e| e["id"].as_str()).collect();
    let mut partitions: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
    for e in history {
        partitions
            .entry(e["partition"].as_u64().unwrap())
            .or_default()
            .push(e);
    }
    let mut model: HashMap<String, u64> = HashMap::new();
    for events in partitions.values_mut() {
        events.sort_by_key(|e| e["offset"].as_u64().unwrap());
        let mut i = 0;
        while i < events.len() {
            let Some(request) = events[i]["id"].as_str().and_then(|id| by_id.get(id)) else {
                // Not a writer's event (a plain producer's): it counts.
                if let Some(k) = events[i]["key"].as_str() {
                    *model.entry(k.to_owned()).or_default() += 1;
                }
                i += 1;
                continue;
            };
            // The request's events, consecutive in the stored history.
            for (j, want) in request.events.iter().enumerate() {
                let got = events
                    .get(i + j)
                    .unwrap_or_else(|| panic!("request {want} not stored whole"));
                assert_eq!(
                    got["id"], want["id"],
                    "a request's events are consecutive and whole"
                );
                if let Some(key) = want["key"].as_str() {
                    let v = model.entry(key.to_owned()).or_default();
                    let ok = match (&want["expected_version"], want["expect"].as_str()) {
                        (Value::Number(n), _) => n.as_u64() == Some(*v),
                        (_, Some("none")) => *v == 0,
                        (_, Some("exists")) => *v > 0,
                        _ => true,
                    };
                    assert!(ok, "stored {want} although its key was at {v}");
                    *v += 1;
                    assert_eq!(got["version"].as_u64(), Some(*v), "version of {got}");
                } else {
                    assert!(got.get("version").is_none_or(Value::is_null));
                }
            }
            if let Some((200, body)) = &request.answer {
                for (k, v) in body["versions"].as_object().into_iter().flatten() {
                    assert_eq!(v.as_u64(), model.get(k.as_str()).copied(), "answer {body}");
                }
            }
            i += request.events.len();
        }
    }
    let (mut accepted, mut rejected) = (0, 0);
    for s in sent {
        let ids: Vec<&str> = s.events.iter().map(|e| e["id"].as_str().unwrap()).collect();
        let present = ids.iter().filter(|id| stored.contains(*id)).count();
        match &s.answer {
            Some((200, _)) => {
                assert_eq!(present, ids.len(), "acknowledged {ids:?} missing");
                accepted += 1;
            }
            Some((409, body)) => {
                assert_eq!(present, 0, "rejected {ids:?} stored: {body}");
                assert!(
                    body["error"].as_str().unwrap().contains("expected version"),
                    "{body}"
                );
                rejected += 1;
            }
            _ => assert!(
                present == 0 || present == ids.len(),
                "{ids:?} stored in part"
            ),
        }
    }
    (accepted, rejected)
}

/// Waits until the store has applied everything appended so far to `partitions` partitions: a
/// conditional append is answered once its holder decided it, after all before it.
fn barrier(server: &Server, stream: &str, partitions: u32) {
    let mut done = HashSet::new();
    for i in 0..1000 {
        let key = unique(&format!("barrier{i}-"));
        let p = strata_proto::partition_for_key(key.as_bytes(), partitions);
        if done.insert(p) {
            let body = json!({"key": key, "data": null, "expect": "none"}).to_string();
            append_ok(server, stream, &body);
        }
        if done.len() == partitions as usize {
            return;
        }
    }
}

fn history(server: &Server, stream: &str) -> Vec<Value> {
    let (status, events) = replay(server, stream, "");
    assert_eq!(status, 200, "{events:?}");
    events
}

#[test]
fn concurrent_conditional_appends_match_a_serial_model() {
    for backend in backends() {
        let (_tmp, dir) = data_dir();
        let config = match backend {
            Backend::Embedded => String::new(),
            Backend::Kafka => kafka_section(&unique("t"), &unique("g")),
        };
        let server = Server::start(backend, &dir, &config);
        create_stream(&server, "acct", 2);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        eprintln!("{backend:?}: seed {seed}");
        let sent = run_writers(std::slice::from_ref(&server.base), "acct", 4, 40, seed);
        barrier(&server, "acct", 2);
        let (accepted, rejected) = check_against_model(&history(&server, "acct"), &sent);
        eprintln!(
            "{backend:?}: {accepted} accepted, {rejected} rejected of {}",
            sent.len()
        );
        assert!(
            accepted > 10 && rejected > 10,
            "{accepted} accepted, {rejected} rejected"
        );

        // Bad conditions change nothing.
        let before = history(&server, "acct").len();
        for (body, want) in [
            (r#"{"data":1,"expected_version":0}"#, "needs a `key`"),
            (
                r#"{"key":"x","data":1,"expect":"maybe"}"#,
                "`expect` must be",
            ),
            (
                r#"{"key":"x","data":1,"expect":"none","expected_version":0}"#,
                "not both",
            ),
            (
                "{\"key\":\"x\",\"data\":1}\n{\"key\":\"x\",\"data\":1,\"expect\":\"none\"}",
                "contradicts",
            ),
        ] {
            let (status, answer) = append(&server, "acct", body);
            assert_eq!(status, 400, "{body}: {answer}");
            assert!(answer["error"].as_str().unwrap().contains(want), "{answer}");
        }
        // Keys of two partitions cannot be one batch.
        let (a, b) = (0..100)
            .map(|i| format!("x{i}"))
            .fold((None, None), |(a, b), k| {
                let p = strata_proto::partition_for_key(k.as_bytes(), 2);
                match (p, &a, &b) {
                    (0, None, _) => (Some(k), b),
                    (1, _, None) => (a, Some(k)),
                    _ => (a, b),
                }
            });
        let two = format!(
            "{{\"key\":\"{}\",\"data\":1,\"expect\":\"none\"}}\n{{\"key\":\"{}\",\"data\":1}}",
            a.unwrap(),
            b.unwrap()
        );
        let (status, answer) = append(&server, "acct", &two);
        assert_eq!(status, 400, "{answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("share a partition")
        );
        assert_eq!(history(&server, "acct").len(), before);
        // A retry of an accepted request (same ids) is a duplicate, not a conflict; a rejected
        // one may be retried with the right version.
        let ok = append_ok(
            &server,
            "acct",
            r#"{"key":"solo","id":"s1","data":1,"expect":"none"}"#,
        );
        assert_eq!(ok["versions"]["solo"], 1);
        let again = append_ok(
            &server,
            "acct",
            r#"{"key":"solo","id":"s1","data":1,"expect":"none"}"#,
        );
        assert_eq!(again["duplicates"], 1, "{again}");
        let (status, no) = append(
            &server,
            "acct",
            r#"{"key":"solo","id":"s2","data":2,"expected_version":0}"#,
        );
        assert_eq!(status, 409);
        assert_eq!(
            no["keys"][0],
            json!({"key": "solo", "expected": 0, "actual": 1, "version": 1})
        );
        let yes = append_ok(
            &server,
            "acct",
            r#"{"key":"solo","id":"s2","data":2,"expected_version":1}"#,
        );
        assert_eq!(yes["versions"]["solo"], 2);
        // SQL sees the versions.
        let v = rows(
            &server,
            "SELECT max(version) AS v FROM acct WHERE key = 'solo'",
        );
        assert_eq!(v[0]["v"], 2);
    }
}

/// The same on Tansu through two ingest nodes at once, and a plain Kafka producer conditioning
/// its records with the `strata-expect` header.
#[test]
fn two_ingest_nodes_and_a_plain_kafka_producer_share_expected_versions() {
    use rdkafka::ClientConfig;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let Some(cluster) = crate::cluster::Cluster::start_nodes(
        "",
        &[
            ("i", "ingest"),
            ("i2", "ingest"),
            ("s1", "store"),
            ("s2", "store"),
        ],
    ) else {
        eprintln!("no Kafka broker (STRATA_TEST_KAFKA_BROKERS); skipped");
        return;
    };
    let ingest = &cluster.nodes[0];
    create_stream(ingest, "acct", 2);
    eventually("every partition served", || {
        let (status, _) = sql(&cluster.nodes[2], "SELECT count(*) FROM acct");
        (status == 200).then_some(())
    });
    let bases = vec![cluster.nodes[0].base.clone(), cluster.nodes[1].base.clone()];
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("seed {seed}");

    // A plain producer (no strata code) on its own key: none, 1, 2, then a stale 1, then a
    // condition that does not parse (a dead letter).
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers().unwrap())
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "20000")
        .create()
        .unwrap();
    let topic = format!("{}acct", ingest.topic_prefix());
    let plain = std::thread::spawn(move || {
        for (n, expect) in ["none", "1", "2", "1", "maybe"].into_iter().enumerate() {
            let id = format!("p{n}");
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "id",
                    value: Some(id.as_str()),
                })
                .insert(Header {
                    key: "strata-expect",
                    value: Some(expect),
                });
            let value = json!({"plain": n}).to_string();
            let record = FutureRecord::to(&topic)
                .key("plain-key")
                .payload(&value)
                .headers(headers);
            futures::executor::block_on(producer.send(record, Duration::from_secs(20))).unwrap();
        }
    });
    let sent = run_writers(&bases, "acct", 4, 25, seed);
    plain.join().unwrap();
    barrier(ingest, "acct", 2);
    // The last of the plain producer's records is stored or rejected once the store passed it.
    let store = &cluster.nodes[2];
    let all = eventually("the plain producer's records decided", || {
        let events = history(store, "acct");
        let mine = events.iter().filter(|e| e["key"] == "plain-key").count();
        (mine == 3).then_some(events)
    });
    let mine: Vec<(&str, u64)> = all
        .iter()
        .filter(|e| e["key"] == "plain-key")
        .map(|e| (e["id"].as_str().unwrap(), e["version"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        mine,
        vec![("p0", 1), ("p1", 2), ("p2", 3)],
        "the stale p3 is rejected"
    );
    let (accepted, rejected) = check_against_model(&all, &sent);
    eprintln!(
        "two ingest nodes: {accepted} accepted, {rejected} rejected of {}",
        sent.len()
    );
    assert!(
        accepted > 5 && rejected > 5,
        "{accepted} accepted, {rejected} rejected"
    );
    // Every store node reads the same history.
    assert_eq!(history(&cluster.nodes[3], "acct").len(), all.len());
}

/// `kill -9` while writers append conditionally: nothing acknowledged is lost, and the history
/// (and so every decision) is the same after the restart and after the store is rebuilt from
/// the log.
#[test]
fn decisions_survive_kill_9_and_a_store_rebuild() {
    let (_tmp, dir) = data_dir();
    let config = "[store]\nblock_rows = 64\ncommit_max_events = 7\n";
    let mut server = Server::start(Backend::Embedded, &dir, config);
    create_stream(&server, "acct", 2);
    let base = server.base.clone();
    let writers = std::thread::spawn(move || run_writers(&[base], "acct", 4, 400, 7));
    std::thread::sleep(Duration::from_millis(1500));
    server.kill9();
    let sent = writers.join().unwrap();
    let answered = sent.iter().filter(|s| s.answer.is_some()).count();
    server.restart();
    wait_stored(&server, "acct");
    let after_restart = history(&server, "acct");
    let (accepted, rejected) = check_against_model(&after_restart, &sent);
    eprintln!(
        "kill -9: {answered} answered ({accepted} accepted, {rejected} rejected), {} stored events",
        after_restart.len()
    );
    assert!(accepted > 0 && rejected > 0);
    assert!(server.stop());
    std::fs::remove_dir_all(dir.join("store")).unwrap();
    server.restart();
    wait_stored(&server, "acct");
    let rebuilt = history(&server, "acct");
    let strip = |h: &[Value]| -> Vec<Value> {
        h.iter()
            .map(|e| json!([e["partition"], e["offset"], e["id"], e["key"], e["version"]]))
            .collect()
    };
    assert_eq!(strip(&rebuilt), strip(&after_restart));
}

/// An ingest node that could not learn the decision refuses a conditional append before writing
/// anything.
#[test]
fn an_ingest_node_without_a_cluster_refuses_expected_versions_and_writes_nothing() {
    if kafka_brokers().is_none() {
        eprintln!("no Kafka broker (STRATA_TEST_KAFKA_BROKERS); skipped");
        return;
    }
    let (_tmp, dir) = data_dir();
    let config = kafka_section(&unique("t"), &unique("g"));
    let server = Server::start_with(Backend::Kafka, &dir, &config, &["--role", "ingest"]);
    create_stream(&server, "acct", 1);
    let (status, answer) = append(
        &server,
        "acct",
        r#"{"key":"k","data":1,"expected_version":0}"#,
    );
    assert_eq!(status, 421, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("cannot learn"),
        "{answer}"
    );
    let info = stream_info(&server, "acct");
    assert_eq!(info["offsets"][0]["next_offset"], 0, "{info}");
}
