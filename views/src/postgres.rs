//! The PostgreSQL flavour of the engine, for the PostgreSQL wire front end: its own session, whose
//! catalog adds `pg_catalog` (datafusion-pg-catalog's emulation, so that psql, JDBC and BI tools
//! can browse) to the same streams and views, with PostgreSQL's SQL dialect and the functions
//! clients call on connect. HTTP and Flight SQL keep the plain session, where `pg_catalog` does not
//! exist.
//!
//! [`parse_postgres`] sorts what a client sends into statements the engine plans and session
//! statements (`SET`, `SHOW`, `BEGIN`, …) that the front end answers from the connection's own
//! settings, never on a shared context.

use crate::engine::{StreamSchema, ViewRegistry};
use crate::materialized::view_statement;
use crate::pg_json::PgCatalog;
use crate::source::ShardSource;
use crate::{Error, Result};
use datafusion::catalog::{CatalogProvider, SchemaProvider};
use datafusion::config::Dialect;
use datafusion::execution::context::SessionContext;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::SessionConfig;
use datafusion::sql::sqlparser::ast::{
    CloseCursor, CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget,
    DiscardObject, Expr, ObjectName, Reset, Set, Statement, Value,
};
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use std::sync::Arc;

/// The PostgreSQL version strata answers as: clients (SQLAlchemy, JDBC, psql) parse it to pick
/// the SQL they send.
pub const SERVER_VERSION: &str = "16.6";

/// `version()`: a PostgreSQL-style string naming strata.
pub fn version_string() -> String {
    format!(
        "PostgreSQL {SERVER_VERSION} (strata {}) on {}-linux, compiled by rustc, 64-bit",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    )
}

/// The settings `current_setting()` knows (a session's own `SET`s are answered by `SHOW`).
const SETTINGS: &[(&str, &str)] = &[
    ("server_version", SERVER_VERSION),
    ("server_version_num", "160006"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("datestyle", "ISO, MDY"),
    ("intervalstyle", "postgres"),
    ("timezone", "UTC"),
    ("search_path", "public"),
    ("standard_conforming_strings", "on"),
    ("integer_datetimes", "on"),
    ("max_identifier_length", "63"),
    ("max_index_keys", "32"),
    ("transaction_isolation", "read committed"),
    ("transaction_read_only", "on"),
    ("default_transaction_read_only", "on"),
    ("is_superuser", "off"),
    ("lc_collate", "C"),
    ("lc_ctype", "C"),
];

/// Every setting `current_setting()` knows, with its value in a fresh session (`pg_settings`).
pub(crate) fn default_settings() -> &'static [(&'static str, &'static str)] {
    SETTINGS
}

/// The value of setting `name` as a fresh session has it, if strata knows it.
pub fn default_setting(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    SETTINGS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// The session the PostgreSQL front end plans in: the streams and views of `source` and `views`
/// under `strata.public`, `pg_catalog` beside them, PostgreSQL's dialect.
pub(crate) fn context(
    runtime: Arc<RuntimeEnv>,
    source: Arc<dyn ShardSource>,
    views: Arc<ViewRegistry>,
) -> Result<SessionContext> {
    let mut config = SessionConfig::new()
        .with_information_schema(true)
        .with_default_catalog_and_schema("strata", "public");
    config.options_mut().sql_parser.dialect = Dialect::PostgreSQL;
    // `timestamptz` and `now()` in UTC, as the session's TimeZone says: without a zone DataFusion
    // makes them zone-less, which clients would be told is `timestamp`.
    config.options_mut().execution.time_zone = Some("+00:00".to_owned());
    let mut ctx = SessionContext::new_with_config_rt(config, runtime);
    datafusion_functions_json::register_all(&mut ctx)?;
    crate::capped::register(&ctx);
    // Its own catalog object: `pg_catalog` is registered into it, not into the plain session's.
    let catalog = Arc::new(datafusion::catalog::MemoryCatalogProvider::new());
    let tables: Arc<dyn SchemaProvider> = Arc::new(StreamSchema { source, views });
    catalog.register_schema("public", tables.clone())?;
    ctx.register_catalog("strata", catalog.clone());
    datafusion_pg_catalog::pg_catalog::setup_pg_catalog(&ctx, "strata", EmptyContextProvider)
        .map_err(|e| Error::from(*e))?;
    // `data` listed as `json`, as answers send it (the library types columns as `text`).
    if let Some(inner) = catalog.schema("pg_catalog") {
        catalog.register_schema("pg_catalog", Arc::new(PgCatalog { inner, tables }))?;
    }
    crate::pg_functions::register(&ctx);
    crate::pg_listing::register(&ctx);
    Ok(ctx)
}

/// A statement from a PostgreSQL client, sorted by who answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgStatement {
    /// SQL the engine plans (queries, `SHOW VIEWS`/`TABLES`, `EXPLAIN`, and statements it refuses
    /// with its own message). The text is the statement as rewritten for DataFusion.
    Sql(String),
    /// `CREATE`/`DROP MATERIALIZED VIEW`, planned by the engine, answered with this command tag.
    ViewDdl {
        /// The statement.
        sql: String,
        /// `CREATE MATERIALIZED VIEW` or `DROP MATERIALIZED VIEW`.
        tag: &'static str,
    },
    /// `SET name = value` (`None`: `DEFAULT`), `SET TIME ZONE`, `SET NAMES`.
    Set {
        /// The setting, lowercase.
        name: String,
        /// Its new value.
        value: Option<String>,
    },
    /// `SHOW name` (lowercase, words joined by spaces; `all`).
    Show(String),
    /// `RESET name` or `RESET ALL` (`all`).
    Reset(String),
    /// A statement accepted and answered with this tag, changing nothing: transaction statements
    /// (strata's reads need none), and the parts of a session reset strata has nothing for
    /// (`DISCARD TEMP`/`PLANS`/`SEQUENCES`, `CLOSE ALL`, `UNLISTEN`).
    Transaction(&'static str),
    /// `DISCARD ALL` and the like: back to the settings of a fresh session, no prepared statements.
    Discard,
    /// `DEALLOCATE name` (`None`: `DEALLOCATE ALL`): a prepared statement of the extended protocol
    /// forgotten (psycopg sends `DEALLOCATE ALL` after a rollback).
    Deallocate(Option<String>),
    /// `COPY (query) TO STDOUT` or `COPY table [(columns)] TO STDOUT` (psql's `\copy … to`): the
    /// query's rows, planned and checked as any query, sent as COPY data.
    CopyOut {
        /// The query.
        sql: String,
        /// How the rows are written.
        format: CopyFormat,
    },
}

/// The text of `COPY … TO STDOUT`'s rows: PostgreSQL's text format (tab-separated, backslash
/// escapes, `\N` for NULL) or CSV, with the options PostgreSQL gives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyFormat {
    /// CSV rather than text.
    pub csv: bool,
    /// A first line of column names.
    pub header: bool,
    /// Between values: tab (text) or comma (CSV) unless given.
    pub delimiter: char,
    /// How NULL is written: `\N` (text) or nothing (CSV) unless given.
    pub null: String,
}

impl CopyFormat {
    /// The format `options` ask for, or why they cannot be honoured.
    fn of(options: &[CopyOption], legacy: &[CopyLegacyOption]) -> Result<Self> {
        let unsupported = |what: &dyn std::fmt::Display| {
            Error::Invalid(format!("COPY option {what} is not supported"))
        };
        let mut csv = false;
        let (mut header, mut delimiter, mut null) = (None, None, None);
        for option in options {
            match option {
                CopyOption::Format(name) => match name.value.to_ascii_lowercase().as_str() {
                    "csv" => csv = true,
                    "text" => csv = false,
                    _ => return Err(unsupported(option)),
                },
                CopyOption::Header(h) => header = Some(*h),
                CopyOption::Delimiter(d) => delimiter = Some(*d),
                CopyOption::Null(n) => null = Some(n.clone()),
                CopyOption::Encoding(e)
                    if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
                other => return Err(unsupported(other)),
            }
        }
        for option in legacy {
            match option {
                CopyLegacyOption::Csv(more) => {
                    csv = true;
                    for o in more {
                        match o {
                            CopyLegacyCsvOption::Header => header = Some(true),
                            other => return Err(unsupported(other)),
                        }
                    }
                }
                CopyLegacyOption::Header => header = Some(true),
                CopyLegacyOption::Delimiter(d) => delimiter = Some(*d),
                CopyLegacyOption::Null(n) => null = Some(n.clone()),
                other => return Err(unsupported(other)),
            }
        }
        let delimiter = delimiter.unwrap_or(if csv { ',' } else { '\t' });
        if delimiter == '\n'
            || delimiter == '\r'
            || delimiter == '\\' && !csv
            || delimiter == '"' && csv
        {
            return Err(Error::Invalid(format!(
                "COPY delimiter cannot be {delimiter:?}"
            )));
        }
        Ok(Self {
            csv,
            header: header.unwrap_or(false),
            delimiter,
            null: null.unwrap_or_else(|| if csv { String::new() } else { "\\N".into() }),
        })
    }
}

/// `COPY … TO STDOUT` as a query and a format; `None` for other `COPY` forms (from a client,
/// to a server file or program), which the engine refuses as it does over HTTP.
fn copy_out(statement: &Statement) -> Result<Option<PgStatement>> {
    let Statement::Copy {
        source,
        to: true,
        target: CopyTarget::Stdout,
        options,
        legacy_options,
        ..
    } = statement
    else {
        return Ok(None);
    };
    let sql = match source {
        CopySource::Query(query) => query.to_string(),
        CopySource::Table {
            table_name,
            columns,
        } => {
            let columns = if columns.is_empty() {
                "*".to_owned()
            } else {
                columns
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!("SELECT {columns} FROM {table_name}")
        }
    };
    Ok(Some(PgStatement::CopyOut {
        sql,
        format: CopyFormat::of(options, legacy_options)?,
    }))
}

/// Parses what a client sent into statements.
///
/// SQL that reads the PostgreSQL catalog (it names a `pg_…` relation or function, or casts to a
/// `reg…` type) is parsed and rewritten by datafusion-pg-catalog for the catalog queries of
/// clients; those rewrites are lossy (a correlated subquery in a select list becomes `NULL`), which
/// is right for the catalog, where strata has no column defaults, identities or collations, but
/// not for user data. Every other statement is parsed as written, so a query over streams
/// answers exactly as it does over HTTP.
///
/// # Errors
/// [`Error::Syntax`] for SQL that does not parse; [`Error::ReadOnly`] for settings that would act
/// beyond the session (roles, session authorization).
pub fn parse_postgres(sql: &str) -> Result<Vec<PgStatement>> {
    let lower = sql.to_ascii_lowercase();
    let catalog =
        lower.contains("pg_") || lower.contains("information_schema") || lower.contains("::reg");
    let statements = if catalog {
        let parser = PostgresCompatibilityParser::new();
        let statements = parser.parse(sql).map_err(|e| syntax_error(sql, e))?;
        statements
            .into_iter()
            .map(|mut statement| {
                crate::pg_rewrite::catalog_rewrites(&mut statement);
                // Once more, for what the subqueries turned into.
                parser.rewrite(statement)
            })
            .collect()
    } else {
        let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
        match datafusion::sql::sqlparser::parser::Parser::parse_sql(&dialect, sql) {
            Ok(statements) => statements,
            // DataFusion's own statements (CREATE EXTERNAL TABLE, COPY … TO): the engine parses
            // and refuses them with the message HTTP gives.
            Err(e) => {
                match datafusion::sql::parser::DFParser::parse_sql_with_dialect(sql, &dialect) {
                    Ok(statements) if statements.len() == 1 => {
                        return Ok(vec![PgStatement::Sql(sql.to_owned())]);
                    }
                    _ => return Err(syntax_error(sql, e)),
                }
            }
        }
    };
    statements.into_iter().map(sort).collect()
}

/// The error HTTP gives for `sql` where DataFusion's parser fails too, else `e`'s.
fn syntax_error(sql: &str, e: impl std::fmt::Display) -> Error {
    let generic = datafusion::sql::sqlparser::dialect::GenericDialect {};
    match datafusion::sql::parser::DFParser::parse_sql_with_dialect(sql, &generic) {
        Err(plain) => Error::from(plain),
        Ok(_) => Error::Syntax(e.to_string()),
    }
}

fn sort(statement: Statement) -> Result<PgStatement> {
    Ok(match statement {
        Statement::Set(set) => return sort_set(set),
        Statement::ShowVariable { variable } => {
            let words: Vec<String> = variable
                .iter()
                .map(|i| i.value.to_ascii_lowercase())
                .collect();
            // `SHOW TRANSACTION ISOLATION LEVEL`, `SHOW TIME ZONE` are words; `SHOW strata.after`
            // comes as two names.
            let spaced = words.join(" ");
            let name = match spaced.as_str() {
                "transaction isolation level" | "session authorization" => spaced,
                "time zone" => "timezone".to_owned(),
                _ => words.join("."),
            };
            PgStatement::Show(name)
        }
        Statement::StartTransaction { .. } => PgStatement::Transaction("BEGIN"),
        Statement::Commit { .. } => PgStatement::Transaction("COMMIT"),
        Statement::Rollback {
            savepoint: Some(_), ..
        } => PgStatement::Transaction("ROLLBACK"),
        Statement::Rollback { .. } => PgStatement::Transaction("ROLLBACK"),
        Statement::Savepoint { .. } => PgStatement::Transaction("SAVEPOINT"),
        Statement::ReleaseSavepoint { .. } => PgStatement::Transaction("RELEASE"),
        Statement::Discard {
            object_type: DiscardObject::ALL,
        } => PgStatement::Discard,
        // strata keeps no plans, sequences or temporary objects for a session.
        Statement::Discard {
            object_type: DiscardObject::PLANS,
        } => PgStatement::Transaction("DISCARD PLANS"),
        Statement::Discard {
            object_type: DiscardObject::SEQUENCES,
        } => PgStatement::Transaction("DISCARD SEQUENCES"),
        Statement::Discard {
            object_type: DiscardObject::TEMP,
        } => PgStatement::Transaction("DISCARD TEMP"),
        // No cursors, no channels: nothing to close or stop listening to (a reset sends these).
        Statement::Close {
            cursor: CloseCursor::All,
        } => PgStatement::Transaction("CLOSE CURSOR ALL"),
        Statement::UNLISTEN { .. } => PgStatement::Transaction("UNLISTEN"),
        Statement::Deallocate { name, .. } => PgStatement::Deallocate(
            (name.quote_style.is_some() || !name.value.eq_ignore_ascii_case("all"))
                .then_some(name.value),
        ),
        Statement::Reset(reset) => PgStatement::Reset(match reset.reset {
            Reset::ALL => "all".into(),
            Reset::ConfigurationParameter(name) => name.to_string().to_ascii_lowercase(),
        }),
        other => {
            if let Some(copy) = copy_out(&other)? {
                return Ok(copy);
            }
            let sql = other.to_string();
            let parsed = datafusion::sql::parser::Statement::Statement(Box::new(other));
            match view_statement(&parsed)? {
                Some(crate::materialized::ViewStatement::Create { .. }) => PgStatement::ViewDdl {
                    sql,
                    tag: "CREATE MATERIALIZED VIEW",
                },
                Some(crate::materialized::ViewStatement::Drop { .. }) => PgStatement::ViewDdl {
                    sql,
                    tag: "DROP MATERIALIZED VIEW",
                },
                _ => PgStatement::Sql(sql),
            }
        }
    })
}

fn sort_set(set: Set) -> Result<PgStatement> {
    let name_of = |n: &ObjectName| n.to_string().to_ascii_lowercase();
    Ok(match set {
        Set::SingleAssignment {
            variable, values, ..
        } => {
            let value = values.iter().map(value_text).collect::<Vec<_>>().join(", ");
            let value = (!value.eq_ignore_ascii_case("default")).then_some(value);
            PgStatement::Set {
                name: name_of(&variable),
                value,
            }
        }
        Set::SetTimeZone { value, .. } => PgStatement::Set {
            name: "timezone".into(),
            value: Some(value_text(&value)),
        },
        Set::SetNames { charset_name, .. } => PgStatement::Set {
            name: "client_encoding".into(),
            value: Some(charset_name.value),
        },
        Set::SetNamesDefault {} => PgStatement::Set {
            name: "client_encoding".into(),
            value: None,
        },
        // Characteristics of transactions strata does not have: every read is one snapshot.
        Set::SetTransaction { .. } => PgStatement::Transaction("SET"),
        other => {
            return Err(Error::ReadOnly(format!(
                "{} is not allowed; SET changes only the settings of this session",
                other
                    .to_string()
                    .split_whitespace()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" ")
            )));
        }
    })
}

/// A `SET` value as PostgreSQL reads it: strings without their quotes, names and numbers as written.
fn value_text(expr: &Expr) -> String {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        Expr::Identifier(ident) => ident.value.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_to_stdout_is_a_query_with_its_format() {
        let copy = |sql: &str| parse_postgres(sql).map(|mut s| s.remove(0));
        let csv_with_header = CopyFormat {
            csv: true,
            header: true,
            delimiter: ',',
            null: String::new(),
        };
        assert_eq!(
            copy("COPY (SELECT key FROM orders) TO STDOUT WITH (FORMAT csv, HEADER)").unwrap(),
            PgStatement::CopyOut {
                sql: "SELECT key FROM orders".into(),
                format: csv_with_header.clone(),
            }
        );
        // psql's `\copy orders (key, id) to FILE csv header` and the text format's defaults.
        assert_eq!(
            copy("COPY orders (key, id) TO STDOUT csv header").unwrap(),
            PgStatement::CopyOut {
                sql: "SELECT key, id FROM orders".into(),
                format: csv_with_header,
            }
        );
        assert_eq!(
            copy("COPY orders TO STDOUT (DELIMITER '|')").unwrap(),
            PgStatement::CopyOut {
                sql: "SELECT * FROM orders".into(),
                format: CopyFormat {
                    csv: false,
                    header: false,
                    delimiter: '|',
                    null: "\\N".into(),
                },
            }
        );
        // Options strata does not honour are refused, not ignored; a server file stays the
        // engine's to refuse.
        assert!(matches!(
            copy("COPY orders TO STDOUT (FORMAT binary)"),
            Err(Error::Invalid(m)) if m.contains("FORMAT binary")
        ));
        assert!(matches!(
            copy("COPY orders TO STDOUT (HEADER)").unwrap(),
            PgStatement::CopyOut {
                format: CopyFormat {
                    csv: false,
                    header: true,
                    ..
                },
                ..
            }
        ));
        assert!(matches!(
            copy("COPY orders TO STDOUT (FORMAT csv, FORCE_QUOTE (key))"),
            Err(Error::Invalid(m)) if m.contains("FORCE_QUOTE")
        ));
        assert!(matches!(
            copy("COPY (SELECT 1) TO '/tmp/x.csv'").unwrap(),
            PgStatement::Sql(_)
        ));
    }

    #[test]
    fn session_statements_are_sorted_from_queries() {
        let parsed = parse_postgres(
            "SET application_name = 'psql'; SET extra_float_digits TO 3; SHOW DateStyle; \
             SET TIME ZONE 'UTC'; BEGIN; SELECT 1; COMMIT; SHOW VIEWS; RESET ALL; \
             SET statement_timeout = DEFAULT; DISCARD ALL; DEALLOCATE ALL; DEALLOCATE PREPARE _pg3_0; \
             CLOSE ALL; DISCARD TEMP; UNLISTEN *",
        )
        .unwrap();
        assert_eq!(
            parsed,
            vec![
                PgStatement::Set {
                    name: "application_name".into(),
                    value: Some("psql".into())
                },
                PgStatement::Set {
                    name: "extra_float_digits".into(),
                    value: Some("3".into())
                },
                PgStatement::Show("datestyle".into()),
                PgStatement::Set {
                    name: "timezone".into(),
                    value: Some("UTC".into())
                },
                PgStatement::Transaction("BEGIN"),
                PgStatement::Sql("SELECT 1".into()),
                PgStatement::Transaction("COMMIT"),
                PgStatement::Sql("SHOW VIEWS".into()),
                PgStatement::Reset("all".into()),
                PgStatement::Set {
                    name: "statement_timeout".into(),
                    value: None
                },
                PgStatement::Discard,
                PgStatement::Deallocate(None),
                PgStatement::Deallocate(Some("_pg3_0".into())),
                PgStatement::Transaction("CLOSE CURSOR ALL"),
                PgStatement::Transaction("DISCARD TEMP"),
                PgStatement::Transaction("UNLISTEN"),
            ]
        );
        assert!(matches!(
            parse_postgres("CREATE MATERIALIZED VIEW v AS SELECT count(*) FROM orders").unwrap()[..],
            [PgStatement::ViewDdl {
                tag: "CREATE MATERIALIZED VIEW",
                ..
            }]
        ));
        assert_eq!(
            parse_postgres("SHOW strata.after; SHOW TRANSACTION ISOLATION LEVEL").unwrap(),
            vec![
                PgStatement::Show("strata.after".into()),
                PgStatement::Show("transaction isolation level".into())
            ]
        );
        assert!(matches!(
            parse_postgres("SET ROLE admin"),
            Err(Error::ReadOnly(_))
        ));
        assert!(matches!(parse_postgres("SELEC 1"), Err(Error::Syntax(_))));
        // Scalar subqueries over the catalog are aggregated (or, in a select list, NULL: strata
        // has no defaults); over user tables they are left exactly as written.
        let catalog = parse_postgres(
            "SELECT a.attname FROM pg_catalog.pg_attribute a WHERE (SELECT d.adbin FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid) IS NULL",
        )
        .unwrap();
        assert!(
            matches!(&catalog[0], PgStatement::Sql(s) if s.contains("max(d.adbin)")),
            "{catalog:?}"
        );
        let user_sql = "SELECT (SELECT key FROM orders AS o WHERE o.id = t.id) FROM t";
        let user = parse_postgres(user_sql).unwrap();
        assert_eq!(user, vec![PgStatement::Sql(user_sql.into())]);
    }
}
