//! Security end to end: bearer tokens with scopes and per-stream grants (401/403, checked on the
//! tables a query plan reads), the CLI's `--token`, TLS with a certificate generated here, and
//! the SQL sandbox (no files, no COPY, no external tables, view DDL only for `admin`).

use crate::common::*;
use serde_json::{Value, json};
use std::time::Duration;

const CONFIG: &str = r#"
[auth]
public_metrics = false

[[auth.tokens]]
name = "ops"
token = "ops-secret"
scopes = ["read", "write", "admin"]

[[auth.tokens]]
name = "producer"
token = "producer-secret"
scopes = ["write"]

[[auth.tokens]]
name = "orders-analyst"
token = "analyst-secret"
scopes = ["read"]
streams = ["orders"]

[[auth.tokens]]
name = "orders-admin"
token = "orders-admin-secret"
scopes = ["read", "admin"]
streams = ["orders"]
"#;

/// A request with an optional bearer token; returns status, headers and JSON body.
fn call(
    method: reqwest::Method,
    server: &Server,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = http().request(method, server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let resp = request.send().unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn query(server: &Server, token: &str, sql: &str) -> (u16, Value) {
    let (status, _, body) = call(
        reqwest::Method::POST,
        server,
        "/v1/sql",
        Some(token),
        Some(json!({ "sql": sql }).to_string()),
    );
    (status, body)
}

fn post_events(server: &Server, token: Option<&str>, stream: &str, body: &str) -> (u16, Value) {
    let (status, _, v) = call(
        reqwest::Method::POST,
        server,
        &format!("/v1/streams/{stream}/events"),
        token,
        Some(body.to_owned()),
    );
    (status, v)
}

/// Waits until `stream` holds `n` events, asking as `token`.
fn wait_count(server: &Server, token: &str, stream: &str, n: u64) {
    eventually(&format!("{n} events in {stream}"), || {
        let (status, v) = query(
            server,
            token,
            &format!("SELECT count(*) AS n FROM {stream}"),
        );
        (status == 200 && v[0]["n"] == n).then_some(())
    });
}

#[test]
fn tokens_scopes_and_stream_grants_guard_every_endpoint() {
    for backend in backends() {
        let (_tmp, dir) = data_dir();
        let server = Server::start(backend, &dir, CONFIG);
        let get = |path: &str, token: Option<&str>| {
            call(reqwest::Method::GET, &server, path, token, None)
        };

        // Open: health. Closed without a token: everything else, with a challenge header.
        assert_eq!(get("/healthz", None).0, 200);
        for path in ["/metrics", "/v1/streams", "/v1/views", "/v1/cluster"] {
            let (status, headers, body) = get(path, None);
            assert_eq!(status, 401, "{path}: {body}");
            assert!(headers.contains_key("www-authenticate"), "{path}");
            assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
            assert_eq!(get(path, Some("wrong")).0, 401, "{path}");
        }
        assert_eq!(get("/metrics", Some("analyst-secret")).0, 200);

        // Creating a stream, even by a first append, needs `admin`.
        let (status, err) = post_events(
            &server,
            Some("producer-secret"),
            "orders",
            "{\"data\": 1}\n",
        );
        assert_eq!(status, 403, "{err}");
        assert!(err["error"].as_str().unwrap().contains("`admin`"), "{err}");
        assert_eq!(get("/v1/streams/orders", Some("ops-secret")).0, 404);
        for stream in ["orders", "payments"] {
            let (status, _, body) = call(
                reqwest::Method::PUT,
                &server,
                &format!("/v1/streams/{stream}"),
                Some("ops-secret"),
                Some("{\"partitions\": 2}".into()),
            );
            assert_eq!(status, 201, "{body}");
        }

        // Writes need `write`; nothing is written by a refused append.
        let event = "{\"id\": \"o1\", \"data\": {\"amount\": 5}}\n";
        assert_eq!(post_events(&server, None, "orders", event).0, 401);
        let (status, err) = post_events(&server, Some("analyst-secret"), "orders", event);
        assert_eq!(status, 403, "{err}");
        assert!(err["error"].as_str().unwrap().contains("`write`"), "{err}");
        assert_eq!(
            post_events(&server, Some("producer-secret"), "orders", event).0,
            200
        );
        assert_eq!(
            post_events(
                &server,
                Some("producer-secret"),
                "payments",
                "{\"data\": {\"card\": \"4111\"}}\n"
            )
            .0,
            200
        );
        wait_count(&server, "ops-secret", "orders", 1);
        wait_count(&server, "ops-secret", "payments", 1);
        // A writer cannot read.
        assert_eq!(query(&server, "producer-secret", "SELECT 1").0, 403);

        // Stream grants: the analyst reads orders and nothing of payments, however it is named.
        let (status, rows) = query(
            &server,
            "analyst-secret",
            "SELECT count(*) AS n FROM orders",
        );
        assert_eq!((status, rows), (200, json!([{"n": 1}])));
        for sql in [
            "SELECT * FROM payments",
            "SELECT * FROM PUBLIC.payments",
            "SELECT * FROM strata.public.payments",
            "WITH p AS (SELECT * FROM payments) SELECT count(*) FROM p",
            "SELECT count(*) FROM orders WHERE EXISTS (SELECT 1 FROM payments)",
            "SELECT (SELECT max(data) FROM payments) AS x",
            "SELECT o.id FROM orders o JOIN payments p ON o.key = p.key",
            "SELECT 1 UNION ALL SELECT count(*) FROM payments",
            "EXPLAIN SELECT * FROM payments",
        ] {
            let (status, err) = query(&server, "analyst-secret", sql);
            assert_eq!(status, 403, "{sql}: {err}");
            assert!(
                err["error"].as_str().unwrap().contains("payments"),
                "{sql}: {err}"
            );
        }
        let (status, _, body) = get("/v1/streams/payments/events", Some("analyst-secret"));
        assert_eq!(status, 403, "{body}");
        assert_eq!(get("/v1/streams/payments", Some("analyst-secret")).0, 403);
        let (status, _, list) = get("/v1/streams", Some("analyst-secret"));
        assert_eq!(status, 200);
        let names: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["orders"]);
        let (status, _, lines) = get("/v1/streams/orders/events", Some("analyst-secret"));
        assert_eq!(status, 200, "{lines}");

        // Admin: streams and views. Read-only tokens and writers cannot create either.
        let (status, _, _) = call(
            reqwest::Method::PUT,
            &server,
            "/v1/streams/audit",
            Some("analyst-secret"),
            Some("{\"partitions\": 1}".into()),
        );
        assert_eq!(status, 403);
        let create = "CREATE MATERIALIZED VIEW pay_count AS SELECT count(*) AS n FROM payments";
        let (status, err) = query(&server, "analyst-secret", create);
        assert_eq!(status, 403, "{err}");
        assert!(err["error"].as_str().unwrap().contains("admin"), "{err}");
        // An admin limited to orders cannot make a view of payments either.
        let (status, err) = query(&server, "orders-admin-secret", create);
        assert_eq!(status, 403, "{err}");
        assert_eq!(query(&server, "ops-secret", create).0, 200);
        let orders_view =
            "CREATE MATERIALIZED VIEW order_count AS SELECT count(*) AS n FROM orders";
        assert_eq!(query(&server, "orders-admin-secret", orders_view).0, 200);
        // Views belong to their stream: the analyst reads order_count, not pay_count.
        eventually("order_count is caught up", || {
            let (status, v) = query(&server, "analyst-secret", "SELECT n FROM order_count");
            (status == 200 && v == json!([{"n": 1}])).then_some(())
        });
        let (status, err) = query(&server, "analyst-secret", "SELECT * FROM pay_count");
        assert_eq!(status, 403, "{err}");
        let (_, _, views) = get("/v1/views", Some("analyst-secret"));
        assert_eq!(views.as_array().unwrap().len(), 1, "{views}");
        assert_eq!(views[0]["name"], "order_count");
        let (status, _, _) = call(
            reqwest::Method::POST,
            &server,
            "/v1/views/pay_count/rebuild",
            Some("orders-admin-secret"),
            None,
        );
        assert_eq!(status, 403);
        let (status, err) = query(
            &server,
            "orders-admin-secret",
            "DROP MATERIALIZED VIEW pay_count",
        );
        assert_eq!(status, 403, "{err}");
        assert_eq!(
            query(&server, "ops-secret", "SELECT n FROM pay_count").1,
            json!([{"n": 1}])
        );

        // The CLI sends --token or STRATA_TOKEN.
        let cli = |args: &[&str], token: Option<&str>| {
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_strata"));
            command.args(["--server", &server.base]).args(args);
            command.env_remove("STRATA_TOKEN");
            if let Some(token) = token {
                command.env("STRATA_TOKEN", token);
            }
            command.output().unwrap()
        };
        let denied = cli(&["sql", "SELECT count(*) AS n FROM orders"], None);
        assert!(!denied.status.success());
        assert!(
            String::from_utf8_lossy(&denied.stderr).contains("401"),
            "{denied:?}"
        );
        let allowed = cli(
            &["sql", "SELECT count(*) AS n FROM orders"],
            Some("analyst-secret"),
        );
        assert!(allowed.status.success(), "{allowed:?}");
        let flag = cli(
            &[
                "--token",
                "ops-secret",
                "sql",
                "--format",
                "json",
                "SELECT n FROM pay_count",
            ],
            Some("bad"),
        );
        assert!(flag.status.success(), "{flag:?}");
        assert!(String::from_utf8_lossy(&flag.stdout).contains("\"n\":1"));
    }
}

#[test]
fn hashed_tokens_and_public_metrics() {
    let hashed = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("hash-token")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"s3cret\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(hashed.status.success());
    let digest = String::from_utf8(hashed.stdout).unwrap().trim().to_owned();
    assert_eq!(digest.len(), 64);
    let (_tmp, dir) = data_dir();
    let config = format!(
        "[auth]\npublic_metrics = true\n[[auth.tokens]]\nname = \"r\"\nsha256 = \"{digest}\"\nscopes = [\"read\"]\n"
    );
    let server = Server::start(Backend::Embedded, &dir, &config);
    let get =
        |path: &str, token: Option<&str>| call(reqwest::Method::GET, &server, path, token, None).0;
    assert_eq!(get("/metrics", None), 200);
    assert_eq!(get("/v1/streams", None), 401);
    assert_eq!(get("/v1/streams", Some("s3cret")), 200);
    assert_eq!(get("/v1/streams", Some(&digest)), 401);
}

#[test]
fn a_bad_auth_or_tls_configuration_stops_the_node_with_a_clear_error() {
    for (config, expected) in [
        (
            "[[auth.tokens]]\nname = \"x\"\nsha256 = \"zz\"\nscopes = [\"read\"]\n",
            "64 hex digits",
        ),
        (
            "[[auth.tokens]]\nname = \"x\"\ntoken = \"t\"\nscopes = [\"root\"]\n",
            "unknown variant `root`",
        ),
        (
            "[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
            "/nonexistent/cert.pem",
        ),
        (
            "[tls]\ncert = \"/nonexistent/cert.pem\"\n",
            "both `cert` and `key`",
        ),
    ] {
        let (_tmp, dir) = data_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.with_extension("toml");
        std::fs::write(&path, config).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .args([
                "serve",
                "--http",
                "127.0.0.1:0",
                "--pg",
                "off",
                "--flight",
                "off",
                "--data-dir",
            ])
            .arg(&dir)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{config}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{config}: {stderr}");
    }
}

#[test]
fn tls_with_a_self_signed_certificate() {
    let (_tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, config) = self_signed_tls(&dir);
    let server = Server::start(Backend::Embedded, &dir, &config);
    assert!(server.base.starts_with("https://"), "{}", server.base);

    let trusted = reqwest::blocking::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&cert_path).unwrap()).unwrap(),
        )
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let resp = trusted
        .post(server.url("/v1/streams/s/events"))
        .body("{\"data\": {\"tls\": true}}\n")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // Untrusted clients and plain HTTP get no answer.
    assert!(http().get(server.url("/healthz")).send().is_err());
    let plain = server.url("/healthz").replacen("https://", "http://", 1);
    assert!(
        http()
            .get(plain)
            .send()
            .map_or(true, |r| !r.status().is_success())
    );
    // The CLI trusts the certificate given with --ca-cert.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["--server", &server.base, "--ca-cert"])
        .arg(&cert_path)
        .args([
            "sql",
            "--format",
            "json",
            "SELECT count(*) AS n FROM s WHERE offset >= 0",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let without = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["--server", &server.base, "streams"])
        .env_remove("STRATA_CA_CERT")
        .output()
        .unwrap();
    assert!(!without.status.success());
}

#[test]
fn the_sql_sandbox_reaches_no_files_and_changes_nothing() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(Backend::Embedded, &dir, "");
    append_ok(&server, "t", "{\"data\": {\"a\": 1}}");
    wait_stored(&server, "t");
    for (statement, what) in [
        // Files: URL tables, table functions, external tables, COPY.
        ("SELECT * FROM '/etc/passwd'", ""),
        ("SELECT * FROM 'file:///etc/hostname'", ""),
        ("SELECT * FROM read_csv('/etc/passwd')", ""),
        ("SELECT * FROM read_parquet('/tmp/x.parquet')", ""),
        (
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
            "read-only",
        ),
        (
            "CREATE UNBOUNDED EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
            "read-only",
        ),
        ("COPY t TO '/tmp/strata-sandbox.csv'", "read-only"),
        ("COPY (SELECT 1) TO '/tmp/strata-sandbox.csv'", "read-only"),
        // DDL and DML.
        ("CREATE TABLE x (a INT)", "read-only"),
        ("CREATE VIEW v AS SELECT * FROM t", "read-only"),
        ("CREATE SCHEMA s", "read-only"),
        ("CREATE FUNCTION f() RETURNS INT RETURN 1", "read-only"),
        ("DROP TABLE t", "read-only"),
        ("DROP VIEW t", "read-only"),
        ("INSERT INTO t VALUES (1)", "read-only"),
        ("DELETE FROM t", "read-only"),
        ("UPDATE t SET data = '1'", "read-only"),
        ("TRUNCATE TABLE t", "read-only"),
        ("ALTER TABLE t RENAME TO u", "read-only"),
        (
            "SET datafusion.catalog.information_schema = false",
            "read-only",
        ),
        ("PREPARE p AS SELECT 1", "read-only"),
        ("EXPLAIN ANALYZE COPY t TO '/tmp/x'", "read-only"),
    ] {
        let (status, err) = sql(&server, statement);
        assert!(
            status == 400 || status == 403,
            "{statement}: {status} {err}"
        );
        let message = err["error"].as_str().unwrap();
        assert!(message.contains(what), "{statement}: {message}");
    }
    assert!(!std::path::Path::new("/tmp/strata-sandbox.csv").exists());
    // The stream is untouched and the server answers.
    assert_eq!(
        rows(&server, "SELECT count(*) AS n FROM t"),
        vec![json!({"n": 1})]
    );
}
