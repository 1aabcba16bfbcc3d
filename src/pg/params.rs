//! The values bound to a prepared statement's placeholders, decoded by arrow-pg.
//!
//! arrow-pg reads a parameter whose type neither the client (in `Parse`) nor the plan gives as
//! text, and drops such a parameter when it is NULL: the values after it moved up a place and the
//! query failed ("No value found for placeholder"). psycopg sends `None` without a type, so
//! `WHERE … = %s::int` with `None` failed. Such a NULL is bound here as a NULL `text`, which
//! DataFusion casts to what the statement needs, as PostgreSQL does with an `unknown` NULL.

use arrow::datatypes::DataType;
use datafusion::common::ParamValues;
use pgwire::api::Type;
use pgwire::api::portal::Portal;
use pgwire::api::stmt::StoredStatement;
use pgwire::error::PgWireResult;
use std::sync::Arc;

/// Types arrow-pg decodes as themselves, a NULL included (it reads any other as text).
const DECODED: &[Type] = &[
    Type::BOOL,
    Type::INT2,
    Type::INT4,
    Type::INT8,
    Type::TEXT,
    Type::VARCHAR,
    Type::BYTEA,
    Type::FLOAT4,
    Type::FLOAT8,
    Type::NUMERIC,
    Type::TIMESTAMP,
    Type::TIMESTAMPTZ,
    Type::DATE,
    Type::TIME,
    Type::UUID,
    Type::JSON,
    Type::JSONB,
];

/// The values of `portal`'s parameters; `inferred` are the plan's types of its placeholders.
///
/// # Errors
/// A value that is not of its type (arrow-pg's error).
pub(super) fn values<S: Clone>(
    portal: &Portal<S>,
    inferred: &[Option<&DataType>],
) -> PgWireResult<ParamValues> {
    let hint = |i: usize| portal.statement.parameter_types.get(i).cloned().flatten();
    let untyped: Vec<bool> = (0..portal.parameter_len())
        .map(|i| {
            let null = portal.parameters.get(i).is_some_and(Option::is_none);
            let decoded = hint(i).or_else(|| {
                inferred
                    .get(i)
                    .copied()
                    .flatten()
                    .and_then(|t| arrow_pg::datatypes::into_pg_type(t).ok())
            });
            null && !decoded.is_some_and(|t| DECODED.contains(&t))
        })
        .collect();
    if !untyped.contains(&true) {
        return arrow_pg::datatypes::df::deserialize_parameters(portal, inferred);
    }
    // The same portal, with those NULLs' client types taken away and `text` as the server's.
    let types = (0..portal.statement.parameter_types.len())
        .map(|i| match untyped.get(i) {
            Some(true) => None,
            _ => hint(i),
        })
        .collect();
    let statement = StoredStatement::new(
        portal.statement.id.clone(),
        portal.statement.statement.clone(),
        types,
    );
    let mut copy = Portal::new_cursor(portal.name.clone(), Arc::new(statement));
    copy.parameter_format = portal.parameter_format.clone();
    copy.parameters = portal.parameters.clone();
    copy.result_column_format = portal.result_column_format.clone();
    let text = Type::TEXT;
    let server: Vec<Option<&Type>> = untyped.iter().map(|u| u.then_some(&text)).collect();
    arrow_pg::datatypes::df::deserialize_parameters_with_server_types(&copy, inferred, &server)
}
