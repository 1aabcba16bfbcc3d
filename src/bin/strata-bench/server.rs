//! A `strata serve` process under test, and the HTTP work the scenarios do against it.

use crate::{BATCH, Result, progress};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod process;

/// A running strata node.
pub struct Strata {
    binary: PathBuf,
    data_dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    base: String,
    /// `HOST:PORT` of its PostgreSQL listener.
    pub pg: String,
    /// `HOST:PORT` of its Flight SQL listener.
    pub flight: String,
    http: reqwest::Client,
}

impl Strata {
    /// The node's HTTP base URL.
    pub fn base_url(&self) -> String {
        self.base.clone()
    }

    /// Starts `binary serve` on a free port with `data_dir` and `config`.
    pub async fn start(binary: &Path, data_dir: &Path, config: &Path) -> Result<Self> {
        let mut s = Self {
            binary: binary.to_owned(),
            data_dir: data_dir.to_owned(),
            config: config.to_owned(),
            child: None,
            base: String::new(),
            pg: String::new(),
            flight: String::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(3600))
                .build()
                .map_err(|e| e.to_string())?,
        };
        s.spawn()?;
        s.wait_healthy(Duration::from_secs(120)).await?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .map_err(|e| e.to_string())?;
        let mut child = Command::new(&self.binary)
            .args(["serve", "--http", "127.0.0.1:0", "--pg", "127.0.0.1:0"])
            .args(["--flight", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data_dir)
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut pg, mut flight) = (String::new(), String::new());
            for line in std::io::BufReader::new(stdout).lines() {
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
        (self.base, self.pg, self.flight) = rx
            .recv_timeout(Duration::from_secs(120))
            .map_err(|_| "strata did not announce its address".to_owned())?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_healthy(&self, limit: Duration) -> Result<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            let ok = self
                .http
                .get(self.url("/healthz"))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err("strata did not become healthy".into())
    }

    /// The URL of `path` on this node.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The HTTP client the scenarios share.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Creates the `orders` stream with `partitions` partitions and its declared fields.
    pub async fn create_orders(&self, partitions: u32) -> Result<()> {
        let body = serde_json::json!({
            "partitions": partitions,
            "fields": [
                {"name": "customer", "type": "string"},
                {"name": "country", "type": "string"},
                {"name": "amount", "type": "double"},
                {"name": "status", "type": "string"},
            ],
        });
        let resp = self
            .http
            .put(self.url("/v1/streams/orders"))
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!(
                "creating the stream failed: {}",
                resp.text().await.unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// Appends one event to a stream of its own, so that connections (and on Kafka the
    /// producer's id) are set up before a timed run.
    pub async fn warm_up(&self) -> Result<()> {
        post(
            &self.http,
            &self.url("/v1/streams/warmup/events"),
            "{\"data\": {}}\n".to_owned(),
            "application/x-ndjson",
        )
        .await
    }

    /// Sends `batches` from `clients` concurrent clients (client c takes batches c, c+clients, …)
    /// and returns when every one is acknowledged.
    pub async fn append_concurrently(
        &self,
        batches: &[String],
        clients: usize,
    ) -> Result<Duration> {
        let bodies = batches
            .iter()
            .map(|b| (bytes::Bytes::from(b.clone()), b.lines().count() as u64))
            .collect();
        self.post_concurrently("orders", bodies, "application/x-ndjson", clients)
            .await
    }

    /// Appends `bodies` (each with its event count) of `content_type` to `stream` from `clients`
    /// concurrent clients (client `c` sends bodies `c`, `c + clients`, …); returns the time until
    /// every one was acknowledged.
    pub async fn post_concurrently(
        &self,
        stream: &str,
        bodies: Vec<(bytes::Bytes, u64)>,
        content_type: &'static str,
        clients: usize,
    ) -> Result<Duration> {
        let total = bodies.iter().map(|(_, n)| n).sum();
        let bodies = Arc::new(bodies);
        let done = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let reporter = spawn_progress("ingest", done.clone(), total);
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (bodies, done, http, url) = (
                bodies.clone(),
                done.clone(),
                self.http.clone(),
                self.url(&format!("/v1/streams/{stream}/events")),
            );
            tasks.push(tokio::spawn(async move {
                for (body, n) in bodies.iter().skip(c).step_by(clients) {
                    post(&http, &url, body.clone(), content_type).await?;
                    done.fetch_add(*n, Ordering::Relaxed);
                }
                Ok::<(), String>(())
            }));
        }
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
        reporter.abort();
        Ok(started.elapsed())
    }

    /// GETs `path` as JSON.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self
            .http
            .get(self.url(path))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        resp.json().await.map_err(|e| e.to_string())
    }

    /// Appends batches of 100 new events (indexes from `first`) at `rate` events/s for
    /// `seconds`, from 4 clients; after each append, queries the `by_customer` view for the
    /// batch's first customer with the append's token. Returns each append → visible latency.
    pub async fn paced_appends_visible(
        &self,
        first: u64,
        rate: f64,
        seconds: f64,
    ) -> Result<Vec<Duration>> {
        const CLIENTS: u64 = 4;
        const PER: u64 = 100;
        let appends = ((rate * seconds) / PER as f64).max(CLIENTS as f64) as u64;
        let every = Duration::from_secs_f64(PER as f64 * CLIENTS as f64 / rate);
        let started = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let (http, append_url, sql_url) = (
                self.http.clone(),
                self.url("/v1/streams/orders/events"),
                self.url("/v1/sql"),
            );
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for k in 0..appends / CLIENTS {
                    let at = started + every * k as u32 + every * c as u32 / CLIENTS as u32;
                    tokio::time::sleep_until(at).await;
                    let from = first + (k * CLIENTS + c) * PER;
                    let mut body = String::new();
                    for i in from..from + PER {
                        crate::data::write_event(i, first, &mut body);
                    }
                    let customer = body
                        .split("\"key\":\"")
                        .nth(1)
                        .and_then(|r| r.split('"').next())
                        .unwrap_or_default()
                        .to_owned();
                    let sent = Instant::now();
                    let resp = http.post(&append_url).body(body).send().await.map_err(|e| e.to_string())?;
                    let answer: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
                    let query = serde_json::json!({
                        "sql": format!("SELECT orders FROM by_customer WHERE customer = '{customer}'"),
                        "after": answer["token"],
                    });
                    let resp = http.post(&sql_url).json(&query).send().await.map_err(|e| e.to_string())?;
                    if !resp.status().is_success() {
                        return Err(format!("view query failed: {}", resp.text().await.unwrap_or_default()));
                    }
                    let _ = resp.bytes().await;
                    out.push(sent.elapsed());
                }
                Ok::<_, String>(out)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.map_err(|e| e.to_string())??);
        }
        all.sort();
        Ok(all)
    }

    /// Appends lines `from..to` of the events file from `clients` clients (not timed as a scenario).
    pub async fn load_file(
        &self,
        path: &Path,
        from: u64,
        to: u64,
        clients: usize,
    ) -> Result<Duration> {
        let started = Instant::now();
        let done = Arc::new(AtomicU64::new(0));
        let reporter = spawn_progress("load", done.clone(), to - from);
        let (tx, rx) = async_channel(clients * 2);
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (rx, done, http, url) = (
                rx.clone(),
                done.clone(),
                self.http.clone(),
                self.url("/v1/streams/orders/events"),
            );
            tasks.push(tokio::spawn(async move {
                while let Ok(body) = rx.recv_async().await {
                    let n = body.lines().count() as u64;
                    post(&http, &url, body, "application/x-ndjson").await?;
                    done.fetch_add(n, Ordering::Relaxed);
                }
                Ok::<(), String>(())
            }));
        }
        let path = path.to_owned();
        let reader = tokio::task::spawn_blocking(move || -> Result<()> {
            let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
            let mut body = String::new();
            let mut in_body = 0;
            for (i, line) in std::io::BufReader::with_capacity(1 << 20, file)
                .lines()
                .enumerate()
            {
                let i = i as u64;
                if i < from {
                    continue;
                }
                if i >= to {
                    break;
                }
                body.push_str(&line.map_err(|e| e.to_string())?);
                body.push('\n');
                in_body += 1;
                if in_body == BATCH {
                    tx.send(std::mem::take(&mut body))
                        .map_err(|_| "load clients stopped".to_owned())?;
                    in_body = 0;
                }
            }
            if !body.is_empty() {
                tx.send(body)
                    .map_err(|_| "load clients stopped".to_owned())?;
            }
            Ok(())
        });
        reader.await.map_err(|e| e.to_string())??;
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
        reporter.abort();
        Ok(started.elapsed())
    }

    /// Runs SQL; returns the JSON rows.
    pub async fn sql(&self, query: &str) -> Result<Vec<serde_json::Value>> {
        let resp = self
            .http
            .post(self.url("/v1/sql"))
            .json(&serde_json::json!({ "sql": query }))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!(
                "{query}: {}",
                resp.text().await.unwrap_or_default()
            ));
        }
        resp.json().await.map_err(|e| e.to_string())
    }

    /// Polls `count(*)` until it reaches `n`; returns how long that took.
    pub async fn wait_count(&self, n: u64, limit: Duration) -> Result<Duration> {
        self.wait_count_of("orders", n, limit).await
    }

    /// [`Strata::wait_count`] for `stream`.
    pub async fn wait_count_of(&self, stream: &str, n: u64, limit: Duration) -> Result<Duration> {
        let started = Instant::now();
        let query = format!("SELECT count(*) AS n FROM {stream}");
        while started.elapsed() < limit {
            let rows = self.sql(&query).await?;
            if rows.first().and_then(|r| r["n"].as_u64()) == Some(n) {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(format!("count(*) did not reach {n}"))
    }

    /// Median time of `runs` runs of `query` (after one warm-up), fetching the answer as Arrow IPC;
    /// returns it with the rows of one JSON run.
    pub async fn time_query(
        &self,
        query: &str,
        runs: usize,
    ) -> Result<(f64, Vec<serde_json::Value>)> {
        let rows = self.sql(query).await?;
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            let resp = self
                .http
                .post(self.url("/v1/sql"))
                .header("accept", "application/vnd.apache.arrow.stream")
                .json(&serde_json::json!({ "sql": query }))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!(
                    "{query}: {}",
                    resp.text().await.unwrap_or_default()
                ));
            }
            resp.bytes().await.map_err(|e| e.to_string())?;
            times.push(started.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        Ok((times[times.len() / 2], rows))
    }

    /// Replays every event of `orders`; returns seconds, lines and bytes.
    pub async fn replay_all(&self) -> Result<(f64, u64, u64)> {
        let started = Instant::now();
        let mut resp = self
            .http
            .get(self.url("/v1/streams/orders/events"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!(
                "replay failed: {}",
                resp.text().await.unwrap_or_default()
            ));
        }
        let (mut lines, mut bytes) = (0u64, 0u64);
        let mut last_report = Instant::now();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            bytes += chunk.len() as u64;
            lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
            if last_report.elapsed() > Duration::from_secs(2) {
                progress(&format!(
                    "  replay: {lines} events, {}",
                    crate::rate(lines as f64, started.elapsed().as_secs_f64())
                ));
                last_report = Instant::now();
            }
        }
        Ok((started.elapsed().as_secs_f64(), lines, bytes))
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node again; returns start-to-healthy and start-to-every-event-counted.
    pub async fn restart_timed(&mut self, n: u64) -> Result<(Duration, Duration)> {
        let started = Instant::now();
        self.spawn()?;
        self.wait_healthy(Duration::from_secs(120)).await?;
        let healthy = started.elapsed();
        self.wait_count(n, Duration::from_secs(600)).await?;
        Ok((healthy, started.elapsed()))
    }

    /// SIGTERM and wait (bounded).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Strata {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub(crate) async fn post(
    http: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
    content_type: &str,
) -> Result<()> {
    let resp = http
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!(
            "append failed: {}",
            resp.text().await.unwrap_or_default()
        ));
    }
    Ok(())
}

fn spawn_progress(
    what: &'static str,
    done: Arc<AtomicU64>,
    total: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let n = done.load(Ordering::Relaxed);
            progress(&format!(
                "  {what}: {n}/{total} events, {}",
                crate::rate(n as f64, started.elapsed().as_secs_f64())
            ));
        }
    })
}

/// A small multi-consumer channel (flume is already in the dependency tree through fjall).
fn async_channel(cap: usize) -> (flume::Sender<String>, flume::Receiver<String>) {
    flume::bounded(cap)
}
