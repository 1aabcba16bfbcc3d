//! Scenario 9, second half: expected-version appends per second, one event per request from 32
//! concurrent clients — on one hot key (every client competing), on 100,000 keys (each client
//! on its own share) — against plain appends of the same shape in the same run.

use crate::server::Strata;
use crate::{Result, Row, progress, row};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Concurrent clients.
const CLIENTS: usize = 32;
/// Keys of the spread-out run.
const KEYS: usize = 100_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    Plain,
    HotKey,
    ManyKeys,
}

/// Runs the three loads for `seconds` each; their rows.
pub async fn rows(strata: &Strata, seconds: f64) -> Result<Vec<Row>> {
    crate::subscribe::create(strata, "versioned").await?;
    let mut measured = Vec::new();
    for (load, what) in [
        (Load::Plain, "plain appends"),
        (Load::ManyKeys, "conditional appends on 100k keys"),
        (Load::HotKey, "conditional appends on one hot key"),
    ] {
        progress(&format!(
            "scenario 9: {what} from {CLIENTS} clients for {seconds} s"
        ));
        measured.push(run(strata, load, Duration::from_secs_f64(seconds)).await?);
    }
    let [(plain, _), (many, many_conflicts), (hot, hot_conflicts)] = measured[..] else {
        return Err("three loads".into());
    };
    let ratio = many / plain.max(1e-9);
    Ok(vec![
        row(
            format!("plain appends, 1 event per request, {CLIENTS} clients: requests/s"),
            format!("{plain:.0}/s"),
            "",
            None,
            "",
            None,
        ),
        row(
            format!(
                "expected-version appends on 100k keys (each client its own keys; {many_conflicts} conflicts): accepted/s, against plain"
            ),
            format!("{many:.0}/s"),
            format!("{plain:.0}/s"),
            Some(ratio),
            "≥ 0.5× plain",
            Some(ratio >= 0.5),
        ),
        row(
            format!(
                "expected-version appends on one hot key ({CLIENTS} clients competing; {hot_conflicts} answered 409): accepted/s"
            ),
            format!("{hot:.0}/s"),
            format!("{plain:.0}/s"),
            Some(hot / plain.max(1e-9)),
            "",
            None,
        ),
    ])
}

/// Accepted appends per second, and how many were refused with 409.
async fn run(strata: &Strata, load: Load, length: Duration) -> Result<(f64, u64)> {
    let accepted = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let url = strata.url("/v1/streams/versioned/events");
    let started = Instant::now();
    let deadline = started + length;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (http, url) = (strata.http().clone(), url.clone());
            let (accepted, conflicts) = (accepted.clone(), conflicts.clone());
            tokio::spawn(async move {
                let mut known = std::collections::HashMap::<String, u64>::new();
                let mut i = 0usize;
                while Instant::now() < deadline {
                    i += 1;
                    // Each load its own keys; in the spread-out ones, each client cycles through
                    // its own share.
                    let key = match load {
                        Load::HotKey => "hot".to_owned(),
                        Load::Plain => format!("plain-{}", (c + CLIENTS * i) % KEYS),
                        Load::ManyKeys => format!("acct-{}", (c + CLIENTS * i) % KEYS),
                    };
                    let version = known.get(&key).copied().unwrap_or(0);
                    let event = match load {
                        Load::Plain => json!({"key": key, "data": {"n": i}}),
                        _ => json!({"key": key, "data": {"n": i}, "expected_version": version}),
                    };
                    let resp = http
                        .post(&url)
                        .body(event.to_string())
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    let status = resp.status().as_u16();
                    let body: Value = resp.json().await.map_err(|e| e.to_string())?;
                    match status {
                        200 => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            if let Some(v) = body["versions"][&key].as_u64() {
                                known.insert(key, v);
                            }
                        }
                        409 => {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                            if let Some(v) = body["keys"][0]["actual"].as_u64() {
                                known.insert(key, v);
                            }
                        }
                        s => return Err(format!("append answered {s}: {body}")),
                    }
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((
        accepted.load(Ordering::Relaxed) as f64 / secs,
        conflicts.load(Ordering::Relaxed),
    ))
}
