//! The CLI clients against a running server.

use crate::common::*;
use std::io::Write;
use std::process::{Command, Stdio};

fn strata(server: &Server, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--server")
        .arg(&server.base)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn produce_sql_replay_and_streams() {
    for backend in backends() {
        let (tmp, dir) = data_dir();
        let server = Server::start(backend, &dir, "");
        let (ok, out, err) = strata(
            &server,
            &["streams", "create", "cli", "--partitions", "1"],
            None,
        );
        assert!(ok, "{err}");
        assert!(out.contains("\"created\":true"), "{out}");

        let input: String = (0..25)
            .map(|i| format!("{{\"key\":\"k{}\",\"data\":{{\"n\":{i}}}}}\n", i % 2))
            .collect();
        let file = tmp.path().join("events.ndjson");
        std::fs::write(&file, &input).unwrap();
        let (ok, out, err) = strata(
            &server,
            &["produce", "cli", file.to_str().unwrap(), "--batch", "10"],
            None,
        );
        assert!(ok, "{err}");
        let mut lines = out.lines();
        assert_eq!(
            lines.next(),
            Some("appended 25 events to cli (0 duplicates skipped)")
        );
        let token = lines.next().unwrap().strip_prefix("token: ").unwrap();
        // A query after the token sees every event at once.
        let (ok, out, err) = strata(
            &server,
            &[
                "sql",
                "SELECT count(*) AS n FROM cli",
                "--after",
                token,
                "--format",
                "csv",
            ],
            None,
        );
        assert!(ok, "{err}");
        assert_eq!(out, "n\n25\n");
        let (ok, out, _) = strata(
            &server,
            &["produce", "cli"],
            Some("{\"data\":1}\n\n{\"data\":2}\n"),
        );
        assert!(ok);
        assert!(out.contains("appended 2 events"), "{out}");
        // A bad line is reported with its line number in the whole input.
        let bad = "{\"data\":1}\n{\"data\":2}\n{\"data\":3}\n{\"nodata\":4}\n";
        let (ok, _, err) = strata(&server, &["produce", "cli", "-", "--batch", "2"], Some(bad));
        assert!(!ok);
        assert!(err.contains("line 4: unknown field `nodata`"), "{err}");
        // (The CLI's appends are not seen by the harness, so wait on what SQL sees.)
        eventually("29 events stored", || {
            (rows(&server, "SELECT count(*) AS n FROM cli")[0]["n"] == 29).then_some(())
        });

        let (ok, out, err) = strata(
            &server,
            &[
                "sql",
                "SELECT key, count(*) AS n FROM cli WHERE key IS NOT NULL GROUP BY key ORDER BY key",
            ],
            None,
        );
        assert!(ok, "{err}");
        assert!(
            out.contains("| k0  | 13 |")
                && out.contains("| k1  | 12 |")
                && out.contains("(2 rows)"),
            "{out}"
        );
        let (ok, out, _) = strata(
            &server,
            &[
                "sql",
                "SELECT key, count(*) AS n FROM cli WHERE key IS NOT NULL GROUP BY key ORDER BY key",
                "--format",
                "csv",
            ],
            None,
        );
        assert!(ok);
        assert_eq!(out, "key,n\nk0,13\nk1,12\n");
        let (ok, out, _) = strata(
            &server,
            &["sql", "SELECT count(*) AS n FROM cli", "--format", "json"],
            None,
        );
        assert!(ok);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&out).unwrap(),
            serde_json::json!([{"n": 29}])
        );
        let (ok, _, err) = strata(&server, &["sql", "DROP TABLE cli"], None);
        assert!(!ok && err.contains("read-only"), "{err}");

        let (ok, out, err) = strata(
            &server,
            &[
                "replay",
                "cli",
                "--partition",
                "0",
                "--from",
                "1",
                "--limit",
                "3",
            ],
            None,
        );
        assert!(ok, "{err}");
        let offsets: Vec<u64> = out
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["offset"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(offsets, vec![1, 2, 3]);

        // Which node holds which partition: this one, all of them, none behind.
        // (On Kafka the log end shows once the client has fetched it.)
        eventually("every partition held with lag 0", || {
            let (ok, out, err) = strata(&server, &["cluster"], None);
            assert!(ok, "{err}");
            let held: Vec<&str> = out.lines().filter(|l| l.starts_with("cli ")).collect();
            let tails: Vec<Vec<&str>> = held
                .iter()
                .map(|l| l.split_whitespace().skip(3).collect())
                .collect();
            (tails == [["29", "29", "0"]]).then_some(())
        });

        let (ok, out, _) = strata(&server, &["streams"], None);
        assert!(ok);
        assert!(
            out.lines()
                .any(|l| l.starts_with("cli") && l.contains(" 29 ")),
            "{out}"
        );
    }
}
