//! Analysts' tools against the real binary: psql, psycopg 3, SQLAlchemy, pandas, asyncpg and
//! pgjdbc over the PostgreSQL wire protocol; ADBC's Flight SQL driver and pyarrow over Flight
//! SQL; the recorded browse queries of Grafana, Metabase and DBeaver. Every answer is checked
//! against the same query over HTTP (in the client scripts under tests/clients), on both logs,
//! cluster-wide on Tansu, and with the token and grant rules of the HTTP API.

use crate::common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const COUNTRIES: [&str; 3] = ["NL", "DE", "FR"];

const TOKENS: &str = r#"
[[auth.tokens]]
name = "ops"
token = "ops-secret"
scopes = ["read", "write", "admin"]

[[auth.tokens]]
name = "orders-analyst"
token = "analyst-secret"
scopes = ["read"]
streams = ["orders"]

[[auth.tokens]]
name = "writer"
token = "writer-secret"
scopes = ["write"]
"#;

fn clients() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// The Python with the clients (made by scripts/venv.sh through scripts/test.sh).
fn python() -> PathBuf {
    let python = std::env::var("STRATA_BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    assert!(
        python.exists(),
        "no Python with the clients at {} — run the tests through scripts/test.sh, which makes one",
        python.display()
    );
    python
}

/// Runs `command` for at most `limit`, killing it after.
fn run(mut command: Command, limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?} does not start ({e}); run scripts/test.sh"));
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a client script (Python or Java) and fails with its output unless it passed.
fn client(mut command: Command, what: &str) {
    command.env("PYTHONDONTWRITEBYTECODE", "1");
    let out = run(command, Duration::from_secs(300));
    assert!(out.status.success(), "{what} failed:\n{}", text(&out));
}

fn py(script: &str, args: &[&str]) -> Command {
    let mut command = Command::new(python());
    command.arg(clients().join(script)).args(args);
    command
}

/// `psql` against `server` as `analyst` with `password`, with the extra `args`.
fn psql(server: &Server, password: &str, args: &[&str]) -> Output {
    let (host, port) = server.pg.rsplit_once(':').expect("a PostgreSQL address");
    let mut command = Command::new("psql");
    command
        .args([
            "-X", "-h", host, "-p", port, "-U", "analyst", "-d", "strata",
        ])
        .args(["-v", "VERBOSITY=verbose"])
        .args(args)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSSLMODE");
    run(command, Duration::from_secs(60))
}

fn psql_ok(server: &Server, password: &str, args: &[&str]) -> String {
    let out = psql(server, password, args);
    assert!(out.status.success(), "psql {args:?}:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits (bounded) until `stream` holds `n` events, asking with `token`.
fn wait_count(server: &Server, token: Option<&str>, stream: &str, n: usize) {
    eventually(&format!("{n} events stored in {stream}"), || {
        let mut request = http()
            .post(server.url("/v1/sql"))
            .json(&json!({ "sql": format!("SELECT count(*) AS n FROM {stream}") }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let body: Value = request.send().ok()?.json().ok()?;
        (body == json!([{ "n": n }])).then_some(())
    });
}

/// `n` orders over three countries and three hours, and the materialized view `by_country`.
fn load(server: &Server, token: Option<&str>, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            json!({
                "key": format!("c-{}", i % 17),
                "id": format!("o-{i}"),
                "type": "order",
                "time": format!("2024-05-01T{:02}:{:02}:00Z", 10 + i % 3, i % 60),
                "data": {"country": COUNTRIES[i % 3], "amount": i as f64 * 1.5},
            })
            .to_string()
        })
        .collect();
    let mut request = http()
        .post(server.url("/v1/streams/orders/events"))
        .body(lines.join("\n"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().unwrap();
    assert_eq!(status, 200, "{body}");
    server.note_append("orders", &body);
    wait_count(server, token, "orders", n);
    let create = "CREATE MATERIALIZED VIEW by_country AS SELECT json_get_str(data, 'country') AS country, count(*) AS n, sum(json_get_float(data, 'amount')) AS total FROM orders GROUP BY 1";
    let mut request = http()
        .post(server.url("/v1/sql"))
        .json(&json!({ "sql": create }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().unwrap();
    assert_eq!(
        response.status().as_u16(),
        200,
        "{}",
        response.text().unwrap()
    );
    eventually("the view to fold the stored events", || {
        let mut request = http()
            .post(server.url("/v1/sql"))
            .json(&json!({"sql": "SELECT sum(n) AS n FROM by_country"}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let body: Value = request.send().ok()?.json().ok()?;
        (body == json!([{"n": n}])).then_some(())
    });
}

#[test]
fn postgres_and_flight_clients_answer_as_http_does() {
    for backend in backends() {
        let (_tmp, dir) = data_dir();
        let server = Server::start(backend, &dir, "");
        load(&server, None, 300);
        client(
            py("postgres_clients.py", &[&server.pg, &server.base]),
            "psycopg, SQLAlchemy, pandas and asyncpg",
        );
        client(
            py("browse.py", &[&server.pg]),
            "the Grafana, Metabase and DBeaver browse queries",
        );
        client(
            py("flight_clients.py", &[&server.flight, &server.base]),
            "ADBC Flight SQL and pyarrow.flight",
        );
        let mut jdbc = Command::new("java");
        jdbc.arg("-cp")
            .arg("/usr/share/java/postgresql.jar")
            .arg(clients().join("Jdbc.java"))
            .arg(format!("jdbc:postgresql://{}/strata", server.pg))
            .arg("unused");
        client(jdbc, "pgjdbc");
    }
}

#[test]
fn psql_browses_reports_sqlstates_and_cancels_with_ctrl_c() {
    let (_tmp, dir) = data_dir();
    // One query at a time, so that a second one is refused as overload (53300); a small memory
    // pool, so that a big sort is refused (53200).
    let server = Server::start(
        Backend::Embedded,
        &dir,
        "[limits]\nmax_concurrent_requests = 1\nquery_memory_bytes = 4000000\n",
    );
    load(&server, None, 300);
    let counted = psql_ok(&server, "x", &["-Atc", "SELECT count(*) FROM orders"]);
    assert_eq!(counted.trim(), "300");
    let tables = psql_ok(&server, "x", &["-c", "\\dt"]);
    assert!(
        tables.contains("orders") && tables.contains("table"),
        "{tables}"
    );
    let described = psql_ok(&server, "x", &["-c", "\\d orders"]);
    for column in ["time", "timestamp with time zone", "key", "data", "offset"] {
        assert!(described.contains(column), "{described}");
    }
    // `data` is listed as the type its values are sent as: `json`, not `text`.
    let data = described
        .lines()
        .find(|l| l.trim_start().starts_with("data "))
        .unwrap_or_default();
    assert!(data.contains("| json"), "{described}");
    let views = psql_ok(&server, "x", &["-c", "\\dv"]);
    assert!(views.contains("by_country"), "{views}");
    // The detailed listings too (no sizes or descriptions: strata keeps none per relation).
    for (listing, name) in [
        ("\\dt+", "orders"),
        ("\\dv+", "by_country"),
        ("\\l+", "strata"),
    ] {
        let listed = psql_ok(&server, "x", &["-c", listing]);
        assert!(
            listed.contains(name) && listed.contains("Size"),
            "{listing}: {listed}"
        );
    }
    // `\d+` lists storage and descriptions beside the columns (its query reads `ARRAY(SELECT …)`
    // and the relation's options); the other listings answer, empty where strata has no such
    // objects (roles, domains, operators, event triggers).
    let detailed = psql_ok(&server, "x", &["-c", "\\d+ orders"]);
    assert!(
        detailed.contains("Storage") && detailed.contains("Description"),
        "{detailed}"
    );
    let data = detailed
        .lines()
        .find(|l| l.trim_start().starts_with("data "))
        .unwrap_or_default();
    assert!(data.contains("| json"), "{detailed}");
    // An `ARRAY(SELECT …)` over the catalog collects its rows in order, and no rows as `{}`.
    let columns = psql_ok(
        &server,
        "x",
        &[
            "-Atc",
            "SELECT ARRAY(SELECT a.attname FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = c.oid ORDER BY a.attnum), \
             ARRAY(SELECT a.attname FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = c.oid AND a.attname = 'nope') \
             FROM pg_catalog.pg_class c WHERE c.relname = 'orders'",
        ],
    );
    assert_eq!(
        columns.trim(),
        "{partition,offset,time,key,id,type,data,version}|{}"
    );
    for (listing, heading) in [
        ("\\du", "List of roles"),
        ("\\dn+", "Access privileges"),
        ("\\dD", "List of domains"),
        ("\\do", "List of operators"),
        ("\\dy", "List of event triggers"),
        ("\\db", "pg_default"),
        ("\\dF", "english"),
        ("\\df pg_catalog.concat", "VARIADIC"),
    ] {
        let listed = psql_ok(&server, "x", &["-c", listing]);
        assert!(listed.contains(heading), "{listing}: {listed}");
    }
    // `\copy (query) to FILE` (COPY … TO STDOUT underneath): the query's rows, as HTTP answers
    // them, in CSV with a header and in the text format (NULL as `\N`).
    let query = "SELECT id, key, json_get_str(data, 'country') AS country, NULL AS nothing \
                 FROM orders ORDER BY id LIMIT 5";
    let expected = rows(&server, query);
    let copies = tempfile::tempdir().unwrap();
    let (csv_file, text_file) = (copies.path().join("out.csv"), copies.path().join("out.txt"));
    let said = psql_ok(
        &server,
        "x",
        &[
            "-c",
            &format!(
                "\\copy ({query}) to '{}' with (format csv, header)",
                csv_file.display()
            ),
            "-c",
            &format!("\\copy ({query}) to '{}'", text_file.display()),
        ],
    );
    assert_eq!(said.matches("COPY 5").count(), 2, "{said}");
    let line = |row: &Value, sep: &str, null: &str| {
        ["id", "key", "country"]
            .iter()
            .map(|c| row[c].as_str().unwrap_or_default().to_owned())
            .chain([null.to_owned()])
            .collect::<Vec<_>>()
            .join(sep)
    };
    let mut csv = String::from("id,key,country,nothing\n");
    let mut tsv = String::new();
    for row in &expected {
        csv.push_str(&format!("{}\n", line(row, ",", "")));
        tsv.push_str(&format!("{}\n", line(row, "\t", "\\N")));
    }
    assert_eq!(std::fs::read_to_string(&csv_file).unwrap(), csv);
    assert_eq!(std::fs::read_to_string(&text_file).unwrap(), tsv);
    // COPY to a file on the server stays refused, as over HTTP.
    let to_file = psql(
        &server,
        "x",
        &["-c", "COPY (SELECT 1) TO '/tmp/strata-copy'"],
    );
    assert!(!to_file.status.success(), "{}", text(&to_file));
    let databases = psql_ok(&server, "x", &["-c", "\\l"]);
    assert!(databases.contains("strata"), "{databases}");
    let schemas = psql_ok(&server, "x", &["-c", "\\dn"]);
    assert!(schemas.contains("public"), "{schemas}");
    // Errors carry their SQLSTATE and the message HTTP gives.
    let (status, body) = sql(&server, "SELECT * FROM nowhere");
    assert_eq!(status, 400);
    let missing = psql(&server, "x", &["-c", "SELECT * FROM nowhere"]);
    assert!(!missing.status.success());
    let message = body["error"].as_str().unwrap();
    assert!(
        text(&missing).contains(&format!("ERROR:  42P01: {message}")),
        "{}",
        text(&missing)
    );
    let sorted = psql(
        &server,
        "x",
        &[
            "-c",
            "SELECT a.data || b.data AS x FROM orders a, orders b ORDER BY x",
        ],
    );
    assert!(text(&sorted).contains("ERROR:  53200"), "{}", text(&sorted));

    // A long query, interrupted the way Ctrl-C does it (SIGINT to psql, which sends a cancel
    // request); while it runs, a second query is over the limit of one at a time.
    let (host, port) = server.pg.rsplit_once(':').unwrap();
    let start_long = || {
        Command::new("psql")
            .args(["-X", "-h", host, "-p", port, "-U", "analyst", "-d", "strata"])
            .args(["-v", "VERBOSITY=verbose", "-c"])
            .arg("SELECT sum(a.\"offset\" * b.\"offset\" * c.\"offset\" * d.\"offset\") FROM orders a, orders b, orders c, orders d")
            .env("PGPASSWORD", "x")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut long = start_long();
    let started = Instant::now();
    let busy = eventually("the long query to hold the one query slot", || {
        if let Ok(Some(status)) = long.try_wait() {
            let mut err = String::new();
            std::io::Read::read_to_string(long.stderr.as_mut().unwrap(), &mut err).unwrap();
            // The probe below can take the one slot first; then the long query is refused.
            assert!(
                err.contains("53300"),
                "the long query ended before it was cancelled ({status}): {err}"
            );
            long = start_long();
            return None;
        }
        let out = psql(&server, "x", &["-c", "SELECT 1"]);
        (!out.status.success()).then(|| text(&out))
    });
    assert!(busy.contains("ERROR:  53300"), "{busy}");
    let _ = Command::new("kill")
        .args(["-INT", &long.id().to_string()])
        .status();
    let out = long.wait_with_output().unwrap();
    assert!(
        text(&out).contains("57014")
            && text(&out).contains("canceling statement due to user request"),
        "{}",
        text(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // The slot is free again.
    assert_eq!(psql_ok(&server, "x", &["-Atc", "SELECT 1"]).trim(), "1");
}

#[test]
fn tokens_grants_and_the_sandbox_hold_over_postgres_and_flight() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(Backend::Embedded, &dir, &format!("[auth]\n{TOKENS}"));
    load(&server, Some("ops-secret"), 60);
    // A second stream the analyst has no grant for.
    let mut request = http()
        .post(server.url("/v1/streams/secrets/events"))
        .bearer_auth("ops-secret")
        .body(r#"{"key": "k", "data": {"pin": 1234}}"#);
    request = request.header("content-type", "application/x-ndjson");
    assert_eq!(request.send().unwrap().status().as_u16(), 200);
    wait_count(&server, Some("ops-secret"), "secrets", 1);
    client(
        py(
            "security_clients.py",
            &[&server.pg, &server.flight, &server.base],
        ),
        "the token and grant matrix over PostgreSQL and Flight SQL",
    );
    // The clients of the first test, with the admin token as the password.
    client(
        py(
            "postgres_clients.py",
            &[&server.pg, &server.base, "ops-secret"],
        ),
        "psycopg, SQLAlchemy, pandas and asyncpg with a token",
    );
    client(
        py(
            "flight_clients.py",
            &[&server.flight, &server.base, "ops-secret"],
        ),
        "ADBC Flight SQL and pyarrow.flight with a token",
    );
    // A view's definition (psql's `\d+ VIEW`) reads as NULL to a token without a grant for the
    // view's stream, as `SHOW VIEWS` leaves the view out for it.
    psql_ok(
        &server,
        "ops-secret",
        &[
            "-c",
            "CREATE MATERIALIZED VIEW pins AS SELECT key, count(*) AS n FROM secrets GROUP BY key",
        ],
    );
    let definitions = "SELECT pg_get_viewdef('by_country') IS NOT NULL, \
                       pg_get_viewdef(c.oid) IS NOT NULL \
                       FROM pg_catalog.pg_class c WHERE c.relname = 'pins'";
    let ops = psql_ok(&server, "ops-secret", &["-Atc", definitions]);
    assert_eq!(ops.trim(), "t|t");
    let analyst = psql_ok(&server, "analyst-secret", &["-Atc", definitions]);
    assert_eq!(analyst.trim(), "t|f");
    let described = psql_ok(&server, "analyst-secret", &["-c", "\\d+ by_country"]);
    assert!(
        described.contains("View definition:") && described.contains("GROUP BY"),
        "{described}"
    );
    let wrong = psql(&server, "not-a-token", &["-c", "SELECT 1"]);
    // psql shows no SQLSTATE for a failed connection (the scripts check 28P01 with asyncpg).
    assert!(
        text(&wrong).contains("password authentication failed for user \"analyst\""),
        "{}",
        text(&wrong)
    );
}

#[test]
fn postgres_and_flight_over_tls_with_the_node_certificate() {
    let (_tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, tls) = self_signed_tls(&dir);
    let config = format!("{tls}[auth]\n{TOKENS}");
    let server = Server::start(Backend::Embedded, &dir, &config);
    let (host, port) = server.pg.rsplit_once(':').unwrap();
    let conninfo = format!(
        "host={host} port={port} user=analyst dbname=strata sslmode=verify-full sslrootcert={}",
        cert_path.display()
    );
    let out = run(
        {
            let mut c = Command::new("psql");
            c.args(["-X", "-c", "\\conninfo", "-c", "SELECT 1", &conninfo])
                .env("PGPASSWORD", "ops-secret");
            c
        },
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("SSL connection"), "{}", text(&out));
    // Flight SQL takes TLS only, with the same certificate; the handshake gives the bearer.
    client(
        py(
            "flight_count.py",
            &[
                &server.flight,
                "SELECT 41 + 1",
                "42",
                "ops-secret",
                &cert_path.display().to_string(),
            ],
        ),
        "Flight SQL over TLS",
    );
    // A wrong certificate is refused by the client, so the password never leaves it.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let other_path = dir.with_extension("other.crt");
    std::fs::write(&other_path, other.cert.pem()).unwrap();
    let refused = run(
        {
            let mut c = Command::new("psql");
            c.args([
                "-X",
                "-c",
                "SELECT 1",
                &format!(
                    "host={host} port={port} user=analyst dbname=strata sslmode=verify-full sslrootcert={}",
                    other_path.display()
                ),
            ])
            .env("PGPASSWORD", "ops-secret");
            c
        },
        Duration::from_secs(60),
    );
    assert!(!refused.status.success(), "{}", text(&refused));
}

#[test]
fn postgres_and_flight_answer_cluster_wide() {
    let Some(cluster) = crate::cluster::Cluster::start("") else {
        return;
    };
    let data = crate::cluster::Data::new(600);
    crate::cluster::load(&cluster, None, &data);
    for node in &cluster.nodes {
        let counted = psql_ok(node, "x", &["-Atc", "SELECT count(*) FROM orders"]);
        assert_eq!(counted.trim(), "600", "node {}", node.base);
        let grouped = psql_ok(
            node,
            "x",
            &[
                "-Atc",
                "SELECT json_get_str(data, 'country'), count(*) FROM orders GROUP BY 1 ORDER BY 1",
            ],
        );
        let expected = rows(
            node,
            "SELECT json_get_str(data, 'country') AS c, count(*) AS n FROM orders GROUP BY 1 ORDER BY 1",
        )
        .iter()
        .map(|r| format!("{}|{}", r["c"].as_str().unwrap(), r["n"]))
        .collect::<Vec<_>>()
        .join("\n");
        assert_eq!(grouped.trim(), expected, "node {}", node.base);
    }
    client(
        py(
            "flight_count.py",
            &[
                &cluster.nodes[1].flight,
                "SELECT count(*) AS n FROM orders",
                "600",
            ],
        ),
        "a cluster-wide count over Flight SQL",
    );
}
