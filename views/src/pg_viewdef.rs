//! `pg_get_viewdef`: a materialized view's `SELECT`, as psql's `\d+ VIEW` shows it under "View
//! definition". The function is made for each PostgreSQL query with the definitions its caller
//! may read (a view whose stream the token has no grant for reads NULL, as `SHOW VIEWS` leaves
//! it out), and only for a query that calls it; it never sits in the shared session. It takes
//! the view's OID (as psql passes it, looked up in `pg_class` when the function is made) or its
//! name.

use crate::engine::Access;
use crate::pg_listing::Lookup;
use arrow::array::AsArray;
use arrow::datatypes::{DataType, Int32Type};
use datafusion::common::DataFusionError;
use datafusion::execution::FunctionRegistry;
use datafusion::execution::context::{SessionContext, SessionState};
use datafusion::logical_expr::{ScalarUDF, Signature, TypeSignature, Volatility};
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
    let oid = |pretty: bool| {
        let mut args = vec![DataType::Int64];
        args.extend(pretty.then_some(DataType::Boolean));
        TypeSignature::Exact(args)
    };
    let name = |pretty: bool| {
        let mut args = vec![DataType::Utf8];
        args.extend(pretty.then_some(DataType::Boolean));
        TypeSignature::Exact(args)
    };
    let by_oid = oids
        .into_iter()
        .filter_map(|(oid, name)| defs.get(&name).map(|def| (oid, def.clone())))
        .collect();
    state.register_udf(Arc::new(ScalarUDF::new_from_impl(Lookup {
        name: "pg_get_viewdef",
        signature: Signature::one_of(
            vec![oid(false), oid(true), name(false), name(true)],
            Volatility::Stable,
        ),
        by_oid,
        by_name: defs,
    })))?;
    Ok(())
}

/// Whether `sql` calls `pg_get_viewdef`.
pub(crate) fn called(sql: &str) -> bool {
    crate::pg_listing::mentions(sql, "pg_get_viewdef")
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;

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
