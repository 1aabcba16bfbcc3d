//! The peers a user would pick instead, run side by side: append + fdatasync to a file, reading
//! the NDJSON file, DuckDB; and the data set they share.

use crate::scenarios::QUERIES;
use crate::{Args, BATCH, Result, data};
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// Writes events `0..n` as NDJSON; returns the file size.
pub(crate) fn generate(path: &Path, n: u64) -> Result<u64> {
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut line = String::with_capacity(512);
    let mut bytes = 0u64;
    for i in 0..n {
        line.clear();
        data::write_event(i, n, &mut line);
        bytes += line.len() as u64;
        out.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// The first `n` lines of `path` as request bodies of [`BATCH`] lines.
pub(crate) fn read_batches(path: &Path, n: u64) -> Result<Vec<String>> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut batches = Vec::new();
    let mut body = String::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        if i as u64 >= n {
            break;
        }
        body.push_str(&line.map_err(|e| e.to_string())?);
        body.push('\n');
        if (i as u64 + 1).is_multiple_of(BATCH) {
            batches.push(std::mem::take(&mut body));
        }
    }
    if !body.is_empty() {
        batches.push(body);
    }
    Ok(batches)
}

/// Appends each batch to a file and fdatasyncs it, like a durable log with one writer would.
pub(crate) fn fdatasync_peer(path: &Path, batches: &[String]) -> Result<Duration> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    for b in batches {
        file.write_all(b.as_bytes()).map_err(|e| e.to_string())?;
        file.sync_data().map_err(|e| e.to_string())?;
    }
    let elapsed = started.elapsed();
    let _ = std::fs::remove_file(path);
    Ok(elapsed)
}

/// Reads the NDJSON file counting lines; returns time, lines and bytes.
pub(crate) fn read_file_peer(path: &Path) -> Result<(f64, u64, u64)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut lines, mut bytes) = (0u64, 0u64);
    let started = Instant::now();
    loop {
        let n = file.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
    Ok((started.elapsed().as_secs_f64(), lines, bytes))
}

pub(crate) async fn duckdb_peer(
    args: &Args,
    events: &Path,
    runs: usize,
) -> Result<serde_json::Value> {
    let script = args.work.join("duckdb_peer.py");
    std::fs::write(&script, include_str!("duckdb_peer.py")).map_err(|e| e.to_string())?;
    let queries: serde_json::Map<String, serde_json::Value> = QUERIES
        .iter()
        .map(|q| (q.name.to_owned(), q.duckdb.into()))
        .collect();
    let ndjson_runs = 1;
    let output = tokio::process::Command::new(&args.python)
        .arg(&script)
        .arg(events)
        .arg(args.work.join("orders.parquet"))
        .arg(runs.to_string())
        .arg(serde_json::Value::Object(queries).to_string())
        .arg(ndjson_runs.to_string())
        .output()
        .await
        .map_err(|e| {
            format!(
                "cannot run {} (a Python with duckdb; scripts/bench.sh makes one): {e}",
                args.python.display()
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "the DuckDB peer failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("the DuckDB peer printed no JSON: {e}"))
}

/// One event of the data set, as `arrow_bodies` reads it.
#[derive(serde::Deserialize)]
struct Line<'a> {
    key: &'a str,
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    time: i64,
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
}

/// The NDJSON `batches` as Arrow IPC stream bodies with the same events (columns `key`, `id`,
/// `type`, `time` as epoch milliseconds, `data` as JSON text), each with its event count.
pub(crate) fn arrow_bodies(batches: &[String]) -> Result<Vec<(bytes::Bytes, u64)>> {
    use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use std::sync::Arc;
    batches
        .iter()
        .map(|batch| {
            let lines: Vec<Line> = batch
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(serde_json::from_str)
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let text = |f: for<'l> fn(&'l Line<'_>) -> &'l str| -> ArrayRef {
                Arc::new(StringArray::from_iter_values(lines.iter().map(f)))
            };
            let columns = RecordBatch::try_from_iter(vec![
                ("key", text(|l| l.key)),
                ("id", text(|l| l.id)),
                ("type", text(|l| l.event_type)),
                (
                    "time",
                    Arc::new(Int64Array::from_iter_values(lines.iter().map(|l| l.time)))
                        as ArrayRef,
                ),
                ("data", text(|l| l.data.get())),
            ])
            .map_err(|e| e.to_string())?;
            let mut body = Vec::new();
            let mut writer =
                arrow::ipc::writer::StreamWriter::try_new(&mut body, &columns.schema())
                    .map_err(|e| e.to_string())?;
            writer.write(&columns).map_err(|e| e.to_string())?;
            writer.finish().map_err(|e| e.to_string())?;
            drop(writer);
            Ok((bytes::Bytes::from(body), lines.len() as u64))
        })
        .collect()
}

/// Runs the Python peer `name` (its `source`, written into the work directory beside the
/// PostgreSQL helper it may import) with `argv`; returns the JSON object it prints.
pub(crate) async fn python_peer(
    args: &Args,
    name: &str,
    source: &str,
    argv: &[std::ffi::OsString],
) -> Result<serde_json::Value> {
    let script = args.work.join(name);
    std::fs::write(&script, source).map_err(|e| e.to_string())?;
    std::fs::write(args.work.join("pg_peer.py"), include_str!("pg_peer.py"))
        .map_err(|e| e.to_string())?;
    let output = tokio::process::Command::new(&args.python)
        .arg(&script)
        .args(argv)
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", args.python.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{name} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("{name} printed no JSON: {e}"))
}
