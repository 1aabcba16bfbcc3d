//! Statement handles and tickets: they carry the SQL (and bound parameters), not server state, so
//! any node answers them, and each `DoGet` is authorised again.

use crate::service::{Error, Result};
use arrow::array::RecordBatch;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use datafusion::common::{ParamValues, ScalarValue};
use serde::{Deserialize, Serialize};

/// A statement, as its handle carries it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Handle {
    /// The SQL, with `?` placeholders numbered.
    pub sql: String,
    /// The bound parameters: one row, as an Arrow IPC stream (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<String>,
}

impl Handle {
    /// A handle for `sql`.
    pub fn new(sql: String) -> Self {
        Self { sql, params: None }
    }

    /// The handle's bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A handle from its bytes.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for bytes that are not a strata handle.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::BadRequest(format!("not a strata statement handle: {e}")))
    }

    /// This handle with the first row of `batch` bound to its placeholders, in column order.
    ///
    /// # Errors
    /// A batch without exactly one row.
    pub fn bind(mut self, batch: &RecordBatch) -> Result<Self> {
        if batch.num_rows() != 1 {
            return Err(Error::BadRequest(format!(
                "bind one row of parameters at a time (got {})",
                batch.num_rows()
            )));
        }
        let mut ipc = Vec::new();
        {
            let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &batch.schema())
                .map_err(arrow_error)?;
            writer.write(batch).map_err(arrow_error)?;
            writer.finish().map_err(arrow_error)?;
        }
        self.params = Some(STANDARD.encode(ipc));
        Ok(self)
    }

    /// The bound parameters, if any.
    ///
    /// # Errors
    /// Parameters that do not decode.
    pub fn params(&self) -> Result<Option<ParamValues>> {
        let Some(text) = &self.params else {
            return Ok(None);
        };
        let bytes = STANDARD
            .decode(text)
            .map_err(|e| Error::BadRequest(format!("statement handle parameters: {e}")))?;
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(arrow_error)?;
        let mut values = Vec::new();
        for batch in reader {
            let batch = batch.map_err(arrow_error)?;
            for column in batch.columns() {
                values.push(
                    ScalarValue::try_from_array(column, 0)
                        .map_err(|e| Error::BadRequest(format!("a parameter: {e}")))?,
                );
            }
        }
        Ok(Some(ParamValues::from(values)))
    }
}

fn arrow_error(e: arrow::error::ArrowError) -> Error {
    Error::BadRequest(format!("parameters: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn bound_parameters_survive_the_handle() {
        let batch = RecordBatch::try_from_iter([
            ("a", Arc::new(Int64Array::from(vec![7])) as _),
            ("b", Arc::new(StringArray::from(vec!["NL"])) as _),
        ])
        .unwrap();
        let handle = Handle::new("SELECT $1, $2".into()).bind(&batch).unwrap();
        let back = Handle::decode(&handle.encode()).unwrap();
        assert_eq!(back.sql, "SELECT $1, $2");
        let ParamValues::List(values) = back.params().unwrap().unwrap() else {
            panic!("positional")
        };
        assert_eq!(values.len(), 2);
        assert!(Handle::decode(b"nonsense").is_err());
    }
}
