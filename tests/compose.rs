//! No Docker engine runs here, so compose.yaml is checked as data: it parses, names the three
//! KRaft brokers and the four strata nodes, and every setting it gives strata is one the binary
//! reads.

use serde_yaml_ng::Value;
use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("compose.yaml")).unwrap();
    serde_yaml_ng::from_str(&text).expect("compose.yaml parses")
}

fn env<'a>(service: &'a Value, name: &str) -> &'a str {
    service["environment"][name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} missing from {service:?}"))
}

#[test]
fn compose_runs_three_kraft_brokers_and_strata_ingest_and_store_nodes() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    let names: BTreeSet<&str> = services.keys().filter_map(Value::as_str).collect();
    for name in [
        "kafka-1", "kafka-2", "kafka-3", "ingest-1", "ingest-2", "store-1", "store-2",
    ] {
        assert!(names.contains(name), "{name} missing: {names:?}");
    }

    let mut node_ids = BTreeSet::new();
    for b in 1..=3 {
        let kafka = &compose["services"][format!("kafka-{b}").as_str()];
        assert!(
            kafka["image"]
                .as_str()
                .unwrap()
                .starts_with("apache/kafka:")
        );
        assert_eq!(env(kafka, "KAFKA_PROCESS_ROLES"), "broker,controller");
        let voters = env(kafka, "KAFKA_CONTROLLER_QUORUM_VOTERS");
        for v in 1..=3 {
            assert!(voters.contains(&format!("{v}@kafka-{v}:9093")), "{voters}");
        }
        assert_eq!(
            env(kafka, "KAFKA_ADVERTISED_LISTENERS"),
            format!("PLAINTEXT://kafka-{b}:9092")
        );
        assert_eq!(env(kafka, "KAFKA_DEFAULT_REPLICATION_FACTOR"), "3");
        assert_eq!(env(kafka, "KAFKA_MIN_INSYNC_REPLICAS"), "2");
        assert!(kafka["healthcheck"]["test"].is_sequence());
        node_ids.insert(env(kafka, "KAFKA_NODE_ID").to_owned());
    }
    assert_eq!(node_ids.len(), 3, "broker node ids must differ");

    let help = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let mut ports = BTreeSet::new();
    for (name, role) in [
        ("ingest-1", "ingest"),
        ("ingest-2", "ingest"),
        ("store-1", "store"),
        ("store-2", "store"),
    ] {
        let node = &compose["services"][name];
        assert_eq!(node["build"]["context"].as_str(), Some("."));
        let dockerfile = node["build"]["dockerfile"].as_str().unwrap();
        let dockerfile = std::fs::read_to_string(root().join(dockerfile)).unwrap();
        assert!(dockerfile.contains("cargo build --release --locked --bin strata"));
        assert_eq!(env(node, "STRATA_ROLE"), role);
        assert_eq!(env(node, "STRATA_LOG"), "kafka");
        assert_eq!(
            env(node, "STRATA_KAFKA_BROKERS"),
            "kafka-1:9092,kafka-2:9092,kafka-3:9092"
        );
        assert_eq!(env(node, "STRATA_KAFKA_REPLICATION_FACTOR"), "3");
        assert_eq!(env(node, "STRATA_KAFKA_MIN_INSYNC_REPLICAS"), "2");
        // Every STRATA_* setting is one `strata serve` reads.
        for key in node["environment"].as_mapping().unwrap().keys() {
            let key = key.as_str().unwrap();
            if key.starts_with("STRATA_") {
                assert!(
                    help.contains(&format!("[env: {key}="))
                        || help.contains(&format!("[env: {key}]")),
                    "strata serve does not read {key}"
                );
            }
        }
        // Every node takes part in cluster-wide SQL, reachable by its service name.
        assert_eq!(env(node, "STRATA_CLUSTER_LISTEN"), "0.0.0.0:7080");
        assert_eq!(
            env(node, "STRATA_CLUSTER_ADVERTISE"),
            format!("{name}:7080")
        );
        assert!(env(node, "STRATA_CLUSTER_SECRET").len() >= 16);
        let healthcheck = format!("{:?}", node["healthcheck"]["test"]);
        assert!(healthcheck.contains("/healthz"), "{healthcheck}");
        for b in 1..=3 {
            assert_eq!(
                node["depends_on"][format!("kafka-{b}").as_str()]["condition"].as_str(),
                Some("service_healthy")
            );
        }
        // Analysts' tools reach every node: PostgreSQL and Flight SQL on all interfaces.
        assert_eq!(env(node, "STRATA_PG"), "0.0.0.0:5433");
        assert_eq!(env(node, "STRATA_FLIGHT"), "0.0.0.0:50051");
        let port = node["ports"][0].as_str().unwrap();
        assert!(port.ends_with(":7070"), "{port}");
        ports.insert(port.to_owned());
    }
    assert_eq!(ports.len(), 4, "each node needs its own host port");
}
