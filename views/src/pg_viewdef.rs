//! `pg_get_viewdef`: a materialized view's `SELECT`, as psql's `\d+ VIEW` shows it under "View
//! definition". The function is made for each PostgreSQL query with the definitions its caller
//! may read (a view whose stream the token has no grant for reads NULL, as `SHOW VIEWS` leaves
//! it out), and only for a query that calls it; it never sits in the shared session. It takes
//! the view's OID (as psql passes it, looked up in `pg_class` when the function is made) or its
//! name.

use crate::engine::Access;
use arrow::array::{Array, AsArray, StringArray};
use arrow::datatypes::{DataType, Int32Type, Int64Type};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::execution::FunctionRegistry;
use datafusion::execution::context::{SessionContext, SessionState};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use strata_proto::StreamName;

/// Registers `pg_get_viewdef(oid | name [, pretty])` on `state` with the definitions of `defs`
/// (name, stream, `SELECT`) that `access` may read.
///
/// # Errors
/// When `pg_class` cannot be read.
pub(crate) async fn register(
    state: &mut SessionState,
    defs: Vec<(String, StreamName, String)>,
    access: &Access,
) -> datafusion::error::Result<()> {
    let defs: BTreeMap<String, String> = defs
        .into_iter()
        .filter(|(_, stream, _)| access.may_read(stream.as_str()))
        .map(|(name, _, query)| (name, query))
        .collect();
    let mut oids = BTreeMap::new();
    let classes = SessionContext::new_with_state(state.clone())
        .sql("SELECT oid, relname FROM pg_catalog.pg_class WHERE relkind = 'v'")
        .await?
        .collect()
        .await?;
    for batch in classes {
        let (Some(oid), Some(name)) = (
            batch.column(0).as_primitive_opt::<Int32Type>(),
            batch.column(1).as_string_opt::<i32>(),
        ) else {
            return Err(DataFusionError::Internal(
                "pg_class: oid and relname are not of the expected types".into(),
            ));
        };
        for row in 0..batch.num_rows() {
            oids.insert(i64::from(oid.value(row)), name.value(row).to_owned());
        }
    }
    let by_oid = |pretty: bool| {
        let mut args = vec![DataType::Int64];
        args.extend(pretty.then_some(DataType::Boolean));
        TypeSignature::Exact(args)
    };
    let by_name = |pretty: bool| {
        let mut args = vec![DataType::Utf8];
        args.extend(pretty.then_some(DataType::Boolean));
        TypeSignature::Exact(args)
    };
    state.register_udf(Arc::new(ScalarUDF::new_from_impl(ViewDef {
        signature: Signature::one_of(
            vec![by_oid(false), by_oid(true), by_name(false), by_name(true)],
            Volatility::Stable,
        ),
        defs,
        oids,
    })))?;
    Ok(())
}

/// Whether `statement` (lowercase SQL) calls `pg_get_viewdef`.
pub(crate) fn called(statement: &str) -> bool {
    statement.contains("pg_get_viewdef")
}

/// `pg_get_viewdef` over the definitions one caller may read, by view name.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ViewDef {
    signature: Signature,
    /// Definitions by view name.
    defs: BTreeMap<String, String>,
    /// View names by OID.
    oids: BTreeMap<i64, String>,
}

impl ScalarUDFImpl for ViewDef {
    fn name(&self) -> &str {
        "pg_get_viewdef"
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
        let by_name = |name: &str| self.defs.get(name).cloned();
        let by_oid = |oid: i64| self.oids.get(&oid).and_then(|name| by_name(name));
        let wrong = || DataFusionError::Plan("pg_get_viewdef takes a view's oid or name".into());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_definition_is_read_only_with_a_grant_for_its_stream() {
        let defs = vec![
            (
                "by_key".to_owned(),
                StreamName::new("orders").unwrap(),
                "SELECT key, count(*) FROM orders GROUP BY key".to_owned(),
            ),
            (
                "by_page".to_owned(),
                StreamName::new("clicks").unwrap(),
                "SELECT page, count(*) FROM clicks GROUP BY page".to_owned(),
            ),
        ];
        let access = Access {
            admin: false,
            streams: Some(["orders".to_owned()].into()),
        };
        // A pg_class of the test's own, with the views' OIDs.
        let ctx = SessionContext::new();
        for sql in [
            "CREATE SCHEMA pg_catalog",
            "CREATE TABLE pg_catalog.pg_class AS SELECT CAST(column1 AS INT) AS oid, \
             column2 AS relname, column3 AS relkind \
             FROM (VALUES (16390, 'by_key', 'v'), (16391, 'by_page', 'v'))",
        ] {
            ctx.sql(sql).await.unwrap().collect().await.unwrap();
        }
        let mut state = ctx.state();
        register(&mut state, defs, &access).await.unwrap();
        let ctx = SessionContext::new_with_state(state);
        let out = ctx
            .sql(
                "SELECT pg_get_viewdef('by_key'), pg_get_viewdef('by_page', true), \
                 pg_get_viewdef('nothing'), pg_get_viewdef(16390), pg_get_viewdef(16391, true)",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = |i: usize| {
            let c = out[0].column(i).as_string::<i32>();
            c.is_valid(0).then(|| c.value(0).to_owned())
        };
        assert_eq!(
            text(0).as_deref(),
            Some("SELECT key, count(*) FROM orders GROUP BY key")
        );
        assert_eq!(text(1), None);
        assert_eq!(text(2), None);
        assert_eq!(text(3), text(0));
        assert_eq!(text(4), None);
    }
}
