//! The types of a statement's placeholders, as a client is told them before it binds values.
//!
//! DataFusion infers a placeholder's type from what it is compared with (`"offset" = $1`), not
//! from a cast (`$1::int`, `CAST($1 AS timestamptz)`), where PostgreSQL takes the cast's type.
//! Clients that encode values by the server's answer (asyncpg) could then only send text.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::logical_expr::expr::Placeholder;
use datafusion::logical_expr::{Cast, Expr, LogicalPlan, TryCast};
use std::collections::HashMap;

/// Each placeholder's type: the one DataFusion inferred for any of its occurrences, else the type
/// of a cast applied directly to it (the first such cast in the plan).
///
/// # Errors
/// DataFusion's, for a placeholder given two different types.
pub(crate) fn parameter_types(plan: &LogicalPlan) -> Result<HashMap<String, Option<DataType>>> {
    // DataFusion's map keeps the type of each placeholder's last occurrence, which may be an
    // untyped one; it also refuses conflicting types.
    let mut types = plan.get_parameter_types()?;
    if types.values().all(Option::is_some) {
        return Ok(types);
    }
    let mut inferred: HashMap<String, DataType> = HashMap::new();
    let mut cast: HashMap<String, DataType> = HashMap::new();
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                match e {
                    Expr::Placeholder(Placeholder {
                        id,
                        field: Some(field),
                    }) => {
                        inferred
                            .entry(id.clone())
                            .or_insert_with(|| field.data_type().clone());
                    }
                    Expr::Cast(Cast { expr, field }) | Expr::TryCast(TryCast { expr, field }) => {
                        if let Expr::Placeholder(Placeholder { id, .. }) = expr.as_ref() {
                            cast.entry(id.clone())
                                .or_insert_with(|| field.data_type().clone());
                        }
                    }
                    _ => {}
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    for (id, slot) in types.iter_mut() {
        if slot.is_none() {
            *slot = inferred.remove(id).or_else(|| cast.remove(id));
        }
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn types(sql: &str) -> Vec<(String, Option<DataType>)> {
        let ctx = SessionContext::new();
        let plan = ctx.state().create_logical_plan(sql).await.unwrap();
        let mut types: Vec<_> = parameter_types(&plan).unwrap().into_iter().collect();
        types.sort_by(|a, b| a.0.cmp(&b.0));
        types
    }

    #[tokio::test]
    async fn a_cast_types_its_placeholder_where_nothing_else_does() {
        assert_eq!(
            types("SELECT $1::int + 1, CAST($2 AS double), $3").await,
            vec![
                ("$1".to_owned(), Some(DataType::Int32)),
                ("$2".to_owned(), Some(DataType::Float64)),
                ("$3".to_owned(), None),
            ]
        );
        // Where DataFusion infers a type, it stays: a cast elsewhere does not override it.
        assert_eq!(
            types(
                "SELECT * FROM (VALUES (1::bigint)) t(a) WHERE a = $1 AND CAST($1 AS text) = '1'"
            )
            .await,
            vec![("$1".to_owned(), Some(DataType::Int64))]
        );
    }
}
