//! `ARRAY(SELECT …)` in the catalog queries of PostgreSQL clients, which DataFusion does not
//! plan (it reads `array` as an unknown function). psql's `\d+`, `\du`, `\dD` and `\dp` collect
//! catalog rows into arrays that way, over a correlated subquery; two shapes are rewritten:
//!
//! - `ARRAY(SELECT x FROM unnest(a) x)` is `a`; mapped elements (`'toast.' || x`) are rewritten
//!   only over the catalog's array columns that are NULL in every row (see [`mapped`]);
//! - any other single-column subquery becomes `(SELECT array_agg(e ORDER BY …) FROM … WHERE …)`,
//!   which DataFusion decorrelates like the other aggregated subqueries of catalog queries.
//!
//! Both are wrapped in `coalesce(…, make_array())`: an `ARRAY` of no rows is an empty array,
//! where `array_agg` over no rows (and unnest of a NULL array) is NULL.

use crate::pg_rewrite::parse_expr as parse;
use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, OrderByKind, Query,
    Select, SelectItem, SetExpr, TableFactor, Value,
};

/// The rewrite of `expr` if it is an `ARRAY(SELECT …)` of one of the shapes above.
pub(crate) fn array_subquery(expr: &Expr) -> Option<Expr> {
    let Expr::Function(f) = expr else {
        return None;
    };
    if !f.name.to_string().eq_ignore_ascii_case("array") {
        return None;
    }
    let FunctionArguments::Subquery(query) = &f.args else {
        return None;
    };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let element = match select.projection.as_slice() {
        [SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }] => e,
        _ => return None,
    };
    let plain = matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty())
        && select.having.is_none()
        && select.distinct.is_none()
        && query.limit_clause.is_none()
        && query.with.is_none();
    if !plain {
        return None;
    }
    match unnested(select) {
        Some((array, name)) if query.order_by.is_none() => mapped(array, &name, element),
        Some(_) => None,
        None => aggregated(query, element),
    }
}

/// The array and the element's name of `SELECT … FROM unnest(array) [AS] t[(name)]`, alone.
fn unnested(select: &Select) -> Option<(&Expr, Ident)> {
    let [from] = select.from.as_slice() else {
        return None;
    };
    if !from.joins.is_empty() || select.selection.is_some() {
        return None;
    }
    let (array, alias) = match &from.relation {
        TableFactor::Table {
            name,
            alias,
            args: Some(args),
            ..
        } if name
            .0
            .last()
            .is_some_and(|part| part.to_string().eq_ignore_ascii_case("unnest")) =>
        {
            match args.args.as_slice() {
                [FunctionArg::Unnamed(FunctionArgExpr::Expr(array))] => (array, alias),
                _ => return None,
            }
        }
        TableFactor::UNNEST {
            alias,
            array_exprs,
            with_offset: false,
            with_ordinality: false,
            ..
        } => match array_exprs.as_slice() {
            [array] => (array, alias),
            _ => return None,
        },
        _ => return None,
    };
    // The element is named by the column alias, else by the table alias (PostgreSQL names a
    // scalar function's single column after its alias), else `unnest`.
    let name = match alias {
        Some(alias) => match alias.columns.as_slice() {
            [] => alias.name.clone(),
            [column] => column.name.clone(),
            _ => return None,
        },
        None => Ident::new("unnest"),
    };
    Some((array, name))
}

/// `ARRAY(SELECT element FROM unnest(array) name)`: `array` itself when the element is taken as
/// it is, and the empty array when `array` is one of the catalog's array columns that are NULL in
/// every row ([`crate::pg_columns::always_null`], psql's `tc.reloptions` among them). Any other
/// mapping stays unplanned: DataFusion plans no unnest of an outer column, and a lambda
/// (`array_transform`) would not survive the statement's trip through SQL text in PostgreSQL's
/// dialect, where `->` is JSON's.
fn mapped(array: &Expr, name: &Ident, element: &Expr) -> Option<Expr> {
    let last = |e: &Expr| match e {
        Expr::Identifier(i) => Some(i.value.clone()),
        Expr::CompoundIdentifier(parts) => parts.last().map(|i| i.value.clone()),
        _ => None,
    };
    if last(element).is_some_and(|e| e == name.value) {
        return parse(&format!("coalesce({array}, make_array())"));
    }
    if last(array).is_some_and(|a| crate::pg_columns::always_null(&a)) {
        return parse("make_array()");
    }
    None
}

/// `coalesce((SELECT array_agg(element ORDER BY …) FROM … WHERE …), make_array())`.
fn aggregated(query: &Query, element: &Expr) -> Option<Expr> {
    let mut keys = Vec::new();
    if let Some(order) = &query.order_by {
        let OrderByKind::Expressions(exprs) = &order.kind else {
            return None;
        };
        for key in exprs {
            let mut key = key.clone();
            // `ORDER BY 1` names the single column.
            if let Expr::Value(v) = &key.expr
                && matches!(&v.value, Value::Number(n, _) if n == "1")
            {
                key.expr = element.clone();
            }
            keys.push(key.to_string());
        }
    }
    let order = if keys.is_empty() {
        String::new()
    } else {
        format!(" ORDER BY {}", keys.join(", "))
    };
    let mut query = query.clone();
    query.order_by = None;
    let SetExpr::Select(select) = query.body.as_mut() else {
        return None;
    };
    select.projection = vec![SelectItem::UnnamedExpr(parse(&format!(
        "array_agg({element}{order})"
    ))?)];
    parse(&format!("coalesce(({query}), make_array())"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(sql: &str) -> String {
        let expr = parse(sql).unwrap_or_else(|| panic!("{sql} does not parse"));
        array_subquery(&expr)
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn an_unnest_is_its_array() {
        assert_eq!(
            rewrite("array(select t.x from unnest(evttags) as t(x))"),
            "coalesce(evttags, make_array())"
        );
        assert_eq!(
            rewrite("ARRAY(SELECT x FROM pg_catalog.unnest(a.b) x)"),
            "coalesce(a.b, make_array())"
        );
        // A mapping over a column NULL in every row is the empty array; over any other, no
        // rewrite.
        assert_eq!(
            rewrite("array(select 'toast.' || x from pg_catalog.unnest(tc.reloptions) x)"),
            "make_array()"
        );
        assert_eq!(
            rewrite("array(select 'toast.' || x from unnest(tc.other) x)"),
            ""
        );
    }

    #[test]
    fn a_correlated_subquery_becomes_an_aggregate() {
        assert_eq!(
            rewrite(
                "ARRAY(SELECT b.rolname FROM pg_catalog.pg_auth_members m \
                 JOIN pg_catalog.pg_roles b ON (m.roleid = b.oid) WHERE m.member = r.oid)"
            ),
            "coalesce((SELECT array_agg(b.rolname) FROM pg_catalog.pg_auth_members m \
             JOIN pg_catalog.pg_roles b ON (m.roleid = b.oid) WHERE m.member = r.oid), \
             make_array())"
        );
        assert_eq!(
            rewrite("ARRAY(SELECT rolname FROM pg_catalog.pg_roles WHERE oid = 1 ORDER BY 1)"),
            "coalesce((SELECT array_agg(rolname ORDER BY rolname) FROM pg_catalog.pg_roles \
             WHERE oid = 1), make_array())"
        );
    }

    #[test]
    fn other_shapes_are_left_alone() {
        for sql in [
            "array(select a, b from pg_class)",
            "array(select count(*) from pg_class group by relkind)",
            "array(select relname from pg_class limit 2)",
            "array(select x from unnest(a) x order by 1)",
            "array[1, 2]",
            "arrays((select 1))",
        ] {
            assert_eq!(rewrite(sql), "", "{sql}");
        }
    }
}
