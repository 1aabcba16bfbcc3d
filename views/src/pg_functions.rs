//! Functions PostgreSQL clients call when they connect and browse, beyond what
//! datafusion-pg-catalog registers: `version()` naming strata, `current_setting()`,
//! `to_regtype()`, and the few catalog helpers SQLAlchemy's and JDBC's column queries use
//! (`pg_get_serial_sequence`, `pg_collation_is_visible`, `json_build_object`).

use crate::postgres::{default_setting, version_string};
use arrow::array::{ArrayRef, StringArray};
use arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, create_udf,
};
use std::sync::Arc;

/// Registers the functions on the PostgreSQL session.
pub(crate) fn register(ctx: &SessionContext) {
    ctx.register_udf(create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|_| {
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
                version_string(),
            ))))
        }),
    ));
    ctx.register_udf(create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            let oid = |name: Option<&str>| name.and_then(type_oid);
            Ok(match args.first() {
                Some(ColumnarValue::Scalar(ScalarValue::Utf8(name))) => {
                    ColumnarValue::Scalar(ScalarValue::Int32(oid(name.as_deref())))
                }
                Some(ColumnarValue::Array(names)) => {
                    let names = datafusion::common::cast::as_string_array(names)?;
                    ColumnarValue::Array(Arc::new(
                        names.iter().map(oid).collect::<arrow::array::Int32Array>(),
                    ))
                }
                _ => ColumnarValue::Scalar(ScalarValue::Int32(None)),
            })
        }),
    ));
    ctx.register_udf(create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            let name = match args.first() {
                Some(ColumnarValue::Scalar(ScalarValue::Utf8(Some(n)))) => n.clone(),
                _ => {
                    return Err(datafusion::error::DataFusionError::Plan(
                        "current_setting takes the name of a setting as a constant".into(),
                    ));
                }
            };
            match default_setting(&name) {
                Some(v) => Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(v.to_owned())))),
                None => Err(datafusion::error::DataFusionError::Plan(format!(
                    "unrecognized configuration parameter \"{name}\""
                ))),
            }
        }),
    ));
    ctx.register_udf(create_udf(
        "pg_get_serial_sequence",
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        // strata has no sequences.
        Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))),
    ));
    ctx.register_udf(create_udf(
        "pg_collation_is_visible",
        vec![DataType::Int32],
        DataType::Boolean,
        Volatility::Stable,
        Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))))),
    ));
    ctx.register_udf(ScalarUDF::new_from_impl(JsonBuildObject::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(ExpandArray::new()));
}

/// The OID of a built-in PostgreSQL type by name (`to_regtype`); `None` for types strata does not
/// have (extensions such as hstore).
fn type_oid(name: &str) -> Option<i32> {
    let name = name
        .trim()
        .trim_start_matches("pg_catalog.")
        .to_ascii_lowercase();
    let (base, array) = match name.strip_suffix("[]") {
        Some(base) => (base.to_owned(), true),
        None => (name, false),
    };
    const TYPES: &[(&[&str], i32, i32)] = &[
        (&["bool", "boolean"], 16, 1000),
        (&["bytea"], 17, 1001),
        (&["char", "\"char\""], 18, 1002),
        (&["name"], 19, 1003),
        (&["int8", "bigint"], 20, 1016),
        (&["int2", "smallint"], 21, 1005),
        (&["int4", "integer", "int"], 23, 1007),
        (&["text"], 25, 1009),
        (&["oid"], 26, 1028),
        (&["json"], 114, 199),
        (&["float4", "real"], 700, 1021),
        (&["float8", "double precision"], 701, 1022),
        (&["varchar", "character varying"], 1043, 1015),
        (&["date"], 1082, 1182),
        (&["time", "time without time zone"], 1083, 1183),
        (&["timestamp", "timestamp without time zone"], 1114, 1115),
        (&["timestamptz", "timestamp with time zone"], 1184, 1185),
        (&["interval"], 1186, 1187),
        (&["numeric", "decimal"], 1700, 1231),
        (&["uuid"], 2950, 2951),
        (&["jsonb"], 3802, 3807),
    ];
    TYPES
        .iter()
        .find(|(names, _, _)| names.contains(&base.as_str()))
        .map(|(_, oid, array_oid)| if array { *array_oid } else { *oid })
}

/// `json_build_object(key, value, …)`: a JSON object text of the pairs.
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: Signature,
}

impl JsonBuildObject {
    fn new() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        if !args.args.len().is_multiple_of(2) {
            return Err(DataFusionError::Plan(
                "json_build_object takes pairs of keys and values".into(),
            ));
        }
        let rows = args.number_rows;
        let columns: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<datafusion::error::Result<_>>()?;
        let mut out = Vec::with_capacity(rows);
        for row in 0..rows {
            let mut object = serde_json::Map::new();
            for pair in columns.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?.to_string();
                let value = ScalarValue::try_from_array(&pair[1], row)?;
                object.insert(key, json_value(&value));
            }
            out.push(serde_json::Value::Object(object).to_string());
        }
        Ok(ColumnarValue::Array(Arc::new(StringArray::from(out))))
    }
}

/// `information_schema._pg_expandarray(array)`: JDBC's `getPrimaryKeys` expands index keys with
/// it. strata has no indexes, so `pg_index` is empty and the function never sees a row; it is
/// here so that the query plans, and answers each element's first position if it is ever called.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ExpandArray {
    signature: Signature,
}

impl ExpandArray {
    fn new() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }

    fn fields() -> arrow::datatypes::Fields {
        arrow::datatypes::Fields::from(vec![
            arrow::datatypes::Field::new("x", DataType::Int32, true),
            arrow::datatypes::Field::new("n", DataType::Int32, true),
        ])
    }
}

impl ScalarUDFImpl for ExpandArray {
    fn name(&self) -> &str {
        "_pg_expandarray"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Struct(Self::fields()))
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let rows = args.number_rows;
        let nulls = arrow::array::Int32Array::from(vec![None::<i32>; rows]);
        let ones = arrow::array::Int32Array::from(vec![Some(1); rows]);
        let array = arrow::array::StructArray::try_new(
            Self::fields(),
            vec![Arc::new(nulls) as ArrayRef, Arc::new(ones) as ArrayRef],
            None,
        )?;
        Ok(ColumnarValue::Array(Arc::new(array)))
    }
}

fn json_value(value: &ScalarValue) -> serde_json::Value {
    if value.is_null() {
        return serde_json::Value::Null;
    }
    match value {
        ScalarValue::Boolean(Some(b)) => serde_json::Value::Bool(*b),
        ScalarValue::Int8(_)
        | ScalarValue::Int16(_)
        | ScalarValue::Int32(_)
        | ScalarValue::Int64(_)
        | ScalarValue::UInt8(_)
        | ScalarValue::UInt16(_)
        | ScalarValue::UInt32(_)
        | ScalarValue::UInt64(_)
        | ScalarValue::Float32(_)
        | ScalarValue::Float64(_) => value
            .to_string()
            .parse::<serde_json::Number>()
            .map(serde_json::Value::Number)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_string())),
        other => serde_json::Value::String(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int32Array};

    #[tokio::test]
    async fn catalog_helpers_answer() {
        let ctx = SessionContext::new();
        register(&ctx);
        let batches = ctx
            .sql("SELECT to_regtype('int8') AS t, to_regtype('hstore') AS h, json_build_object('a', 1, 'b', 'x') AS j, pg_get_serial_sequence('orders', 'id') AS s, version() AS v")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let b = &batches[0];
        let ints = b.column(0).as_any().downcast_ref::<Int32Array>().unwrap();
        assert_eq!(ints.value(0), 20);
        assert!(b.column(1).is_null(0));
        let json = b.column(2).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(json.value(0), r#"{"a":1,"b":"x"}"#);
        assert!(b.column(3).is_null(0));
        let version = b.column(4).as_any().downcast_ref::<StringArray>().unwrap();
        assert!(version.value(0).starts_with("PostgreSQL 16.6 (strata"));
        assert!(default_setting("DateStyle").is_some());
    }
}
