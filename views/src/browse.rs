//! What clients browse and send beside plain SQL: the tables a caller may read with their columns
//! (Flight SQL's `GetTables`), and `?` placeholders numbered as `$1`, `$2`, … (JDBC/ODBC style).

use crate::engine::Access;
use crate::{Error, Result, SqlEngine};
use arrow::datatypes::SchemaRef;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// A table a caller may read.
#[derive(Clone, Debug)]
pub struct TableInfo {
    /// Its name (the stream's or the view's).
    pub name: String,
    /// Whether it is a materialized view (otherwise a stream).
    pub view: bool,
    /// Its columns.
    pub schema: SchemaRef,
}

impl SqlEngine {
    /// The streams and views `access` may read, by name.
    ///
    /// # Errors
    /// A table that cannot be opened.
    pub async fn tables(&self, access: &Access) -> Result<Vec<TableInfo>> {
        let Some(schema) = self.ctx.catalog("strata").and_then(|c| c.schema("public")) else {
            return Ok(Vec::new());
        };
        let mut names = schema.table_names();
        names.sort_unstable();
        names.dedup();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let (stream, view) = match self.views.get(&name) {
                Some(plan) => (plan.stream.clone(), true),
                None => (name.clone(), false),
            };
            if !access.may_read(&stream) {
                continue;
            }
            if let Some(table) = schema.table(&name).await? {
                out.push(TableInfo {
                    name,
                    view,
                    schema: table.schema(),
                });
            }
        }
        Ok(out)
    }
}

/// `sql` with each `?` placeholder numbered in order (`$1`, `$2`, …); strings, identifiers and
/// comments are left alone.
///
/// # Errors
/// [`Error::Syntax`] for SQL that does not tokenize; [`Error::Invalid`] for `?` and `$n` mixed.
pub fn number_placeholders(sql: &str) -> Result<String> {
    if !sql.contains('?') {
        return Ok(sql.to_owned());
    }
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .map_err(|e| Error::Syntax(e.to_string()))?;
    let mut next = 0;
    let mut numbered = false;
    let mut out = String::with_capacity(sql.len() + 8);
    for token in tokens {
        match token {
            Token::Placeholder(p) if p == "?" => {
                next += 1;
                out.push_str(&format!("${next}"));
            }
            Token::Placeholder(p) => {
                numbered = true;
                out.push_str(&p);
            }
            other => out.push_str(&other.to_string()),
        }
    }
    if numbered && next > 0 {
        return Err(Error::Invalid(
            "use either ? or $1, $2, … placeholders in one statement, not both".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_are_numbered_outside_strings() {
        assert_eq!(
            number_placeholders("SELECT '?', \"a?\" FROM t WHERE x = ? AND y > ? -- ?\n").unwrap(),
            "SELECT '?', \"a?\" FROM t WHERE x = $1 AND y > $2 -- ?\n"
        );
        assert_eq!(number_placeholders("SELECT $1").unwrap(), "SELECT $1");
        assert!(number_placeholders("SELECT ?, $1").is_err());
    }
}
