//! `pg_get_function_result(oid)` and `pg_get_function_arguments(oid)`, which psql's `\df` and
//! pgjdbc's `getFunctions` call for the functions `pg_proc` lists. Like `pg_get_viewdef`
//! ([`crate::pg_viewdef`]), they are made for a query that calls them, from `pg_proc` and
//! `pg_type` as the catalog has them then. Types are named as `format_type` names them, or by
//! `pg_type.typname` where it does not know them (`record`, `anyarray`); arguments' defaults
//! are not shown (the catalog keeps them as expression trees).

use crate::pg_listing::Lookup;
use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Int64Type};
use datafusion::common::DataFusionError;
use datafusion::execution::FunctionRegistry;
use datafusion::execution::context::{SessionContext, SessionState};
use datafusion::logical_expr::{ScalarUDF, Signature, Volatility};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Whether `sql` calls one of the functions.
pub(crate) fn called(sql: &str) -> bool {
    crate::pg_listing::mentions(sql, "pg_get_function_")
}

/// Registers both functions on `state`, from its `pg_proc` and `pg_type`.
///
/// # Errors
/// When the catalog cannot be read.
pub(crate) async fn register(state: &mut SessionState) -> datafusion::error::Result<()> {
    let ctx = SessionContext::new_with_state(state.clone());
    let read = |sql: &'static str| {
        let ctx = ctx.clone();
        async move { ctx.sql(sql).await?.collect().await }
    };
    let mut types = HashMap::new();
    for batch in
        read("SELECT CAST(oid AS BIGINT), format_type(oid, NULL), typname FROM pg_catalog.pg_type")
            .await?
    {
        let (oids, formatted, names) = (int64(&batch, 0)?, text(&batch, 1)?, text(&batch, 2)?);
        for row in 0..batch.num_rows() {
            let name = match formatted.is_valid(row) && !formatted.value(row).starts_with("oid(") {
                true => formatted.value(row),
                false => names.value(row),
            };
            types.insert(oids.value(row), name.to_owned());
        }
    }
    let type_name = |oid: i64| {
        types
            .get(&oid)
            .cloned()
            .unwrap_or_else(|| format!("oid({oid})"))
    };
    let (mut results, mut arguments) = (BTreeMap::new(), BTreeMap::new());
    for batch in read(
        "SELECT CAST(oid AS BIGINT), proretset, CAST(prorettype AS BIGINT), proargtypes, \
         proallargtypes, proargmodes, proargnames FROM pg_catalog.pg_proc",
    )
    .await?
    {
        let sets = batch
            .column(1)
            .as_boolean_opt()
            .ok_or_else(|| DataFusionError::Internal("pg_proc: unexpected column type".into()))?;
        let (oids, returns) = (int64(&batch, 0)?, int64(&batch, 2)?);
        let texts = (3..7)
            .map(|i| text(&batch, i))
            .collect::<Result<Vec<_>, _>>()?;
        let value = |c: usize, row: usize| texts[c].is_valid(row).then(|| texts[c].value(row));
        for row in 0..batch.num_rows() {
            let set = if sets.value(row) { "SETOF " } else { "" };
            results.insert(
                oids.value(row),
                format!("{set}{}", type_name(returns.value(row))),
            );
            let (all, modes, names) = (value(1, row), value(2, row), value(3, row));
            let types = list(all.or(value(0, row)).unwrap_or_default());
            let modes = list(modes.unwrap_or_default());
            let names = list(names.unwrap_or_default());
            let described: Vec<String> = types
                .iter()
                .enumerate()
                .map(|(i, oid)| {
                    let mode = match modes.get(i).copied() {
                        Some("o") => "OUT ",
                        Some("b") => "INOUT ",
                        Some("v") => "VARIADIC ",
                        Some("t") => "OUT ",
                        _ => "",
                    };
                    let name = names.get(i).filter(|n| !n.is_empty());
                    let oid = oid.parse::<i64>().unwrap_or(0);
                    match name {
                        Some(name) => format!("{mode}{name} {}", type_name(oid)),
                        None => format!("{mode}{}", type_name(oid)),
                    }
                })
                .collect();
            arguments.insert(oids.value(row), described.join(", "));
        }
    }
    for (name, texts) in [
        ("pg_get_function_result", results),
        ("pg_get_function_arguments", arguments),
    ] {
        state.register_udf(Arc::new(ScalarUDF::new_from_impl(Lookup {
            name,
            signature: Signature::exact(vec![DataType::Int64], Volatility::Stable),
            by_oid: texts,
            by_name: BTreeMap::new(),
        })))?;
    }
    Ok(())
}

/// The items of a catalog list as the library writes them: `[2276]`, `['', 'x']`, `26 23`,
/// `{1,2}` — in brackets or braces or bare, separated by commas or spaces, quotes taken off.
pub(crate) fn list(text: &str) -> Vec<&str> {
    text.trim_matches(|c| matches!(c, '[' | ']' | '{' | '}'))
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|item| !item.is_empty())
        .map(|item| item.trim_matches(|c| c == '\'' || c == '"'))
        .collect()
}

fn int64(batch: &RecordBatch, i: usize) -> datafusion::error::Result<&arrow::array::Int64Array> {
    batch
        .column(i)
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| DataFusionError::Internal("pg_proc: unexpected column type".into()))
}

fn text(batch: &RecordBatch, i: usize) -> datafusion::error::Result<&StringArray> {
    batch
        .column(i)
        .as_string_opt::<i32>()
        .ok_or_else(|| DataFusionError::Internal("pg_proc: unexpected column type".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_lists_read_as_items() {
        assert_eq!(list("[2276]"), ["2276"]);
        assert_eq!(list("['', 'x', 'n']"), ["", "x", "n"]);
        assert_eq!(list("26 23"), ["26", "23"]);
        assert_eq!(list("['v']"), ["v"]);
        assert!(list("").is_empty());
    }
}
