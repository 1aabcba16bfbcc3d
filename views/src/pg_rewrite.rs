//! Rewrites of the catalog queries PostgreSQL clients send, beyond datafusion-pg-catalog's, so
//! that DataFusion plans them: aggregated (or hoisted) correlated subqueries, field access on
//! composite values, procedures compared by name, `ARRAY(SELECT …)` ([`crate::pg_array`]),
//! repeated unaliased literals in a select list. Only statements that read the catalog get them
//! (see [`crate::parse_postgres`]).

use datafusion::sql::sqlparser::ast::{Expr, Statement, Value};

/// Applies the rewrites to `statement`. Wraps the single column of each correlated scalar subquery
/// over `pg_catalog` tables in `max(…)`. Catalog browsers (SQLAlchemy's `get_columns`, JDBC's metadata) select one row by its
/// key that way; DataFusion plans a correlated scalar subquery only when it is aggregated. Over
/// the catalog, where such a subquery finds one row or none, `max` gives the same answer. User
/// tables are never touched: a subquery there that finds several rows stays an error.
pub(crate) fn catalog_rewrites(statement: &mut Statement) {
    use datafusion::sql::sqlparser::ast::{
        GroupByExpr, SelectItem, SetExpr, visit_expressions_mut, visit_relations,
    };
    use std::ops::ControlFlow;
    let _ = visit_expressions_mut(statement, |expr| {
        if let Some(array) = crate::pg_array::array_subquery(expr) {
            *expr = array;
            return ControlFlow::<()>::Continue(());
        }
        if let Some(field) = field_of_call(expr) {
            *expr = field;
            return ControlFlow::Continue(());
        }
        if let Some(compared) = proc_name_comparison(expr) {
            *expr = compared;
            return ControlFlow::<()>::Continue(());
        }
        // Children come first, so a subquery in a CASE is aggregated already.
        if let Some(hoisted) = hoist_case_subquery(expr) {
            *expr = hoisted;
            return ControlFlow::<()>::Continue(());
        }
        let Expr::Subquery(query) = expr else {
            return ControlFlow::<()>::Continue(());
        };
        let mut catalog_only = true;
        let mut any = false;
        let _ = visit_relations(&**query, |name| {
            any = true;
            let text = name.to_string().to_ascii_lowercase();
            catalog_only &= text.starts_with("pg_catalog.") || text.starts_with("pg_");
            ControlFlow::<()>::Continue(())
        });
        let SetExpr::Select(select) = query.body.as_mut() else {
            return ControlFlow::Continue(());
        };
        let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
        if !any || !catalog_only || grouped || select.projection.len() != 1 {
            return ControlFlow::Continue(());
        }
        let item = &mut select.projection[0];
        let inner = match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
            _ => return ControlFlow::Continue(()),
        };
        if is_aggregate(inner) {
            return ControlFlow::Continue(());
        }
        if let Some(wrapped) = parse_expr(&format!("max({inner})")) {
            *inner = wrapped;
        }
        ControlFlow::Continue(())
    });
    distinct_literal_names(statement);
}

/// Gives each unaliased literal of a select list that repeats an earlier one (pgjdbc's
/// `getProcedures` selects `NULL, NULL, NULL`) a name of its own, `?column?N` after its
/// position: PostgreSQL allows repeated column names, DataFusion refuses them.
fn distinct_literal_names(statement: &mut Statement) {
    use datafusion::sql::sqlparser::ast::{
        Ident, Query, SelectItem, SetExpr, VisitMut, VisitorMut,
    };
    use std::collections::HashSet;
    use std::ops::ControlFlow;
    struct Literals;
    impl VisitorMut for Literals {
        type Break = ();
        fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
            let SetExpr::Select(select) = query.body.as_mut() else {
                return ControlFlow::Continue(());
            };
            let mut seen = HashSet::new();
            for (position, item) in select.projection.iter_mut().enumerate() {
                if let SelectItem::UnnamedExpr(expr @ Expr::Value(_)) = item
                    && !seen.insert(expr.to_string())
                {
                    *item = SelectItem::ExprWithAlias {
                        expr: expr.clone(),
                        alias: Ident::with_quote('"', format!("?column?{}", position + 1)),
                    };
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = statement.visit(&mut Literals);
}

/// `CASE WHEN c THEN (SELECT max(x) FROM pg_… WHERE w) [ELSE NULL] END` as
/// `(SELECT max(x) FROM pg_… WHERE c AND w)`: the same value (an aggregate over no rows is NULL),
/// in the form DataFusion decorrelates (it plans no correlated subquery inside a CASE).
fn hoist_case_subquery(expr: &Expr) -> Option<Expr> {
    use datafusion::sql::sqlparser::ast::{BinaryOperator, SetExpr};
    let Expr::Case {
        operand: None,
        conditions,
        else_result,
        ..
    } = expr
    else {
        return None;
    };
    let no_else = match else_result.as_deref() {
        None => true,
        Some(Expr::Value(v)) => matches!(v.value, Value::Null),
        Some(_) => false,
    };
    let [when] = conditions.as_slice() else {
        return None;
    };
    let Expr::Subquery(query) = &when.result else {
        return None;
    };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let aggregated = matches!(
        &select.projection[..],
        [datafusion::sql::sqlparser::ast::SelectItem::UnnamedExpr(e)
            | datafusion::sql::sqlparser::ast::SelectItem::ExprWithAlias { expr: e, .. }]
            if is_aggregate(e)
    );
    let catalog = select.from.iter().all(|t| {
        let text = t.to_string().to_ascii_lowercase();
        text.starts_with("pg_catalog.") || text.starts_with("pg_")
    });
    if !no_else || !aggregated || !catalog || select.from.is_empty() {
        return None;
    }
    let mut query = query.clone();
    if let SetExpr::Select(select) = query.body.as_mut() {
        let condition = Expr::Nested(Box::new(when.condition.clone()));
        select.selection = Some(match select.selection.take() {
            None => condition,
            Some(w) => Expr::BinaryOp {
                left: Box::new(condition),
                op: BinaryOperator::And,
                right: Box::new(Expr::Nested(Box::new(w))),
            },
        });
    }
    Some(Expr::Subquery(query))
}

/// `(f(…)).name` and `(t.col).name` as `get_field(…, 'name')`: JDBC reads fields of composite
/// values that way, and DataFusion takes no dot after parentheses.
fn field_of_call(expr: &Expr) -> Option<Expr> {
    use datafusion::sql::sqlparser::ast::AccessExpr;
    let Expr::CompoundFieldAccess { root, access_chain } = expr else {
        return None;
    };
    let [AccessExpr::Dot(Expr::Identifier(field))] = access_chain.as_slice() else {
        return None;
    };
    let root = match root.as_ref() {
        Expr::Nested(inner) => inner.as_ref(),
        other => other,
    };
    if !matches!(
        root,
        Expr::Function(_) | Expr::CompoundIdentifier(_) | Expr::Identifier(_)
    ) {
        return None;
    }
    parse_expr(&format!(
        "get_field({root}, '{}')",
        field.value.replace('\'', "''")
    ))
}

/// `sql` parsed as one expression in PostgreSQL's dialect: how the rewrites build what they put
/// in place.
pub(crate) fn parse_expr(sql: &str) -> Option<Expr> {
    datafusion::sql::sqlparser::parser::Parser::new(
        &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
    )
    .try_with_sql(sql)
    .and_then(|mut p| p.parse_expr())
    .ok()
}

/// `pg_type.typinput = 'pg_catalog.array_in'::regproc` compares a procedure by name: the
/// emulated `pg_type` keeps procedure names where PostgreSQL keeps `regproc` values, so the cast
/// (which datafusion-pg-catalog turns into an oid lookup) becomes the bare name.
fn proc_name_comparison(expr: &Expr) -> Option<Expr> {
    use datafusion::sql::sqlparser::ast::BinaryOperator;
    const PROC_COLUMNS: &[&str] = &[
        "typinput",
        "typoutput",
        "typreceive",
        "typsend",
        "typmodin",
        "typmodout",
        "typanalyze",
    ];
    // The oid lookup datafusion-pg-catalog makes of the cast (aggregated by now, or not).
    const LOOKUP: &str = " FROM pg_catalog.pg_proc WHERE proname = '";
    let Expr::BinaryOp { left, op, right } = expr else {
        return None;
    };
    if !matches!(op, BinaryOperator::Eq | BinaryOperator::NotEq) {
        return None;
    }
    let column = |e: &Expr| match e {
        Expr::Identifier(i) => PROC_COLUMNS.contains(&i.value.to_ascii_lowercase().as_str()),
        Expr::CompoundIdentifier(parts) => parts
            .last()
            .is_some_and(|i| PROC_COLUMNS.contains(&i.value.to_ascii_lowercase().as_str())),
        _ => false,
    };
    let name = |e: &Expr| match e {
        Expr::Subquery(q) => {
            let text = q.to_string();
            let (select, name) = text.split_once(LOOKUP)?;
            if !matches!(select, "SELECT oid" | "SELECT max(oid)") {
                return None;
            }
            let name = name.strip_suffix('\'')?;
            let name = name.rsplit('.').next().unwrap_or(name);
            Some(Expr::Value(
                Value::SingleQuotedString(name.to_owned()).into(),
            ))
        }
        _ => None,
    };
    let (l, r) = if column(left) {
        (left.as_ref().clone(), name(right)?)
    } else if column(right) {
        (name(left)?, right.as_ref().clone())
    } else {
        return None;
    };
    Some(Expr::BinaryOp {
        left: Box::new(l),
        op: op.clone(),
        right: Box::new(r),
    })
}

/// Whether `expr` is a call of an aggregate function.
fn is_aggregate(expr: &Expr) -> bool {
    let Expr::Function(f) = expr else {
        return false;
    };
    let name = f.name.to_string().to_ascii_lowercase();
    matches!(
        name.trim_start_matches("pg_catalog."),
        "count"
            | "max"
            | "min"
            | "sum"
            | "avg"
            | "array_agg"
            | "string_agg"
            | "bool_and"
            | "bool_or"
            | "every"
            | "json_agg"
            | "jsonb_agg"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_literals_get_names_of_their_own() {
        let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
        let mut statement = datafusion::sql::sqlparser::parser::Parser::parse_sql(
            &dialect,
            "SELECT NULL AS a, NULL, NULL, 1, 1, relname FROM pg_catalog.pg_class",
        )
        .unwrap()
        .remove(0);
        catalog_rewrites(&mut statement);
        // The first of each stays as it was (an alias or DataFusion's name); the repeats, which
        // DataFusion would refuse, are named after their positions.
        assert_eq!(
            statement.to_string(),
            "SELECT NULL AS a, NULL, NULL AS \"?column?3\", 1, 1 AS \"?column?5\", relname \
             FROM pg_catalog.pg_class"
        );
    }
}
