//! Columnar appends: an Arrow IPC stream body, and `strata produce --format arrow|parquet`.

use crate::common::*;
use arrow::array::TimestampMillisecondArray;
use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::ipc::writer::{FileWriter, StreamWriter};
use serde_json::{Value, json};
use std::sync::Arc;

const ARROW: &str = "application/vnd.apache.arrow.stream";

/// Rows `from..to` as columns; `amount` (a declared double) as its own column.
fn orders(from: usize, to: usize) -> RecordBatch {
    let range = from..to;
    let text = |f: &dyn Fn(usize) -> String| -> ArrayRef {
        Arc::new(StringArray::from(range.clone().map(f).collect::<Vec<_>>()))
    };
    RecordBatch::try_from_iter(vec![
        ("key", text(&|i| format!("c{}", i % 7))),
        ("id", text(&|i| format!("o{i}"))),
        ("type", text(&|_| "order".to_owned())),
        (
            "time",
            Arc::new(
                TimestampMillisecondArray::from(
                    range
                        .clone()
                        .map(|i| 1_714_521_600_000 + i as i64 * 1000)
                        .collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ) as ArrayRef,
        ),
        (
            "data",
            text(&|i| format!("{{\"country\":\"{}\"}}", ["NL", "DE"][i % 2])),
        ),
        (
            "amount",
            Arc::new(Float64Array::from(
                range.clone().map(|i| i as f64 * 0.5).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
    ])
    .unwrap()
}

/// The same events as NDJSON.
fn orders_ndjson(from: usize, to: usize) -> String {
    (from..to)
        .map(|i| {
            let country = ["NL", "DE"][i % 2];
            json!({
                "key": format!("c{}", i % 7), "id": format!("o{i}"), "type": "order",
                "time": 1_714_521_600_000i64 + i as i64 * 1000,
                "data": {"country": country, "amount": i as f64 * 0.5},
            })
            .to_string()
                + "\n"
        })
        .collect()
}

fn ipc(batch: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, &batch.schema()).unwrap();
    writer.write(batch).unwrap();
    writer.finish().unwrap();
    drop(writer);
    out
}

fn post_arrow(server: &Server, stream: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = http()
        .post(server.url(&format!("/v1/streams/{stream}/events")))
        .header("content-type", ARROW)
        .body(body)
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().unwrap_or(Value::Null);
    if status == 200 {
        server.note_append(stream, &body);
    }
    (status, body)
}

fn declare(server: &Server, stream: &str) {
    let resp = http()
        .put(server.url(&format!("/v1/streams/{stream}")))
        .json(&json!({"partitions": 2, "fields": [{"name": "amount", "type": "double"}]}))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201, "{}", resp.text().unwrap());
}

/// Replayed events without their placement (offset, partition), sorted by id.
fn events(server: &Server, stream: &str) -> Vec<Value> {
    let (status, mut all) = replay(server, stream, "");
    assert_eq!(status, 200, "{all:?}");
    for e in &mut all {
        let o = e.as_object_mut().unwrap();
        o.remove("offset");
        o.remove("partition");
    }
    all.sort_by_key(|e| e["id"].as_str().unwrap_or_default().to_owned());
    all
}

fn count(server: &Server, stream: &str) -> Value {
    wait_stored(server, stream);
    rows(
        server,
        &format!("SELECT count(*) AS n, sum(amount) AS total FROM {stream}"),
    )[0]
    .clone()
}

#[test]
fn arrow_appends_store_what_ndjson_does_and_refuse_bad_input_whole() {
    for backend in backends() {
        let (tmp, dir) = data_dir();
        let server = Server::start(backend, &dir, "[limits]\nmax_batch_events = 500\n");
        declare(&server, "columns");
        declare(&server, "lines");
        let (status, outcome) = post_arrow(&server, "columns", ipc(&orders(0, 300)));
        assert_eq!(status, 200, "{outcome}");
        assert_eq!(outcome["appended"], 300);
        append_ok(&server, "lines", &orders_ndjson(0, 300));
        wait_stored(&server, "lines");
        assert_eq!(
            count(&server, "columns"),
            json!({"n": 300, "total": 22425.0})
        );
        assert_eq!(events(&server, "columns"), events(&server, "lines"));

        // The same rows again are duplicates, as with NDJSON.
        let (status, again) = post_arrow(&server, "columns", ipc(&orders(0, 300)));
        assert_eq!(
            (status, &again["appended"], &again["duplicates"]),
            (200, &json!(0), &json!(300))
        );

        // Bad input: a clear 4xx, nothing written.
        let keyed = RecordBatch::try_from_iter(vec![
            ("key", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            (
                "data",
                Arc::new(StringArray::from(vec!["{}", "{}"])) as ArrayRef,
            ),
        ])
        .unwrap();
        let no_data = orders(900, 902).project(&[0, 1, 2, 3]).unwrap();
        let amount_text = RecordBatch::try_from_iter(vec![
            ("data", Arc::new(StringArray::from(vec!["{}"])) as ArrayRef),
            (
                "amount",
                Arc::new(StringArray::from(vec!["1.5"])) as ArrayRef,
            ),
        ])
        .unwrap();
        let bad_json = RecordBatch::try_from_iter(vec![(
            "data",
            Arc::new(StringArray::from(vec!["{}", "{\"a\": 1", "{}"])) as ArrayRef,
        )])
        .unwrap();
        let mut corrupt = ipc(&orders(900, 910));
        corrupt.truncate(corrupt.len() / 2);
        let cases: Vec<(Vec<u8>, u16, &str)> = vec![
            (
                ipc(&keyed),
                400,
                "column `key` must be text (Utf8), got Int64",
            ),
            (ipc(&no_data), 400, "missing column `data`"),
            (
                ipc(&amount_text),
                400,
                "column `amount` is declared as double, but its Arrow type is Utf8",
            ),
            (ipc(&bad_json), 400, "row 2: `data` is not JSON"),
            (corrupt, 400, "the Arrow IPC stream: cannot be read"),
            (
                b"{\"data\": 1}".to_vec(),
                400,
                "the Arrow IPC stream: cannot be read",
            ),
            (
                ipc(&orders(1000, 1501)),
                413,
                "501 events, over the limit of 500",
            ),
        ];
        for (body, want, message) in cases {
            let (status, err) = post_arrow(&server, "columns", body);
            assert_eq!(status, want, "{err}");
            assert!(
                err["error"].as_str().unwrap().contains(message),
                "{message}: {err}"
            );
        }
        assert_eq!(
            count(&server, "columns"),
            json!({"n": 300, "total": 22425.0})
        );

        // `strata produce` loads Parquet and Arrow files through the same append.
        let parquet = tmp.path().join("orders.parquet");
        let mut writer = datafusion::parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&parquet).unwrap(),
            orders(300, 700).schema(),
            None,
        )
        .unwrap();
        writer.write(&orders(300, 700)).unwrap();
        writer.close().unwrap();
        let arrow_file = tmp.path().join("orders.arrow");
        let mut writer = FileWriter::try_new(
            std::fs::File::create(&arrow_file).unwrap(),
            &orders(700, 750).schema(),
        )
        .unwrap();
        writer.write(&orders(700, 750)).unwrap();
        writer.finish().unwrap();
        for (file, format, n) in [(&parquet, "parquet", 400), (&arrow_file, "arrow", 50)] {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
                .args(["--server", &server.base, "produce", "columns"])
                .arg(file)
                .args(["--format", format, "--batch", "150"])
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                stdout.starts_with(&format!(
                    "appended {n} events to columns (0 duplicates skipped)"
                )),
                "{stdout}"
            );
        }
        append_ok(&server, "lines", &orders_ndjson(300, 750));
        wait_stored(&server, "lines");
        eventually("the CLI's 450 rows stored", || {
            (rows(&server, "SELECT count(*) AS n FROM columns")[0]["n"] == 750).then_some(())
        });
        assert_eq!(count(&server, "columns"), count(&server, "lines"));
        assert_eq!(events(&server, "columns"), events(&server, "lines"));
        // A bad row of a file is named by its row in the file; the requests before it stay.
        let data: Vec<&str> = (0..300)
            .map(|i| if i == 199 { "{oops" } else { "{}" })
            .collect();
        let bad_file = tmp.path().join("bad.arrow");
        let bad = RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(StringArray::from(
                    (0..300).map(|i| format!("b{i}")).collect::<Vec<_>>(),
                )) as ArrayRef,
            ),
            ("data", Arc::new(StringArray::from(data)) as ArrayRef),
        ])
        .unwrap();
        let mut writer =
            FileWriter::try_new(std::fs::File::create(&bad_file).unwrap(), &bad.schema()).unwrap();
        writer.write(&bad).unwrap();
        writer.finish().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["--server", &server.base, "produce", "columns"])
            .arg(&bad_file)
            .args(["--format", "arrow", "--batch", "150"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("row 200: `data` is not JSON"), "{stderr}");
        // The CLI's appends are not noted for `wait_stored`: poll until the store has them.
        eventually("the first request's 150 rows stored", || {
            (rows(&server, "SELECT count(*) AS n FROM columns")[0]["n"] == 900).then_some(())
        });
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["--server", &server.base, "produce", "columns"])
            .arg(tmp.path().join("missing.parquet"))
            .args(["--format", "parquet"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open"));
    }
}
