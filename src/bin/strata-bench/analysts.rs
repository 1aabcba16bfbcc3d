//! Scenario 8: analysts' tools. A large result through psycopg from strata's PostgreSQL front end
//! against the same rows from a real PostgreSQL (started by the peer script); the same rows over
//! Flight SQL against HTTP Arrow IPC and DuckDB reading the Parquet file; psql's
//! connect-to-first-row against both servers.

use crate::server::Strata;
use crate::{Args, Result, Section, ms, progress, row};

/// Rows of the result (the "1M-row result"; fewer when fewer are stored).
const ROWS: u64 = 1_000_000;

pub(crate) async fn scenario(
    args: &Args,
    strata: &Strata,
    total_n: u64,
    runs: usize,
) -> Result<Section> {
    let n = total_n.min(ROWS);
    progress(&format!("scenario 8: {n} rows to analysts' tools"));
    let figures = crate::peers::python_peer(
        args,
        "analysts_peer.py",
        include_str!("analysts_peer.py"),
        &[
            strata.pg.clone().into(),
            strata.flight.clone().into(),
            strata.base_url().into(),
            args.work.join("orders.parquet").into(),
            n.to_string().into(),
            runs.to_string().into(),
        ],
    )
    .await?;
    let secs = |name: &str| figures[name].as_f64().unwrap_or(f64::NAN);
    let (psycopg, postgres) = (
        secs("psycopg_strata_seconds"),
        secs("psycopg_postgres_seconds"),
    );
    let raw = secs("flight_raw_seconds");
    let (flight, http, duck) = (
        secs("flight_seconds"),
        secs("http_arrow_seconds"),
        secs("duckdb_parquet_seconds"),
    );
    let (psql, psql_pg) = (secs("psql_strata_seconds"), secs("psql_postgres_seconds"));
    let (connect, connect_pg) = (
        secs("connect_strata_seconds"),
        secs("connect_postgres_seconds"),
    );
    Ok(Section {
        title: format!("8. Analysts' tools: {n} rows (`SELECT time, key, amount …`)"),
        peer: "PostgreSQL 15 (Debian, started by the peer script, fsync off) with the same rows in a table; HTTP Arrow IPC; DuckDB over the Parquet file".into(),
        rows: vec![
            row(
                format!("{n} rows through psycopg 3 (text), strata vs PostgreSQL"),
                ms(psycopg),
                ms(postgres),
                Some(psycopg / postgres),
                "≤ 1× PostgreSQL's time",
                Some(psycopg <= postgres),
            ),
            row(
                format!("{n} rows over Flight SQL (pyarrow.flight) vs HTTP Arrow IPC (pyarrow)"),
                ms(raw),
                ms(http),
                Some(http / raw),
                "≥ 1× HTTP's speed",
                Some(raw <= http),
            ),
            row(
                format!("{n} rows over Flight SQL through ADBC (Go driver → Python) vs HTTP Arrow IPC"),
                ms(flight),
                ms(http),
                Some(http / flight),
                "context (the client's own cost included)",
                None,
            ),
            row(
                format!("{n} rows over Flight SQL (ADBC) vs DuckDB reading Parquet"),
                ms(flight),
                ms(duck),
                Some(flight / duck),
                "context",
                None,
            ),
            row(
                "connect to first row (libpq through psycopg), strata vs PostgreSQL (median of 21)",
                ms(connect),
                ms(connect_pg),
                Some(connect / connect_pg),
                "< 20 ms",
                Some(connect < 0.020),
            ),
            row(
                "psql process: start, connect, first row, exit (median of 21)",
                ms(psql),
                ms(psql_pg),
                Some(psql / psql_pg),
                "context (psql's own start-up included)",
                None,
            ),
        ],
        notes: vec![
            "strata's side extracts `amount` from each event's JSON `data` (`json_get_float`); PostgreSQL reads a plain float8 column. psql's time includes starting the psql process.".into(),
        ],
    })
}
