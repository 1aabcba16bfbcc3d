//! The CLI clients: `strata produce`, `sql`, `replay` and `streams`, talking to a server's HTTP API.

use crate::http::ARROW_STREAM;
use std::io::Write;

mod columnar;
mod follow;
mod produce;
pub use columnar::FileFormat;

/// Errors of the CLI clients.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request failed, or the server refused it (its message and status).
    #[error("{0}")]
    Request(String),
    /// Reading input or writing output failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result alias of the clients.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Output formats of `strata sql`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SqlFormat {
    /// A readable table.
    Table,
    /// A JSON array of row objects.
    Json,
    /// CSV with a header row.
    Csv,
}

/// What `strata replay` asks for.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ReplayArgs {
    /// Partition to read (default: all partitions, one after the other).
    #[arg(long)]
    pub partition: Option<u32>,
    /// First offset to read (needs --partition on a stream with several partitions).
    #[arg(long)]
    pub from: Option<u64>,
    /// Start at the first event at or after this time (RFC 3339 or epoch ms).
    #[arg(long)]
    pub from_time: Option<String>,
    /// Only events with this key.
    #[arg(long)]
    pub key: Option<String>,
    /// Stop after this many events.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Read the shards (`store`, the default) or straight from the log (`log`).
    #[arg(long)]
    pub source: Option<String>,
    /// Keep following the stream after the stored events: print each new event as it is
    /// stored, with its `cursor`; reconnect from the last cursor if the connection drops.
    #[arg(long)]
    pub follow: bool,
    /// Resume right after the event this cursor came with (with --follow).
    #[arg(long, requires = "follow")]
    pub cursor: Option<String>,
    /// Only events of this type (with --follow).
    #[arg(long = "type", requires = "follow")]
    pub event_type: Option<String>,
    /// Only events for which this SQL expression is true, e.g.
    /// `json_get_str(data, 'country') = 'NL'` (with --follow).
    #[arg(long = "where", requires = "follow")]
    pub filter: Option<String>,
}

/// `[#####.....] 1234/5000 events  12345 ev/s` for a rebuild progress line.
fn progress_bar(v: &serde_json::Value) -> String {
    let done = v["done"].as_u64().unwrap_or(0);
    let total = v["total"].as_u64().unwrap_or(0).max(done);
    let secs = v["elapsed_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
    let width = 30usize;
    let filled = if total == 0 {
        width
    } else {
        (done as f64 / total as f64 * width as f64) as usize
    };
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    format!(
        "[{}{}] {done}/{total} events  {rate:.0} ev/s",
        "#".repeat(filled.min(width)),
        ".".repeat(width - filled.min(width))
    )
}

/// A client of one strata server.
pub struct Client {
    http: reqwest::Client,
    base: String,
}

fn client_error(e: reqwest::Error) -> Error {
    Error::Request(format!("request failed: {e}"))
}

impl Client {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:7070`).
    pub fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// A client of the server at `base` that sends `token` as a bearer token and, for an
    /// `https://` server, also trusts the PEM certificate(s) in `ca_cert` (a self-signed one).
    pub fn with_options(
        base: &str,
        token: Option<&str>,
        ca_cert: Option<&std::path::Path>,
    ) -> Result<Self> {
        let mut builder = reqwest::Client::builder();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| {
                    Error::Request("the token has characters a header cannot carry".into())
                })?;
            value.set_sensitive(true);
            builder = builder.default_headers(
                [(reqwest::header::AUTHORIZATION, value)]
                    .into_iter()
                    .collect(),
            );
        }
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| Error::Request(format!("cannot read {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::Request(format!("{}: {e}", path.display())))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(Self {
            http: builder.build().map_err(client_error)?,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Turns a non-success answer into an error carrying the server's message.
    async fn check(resp: reqwest::Response) -> Result<reqwest::Response> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or(text);
        Err(Error::Request(format!("{} ({})", message, status.as_u16())))
    }

    /// Runs `query` and writes the result to `out` in `format`.
    pub async fn sql(
        &self,
        query: &str,
        after: Option<&str>,
        format: SqlFormat,
        out: &mut impl Write,
    ) -> Result<()> {
        let accept = if format == SqlFormat::Json {
            "application/json"
        } else {
            ARROW_STREAM
        };
        let resp = self
            .http
            .post(self.url("/v1/sql"))
            .header("accept", accept)
            .json(&match after {
                Some(token) => serde_json::json!({ "sql": query, "after": token }),
                None => serde_json::json!({ "sql": query }),
            })
            .send()
            .await
            .map_err(client_error)?;
        let bytes = Self::check(resp)
            .await?
            .bytes()
            .await
            .map_err(client_error)?;
        let write_err = |e: std::io::Error| Error::io("cannot write the output", e);
        if format == SqlFormat::Json {
            return out.write_all(&bytes).map_err(write_err);
        }
        let reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
                .map_err(|e| Error::Request(format!("bad Arrow stream from the server: {e}")))?;
        let schema = reader.schema();
        let batches: Vec<_> = reader
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Request(format!("bad Arrow stream from the server: {e}")))?;
        let rows: usize = batches
            .iter()
            .map(|b: &arrow::array::RecordBatch| b.num_rows())
            .sum();
        match format {
            SqlFormat::Csv => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut *out);
                if batches.is_empty() {
                    let empty = arrow::array::RecordBatch::new_empty(schema);
                    w.write(&empty).map_err(|e| Error::Request(e.to_string()))?;
                }
                for b in &batches {
                    w.write(b).map_err(|e| Error::Request(e.to_string()))?;
                }
            }
            _ => {
                let table = if batches.is_empty() {
                    arrow::util::pretty::pretty_format_batches(&[
                        arrow::array::RecordBatch::new_empty(schema),
                    ])
                } else {
                    arrow::util::pretty::pretty_format_batches(&batches)
                }
                .map_err(|e| Error::Request(e.to_string()))?;
                writeln!(out, "{table}").map_err(write_err)?;
                writeln!(out, "({rows} row{})", if rows == 1 { "" } else { "s" })
                    .map_err(write_err)?;
            }
        }
        Ok(())
    }

    /// Streams the replay of `stream` as NDJSON to `out`.
    pub async fn replay(
        &self,
        stream: &str,
        args: &ReplayArgs,
        out: &mut impl Write,
    ) -> Result<()> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(p) = args.partition {
            query.push(("partition", p.to_string()));
        }
        if let Some(f) = args.from {
            query.push(("from", f.to_string()));
        }
        if let Some(t) = &args.from_time {
            query.push(("from_time", t.clone()));
        }
        if let Some(k) = &args.key {
            query.push(("key", k.clone()));
        }
        if let Some(l) = args.limit {
            query.push(("limit", l.to_string()));
        }
        if let Some(s) = &args.source {
            query.push(("source", s.clone()));
        }
        if args.follow {
            return self.follow(stream, query, args, out).await;
        }
        let resp = self
            .http
            .get(self.url(&format!("/v1/streams/{stream}/events")))
            .query(&query)
            .send()
            .await
            .map_err(client_error)?;
        let mut resp = Self::check(resp).await?;
        while let Some(chunk) = resp.chunk().await.map_err(client_error)? {
            out.write_all(&chunk)
                .map_err(|e| Error::io("cannot write the output", e))?;
        }
        Ok(())
    }

    /// Creates `stream` with `partitions` partitions.
    pub async fn create_stream(&self, stream: &str, partitions: u32) -> Result<serde_json::Value> {
        let resp = self
            .http
            .put(self.url(&format!("/v1/streams/{stream}")))
            .json(&serde_json::json!({ "partitions": partitions }))
            .send()
            .await
            .map_err(client_error)?;
        Self::check(resp).await?.json().await.map_err(client_error)
    }

    /// Writes the list of streams as a table to `out`.
    pub async fn streams(&self, out: &mut impl Write) -> Result<()> {
        let resp = self
            .http
            .get(self.url("/v1/streams"))
            .send()
            .await
            .map_err(client_error)?;
        let streams: Vec<serde_json::Value> = Self::check(resp)
            .await?
            .json()
            .await
            .map_err(client_error)?;
        let mut rows = vec![vec![
            "stream".to_owned(),
            "partitions".to_owned(),
            "events".to_owned(),
            "stored".to_owned(),
            "next offsets".to_owned(),
        ]];
        for s in &streams {
            let offsets = s["offsets"].as_array().cloned().unwrap_or_default();
            let next: Vec<u64> = offsets
                .iter()
                .map(|o| o["next_offset"].as_u64().unwrap_or(0))
                .collect();
            let stored: u64 = offsets
                .iter()
                .map(|o| o["stored_offset"].as_u64().unwrap_or(0))
                .sum();
            rows.push(vec![
                s["name"].as_str().unwrap_or_default().to_owned(),
                s["partitions"].to_string(),
                next.iter().sum::<u64>().to_string(),
                stored.to_string(),
                next.iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ]);
        }
        write_table(&rows, out)
    }

    /// Writes the materialized views with rows, applied offsets (`partition:offset`, with `@node`
    /// in a cluster), lag and status as a table to `out`.
    pub async fn views(&self, out: &mut impl Write) -> Result<()> {
        let resp = self
            .http
            .get(self.url("/v1/views"))
            .send()
            .await
            .map_err(client_error)?;
        let views: Vec<serde_json::Value> = Self::check(resp)
            .await?
            .json()
            .await
            .map_err(client_error)?;
        let mut rows = vec![
            [
                "view",
                "stream",
                "rows",
                "lag",
                "status",
                "applied",
                "definition",
            ]
            .map(str::to_owned)
            .to_vec(),
        ];
        for v in &views {
            let text = |k: &str| match &v[k] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let applied = v["partitions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| match p["node"].as_str() {
                    Some(node) => format!("{}:{}@{node}", p["partition"], p["applied"]),
                    None => format!("{}:{}", p["partition"], p["applied"]),
                })
                .collect::<Vec<_>>()
                .join(",");
            rows.push(vec![
                text("name"),
                text("stream"),
                text("rows"),
                text("lag"),
                text("status"),
                applied,
                text("definition"),
            ]);
        }
        write_table(&rows, out)
    }

    /// Rebuilds view `name`, drawing a progress bar (events done / total, rate) on `progress`,
    /// and returns the final report (`rows`, `done`, `elapsed_ms`).
    pub async fn rebuild_view(
        &self,
        name: &str,
        progress: &mut impl Write,
    ) -> Result<serde_json::Value> {
        let resp = self
            .http
            .post(self.url(&format!("/v1/views/{name}/rebuild")))
            .send()
            .await
            .map_err(client_error)?;
        let mut resp = Self::check(resp).await?;
        let mut pending = Vec::new();
        let mut last = None;
        while let Some(chunk) = resp.chunk().await.map_err(client_error)? {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let v: serde_json::Value = serde_json::from_slice(&line).map_err(|e| {
                    Error::Request(format!("bad progress line from the server: {e}"))
                })?;
                if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
                    let _ = writeln!(progress);
                    return Err(Error::Request(format!("rebuild of {name} failed: {e}")));
                }
                let _ = write!(progress, "\r{}", progress_bar(&v));
                let _ = progress.flush();
                last = Some(v);
            }
        }
        let _ = writeln!(progress);
        match last {
            Some(v) if v["finished"].as_bool() == Some(true) => Ok(v),
            _ => Err(Error::Request(format!(
                "the server ended the rebuild of {name} without a result"
            ))),
        }
    }

    /// Writes which node holds which partition, with lag, as a table to `out`.
    pub async fn cluster(&self, out: &mut impl Write) -> Result<()> {
        let resp = self
            .http
            .get(self.url("/v1/cluster"))
            .send()
            .await
            .map_err(client_error)?;
        let cluster: serde_json::Value = Self::check(resp)
            .await?
            .json()
            .await
            .map_err(client_error)?;
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "-".to_owned(),
            other => other.to_string(),
        };
        let mut nodes = vec![vec![
            "node".to_owned(),
            "role".to_owned(),
            "http".to_owned(),
            "alive".to_owned(),
            "partitions".to_owned(),
        ]];
        for n in cluster["nodes"].as_array().into_iter().flatten() {
            nodes.push(vec![
                text(&n["node"]),
                text(&n["role"]),
                text(&n["http"]),
                text(&n["alive"]),
                n["partitions"].as_array().map_or(0, Vec::len).to_string(),
            ]);
        }
        write_table(&nodes, out)?;
        writeln!(out).map_err(|e| Error::io("cannot write the output", e))?;
        let mut parts = vec![vec![
            "stream".to_owned(),
            "partition".to_owned(),
            "node".to_owned(),
            "stored".to_owned(),
            "log end".to_owned(),
            "lag".to_owned(),
        ]];
        for p in cluster["partitions"].as_array().into_iter().flatten() {
            parts.push(
                [
                    "stream",
                    "partition",
                    "node",
                    "stored_offset",
                    "log_end_offset",
                    "lag",
                ]
                .iter()
                .map(|k| text(&p[*k]))
                .collect(),
            );
        }
        write_table(&parts, out)
    }
}

/// Writes `rows` (the first is the header) as left-aligned columns.
fn write_table(rows: &[Vec<String>], out: &mut impl Write) -> Result<()> {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        writeln!(out, "{}", cells.join("  ").trim_end())
            .map_err(|e| Error::io("cannot write the output", e))?;
    }
    Ok(())
}
