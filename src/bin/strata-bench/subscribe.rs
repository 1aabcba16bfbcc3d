//! Scenario 9, subscriptions: append → delivered to a following subscriber at half the ingest
//! rate, and fan-out of one stream's appends to 100 concurrent subscribers (events delivered per
//! second in total, and the server's CPU per delivered event).

use crate::server::{Strata, post};
use crate::views::percentile;
use crate::{Result, Section, ms, progress, rate, row};
use std::time::{Duration, Instant};

/// Subscribers of the fan-out part.
const FAN_OUT: usize = 100;
/// Events of a paced append.
const PER: u64 = 100;

/// Runs the scenario on `strata` (its own streams, so the other scenarios' data is untouched).
pub async fn scenario(strata: &Strata, quick: bool, ingest_rate: f64) -> Result<Section> {
    let target = (ingest_rate / 2.0).max(1000.0);
    let seconds = if quick { 2.0 } else { 10.0 };
    progress(&format!(
        "scenario 9: append → delivered at {target:.0} events/s for {seconds} s"
    ));
    let (latencies, acked) = delivered_latency(strata, target, seconds).await?;
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));

    let events: u64 = if quick { 2_000 } else { 50_000 };
    progress(&format!(
        "scenario 9: {events} appends fanned out to {FAN_OUT} subscribers"
    ));
    let (elapsed, cpu_s) = fan_out(strata, events).await?;
    let delivered = events as f64 * FAN_OUT as f64;
    let conditional = crate::conditional::rows(strata, seconds).await?;
    let mut rows = vec![
        row(
            format!(
                "append → delivered to a subscriber, p50 / p99, at {target:.0} events/s (half the ingest rate), {} events",
                latencies.len()
            ),
            format!("{} / {}", ms(p50.as_secs_f64()), ms(p99.as_secs_f64())),
            "",
            None,
            "p99 ≤ 20 ms",
            Some(p99 <= Duration::from_millis(20)),
        ),
        row(
            "of which the append's answer (durable in the log), p50 / p99 per request",
            format!(
                "{} / {}",
                ms(percentile(&acked, 0.5).as_secs_f64()),
                ms(percentile(&acked, 0.99).as_secs_f64())
            ),
            "",
            None,
            "",
            None,
        ),
        row(
            format!(
                "fan-out: {events} events appended (1,000 per request, 4 clients) while {FAN_OUT} subscribers follow, delivered events/s in total"
            ),
            rate(delivered, elapsed.as_secs_f64()),
            "",
            None,
            "",
            None,
        ),
        row(
            "fan-out: server CPU per delivered event (the appends' CPU included)",
            format!("{:.2} µs", cpu_s * 1e6 / delivered),
            "",
            None,
            "",
            None,
        ),
    ];
    rows.extend(conditional);
    Ok(Section {
        title: "9. Subscriptions (append → delivered, fan-out to 100 subscribers) and expected-version appends".into(),
        peer: "— (latency goal from the issue; fan-out figures are strata's alone; conditional appends against plain ones)".into(),
        rows,
        notes: vec![
            "Expected-version appends: one event per request from 32 concurrent HTTP clients for the same time as the latency run; a conditional append answers once the store node has decided it (its commit), a plain one once durable. On 100k keys each client cycles through its own keys with the versions it learned, so conflicts are rare; on the hot key all 32 compete and most get 409 with the actual version, then retry.".into(),
            "Latency is measured per event, from sending its append request to the subscriber reading its line (the append's fsync included). The subscribers run in the benchmark's process, on the same two cores as the server.".into(),
        ],
    })
}

pub(crate) async fn create(strata: &Strata, stream: &str) -> Result<()> {
    let resp = strata
        .http()
        .put(strata.url(&format!("/v1/streams/{stream}")))
        .json(&serde_json::json!({"partitions": 4}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("creating {stream}: {}", resp.status()));
    }
    Ok(())
}

/// Opens a subscription of `stream` from its start.
async fn subscribe(strata: &Strata, stream: &str) -> Result<reqwest::Response> {
    let resp = strata
        .http()
        .get(strata.url(&format!("/v1/streams/{stream}/events?follow=true")))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("subscribing: {}", resp.status()));
    }
    Ok(resp)
}

/// The next chunk of a subscription's answer appended to `pending`, then the complete lines in
/// it, each given to `each`; `None` when the answer ended or stalled for `wait`.
async fn next_lines(
    resp: &mut reqwest::Response,
    pending: &mut Vec<u8>,
    wait: Duration,
    mut each: impl FnMut(&[u8]),
) -> Option<()> {
    let chunk = tokio::time::timeout(wait, resp.chunk())
        .await
        .ok()?
        .ok()??;
    pending.extend_from_slice(&chunk);
    if let Some(end) = pending.iter().rposition(|&b| b == b'\n') {
        pending[..end].split(|&b| b == b'\n').for_each(&mut each);
        pending.drain(..=end);
    }
    Some(())
}

/// The event index in `"id":"o0000000042"` of an event line.
fn event_index(line: &[u8]) -> Option<u64> {
    const ID: &[u8] = b"\"id\":\"o";
    let at = line.windows(ID.len()).position(|w| w == ID)? + ID.len();
    std::str::from_utf8(line.get(at..at + 10)?)
        .ok()?
        .parse()
        .ok()
}

/// Paced appends of `PER` events at `target` events/s for `seconds` from 4 clients into a fresh
/// stream followed by one subscriber; each event's latency from its request to its delivery, and
/// each request's latency to its answer (both sorted).
async fn delivered_latency(
    strata: &Strata,
    target: f64,
    seconds: f64,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    const CLIENTS: u64 = 4;
    create(strata, "follow_latency").await?;
    let batches = ((target * seconds) / PER as f64).max(CLIENTS as f64) as u64 / CLIENTS * CLIENTS;
    let total = batches * PER;
    let mut resp = subscribe(strata, "follow_latency").await?;
    let reader = tokio::spawn(async move {
        let mut received: Vec<Option<Instant>> = vec![None; total as usize];
        let (mut count, mut pending) = (0u64, Vec::new());
        while count < total {
            let mut arrived = None;
            let read = next_lines(&mut resp, &mut pending, Duration::from_secs(30), |line| {
                let now = *arrived.get_or_insert_with(Instant::now);
                if let Some(slot) = event_index(line).and_then(|i| received.get_mut(i as usize)) {
                    *slot = Some(now);
                    count += 1;
                }
            });
            if read.await.is_none() {
                return Err(format!("the subscriber got {count} of {total} events"));
            }
        }
        Ok(received)
    });
    let every = Duration::from_secs_f64(PER as f64 * CLIENTS as f64 / target);
    let started = tokio::time::Instant::now();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (http, url) = (
            strata.http().clone(),
            strata.url("/v1/streams/follow_latency/events"),
        );
        clients.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            for k in 0..batches / CLIENTS {
                let at = started + every * k as u32 + every * c as u32 / CLIENTS as u32;
                tokio::time::sleep_until(at).await;
                let batch = k * CLIENTS + c;
                let mut body = String::new();
                for i in batch * PER..(batch + 1) * PER {
                    crate::data::write_event(i, total, &mut body);
                }
                let at = Instant::now();
                post(&http, &url, body, "application/x-ndjson").await?;
                sent.push((batch, at, at.elapsed()));
            }
            Ok::<_, String>(sent)
        }));
    }
    let mut sent_at = vec![Instant::now(); batches as usize];
    let mut acked = Vec::new();
    for c in clients {
        for (batch, at, answered) in c.await.map_err(|e| e.to_string())?? {
            sent_at[batch as usize] = at;
            acked.push(answered);
        }
    }
    acked.sort();
    let received = reader.await.map_err(|e| e.to_string())??;
    let timed: Vec<(Instant, Duration)> = received
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let sent = sent_at[i / PER as usize];
            Some((sent, r.as_ref()?.duration_since(sent)))
        })
        .collect();
    let latencies = report_tail(&timed, started.into_std());
    Ok((latencies, acked))
}

/// Prints where the slowest 1 % of `timed` (each event's send time and latency) fell: in how
/// many of the run's 100 ms windows, so that stalls (few windows) tell apart from a machine short
/// of CPU throughout (many), with p99.9 and the maximum. Returns the latencies, ascending.
fn report_tail(timed: &[(Instant, Duration)], started: Instant) -> Vec<Duration> {
    let mut by_latency: Vec<&(Instant, Duration)> = timed.iter().collect();
    by_latency.sort_by_key(|(_, l)| std::cmp::Reverse(*l));
    let slowest = &by_latency[..timed.len().div_ceil(100).min(timed.len())];
    let window = |at: &Instant| at.saturating_duration_since(started).as_millis() / 100;
    let windows: std::collections::BTreeSet<u128> =
        slowest.iter().map(|(at, _)| window(at)).collect();
    let all: std::collections::BTreeSet<u128> = timed.iter().map(|(at, _)| window(at)).collect();
    let nth = |q: f64| {
        by_latency
            .get(((1.0 - q) * timed.len() as f64) as usize)
            .map(|(_, l)| *l)
    };
    if std::env::var_os("STRATA_BENCH_WINDOWS").is_some() {
        let mut worst = std::collections::BTreeMap::<u128, Duration>::new();
        for (at, l) in slowest {
            let w = worst.entry(window(at)).or_default();
            *w = (*w).max(*l);
        }
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(started.elapsed());
        progress(&format!(
            "scenario 9: paced appends began at {epoch:?} after the epoch"
        ));
        for (w, l) in worst {
            progress(&format!(
                "scenario 9: slow window at {} ms: max {l:?}",
                w * 100
            ));
        }
    }
    progress(&format!(
        "scenario 9: the slowest 1 % ({} events) were sent in {} of {} 100-ms windows; p99.9 {:?}, max {:?}",
        slowest.len(),
        windows.len(),
        all.len(),
        nth(0.999).unwrap_or_default(),
        by_latency.first().map(|(_, l)| *l).unwrap_or_default(),
    ));
    by_latency.iter().rev().map(|(_, l)| *l).collect()
}

/// `events` appended as fast as 4 clients go while `FAN_OUT` subscribers follow the stream:
/// the time from the first append until every subscriber has every event, and the server's
/// CPU seconds meanwhile.
async fn fan_out(strata: &Strata, events: u64) -> Result<(Duration, f64)> {
    create(strata, "fan_out").await?;
    let mut readers = Vec::new();
    for _ in 0..FAN_OUT {
        let mut resp = subscribe(strata, "fan_out").await?;
        readers.push(tokio::spawn(async move {
            let (mut count, mut pending) = (0u64, Vec::new());
            while count < events {
                let read = next_lines(&mut resp, &mut pending, Duration::from_secs(120), |l| {
                    count += u64::from(l.starts_with(b"{\"partition\""));
                });
                if read.await.is_none() {
                    return Err(format!("a subscriber got {count} of {events} events"));
                }
            }
            Ok(Instant::now())
        }));
    }
    let bodies: Vec<(bytes::Bytes, u64)> = (0..events)
        .step_by(1000)
        .map(|from| {
            let mut body = String::new();
            for i in from..(from + 1000).min(events) {
                crate::data::write_event(i, events, &mut body);
            }
            (bytes::Bytes::from(body), (from + 1000).min(events) - from)
        })
        .collect();
    let cpu_before = strata.cpu_ticks().ok_or("no /proc/PID/stat")?;
    let started = Instant::now();
    strata
        .post_concurrently("fan_out", bodies, "application/x-ndjson", 4)
        .await?;
    let mut last = started;
    for r in readers {
        last = last.max(r.await.map_err(|e| e.to_string())??);
    }
    let cpu_after = strata.cpu_ticks().ok_or("no /proc/PID/stat")?;
    Ok((
        last.duration_since(started),
        cpu_after.saturating_sub(cpu_before) as f64 / 100.0,
    ))
}
