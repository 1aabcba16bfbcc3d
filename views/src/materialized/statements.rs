//! The view statements of SQL: `CREATE MATERIALIZED VIEW`, `DROP MATERIALIZED VIEW`, `SHOW VIEWS`.

use crate::{Error, Result};

/// A view statement of `POST /v1/sql`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViewStatement {
    /// `CREATE MATERIALIZED VIEW name AS <query>`.
    Create {
        /// The view's name (a stream-name-like SQL identifier).
        name: String,
        /// The query text, as written.
        query: String,
        /// `IF NOT EXISTS` was given.
        if_not_exists: bool,
    },
    /// `SHOW VIEWS` or `SHOW MATERIALIZED VIEWS`.
    Show,
    /// `DROP MATERIALIZED VIEW [IF EXISTS] name`.
    Drop {
        /// The view's name.
        name: String,
        /// `IF EXISTS` was given.
        if_exists: bool,
    },
}

/// Recognizes `CREATE MATERIALIZED VIEW`, `DROP MATERIALIZED VIEW` and `SHOW VIEWS` in SQL text;
/// `None` for any other SQL.
pub fn parse_view_statement(sql: &str) -> Result<Option<ViewStatement>> {
    let mut statements = datafusion::sql::parser::DFParser::parse_sql(sql)?;
    if statements.len() != 1 {
        return Ok(None);
    }
    match statements.pop_front() {
        Some(statement) => view_statement(&statement),
        None => Ok(None),
    }
}

/// The view statement `statement` is, if it is one (see [`parse_view_statement`]).
pub fn view_statement(
    statement: &datafusion::sql::parser::Statement,
) -> Result<Option<ViewStatement>> {
    use datafusion::sql::parser::Statement as DfStatement;
    use datafusion::sql::sqlparser::ast::{ObjectType, Statement};
    let DfStatement::Statement(statement) = statement else {
        return Ok(None);
    };
    let name_of = |name: &datafusion::sql::sqlparser::ast::ObjectName| -> Result<String> {
        let text = name.to_string();
        strata_proto::StreamName::new(&text)
            .map(|n| n.to_string())
            .map_err(|e| Error::Invalid(format!("view name: {e}")))
    };
    Ok(match statement.as_ref() {
        Statement::CreateView(view) if view.materialized => {
            if view.or_replace || view.temporary || !view.columns.is_empty() {
                return Err(Error::Invalid(
                    "CREATE MATERIALIZED VIEW takes a name and AS <query> (no OR REPLACE, TEMPORARY or column list)"
                        .into(),
                ));
            }
            Some(ViewStatement::Create {
                name: name_of(&view.name)?,
                query: view.query.to_string(),
                if_not_exists: view.if_not_exists,
            })
        }
        Statement::Drop {
            object_type: ObjectType::MaterializedView,
            if_exists,
            names,
            ..
        } => {
            let [name] = names.as_slice() else {
                return Err(Error::Invalid(
                    "DROP MATERIALIZED VIEW takes one name".into(),
                ));
            };
            Some(ViewStatement::Drop {
                name: name_of(name)?,
                if_exists: *if_exists,
            })
        }
        Statement::ShowViews { .. } => Some(ViewStatement::Show),
        _ => None,
    })
}
