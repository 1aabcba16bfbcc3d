//! The SQL sandbox: statements and plans that may run, and the tables a caller may read.

use crate::engine::SqlEngine;
use crate::{Access, Error, Result};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Statement;
use std::collections::BTreeSet;

impl SqlEngine {
    /// Refuses a plan that reads a table `access` does not cover. The plan is walked, not the
    /// SQL text, so aliases, CTEs and subqueries cannot hide a table.
    pub(crate) fn check_tables(&self, plan: &LogicalPlan, access: &Access) -> Result<()> {
        if access.streams.is_none() {
            return Ok(());
        }
        let mut tables = BTreeSet::new();
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                tables.insert(scan.table_name.clone());
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        for table in tables {
            if matches!(table.schema(), Some("information_schema" | "pg_catalog")) {
                // Names and columns of tables, not their rows.
                continue;
            }
            let name = table.table();
            match self.views.get(name) {
                Some(view) => access.require_stream(&view.stream, &format!("view {name}"))?,
                None => access.require_stream(name, "this query")?,
            }
        }
        Ok(())
    }
}

/// Refuses a plan that would change state (DDL, DML, statements), whatever the SQL looked like.
pub(crate) fn verify_read_only(plan: &LogicalPlan) -> Result<()> {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(plan)
        .map_err(|e| Error::ReadOnly(e.strip_backtrace()))
}

pub(crate) fn check_read_only(statement: &DfStatement) -> Result<()> {
    let refuse = |what: &str| {
        Err(Error::ReadOnly(format!(
            "{what} is not allowed; send SELECT, WITH, EXPLAIN or SHOW"
        )))
    };
    match statement {
        DfStatement::Statement(s) => match s.as_ref() {
            Statement::Query(_) | Statement::ShowTables { .. } | Statement::ShowColumns { .. } => {
                Ok(())
            }
            Statement::Explain { statement, .. } => match statement.as_ref() {
                Statement::Query(_) => Ok(()),
                other => refuse(&format!("EXPLAIN of {}", keyword(other))),
            },
            other => refuse(&keyword(other)),
        },
        DfStatement::Explain(e) => check_read_only(&e.statement),
        DfStatement::CreateExternalTable(_) => refuse("CREATE EXTERNAL TABLE"),
        DfStatement::CopyTo(_) => refuse("COPY"),
        DfStatement::Reset(_) => refuse("RESET"),
    }
}

/// The leading keywords of a statement, for messages (`CREATE TABLE`, `INSERT`, …).
fn keyword(s: &Statement) -> String {
    let text = s.to_string();
    let words: Vec<&str> = text.split_whitespace().take(3).collect();
    let n = match words.first().map(|w| w.to_ascii_uppercase()).as_deref() {
        Some("CREATE" | "DROP" | "ALTER") => 2,
        _ => 1,
    };
    words[..n.min(words.len())].join(" ").to_ascii_uppercase()
}
