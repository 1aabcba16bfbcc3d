//! `strata produce --format arrow|parquet`: a columnar file sent as Arrow IPC stream appends.

use super::produce::{Tally, renumber};
use super::{Client, Error, Result, client_error};
use crate::http::ARROW_STREAM;
use arrow::array::RecordBatch;
use arrow::ipc::writer::StreamWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::path::Path;
use strata_proto::ConsistencyToken;

/// The format of `strata produce`'s input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FileFormat {
    /// One JSON event per line.
    Ndjson,
    /// An Arrow IPC file (or stream) whose columns are the event fields.
    Arrow,
    /// A Parquet file whose columns are the event fields.
    Parquet,
}

/// Reads the record batches of a columnar file.
fn batches(
    path: &Path,
    format: FileFormat,
) -> Result<Box<dyn Iterator<Item = std::result::Result<RecordBatch, String>>>> {
    let open = || {
        std::fs::File::open(path)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))
    };
    let bad = |e: &dyn std::fmt::Display| {
        Error::Request(format!("{} is not {format:?}: {e}", path.display()))
    };
    match format {
        FileFormat::Parquet => {
            let reader = ParquetRecordBatchReaderBuilder::try_new(open()?)
                .and_then(|b| b.build())
                .map_err(|e| bad(&e))?;
            Ok(Box::new(reader.map(|b| b.map_err(|e| e.to_string()))))
        }
        FileFormat::Arrow => {
            // The IPC file format first; a stream is accepted as well.
            match arrow::ipc::reader::FileReader::try_new(open()?, None) {
                Ok(reader) => Ok(Box::new(reader.map(|b| b.map_err(|e| e.to_string())))),
                Err(_) => {
                    let reader = arrow::ipc::reader::StreamReader::try_new(
                        std::io::BufReader::new(open()?),
                        None,
                    )
                    .map_err(|e| bad(&e))?;
                    Ok(Box::new(reader.map(|b| b.map_err(|e| e.to_string()))))
                }
            }
        }
        FileFormat::Ndjson => Err(Error::Request(
            "NDJSON is read line by line, not as batches".into(),
        )),
    }
}

fn ipc(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let encode = |out: &mut Vec<u8>| -> std::result::Result<(), arrow::error::ArrowError> {
        let mut writer = StreamWriter::try_new(out, &batch.schema())?;
        writer.write(batch)?;
        writer.finish()
    };
    encode(&mut out).map_err(|e| Error::Request(format!("cannot encode Arrow IPC: {e}")))?;
    Ok(out)
}

impl Client {
    /// Appends the rows of the Arrow or Parquet file at `path` to `stream`, `batch` rows per
    /// request (as Arrow IPC streams); returns the events appended, the duplicates skipped and a
    /// token covering them.
    ///
    /// # Errors
    /// An unreadable file, or the first request the server refuses (its rows renumbered to the
    /// file's).
    pub async fn produce_columnar(
        &self,
        stream: &str,
        path: &Path,
        format: FileFormat,
        batch: usize,
    ) -> Result<(u64, u64, Option<ConsistencyToken>)> {
        let mut tally = Tally::default();
        let mut sent = 0usize;
        for read in batches(path, format)? {
            let read = read.map_err(|e| Error::Request(format!("{}: {e}", path.display())))?;
            let mut start = 0;
            while start < read.num_rows() {
                let len = batch.max(1).min(read.num_rows() - start);
                let body = ipc(&read.slice(start, len))?;
                let resp = self
                    .http
                    .post(self.url(&format!("/v1/streams/{stream}/events")))
                    .header("content-type", ARROW_STREAM)
                    .body(body)
                    .send()
                    .await
                    .map_err(client_error)?;
                let resp = match Client::check(resp).await {
                    Ok(resp) => resp,
                    Err(Error::Request(msg)) => {
                        return Err(Error::Request(renumber(&msg, "row", |n| Some(sent + n))));
                    }
                    Err(e) => return Err(e),
                };
                tally.add(&resp.json().await.map_err(client_error)?);
                sent += len;
                start += len;
            }
        }
        Ok(tally.into_parts())
    }
}
