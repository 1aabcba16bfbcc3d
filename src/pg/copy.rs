//! `COPY … TO STDOUT` (psql's `\copy … to FILE`, psycopg's `cursor.copy()`): a query's rows as
//! COPY data in PostgreSQL's text format or CSV. The rows come from the same query path as a
//! `SELECT`'s — limits, grants, cancel — in text format, so each value reads exactly as it does in
//! a query's answer; here they are only escaped and joined into lines, one `CopyData` per row.

use bytes::{Buf, Bytes};
use futures::{StreamExt, stream};
use parking_lot::Mutex;
use pgwire::api::results::{CopyResponse, QueryResponse};
use pgwire::messages::copy::CopyData;
use pgwire::messages::data::DataRow;
use std::sync::Arc;
use strata_views::CopyFormat;

/// The rows of `response` as a COPY-out answer in `format`.
pub fn response(mut response: QueryResponse, format: CopyFormat) -> CopyResponse {
    let fields = response.row_schema();
    let columns = fields.len();
    // The header goes out with the first row (pgwire counts messages as the tag's rows), or
    // alone when there is none (then the tag says `COPY 1` where PostgreSQL says `COPY 0`).
    let header = format.header.then(|| {
        let mut line = String::new();
        for (i, field) in fields.iter().enumerate() {
            if i > 0 {
                line.push(format.delimiter);
            }
            if format.csv {
                csv_value(&mut line, field.name().as_bytes(), &format);
            } else {
                text_value(&mut line, field.name().as_bytes(), format.delimiter);
            }
        }
        line.push('\n');
        line
    });
    let header = Arc::new(Mutex::new(header));
    let first = header.clone();
    let format = Arc::new(format);
    let rows = std::mem::replace(response.data_rows(), Box::pin(stream::empty()));
    let lines = rows.map(move |row| {
        let row = row?;
        let mut line = first.lock().take().unwrap_or_default();
        write_row(&mut line, &row, &format);
        Ok(CopyData::new(Bytes::from(line)))
    });
    let rest = stream::iter(std::iter::from_fn(move || {
        header
            .lock()
            .take()
            .map(|h| Ok(CopyData::new(Bytes::from(h))))
    }));
    CopyResponse::new(0, columns, lines.chain(rest))
}

/// Appends `row` (text-format values, as a `DataRow` carries them) as one line.
fn write_row(line: &mut String, row: &DataRow, format: &CopyFormat) {
    let mut data = &row.data[..];
    for i in 0..row.field_count {
        if i > 0 {
            line.push(format.delimiter);
        }
        if data.remaining() < 4 {
            break;
        }
        let len = data.get_i32();
        let value = match usize::try_from(len) {
            Ok(n) if n <= data.remaining() => {
                let (value, rest) = data.split_at(n);
                data = rest;
                Some(value)
            }
            _ => None,
        };
        match value {
            None => line.push_str(&format.null),
            Some(v) if format.csv => csv_value(line, v, format),
            Some(v) => text_value(line, v, format.delimiter),
        }
    }
    line.push('\n');
}

/// A value in PostgreSQL's text format: backslash, the delimiter and control characters escaped.
fn text_value(line: &mut String, value: &[u8], delimiter: char) {
    for c in String::from_utf8_lossy(value).chars() {
        match c {
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            '\u{8}' => line.push_str("\\b"),
            '\u{c}' => line.push_str("\\f"),
            '\u{b}' => line.push_str("\\v"),
            c if c == delimiter => {
                line.push('\\');
                line.push(c);
            }
            c => line.push(c),
        }
    }
}

/// A value in CSV: quoted (quotes doubled) when it holds the delimiter, a quote, a line break,
/// or reads as the NULL string, as PostgreSQL quotes.
fn csv_value(line: &mut String, value: &[u8], format: &CopyFormat) {
    let text = String::from_utf8_lossy(value);
    let quote = text == format.null || text.contains([format.delimiter, '"', '\n', '\r']);
    if quote {
        line.push('"');
        line.push_str(&text.replace('"', "\"\""));
        line.push('"');
    } else {
        line.push_str(&text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn row(values: &[Option<&str>]) -> DataRow {
        let mut data = BytesMut::new();
        for v in values {
            match v {
                Some(v) => {
                    data.put_i32(v.len() as i32);
                    data.put_slice(v.as_bytes());
                }
                None => data.put_i32(-1),
            }
        }
        DataRow::new(data, values.len() as i16)
    }

    fn text() -> CopyFormat {
        CopyFormat {
            csv: false,
            header: false,
            delimiter: '\t',
            null: "\\N".into(),
        }
    }

    fn csv() -> CopyFormat {
        CopyFormat {
            csv: true,
            header: true,
            delimiter: ',',
            null: String::new(),
        }
    }

    #[test]
    fn rows_read_as_postgresql_writes_them() {
        // Each line is what PostgreSQL 15 writes for the same values (`COPY (VALUES …) TO
        // STDOUT`, with and without `(FORMAT csv)`).
        let values = [
            Some("a\tb\\c\nd"),
            None,
            Some(""),
            Some("x,\"y\""),
            Some("2026-12-04 10:00:00+00"),
        ];
        let mut line = String::new();
        write_row(&mut line, &row(&values), &text());
        assert_eq!(
            line,
            "a\\tb\\\\c\\nd\t\\N\t\tx,\"y\"\t2026-12-04 10:00:00+00\n"
        );
        let mut line = String::new();
        write_row(&mut line, &row(&values), &csv());
        assert_eq!(
            line,
            "\"a\tb\\c\nd\",,\"\",\"x,\"\"y\"\"\",2026-12-04 10:00:00+00\n"
        );
    }
}
