//! Cluster-wide SQL on the real broker (Tansu from scripts/test.sh): one ingest node and three
//! store nodes, each taking node-to-node calls. Every node answers for every partition, equal to a
//! recomputation here; partial aggregates run on the holders; user grants and the cluster secret
//! hold; and while a store node is killed and restarted every answer is complete or a clear 503.

use crate::common::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const SECRET: &str = "cluster-test-secret-0123456789";

const AUTH: &str = r#"
[auth]
public_metrics = true

[[auth.tokens]]
name = "ops"
token = "ops-secret"
scopes = ["read", "write", "admin"]

[[auth.tokens]]
name = "orders-analyst"
token = "analyst-secret"
scopes = ["read"]
streams = ["orders"]
"#;

/// A cluster of one ingest node and three store nodes sharing a log, a group and a secret.
pub(crate) struct Cluster {
    _tmp: tempfile::TempDir,
    pub(crate) nodes: Vec<Server>,
}

impl Cluster {
    pub(crate) fn start(auth: &str) -> Option<Cluster> {
        Self::start_nodes(
            auth,
            &[
                ("i", "ingest"),
                ("s1", "store"),
                ("s2", "store"),
                ("s3", "store"),
            ],
        )
    }

    /// Nodes of the given names and roles, on one broker and group.
    pub(crate) fn start_nodes(auth: &str, nodes: &[(&str, &str)]) -> Option<Cluster> {
        kafka_brokers()?;
        let config = format!(
            "[cluster]\nsecret = \"{SECRET}\"\n{auth}{}",
            kafka_section(&unique("t"), &unique("g"))
        );
        let (tmp, dir) = data_dir();
        let nodes = nodes
            .iter()
            .map(|&(name, role)| node(&dir, &config, name, role))
            .collect();
        Some(Cluster { _tmp: tmp, nodes })
    }

    pub(crate) fn ingest(&self) -> &Server {
        &self.nodes[0]
    }
}

/// A Kafka node `name` of `role` in `dir/name`, on a node-to-node port of its own.
fn node(dir: &std::path::Path, config: &str, name: &str, role: &str) -> Server {
    Server::start_with(
        Backend::Kafka,
        &dir.join(name),
        config,
        &[
            "--role",
            role,
            "--node-id",
            name,
            "--cluster-listen",
            "127.0.0.1:0",
        ],
    )
}

/// Runs SQL with a bearer token (and `after` tokens); returns the status and the JSON body.
pub(crate) fn query(
    server: &Server,
    token: Option<&str>,
    sql: &str,
    after: &[String],
) -> (u16, Value) {
    let mut request = http()
        .post(server.url("/v1/sql"))
        .json(&json!({"sql": sql, "after": after, "timeout_ms": 20000}));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let resp = request.send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

fn put_stream(server: &Server, token: Option<&str>, name: &str, partitions: u32) {
    let mut request = http()
        .put(server.url(&format!("/v1/streams/{name}")))
        .json(&json!({ "partitions": partitions }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let status = request.send().unwrap().status().as_u16();
    assert_eq!(status, 201, "creating {name}");
}

/// Appends NDJSON lines; returns the consistency token.
pub(crate) fn append_lines(
    server: &Server,
    token: Option<&str>,
    stream: &str,
    lines: &[String],
) -> String {
    let mut request = http()
        .post(server.url(&format!("/v1/streams/{stream}/events")))
        .header("content-type", "application/x-ndjson")
        .body(lines.join("\n"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let resp = request.send().unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().unwrap();
    assert_eq!(status, 200, "append: {body}");
    body["token"].as_str().unwrap().to_owned()
}

/// The events of the test, and what every query over them must answer.
pub(crate) struct Data {
    pub(crate) orders: Vec<Value>,
    refunds: Vec<Value>,
}

pub(crate) const BASE_MS: i64 = 1_714_521_600_000;
pub(crate) const COUNTRIES: [&str; 4] = ["NL", "DE", "FR", "US"];

impl Data {
    pub(crate) fn new(n: usize) -> Data {
        let orders = (0..n)
            .map(|i| {
                json!({
                    "key": format!("k{}", i % 50),
                    "id": format!("o{i}"),
                    "time": BASE_MS + i as i64 * 1000,
                    "data": {"country": COUNTRIES[(i * 7 + i / 3) % 4], "amount": (i * 13) % 97},
                })
            })
            .collect();
        let refunds = (0..n / 10)
            .map(|i| {
                json!({
                    "id": format!("r{i}"),
                    "time": BASE_MS + i as i64 * 5000,
                    "data": {"order": format!("o{}", i * 10 + 3), "refund": i % 7},
                })
            })
            .collect();
        Data { orders, refunds }
    }

    pub(crate) fn lines(events: &[Value]) -> Vec<String> {
        events.iter().map(Value::to_string).collect()
    }

    /// Per country: (count, sum of amount).
    fn by_country(&self) -> Value {
        let mut groups: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for o in &self.orders {
            let g = groups
                .entry(o["data"]["country"].as_str().unwrap().to_owned())
                .or_default();
            g.0 += 1;
            g.1 += o["data"]["amount"].as_u64().unwrap();
        }
        Value::Array(
            groups
                .into_iter()
                .map(|(c, (n, s))| json!({"c": c, "n": n, "s": s}))
                .collect(),
        )
    }
}

/// The queries every node must answer alike, with the answer recomputed from `data`.
fn expectations(data: &Data) -> Vec<(String, Value)> {
    let orders = &data.orders;
    let in_range = orders
        .iter()
        .filter(|o| {
            let t = o["time"].as_i64().unwrap();
            (BASE_MS + 600_000..BASE_MS + 1_200_000).contains(&t)
        })
        .count();
    let k7: Vec<&Value> = orders.iter().filter(|o| o["key"] == "k7").collect();
    let k7_sum: u64 = k7
        .iter()
        .map(|o| o["data"]["amount"].as_u64().unwrap())
        .sum();
    let mut latest: Vec<&Value> = orders.iter().collect();
    latest.sort_by_key(|o| std::cmp::Reverse(o["time"].as_i64().unwrap()));
    let latest: Vec<Value> = latest[..5].iter().map(|o| json!({"id": o["id"]})).collect();
    let keys: BTreeSet<&str> = orders.iter().map(|o| o["key"].as_str().unwrap()).collect();
    let ids: BTreeSet<&str> = orders.iter().map(|o| o["id"].as_str().unwrap()).collect();
    let joined: Vec<&Value> = data
        .refunds
        .iter()
        .filter(|r| ids.contains(r["data"]["order"].as_str().unwrap()))
        .collect();
    let refunded: u64 = joined
        .iter()
        .map(|r| r["data"]["refund"].as_u64().unwrap())
        .sum();
    vec![
        (
            "SELECT data->>'country' AS c, count(*) AS n, sum(CAST(data->>'amount' AS BIGINT)) AS s \
             FROM orders GROUP BY 1 ORDER BY 1"
                .into(),
            data.by_country(),
        ),
        (
            "SELECT count(*) AS n FROM orders \
             WHERE time >= '2024-05-01T00:10:00Z' AND time < '2024-05-01T00:20:00Z'"
                .into(),
            json!([{"n": in_range}]),
        ),
        (
            "SELECT count(*) AS n, sum(CAST(data->>'amount' AS BIGINT)) AS s FROM orders WHERE key = 'k7'"
                .into(),
            json!([{"n": k7.len(), "s": k7_sum}]),
        ),
        (
            "SELECT id FROM orders ORDER BY time DESC LIMIT 5".into(),
            Value::Array(latest),
        ),
        (
            "SELECT count(*) AS n, count(DISTINCT key) AS k FROM orders".into(),
            json!([{"n": orders.len(), "k": keys.len()}]),
        ),
        (
            "SELECT count(*) AS n, sum(CAST(r.data->>'refund' AS BIGINT)) AS s \
             FROM orders o JOIN refunds r ON o.id = (r.data->>'order')"
                .into(),
            json!([{"n": joined.len(), "s": refunded}]),
        ),
    ]
}

/// Loads `data` through the ingest node and waits (bounded) until the cluster answers for all of
/// it, using the appends' tokens (read-your-writes across nodes).
pub(crate) fn load(cluster: &Cluster, token: Option<&str>, data: &Data) {
    let ingest = cluster.ingest();
    put_stream(ingest, token, "orders", 6);
    put_stream(ingest, token, "refunds", 3);
    let mut after = Vec::new();
    for chunk in Data::lines(&data.orders).chunks(500) {
        after.push(append_lines(ingest, token, "orders", chunk));
    }
    after.push(append_lines(
        ingest,
        token,
        "refunds",
        &Data::lines(&data.refunds),
    ));
    // Until the group has spread the partitions (and the holders caught up), a query is a 503.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (status, body) = query(ingest, token, "SELECT count(*) AS n FROM orders", &after);
        if status == 200 {
            // The tokens were waited for on the holders: every event is there at once.
            assert_eq!(body, json!([{"n": data.orders.len()}]));
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            Instant::now() < deadline,
            "the cluster did not come up: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `output_rows` of the shuffle feeding the final aggregate, from `EXPLAIN ANALYZE`.
fn shuffled_rows(plan: &str) -> u64 {
    let line = plan
        .lines()
        .find(|l| l.contains("NetworkShuffleExec"))
        .unwrap_or_else(|| panic!("no shuffle in\n{plan}"));
    let at = line.find("output_rows=").unwrap() + "output_rows=".len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn plan_text(body: &Value, kind: &str) -> String {
    body.as_array()
        .unwrap()
        .iter()
        .find(|r| r["plan_type"] == kind)
        .map(|r| r["plan"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no {kind} in {body}"))
}

#[test]
fn every_node_answers_sql_over_every_partition() {
    let Some(cluster) = Cluster::start(AUTH) else {
        eprintln!("no Kafka broker (STRATA_TEST_KAFKA_BROKERS); skipped");
        return;
    };
    let ops = Some("ops-secret");
    let data = Data::new(3000);
    load(&cluster, ops, &data);

    for (sql, expected) in expectations(&data) {
        for node in &cluster.nodes {
            let (status, body) = query(node, ops, &sql, &[]);
            assert_eq!(status, 200, "{sql} on {}: {body}", node.base);
            assert_eq!(body, expected, "{sql} on {}", node.base);
        }
    }

    // Every node lists each partition's stored offset as its holder reports it.
    for node in &cluster.nodes {
        eventually("stored offsets from the holders", || {
            let (status, info) = http_json(node, ops, "/v1/streams/orders");
            assert_eq!(status, 200, "{info}");
            let stored: Option<Vec<u64>> = info["offsets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["stored_offset"].as_u64())
                .collect();
            stored.filter(|s| s.len() == 6 && s.iter().sum::<u64>() == 3000)
        });
    }

    // Replay of any partition works from any node: the holder streams it.
    for node in &cluster.nodes {
        let mut replayed = 0;
        for p in 0..6 {
            let (status, lines) = replay_with(node, ops, &format!("partition={p}"));
            assert_eq!(status, 200, "replay of partition {p} from {}", node.base);
            let offsets: Vec<u64> = lines
                .iter()
                .map(|l| l["offset"].as_u64().unwrap())
                .collect();
            assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
            replayed += lines.len();
        }
        assert_eq!(replayed, 3000, "from {}", node.base);
        let (status, lines) = replay_with(node, ops, "key=k7&limit=10");
        assert_eq!(status, 200);
        assert_eq!(lines.len(), 10);
        assert!(lines.iter().all(|l| l["key"] == "k7"), "{lines:?}");
    }

    // EXPLAIN shows the stages and the node running each task.
    let (status, body) = query(
        cluster.ingest(),
        ops,
        "EXPLAIN SELECT data->>'country', count(*) FROM orders GROUP BY 1",
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let plan = plan_text(&body, "distributed_plan");
    assert!(plan.contains("Stage 1"), "{plan}");
    let nodes: BTreeSet<&str> = ["node=s1", "node=s2", "node=s3"]
        .into_iter()
        .filter(|n| plan.contains(n))
        .collect();
    assert_eq!(nodes.len(), 3, "every store node runs a share:\n{plan}");

    // The holders aggregate before anything crosses the network: at most groups × partitions
    // rows are shuffled, not the 3000 events.
    let (status, body) = query(
        cluster.ingest(),
        ops,
        "EXPLAIN ANALYZE SELECT data->>'country', count(*) FROM orders GROUP BY 1",
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let plan = plan_text(&body, "Plan with Metrics");
    let shuffled = shuffled_rows(&plan);
    assert!(shuffled <= 4 * 6, "{shuffled} rows shuffled:\n{plan}");
    eprintln!("GROUP BY country over 3000 events shuffled {shuffled} rows between nodes");

    // Grants are checked on the receiving node against the whole plan.
    let analyst = Some("analyst-secret");
    let (status, body) = query(
        &cluster.nodes[2],
        analyst,
        "SELECT count(*) AS n FROM orders",
        &[],
    );
    assert_eq!((status, body), (200, json!([{"n": 3000}])));
    let join = "SELECT count(*) FROM orders o JOIN refunds r ON o.id = (r.data->>'order')";
    let (status, body) = query(cluster.ingest(), analyst, join, &[]);
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("refunds"),
        "{body}"
    );

    // Node-to-node calls without the cluster secret are refused.
    let (_, status) = http_json(cluster.ingest(), ops, "/v1/cluster");
    let addresses: Vec<String> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["cluster"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(addresses.len(), 4, "{status}");
    const WORKER: &str = "/worker.WorkerService/GetWorkerInfo";
    const FLIGHT: &str = "/arrow.flight.protocol.FlightService/GetFlightInfo";
    for address in &addresses {
        for path in [WORKER, FLIGHT] {
            assert_eq!(call(address, path, None), Err(tonic::Code::Unauthenticated));
            let wrong = Some("wrong-secret-wrong-secret");
            assert_eq!(
                call(address, path, wrong),
                Err(tonic::Code::Unauthenticated)
            );
        }
        assert_eq!(call(address, WORKER, Some(SECRET)), Ok(()));
        // Past the secret, the replay service only serves DoGet.
        assert_eq!(
            call(address, FLIGHT, Some(SECRET)),
            Err(tonic::Code::Unimplemented)
        );
    }
}

/// Replays `orders` with a query string; returns the status and the events.
fn replay_with(server: &Server, token: Option<&str>, query: &str) -> (u16, Vec<Value>) {
    let mut request = http().get(server.url(&format!("/v1/streams/orders/events?{query}")));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let resp = request.send().unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    let lines = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (status, lines)
}

pub(crate) fn http_json(server: &Server, token: Option<&str>, path: &str) -> (u16, Value) {
    let mut request = http().get(server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let resp = request.send().unwrap();
    (resp.status().as_u16(), resp.json().unwrap_or(Value::Null))
}

/// Calls the unary node-to-node method `path` at `address` with an empty message, with `secret`
/// if given.
fn call(address: &str, path: &'static str, secret: Option<&str>) -> Result<(), tonic::Code> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let mut request = tonic::Request::new(());
        if let Some(secret) = secret {
            request
                .metadata_mut()
                .insert("x-strata-cluster-secret", secret.parse().unwrap());
        }
        grpc.unary::<(), (), _>(
            request,
            http::uri::PathAndQuery::from_static(path),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .map(|_| ())
        .map_err(|s| s.code())
    })
}

/// Whether `/v1/cluster` on `server` shows `node` holding some partition.
fn holds_partitions(server: &Server, node: &str) -> bool {
    let (status, cluster) = http_json(server, None, "/v1/cluster");
    status == 200
        && cluster["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["node"] == node)
}

#[test]
fn queries_while_a_store_node_dies_are_complete_or_a_clear_503() {
    let Some(mut cluster) = Cluster::start("") else {
        eprintln!("no Kafka broker (STRATA_TEST_KAFKA_BROKERS); skipped");
        return;
    };
    let data = Data::new(2000);
    load(&cluster, None, &data);
    let sql = "SELECT data->>'country' AS c, count(*) AS n, sum(CAST(data->>'amount' AS BIGINT)) AS s \
               FROM orders GROUP BY 1 ORDER BY 1";
    let expected = data.by_country();
    let (mut complete, mut unavailable) = (0u32, 0u32);
    let started = Instant::now();
    let mut killed: Option<Instant> = None;
    let mut restarted: Option<Instant> = None;
    // Kill → the others serve its partitions; restart → it serves its share again.
    let (mut taken_over, mut back) = (None, None);
    let mut unavailable_since_restart = 0u32;
    while started.elapsed() < Duration::from_secs(40) {
        if killed.is_none() && started.elapsed() > Duration::from_secs(2) {
            cluster.nodes[2].kill9();
            killed = Some(Instant::now());
        }
        if restarted.is_none() && started.elapsed() > Duration::from_secs(18) {
            cluster.nodes[2].restart();
            restarted = Some(Instant::now());
        }
        // From the ingest node and from a store node that stays up.
        for node in [0, 1] {
            let (status, body) = query(&cluster.nodes[node], None, sql, &[]);
            match status {
                200 => {
                    assert_eq!(
                        body,
                        expected,
                        "a partial answer after {:?}",
                        started.elapsed()
                    );
                    complete += 1;
                    if let (Some(at), None, None) = (killed, taken_over, restarted)
                        && unavailable > 0
                    {
                        taken_over = Some(at.elapsed());
                    }
                    if let (Some(at), None) = (restarted, back)
                        && holds_partitions(&cluster.nodes[2], "s2")
                    {
                        back = Some(at.elapsed());
                    }
                }
                503 => {
                    let error = body["error"].as_str().unwrap_or_default();
                    assert!(error.contains("retry"), "{body}");
                    unavailable += 1;
                    if restarted.is_some() {
                        unavailable_since_restart += 1;
                    }
                }
                other => panic!("{other}: {body}"),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "while a store node was killed and restarted: {complete} complete answers, {unavailable} × 503; \
         killed → its partitions served by the others after {taken_over:?} (session timeout 6 s); \
         restarted → serving its share again, answers complete, after {back:?} ({unavailable_since_restart} × 503 meanwhile)"
    );
    assert!(
        taken_over.is_some(),
        "the others never served the killed node's partitions"
    );
    assert!(
        complete > 0 && unavailable > 0,
        "{complete} complete, {unavailable} × 503"
    );
    // Once the partitions have settled, every node answers completely again.
    for node in &cluster.nodes {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = query(node, None, sql, &[]);
            if status == 200 {
                assert_eq!(body, expected);
                break;
            }
            assert_eq!(status, 503, "{body}");
            assert!(
                Instant::now() < deadline,
                "{} did not recover: {body}",
                node.base
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Node-to-node calls over TLS when the nodes have `tls.cert`/`tls.key`: an ingest node answers a
/// query, a view read and a replay that only the store node can serve, and the node-to-node port
/// takes no plain-text call.
#[test]
fn node_to_node_calls_use_tls_when_the_nodes_have_a_certificate() {
    if kafka_brokers().is_none() {
        eprintln!("no Kafka broker (STRATA_TEST_KAFKA_BROKERS); skipped");
        return;
    }
    let (_tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_path, key_path) = (dir.with_extension("crt"), dir.with_extension("key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let config = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n[cluster]\nsecret = \"{SECRET}\"\n{}",
        cert_path.display(),
        key_path.display(),
        kafka_section(&unique("t"), &unique("g"))
    );
    let nodes: Vec<Server> = [("i", "ingest"), ("s", "store")]
        .into_iter()
        .map(|(name, role)| node(&dir, &config, name, role))
        .collect();
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let ingest = &nodes[0];
    let status = client
        .put(ingest.url("/v1/streams/orders"))
        .json(&json!({"partitions": 3}))
        .send()
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 201);
    let lines: Vec<String> = (0..300)
        .map(|i| {
            json!({"key": format!("k{}", i % 7), "data": {"country": COUNTRIES[i % 4]}}).to_string()
        })
        .collect();
    let resp = client
        .post(ingest.url("/v1/streams/orders/events"))
        .body(lines.join("\n"))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let token: Value = resp.json().unwrap();
    let sql = |sql: &str, after: Vec<Value>| {
        let resp = client
            .post(ingest.url("/v1/sql"))
            .json(&json!({"sql": sql, "after": after, "timeout_ms": 20000}))
            .send()
            .unwrap();
        (
            resp.status().as_u16(),
            resp.json::<Value>().unwrap_or(Value::Null),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (status, body) = sql(
            "SELECT count(*) AS n FROM orders",
            vec![token["token"].clone()],
        );
        if status == 200 {
            assert_eq!(body, json!([{"n": 300}]));
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "no answer over TLS: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, body) = sql(
        "CREATE MATERIALIZED VIEW by_country AS SELECT json_get_str(data, 'country') AS c, count(*) AS n FROM orders GROUP BY 1",
        vec![],
    );
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = sql("SELECT n FROM by_country WHERE c = 'NL'", vec![]);
        if status == 200 && body == json!([{"n": 75}]) {
            break;
        }
        assert!(status == 200 || status == 503, "{status} {body}");
        assert!(Instant::now() < deadline, "no view read over TLS: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let replay = client
        .get(ingest.url("/v1/streams/orders/events?partition=0"))
        .send()
        .unwrap();
    assert_eq!(replay.status().as_u16(), 200);
    assert!(!replay.text().unwrap().is_empty());

    // The node-to-node port speaks TLS only.
    let cluster: Value = client
        .get(ingest.url("/v1/cluster"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    for node in cluster["nodes"].as_array().unwrap() {
        let address = node["cluster"].as_str().unwrap();
        let plain = std::panic::catch_unwind(|| {
            call(address, "/worker.WorkerService/GetWorkerInfo", Some(SECRET))
        });
        assert!(
            !matches!(plain, Ok(Ok(()))),
            "a plain-text call to {address} was answered"
        );
    }
}
