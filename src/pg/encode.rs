//! Arrow results as PostgreSQL rows: the column types clients see (arrow-pg's mapping), and the
//! rows streamed a batch at a time as the query computes them ([`rows`] writes them).

use super::{error, rows};
use crate::service::QueryResult;
use arrow::datatypes::{DataType, Schema};
use futures::StreamExt;
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{FieldInfo, QueryResponse};
use pgwire::error::PgWireResult;
use pgwire::messages::data::DataRow;
use pgwire::types::format::FormatOptions;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The PostgreSQL type of a column: arrow-pg's mapping (`timestamptz` for `time`, `numeric` for
/// decimals, …), and `json` for a stream's `data`.
///
/// # Errors
/// A clear error naming a column whose type strata cannot send.
fn pg_type(field: &Arc<arrow::datatypes::Field>) -> PgWireResult<Type> {
    if field.name() == "data"
        && matches!(
            field.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        )
    {
        return Ok(Type::JSON);
    }
    arrow_pg::datatypes::field_into_pg_type(field).map_err(|_| {
        error::other(
            "0A000",
            format!(
                "column {:?} has type {}, which strata cannot send over the PostgreSQL protocol; cast it (e.g. to text)",
                field.name(),
                field.data_type()
            ),
        )
    })
}

/// The row description of `schema` in `format`.
///
/// # Errors
/// A column whose type strata cannot send.
pub fn fields(
    schema: &Schema,
    format: &Format,
    options: Option<Arc<FormatOptions>>,
) -> PgWireResult<Vec<FieldInfo>> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let info = FieldInfo::new(
                f.name().clone(),
                None,
                None,
                pg_type(f)?,
                format.format_for(i),
            );
            Ok(match &options {
                Some(o) => info.with_format_options(o.clone()),
                None => info,
            })
        })
        .collect()
}

/// The rows of `result`, encoded a batch at a time as they come, ending with an error if
/// `cancel` fires first. `keep` (the query's permit) is held until the rows end or are dropped.
pub fn response<K: Send + 'static>(
    result: QueryResult,
    fields: Arc<Vec<FieldInfo>>,
    cancel: CancellationToken,
    keep: K,
) -> QueryResponse {
    let batches = {
        let fields = fields.clone();
        result.batches.map(move |batch| match batch {
            Ok(batch) => rows::encode(&fields, batch),
            Err(e) => Err(error::wire(&e)),
        })
    };
    let state = Rows {
        batches: batches.boxed(),
        rows: Vec::new().into_iter(),
        cancel,
        keep: Some(keep),
    };
    let rows = futures::stream::unfold(state, |mut state| async move {
        state.keep.as_ref()?;
        let next = state.next().await;
        if !matches!(next, Some(Ok(_))) {
            state.keep = None;
        }
        next.map(|row| (row, state))
    });
    QueryResponse::new(fields, rows)
}

/// The rows of a query being sent: the encoded batches still to come and the rows left of the
/// current one.
struct Rows<K> {
    batches: futures::stream::BoxStream<'static, PgWireResult<Vec<DataRow>>>,
    rows: std::vec::IntoIter<DataRow>,
    cancel: CancellationToken,
    keep: Option<K>,
}

impl<K> Rows<K> {
    /// The next row; `None` at the end.
    async fn next(&mut self) -> Option<PgWireResult<DataRow>> {
        loop {
            if self.cancel.is_cancelled() {
                return Some(Err(error::canceled()));
            }
            if let Some(row) = self.rows.next() {
                return Some(Ok(row));
            }
            let batch = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Some(Err(error::canceled())),
                batch = self.batches.next() => batch?,
            };
            match batch {
                Ok(rows) => self.rows = rows.into_iter(),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// The row description of text columns named `columns`.
pub fn text_fields(columns: &[&str], format: &Format) -> Vec<FieldInfo> {
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            FieldInfo::new(
                (*c).to_owned(),
                None,
                None,
                Type::TEXT,
                format.format_for(i),
            )
        })
        .collect()
}

/// An answer of text columns (`SHOW`).
pub fn text_rows(
    columns: &[&str],
    rows: Vec<Vec<String>>,
    format: &Format,
) -> PgWireResult<QueryResponse> {
    let fields = Arc::new(text_fields(columns, format));
    let mut encoder = pgwire::api::results::DataRowEncoder::new(fields.clone());
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        for value in row {
            encoder.encode_field(&value)?;
        }
        out.push(Ok(encoder.take_row()));
    }
    Ok(QueryResponse::new(fields, futures::stream::iter(out)))
}
