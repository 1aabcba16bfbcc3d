//! The functions psql's detailed listings call (`\dt+`, `\dv+`, `\d+`, `\l+`, `\dn+`, `\dT`,
//! `\do`, `\dF`, `\db`) that datafusion-pg-catalog does not register: sizes, which strata does
//! not keep per relation or database (NULL, which psql shows as empty), `pg_size_pretty` itself,
//! descriptions of objects and columns (strata has none: NULL), index definitions (strata has no
//! indexes: NULL, for pgjdbc's `getIndexInfo`), tablespaces' locations, and the
//! visibility of functions, types, operators and text-search objects (all are visible: one
//! schema).

use arrow::array::{Array, AsArray, StringArray};
use arrow::datatypes::{DataType, Int64Type};
use datafusion::common::ScalarValue;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility, create_udf,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Registers the functions on the PostgreSQL session.
pub(crate) fn register(ctx: &SessionContext) {
    let oid = || TypeSignature::Exact(vec![DataType::Int64]);
    let described = || TypeSignature::Exact(vec![DataType::Int64, DataType::Utf8]);
    for name in [
        "pg_table_size",
        "pg_relation_size",
        "pg_total_relation_size",
        "pg_indexes_size",
    ] {
        ctx.register_udf(constant(name, vec![oid()], ScalarValue::Int64(None)));
    }
    ctx.register_udf(constant(
        "pg_database_size",
        vec![TypeSignature::Exact(vec![DataType::Utf8]), oid()],
        ScalarValue::Int64(None),
    ));
    // `pg_operator.oprcode` is the procedure's name here (a regproc's text), not its oid.
    let described_by_name = || TypeSignature::Exact(vec![DataType::Utf8, DataType::Utf8]);
    ctx.register_udf(constant(
        "obj_description",
        vec![described(), described_by_name(), oid()],
        ScalarValue::Utf8(None),
    ));
    ctx.register_udf(constant(
        "shobj_description",
        vec![described()],
        ScalarValue::Utf8(None),
    ));
    // strata has no indexes (pg_index is empty), so no index has a definition.
    ctx.register_udf(constant(
        "pg_get_indexdef",
        vec![
            oid(),
            TypeSignature::Exact(vec![DataType::Int64, DataType::Int64, DataType::Boolean]),
        ],
        ScalarValue::Utf8(None),
    ));
    ctx.register_udf(constant(
        "col_description",
        vec![TypeSignature::Exact(vec![DataType::Int64, DataType::Int64])],
        ScalarValue::Utf8(None),
    ));
    // Where a tablespace's files are: PostgreSQL answers '' for its two built-in ones, the only
    // ones pg_tablespace lists.
    ctx.register_udf(constant(
        "pg_tablespace_location",
        vec![oid()],
        ScalarValue::Utf8(Some(String::new())),
    ));
    for name in [
        "pg_function_is_visible",
        "pg_type_is_visible",
        "pg_operator_is_visible",
        "pg_opclass_is_visible",
        "pg_opfamily_is_visible",
        "pg_conversion_is_visible",
        "pg_statistics_obj_is_visible",
        "pg_ts_config_is_visible",
        "pg_ts_dict_is_visible",
        "pg_ts_parser_is_visible",
        "pg_ts_template_is_visible",
    ] {
        ctx.register_udf(constant(
            name,
            vec![oid()],
            ScalarValue::Boolean(Some(true)),
        ));
    }
    ctx.register_udf(create_udf(
        "pg_size_pretty",
        vec![DataType::Int64],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(size_pretty),
    ));
}

fn constant(name: &'static str, signatures: Vec<TypeSignature>, value: ScalarValue) -> ScalarUDF {
    ScalarUDF::new_from_impl(Constant {
        name,
        signature: Signature::one_of(signatures, Volatility::Stable),
        value,
    })
}

/// A function of one value whatever its arguments.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Constant {
    name: &'static str,
    signature: Signature,
    value: ScalarValue,
}

impl ScalarUDFImpl for Constant {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(self.value.data_type())
    }

    fn invoke_with_args(
        &self,
        _args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(self.value.clone()))
    }
}

/// Whether `sql` names `function`, in any case (the function is made only for such a query).
pub(crate) fn mentions(sql: &str, function: &str) -> bool {
    sql.as_bytes()
        .windows(function.len())
        .any(|w| w.eq_ignore_ascii_case(function.as_bytes()))
}

/// A function of an OID or a name whose answers were read when it was made (for one query):
/// its text from `by_oid` or `by_name`, NULL for a key not there.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Lookup {
    pub(crate) name: &'static str,
    pub(crate) signature: Signature,
    pub(crate) by_oid: BTreeMap<i64, String>,
    pub(crate) by_name: BTreeMap<String, String>,
}

impl ScalarUDFImpl for Lookup {
    fn name(&self) -> &str {
        self.name
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
        let by_name = |name: &str| self.by_name.get(name).cloned();
        let by_oid = |oid: i64| self.by_oid.get(&oid).cloned();
        let wrong = || {
            datafusion::error::DataFusionError::Plan(format!(
                "{}: unexpected argument type",
                self.name
            ))
        };
        Ok(match args.args.first() {
            Some(ColumnarValue::Scalar(ScalarValue::Utf8(name))) => {
                ColumnarValue::Scalar(ScalarValue::Utf8(name.as_deref().and_then(by_name)))
            }
            Some(ColumnarValue::Scalar(ScalarValue::Int64(oid))) => {
                ColumnarValue::Scalar(ScalarValue::Utf8(oid.and_then(by_oid)))
            }
            Some(ColumnarValue::Array(values)) => {
                let out: StringArray = if let Some(names) = values.as_string_opt::<i32>() {
                    (0..names.len())
                        .map(|i| names.is_valid(i).then(|| by_name(names.value(i))).flatten())
                        .collect()
                } else {
                    let oids = values.as_primitive_opt::<Int64Type>().ok_or_else(wrong)?;
                    (0..oids.len())
                        .map(|i| oids.is_valid(i).then(|| by_oid(oids.value(i))).flatten())
                        .collect()
                };
                ColumnarValue::Array(Arc::new(out))
            }
            _ => return Err(wrong()),
        })
    }
}

/// `pg_size_pretty(bigint)`: a size in bytes as PostgreSQL writes it (`8192 bytes`, `16 kB`).
fn size_pretty(args: &[ColumnarValue]) -> datafusion::error::Result<ColumnarValue> {
    let wrong = || {
        datafusion::error::DataFusionError::Plan(
            "pg_size_pretty takes a size in bytes (bigint)".into(),
        )
    };
    match args.first() {
        Some(ColumnarValue::Scalar(ScalarValue::Int64(size))) => {
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(size.map(pretty))))
        }
        Some(ColumnarValue::Array(sizes)) => {
            let sizes = sizes.as_primitive_opt::<Int64Type>().ok_or_else(wrong)?;
            let out: StringArray = (0..sizes.len())
                .map(|i| sizes.is_valid(i).then(|| pretty(sizes.value(i))))
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }
        _ => Err(wrong()),
    }
}

/// PostgreSQL's rule (15's `pg_size_pretty`): bytes below 10 kB; otherwise the first unit in
/// which the value, counted in halves of it, is below 20479, rounded half away from zero.
fn pretty(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if bytes.unsigned_abs() < 10 * 1024 {
        return format!("{bytes} bytes");
    }
    // Halves of the unit, so that the last shift can round.
    let mut halves = bytes / 512;
    for (i, unit) in UNITS.iter().enumerate() {
        if halves.unsigned_abs() < 20 * 1024 - 1 || i == UNITS.len() - 1 {
            let rounded = (halves + halves.signum()) / 2;
            return format!("{rounded} {unit}");
        }
        halves /= 1024;
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_is_mentioned_in_any_case() {
        assert!(mentions("SELECT PG_GET_VIEWDEF(c.oid)", "pg_get_viewdef"));
        assert!(!mentions("SELECT pg_get_expr(x)", "pg_get_viewdef"));
        assert!(!mentions("", "pg_get_viewdef"));
    }

    #[test]
    fn sizes_read_as_postgresql_writes_them() {
        // Each answer is PostgreSQL 15's (Debian's server, 2026-12-07).
        for (bytes, text) in [
            (0, "0 bytes"),
            (8192, "8192 bytes"),
            (10239, "10239 bytes"),
            (10240, "10 kB"),
            (16384, "16 kB"),
            (1_000_000, "977 kB"),
            (10_485_760, "10 MB"),
            (123_456_789, "118 MB"),
            (10_737_418_240, "10 GB"),
            (-20480, "-20 kB"),
            (20_970_496, "20 MB"),
            (30 << 50, "30 PB"),
        ] {
            assert_eq!(pretty(bytes), text, "{bytes}");
        }
    }
}
