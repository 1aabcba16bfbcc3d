//! The test harness: the real `strata` binary on port 0 in a temp dir, and small HTTP helpers.

#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The log a test server runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded on-disk log.
    Embedded,
    /// A Kafka-protocol broker (Tansu, started by scripts/test.sh) at `STRATA_TEST_KAFKA_BROKERS`.
    Kafka,
}

/// The broker the Kafka runs of the suite use, if any.
pub fn kafka_brokers() -> Option<String> {
    let brokers = std::env::var("STRATA_TEST_KAFKA_BROKERS")
        .ok()
        .filter(|b| !b.is_empty());
    if brokers.is_none() && std::env::var("STRATA_TEST_REQUIRE_KAFKA").is_ok_and(|v| v == "1") {
        panic!("STRATA_TEST_REQUIRE_KAFKA=1 but STRATA_TEST_KAFKA_BROKERS is not set");
    }
    brokers
}

/// Every backend the end-to-end suite runs against: the embedded log, and Kafka when a broker is
/// given (scripts/test.sh always gives one).
pub fn backends() -> Vec<Backend> {
    let mut all = vec![Backend::Embedded];
    if kafka_brokers().is_some() {
        all.push(Backend::Kafka);
    }
    all
}

/// A name no other test server uses (topic prefixes, consumer groups).
pub fn unique(label: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{label}{}x{}x{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The `[log.kafka]` settings of a test server on its own topics and group: one partition's
/// worth of replication (Tansu's is not real), a short session so that group joins are quick.
pub fn kafka_section(prefix: &str, group: &str) -> String {
    format!(
        "\n[log.kafka]\nbrokers = \"{}\"\ntopic_prefix = \"{prefix}.\"\ngroup_id = \"{group}\"\n\
         replication_factor = 1\nmin_insync_replicas = 1\nsession_timeout_ms = 6000\nrefresh_ms = 500\n",
        kafka_brokers().expect("a Kafka broker")
    )
}

/// A running `strata serve`.
pub struct Server {
    child: Option<Child>,
    pub base: String,
    /// `HOST:PORT` of its PostgreSQL listener.
    pub pg: String,
    /// `HOST:PORT` of its Flight SQL listener.
    pub flight: String,
    pub data_dir: PathBuf,
    config: PathBuf,
    args: Vec<String>,
    pub backend: Backend,
    /// Per stream and partition, one past the last offset an append here reported (Kafka
    /// brokers' own end offsets are not trusted by the tests either).
    ends: std::sync::Mutex<std::collections::HashMap<(String, u64), u64>>,
}

const START_TIMEOUT: Duration = Duration::from_secs(60);

impl Server {
    /// Starts a server on a free port with its data in `data_dir` and `config` (TOML) as its file.
    pub fn start(backend: Backend, data_dir: &Path, config: &str) -> Server {
        Self::start_with(backend, data_dir, config, &[])
    }

    /// Like [`Server::start`] with more `serve` arguments (e.g. `--role ingest`). On Kafka, a
    /// config without its own `[log.kafka]` gets one with fresh topics and group.
    pub fn start_with(backend: Backend, data_dir: &Path, config: &str, args: &[&str]) -> Server {
        std::fs::create_dir_all(data_dir).unwrap();
        let config_path = data_dir.with_extension("toml");
        let mut config = config.to_owned();
        if backend == Backend::Kafka && !config.contains("[log.kafka]") {
            config.push_str(&kafka_section(&unique("t"), &unique("g")));
        }
        std::fs::write(&config_path, config).unwrap();
        let args = args.iter().map(|a| a.to_string()).collect();
        Self::spawn(backend, data_dir.to_owned(), config_path, args)
    }

    /// The topic prefix of a Kafka server (`<prefix>.`), read from its config.
    pub fn topic_prefix(&self) -> String {
        let config = std::fs::read_to_string(&self.config).unwrap();
        let line = config
            .lines()
            .find(|l| l.starts_with("topic_prefix = "))
            .expect("a Kafka server");
        line["topic_prefix = ".len()..].trim_matches('"').to_owned()
    }

    fn spawn(backend: Backend, data_dir: PathBuf, config: PathBuf, args: Vec<String>) -> Server {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .unwrap();
        let log_backend = match backend {
            Backend::Embedded => "embedded",
            Backend::Kafka => "kafka",
        };
        // A test that needs the same address across restarts passes its own `--http`.
        let http = match args.iter().any(|a| a == "--http") {
            true => None,
            false => Some(["--http", "127.0.0.1:0"]),
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("serve")
            .args(http.iter().flatten())
            .args([
                "--log",
                log_backend,
                "--pg",
                "127.0.0.1:0",
                "--flight",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(&data_dir)
            .arg("--config")
            .arg(&config)
            .args(&args)
            .env_remove("STRATA_HTTP")
            .env_remove("STRATA_DATA_DIR")
            .env("RUST_LOG", "info,lsm_tree=warn,fjall=warn")
            .env_remove("STRATA_LOG")
            .env_remove("STRATA_ROLE")
            .env_remove("STRATA_CLUSTER_LISTEN")
            .env_remove("STRATA_CLUSTER_ADVERTISE")
            .env_remove("STRATA_CLUSTER_SECRET")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("the strata binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut pg, mut flight) = (String::new(), String::new());
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("strata postgres on ") {
                    pg = addr.to_owned();
                } else if let Some(addr) = line.strip_prefix("strata flight on ") {
                    flight = addr.to_owned();
                } else if let Some(addr) = line.strip_prefix("strata listening on ") {
                    let _ = tx.send((addr.to_owned(), pg.clone(), flight.clone()));
                }
            }
        });
        let (base, pg, flight) = match rx.recv_timeout(START_TIMEOUT) {
            Ok(addresses) => addresses,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "strata did not announce its address; log:\n{}",
                    read_log(&data_dir)
                );
            }
        };
        let server = Server {
            child: Some(child),
            base,
            pg,
            flight,
            data_dir,
            config,
            args,
            backend,
            ends: Default::default(),
        };
        server.wait_healthy();
        server
    }

    /// Waits (bounded) until `/healthz` answers.
    pub fn wait_healthy(&self) -> Duration {
        let started = Instant::now();
        // Only asks whether the server is up: a TLS server's test certificate is not checked.
        let client = reqwest::blocking::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        while started.elapsed() < START_TIMEOUT {
            if client
                .get(format!("{}/healthz", self.base))
                .timeout(Duration::from_secs(2))
                .send()
                .is_ok_and(|r| r.status().is_success())
            {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "strata did not become healthy; log:\n{}",
            read_log(&self.data_dir)
        );
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// How the process ended, if it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits (bounded) for a clean exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Starts the same node again (same data and config) after a stop or kill.
    pub fn restart(&mut self) {
        self.kill9();
        let next = Self::spawn(
            self.backend,
            self.data_dir.clone(),
            self.config.clone(),
            self.args.clone(),
        );
        *next.ends.lock().unwrap() = std::mem::take(&mut *self.ends.lock().unwrap());
        *self = next;
    }

    /// Notes the offsets an append reported, for [`wait_stored`].
    pub fn note_append(&self, stream: &str, outcome: &Value) {
        let mut ends = self.ends.lock().unwrap();
        for p in outcome["partitions"].as_array().into_iter().flatten() {
            let (Some(partition), Some(last)) =
                (p["partition"].as_u64(), p["last_offset"].as_u64())
            else {
                continue;
            };
            let end = ends.entry((stream.to_owned(), partition)).or_default();
            *end = (*end).max(last + 1);
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        read_log(&self.data_dir)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn read_log(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default()
}

/// A blocking HTTP client with a bounded timeout.
pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// POSTs NDJSON to a stream; returns status and JSON body.
pub fn append(server: &Server, stream: &str, body: &str) -> (u16, Value) {
    let resp = http()
        .post(server.url(&format!("/v1/streams/{stream}/events")))
        .body(body.to_owned())
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.json().unwrap_or(Value::Null);
    if status == 200 {
        server.note_append(stream, &body);
    }
    (status, body)
}

/// Appends and asserts success.
pub fn append_ok(server: &Server, stream: &str, body: &str) -> Value {
    let (status, v) = append(server, stream, body);
    assert_eq!(status, 200, "append failed: {v}");
    v
}

/// Creates `stream` with `partitions` partitions, asserting success.
pub fn create_stream(server: &Server, stream: &str, partitions: u32) {
    let created = http()
        .put(server.url(&format!("/v1/streams/{stream}")))
        .json(&serde_json::json!({ "partitions": partitions }))
        .send()
        .unwrap();
    let status = created.status();
    assert!(status.is_success(), "{status}: {:?}", created.text());
}

/// The server's `/metrics` text.
pub fn metrics_text(server: &Server) -> String {
    http()
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

/// The value of one series (`name{labels}` exactly as `/metrics` writes it), 0 when absent.
pub fn metric_value(server: &Server, series: &str) -> f64 {
    metrics_text(server)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Runs SQL; returns status and JSON body (rows, or the error).
pub fn sql(server: &Server, query: &str) -> (u16, Value) {
    let resp = http()
        .post(server.url("/v1/sql"))
        .json(&serde_json::json!({ "sql": query }))
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

/// Runs SQL and returns its rows.
pub fn rows(server: &Server, query: &str) -> Vec<Value> {
    let (status, v) = sql(server, query);
    assert_eq!(status, 200, "{query}: {v}");
    v.as_array().cloned().unwrap_or_default()
}

/// Replays with a query string; returns status and the NDJSON lines parsed.
pub fn replay(server: &Server, stream: &str, query: &str) -> (u16, Vec<Value>) {
    let resp = http()
        .get(server.url(&format!("/v1/streams/{stream}/events?{query}")))
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    if status != 200 {
        return (
            status,
            vec![serde_json::from_str(&text).unwrap_or(Value::String(text))],
        );
    }
    (
        status,
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    )
}

/// The stream's listing from `GET /v1/streams/{name}`.
pub fn stream_info(server: &Server, stream: &str) -> Value {
    http()
        .get(server.url(&format!("/v1/streams/{stream}")))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// Waits (bounded) until the store has applied everything the log holds for `stream` (on Kafka:
/// everything appends through this harness reported).
pub fn wait_stored(server: &Server, stream: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let info = stream_info(server, stream);
        let offsets = info["offsets"].as_array().cloned().unwrap_or_default();
        let done = match server.backend {
            Backend::Embedded => {
                !offsets.is_empty()
                    && offsets
                        .iter()
                        .all(|o| o["next_offset"] == o["stored_offset"])
            }
            Backend::Kafka => {
                let ends = server.ends.lock().unwrap();
                !offsets.is_empty()
                    && offsets.iter().all(|o| {
                        let p = o["partition"].as_u64().unwrap_or(0);
                        let end = ends.get(&(stream.to_owned(), p)).copied().unwrap_or(0);
                        o["stored_offset"].as_u64().unwrap_or(0) >= end
                    })
            }
        };
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "store did not catch up: {info}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` (bounded) until it returns `Some`.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A self-signed certificate for localhost and 127.0.0.1, written beside `dir`; returns the
/// certificate's path and the `[tls]` section that serves it.
pub fn self_signed_tls(dir: &Path) -> (PathBuf, String) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_path = dir.with_extension("crt");
    let key_path = dir.with_extension("key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let section = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert_path.display(),
        key_path.display()
    );
    (cert_path, section)
}

/// A data directory inside a fresh temp dir (kept alive by the returned guard).
pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    (tmp, dir)
}
