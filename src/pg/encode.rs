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
/// decimals, …), `text` for an untyped NULL, and `json` for a stream's `data` (by the column's
/// mark, whatever it is called: other text named `data` stays `text`).
///
/// # Errors
/// A clear error naming a column whose type strata cannot send.
fn pg_type(field: &Arc<arrow::datatypes::Field>) -> PgWireResult<Type> {
    if strata_store::schema::is_json(field)
        && matches!(
            field.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        )
    {
        return Ok(Type::JSON);
    }
    if field.data_type() == &DataType::Null {
        // An untyped NULL or a placeholder nothing types (`SELECT $1`): `text`, as PostgreSQL
        // resolves an `unknown` result column (arrow-pg says `unknown`, which binary clients
        // hand over as raw bytes).
        return Ok(Type::TEXT);
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
pub fn response<K: Send + Unpin + 'static>(
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
    let rows = Rows {
        batches: batches.boxed(),
        rows: Vec::new().into_iter(),
        cancelled: Box::pin(cancel.cancelled_owned()),
        keep: Some(keep),
    };
    QueryResponse::new(fields, rows)
}

/// The rows of a query being sent: the encoded batches still to come and the rows left of the
/// current one. A stream written out rather than an `unfold`: it yields a row per poll, a million
/// times for a large answer, and a future made per row and a cancellation check per row were
/// ~6 % of a pg node's CPU. Cancellation is checked between batches (at most a batch's rows go
/// out after it), and wakes a stream waiting for its next batch.
struct Rows<K> {
    batches: futures::stream::BoxStream<'static, PgWireResult<Vec<DataRow>>>,
    rows: std::vec::IntoIter<DataRow>,
    cancelled: std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    /// `None` once the rows ended (or failed): the stream then stays ended.
    keep: Option<K>,
}

impl<K: Unpin> futures::Stream for Rows<K> {
    type Item = PgWireResult<DataRow>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future;
        use std::task::Poll;
        let this = self.get_mut();
        if this.keep.is_none() {
            return Poll::Ready(None);
        }
        if let Some(row) = this.rows.next() {
            return Poll::Ready(Some(Ok(row)));
        }
        loop {
            if this.cancelled.as_mut().poll(cx).is_ready() {
                this.keep = None;
                return Poll::Ready(Some(Err(error::canceled())));
            }
            match this.batches.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.keep = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    this.keep = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(rows))) => {
                    this.rows = rows.into_iter();
                    if let Some(row) = this.rows.next() {
                        return Poll::Ready(Some(Ok(row)));
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::Field;
    use futures::StreamExt;

    fn batch(values: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))]).unwrap()
    }

    /// The rows of two batches, then a stream that never answers; the permit's drop is seen.
    fn answer(
        cancel: &CancellationToken,
    ) -> (
        futures::stream::BoxStream<'static, PgWireResult<DataRow>>,
        Arc<()>,
    ) {
        let first = batch(&[1, 2, 3]);
        let schema = first.schema();
        let batches = futures::stream::iter(vec![Ok(first), Ok(batch(&[])), Ok(batch(&[4]))])
            .chain(futures::stream::pending());
        let result = QueryResult {
            schema: schema.clone(),
            batches: batches.boxed(),
        };
        let fields = Arc::new(fields(&schema, &Format::UnifiedText, None).unwrap());
        let permit = Arc::new(());
        let response = response(result, fields, cancel.clone(), permit.clone());
        (response.data_rows, permit)
    }

    #[tokio::test]
    async fn rows_come_in_order_and_a_cancel_ends_a_waiting_answer() {
        let cancel = CancellationToken::new();
        let (mut rows, permit) = answer(&cancel);
        for _ in 0..4 {
            assert!(matches!(rows.next().await, Some(Ok(_))));
        }
        // Waiting for a batch that never comes: the cancel wakes it.
        let waiting = tokio::spawn(async move {
            let next = rows.next().await;
            (next, rows)
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        cancel.cancel();
        let (next, mut rows) = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        let Some(Err(e)) = next else {
            panic!("expected the cancel error, got {next:?}")
        };
        assert!(e.to_string().contains("57014") || format!("{e:?}").contains("57014"));
        assert!(rows.next().await.is_none());
        // The permit was let go with the answer's end.
        assert_eq!(Arc::strong_count(&permit), 1);
    }

    #[tokio::test]
    async fn a_cancel_before_the_next_batch_stops_the_rows() {
        let cancel = CancellationToken::new();
        let (mut rows, _permit) = answer(&cancel);
        assert!(matches!(rows.next().await, Some(Ok(_))));
        cancel.cancel();
        // The batch already encoded goes out; nothing after it.
        assert!(matches!(rows.next().await, Some(Ok(_))));
        assert!(matches!(rows.next().await, Some(Ok(_))));
        assert!(matches!(rows.next().await, Some(Err(_))));
        assert!(rows.next().await.is_none());
    }
}
