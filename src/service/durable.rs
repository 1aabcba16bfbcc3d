//! Named durable subscriptions (KurrentDB's persistent subscriptions, with one consumer): a
//! subscription whose acknowledged cursor lives in the log's catalog, so it survives restarts
//! and any node serves it. Delivery is at least once: a consumer gets everything after the
//! acknowledged cursor, and acknowledges what it has processed.
//!
//! One consumer at a time: a consumer holds the subscription for [`LEASE`] and renews the hold
//! while it is connected; a second consumer gets `409` unless it takes over, which ends the
//! first one's delivery (on whichever node it is served).

use super::subscribe::{Cursor, Deliveries, Delivery, FollowRequest, Start, SubscribeService};
use super::{Error, Parts, Result, stream_name, streams::stored_offsets};
use crate::auth::{Operation, Principal};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use strata_proto::{StreamName, SubscriptionConsumer, SubscriptionState};
use tokio::sync::mpsc;

/// How long a consumer holds a subscription without renewing (it renews every third of it).
pub const LEASE: Duration = Duration::from_secs(15);

/// What `PUT /v1/subscriptions/{name}` asks for.
#[derive(Clone, Debug, Default)]
pub struct CreateSubscription {
    /// The stream to follow.
    pub stream: String,
    /// Only events of this type.
    pub event_type: Option<String>,
    /// Only events for which this SQL expression is true.
    pub filter: Option<String>,
    /// Where delivery starts: `start` (default), `end`, or a cursor.
    pub from: Option<String>,
}

/// A durable subscription as listed.
#[derive(Clone, Debug, Serialize)]
pub struct SubscriptionView {
    /// Its name.
    pub name: String,
    /// The stream it follows.
    pub stream: String,
    /// Its type filter.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Its `where` filter.
    #[serde(rename = "where")]
    pub filter: Option<String>,
    /// The acknowledged cursor.
    pub cursor: String,
    /// Stored events (offsets) after the acknowledged cursor, over every partition; `None`
    /// while a partition's holder is unknown.
    pub lag: Option<u64>,
    /// Its consumer now: the node serving it and since when (epoch ms).
    pub consumer: Option<ConsumerView>,
    /// When it was created (epoch ms).
    pub created_ms: i64,
}

/// Who consumes a subscription.
#[derive(Clone, Debug, Serialize)]
pub struct ConsumerView {
    /// The node serving the consumer.
    pub node: String,
    /// Since when (epoch ms).
    pub since_ms: i64,
}

/// Creates, lists, serves and acknowledges durable subscriptions.
#[derive(Clone)]
pub struct DurableService {
    parts: Arc<Parts>,
    follow: SubscribeService,
    /// This node's changes of a subscription's state, one at a time (each reads, changes and
    /// writes the whole state, so an acknowledgement and a renewal must not interleave).
    writes: Arc<tokio::sync::Mutex<()>>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Subscription names follow the stream-name rule (they appear in URLs and in keys).
fn check_name(name: &str) -> Result<()> {
    StreamName::new(name).map(drop).map_err(|_| {
        Error::BadRequest(format!(
            "subscription names match [a-z][a-z0-9_]{{0,62}}, got {:?}",
            name.chars().take(80).collect::<String>()
        ))
    })
}

impl DurableService {
    pub(super) fn new(parts: Arc<Parts>, follow: SubscribeService) -> Self {
        Self {
            parts,
            follow,
            writes: Arc::default(),
        }
    }

    fn get(&self, name: &str) -> Result<SubscriptionState> {
        check_name(name)?;
        self.parts
            .log
            .subscriptions()
            .borrow()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no subscription named {name}")))
    }

    /// Creates subscription `name` (admin on its stream). The same definition again is no change
    /// (`false`); another definition under the name is a conflict.
    ///
    /// # Errors
    /// Forbidden, a bad name, stream, filter or `from`, a taken name, an unwritable catalog.
    pub async fn create(
        &self,
        who: &Principal,
        name: &str,
        r: CreateSubscription,
    ) -> Result<(SubscriptionView, bool)> {
        check_name(name)?;
        who.authorize(Operation::Admin(&r.stream))?;
        let start = match r.from.as_deref() {
            None | Some("start") => Start::Beginning,
            Some("end") => Start::End,
            Some(cursor) => Start::Cursor(cursor.to_owned()),
        };
        let request = FollowRequest {
            stream: r.stream.clone(),
            partition: None,
            key: None,
            start,
            event_type: r.event_type.clone(),
            filter: r.filter.clone(),
            heartbeat: Duration::from_secs(10),
        };
        let cursor = self.follow.starting_cursor(who, &request).await?;
        let stream = stream_name(&r.stream)?;
        if let Ok(existing) = self.get(name) {
            let same = existing.stream == stream
                && existing.event_type == r.event_type
                && existing.filter == r.filter;
            return match same {
                true => Ok((self.view(name, &existing), false)),
                false => Err(Error::Conflict(format!(
                    "subscription {name} exists with another stream or filter; delete it first"
                ))),
            };
        }
        let state = SubscriptionState {
            stream,
            event_type: r.event_type,
            filter: r.filter,
            cursor: cursor.to_string(),
            created_ms: now_ms(),
            consumer: None,
            hold_unchanged: false,
        };
        self.parts.log.put_subscription(name, Some(&state)).await?;
        Ok((self.view(name, &state), true))
    }

    /// Deletes subscription `name` (admin on its stream).
    ///
    /// # Errors
    /// Forbidden, unknown, an unwritable catalog.
    pub async fn delete(&self, who: &Principal, name: &str) -> Result<()> {
        let state = self.get(name)?;
        who.authorize(Operation::Admin(state.stream.as_str()))?;
        Ok(self.parts.log.put_subscription(name, None).await?)
    }

    /// The subscriptions of streams `who` may read, with their lag.
    pub fn list(&self, who: &Principal) -> Vec<SubscriptionView> {
        let all = self.parts.log.subscriptions().borrow().clone();
        all.iter()
            .filter(|(_, s)| who.authorize(Operation::Read(s.stream.as_str())).is_ok())
            .map(|(name, s)| self.view(name, s))
            .collect()
    }

    fn view(&self, name: &str, s: &SubscriptionState) -> SubscriptionView {
        let now = now_ms();
        SubscriptionView {
            name: name.to_owned(),
            stream: s.stream.to_string(),
            event_type: s.event_type.clone(),
            filter: s.filter.clone(),
            cursor: s.cursor.clone(),
            lag: lag(&self.parts, s),
            consumer: s
                .consumer
                .as_ref()
                .filter(|c| c.until_ms > now)
                .map(|c| ConsumerView {
                    node: c.node.clone(),
                    since_ms: c.since_ms,
                }),
            created_ms: s.created_ms,
        }
    }

    /// Moves subscription `name`'s acknowledged cursor to `cursor` (partitions only ever move
    /// forward); returns the acknowledged cursor.
    ///
    /// # Errors
    /// Forbidden, unknown, a cursor that does not parse or is of another stream.
    pub async fn ack(&self, who: &Principal, name: &str, cursor: &str) -> Result<String> {
        let state = self.get(name)?;
        who.authorize(Operation::Read(state.stream.as_str()))?;
        let given: Cursor = cursor.parse()?;
        if given.stream != state.stream {
            return Err(Error::BadRequest(format!(
                "the cursor is a position in stream {}, but subscription {name} follows {}",
                given.stream, state.stream
            )));
        }
        let _one = self.writes.lock().await;
        let mut latest = self.get(name)?;
        let mut acked: Cursor = latest.cursor.parse()?;
        acked.merge(&given);
        latest.cursor = acked.to_string();
        // This node's view of the hold may be stale: the record must not change it.
        latest.hold_unchanged = true;
        self.parts.log.put_subscription(name, Some(&latest)).await?;
        if let Some(lag) = lag(&self.parts, &latest) {
            metrics::gauge!("strata_subscription_lag", "subscription" => name.to_owned())
                .set(lag as f64);
        }
        Ok(latest.cursor)
    }

    /// Delivers subscription `name` from its acknowledged cursor to a new consumer, which holds
    /// it while connected. Another live consumer makes this a conflict unless `takeover`.
    ///
    /// # Errors
    /// Forbidden, unknown, consumed by another consumer, an unwritable catalog, and the errors of
    /// [`SubscribeService::follow`].
    pub async fn consume(
        &self,
        who: &Principal,
        name: &str,
        takeover: bool,
        heartbeat: Duration,
    ) -> Result<Deliveries> {
        let state = self.get(name)?;
        who.authorize(Operation::Read(state.stream.as_str()))?;
        let now = now_ms();
        if let Some(c) = state.consumer.as_ref().filter(|c| c.until_ms > now)
            && !takeover
        {
            return Err(Error::Conflict(format!(
                "subscription {name} has a consumer (on node {}, since {}); add takeover=true to take it over",
                c.node,
                strata_proto::format_time_ms(c.since_ms)
            )));
        }
        let consumer = SubscriptionConsumer {
            id: consumer_id(),
            node: self.parts.node.id.clone(),
            since_ms: now,
            until_ms: now + LEASE.as_millis() as i64,
        };
        let request = FollowRequest {
            stream: state.stream.to_string(),
            partition: None,
            key: None,
            start: Start::Cursor(state.cursor.clone()),
            event_type: state.event_type.clone(),
            filter: state.filter.clone(),
            heartbeat,
        };
        let inner = self.follow.follow(who, request).await?;
        {
            let _one = self.writes.lock().await;
            let mut state = self.get(name)?;
            state.consumer = Some(consumer.clone());
            self.parts.log.put_subscription(name, Some(&state)).await?;
        }
        let (tx, rx) = mpsc::channel(2);
        let held = Held {
            parts: self.parts.clone(),
            writes: self.writes.clone(),
            name: name.to_owned(),
            id: consumer.id,
        };
        tokio::spawn(held.run(inner, tx));
        Ok(rx)
    }
}

/// Offsets stored past a subscription's acknowledged cursor, over every partition.
fn lag(parts: &Parts, s: &SubscriptionState) -> Option<u64> {
    let info = parts.stream_info(&s.stream).ok()?;
    let acked: Cursor = s.cursor.parse().ok()?;
    let stored = stored_offsets(parts, &info).ok()?;
    (0..info.partitions).try_fold(0u64, |lag, p| {
        let end = stored.get(p as usize).copied().flatten()?;
        let at = acked.offsets.get(&p).copied().unwrap_or(0);
        Some(lag + end.saturating_sub(at))
    })
}

/// A random id for a consumer's connection.
fn consumer_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}-{:x}-{}",
        std::process::id(),
        nanos,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A consumer's hold on a subscription while its deliveries are forwarded.
struct Held {
    parts: Arc<Parts>,
    writes: Arc<tokio::sync::Mutex<()>>,
    name: String,
    id: String,
}

impl Held {
    /// Forwards `inner` to `tx`, renewing the hold every third of [`LEASE`]; ends when the
    /// client goes away (and then releases the hold) or another consumer took over.
    async fn run(self, mut inner: Deliveries, tx: mpsc::Sender<Result<Delivery>>) {
        let lag_gauge =
            metrics::gauge!("strata_subscription_lag", "subscription" => self.name.clone());
        let mut catalog = self.parts.log.subscriptions();
        let mut renew = tokio::time::interval(LEASE / 3);
        renew.tick().await;
        loop {
            tokio::select! {
                delivery = inner.recv() => match delivery {
                    Some(d) => {
                        if tx.send(d).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                _ = renew.tick() => {
                    if let Err(e) = self.renew().await {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    if let Some(lag) = self.current().and_then(|s| lag(&self.parts, &s)) {
                        lag_gauge.set(lag as f64);
                    }
                }
                changed = catalog.changed() => {
                    if changed.is_err() || !self.holds(&catalog.borrow_and_update()) {
                        let _ = tx
                            .send(Err(Error::Conflict(format!(
                                "another consumer took subscription {} over",
                                self.name
                            ))))
                            .await;
                        return;
                    }
                }
                _ = tx.closed() => break,
            }
        }
        self.release().await;
    }

    /// The subscription's state as this node's catalog has it now.
    fn current(&self) -> Option<SubscriptionState> {
        self.parts
            .log
            .subscriptions()
            .borrow()
            .get(&self.name)
            .cloned()
    }

    fn holds(&self, all: &strata_proto::SubscriptionCatalog) -> bool {
        all.get(&self.name)
            .and_then(|s| s.consumer.as_ref())
            .is_some_and(|c| c.id == self.id)
    }

    /// Extends the hold, unless another consumer has it.
    async fn renew(&self) -> Result<()> {
        let _one = self.writes.lock().await;
        let current = self.current();
        let Some(mut state) = current else {
            return Err(Error::NotFound(format!(
                "subscription {} was deleted",
                self.name
            )));
        };
        match state.consumer.as_mut() {
            Some(c) if c.id == self.id => {
                c.until_ms = now_ms() + LEASE.as_millis() as i64;
            }
            _ => {
                return Err(Error::Conflict(format!(
                    "another consumer took subscription {} over",
                    self.name
                )));
            }
        }
        Ok(self
            .parts
            .log
            .put_subscription(&self.name, Some(&state))
            .await?)
    }

    /// Gives the hold up, if it is still this consumer's.
    async fn release(&self) {
        let _one = self.writes.lock().await;
        let current = self.current();
        if let Some(mut state) = current
            && state.consumer.as_ref().is_some_and(|c| c.id == self.id)
        {
            state.consumer = None;
            if let Err(e) = self
                .parts
                .log
                .put_subscription(&self.name, Some(&state))
                .await
            {
                tracing::warn!(subscription = %self.name, error = %e, "could not release a subscription");
            }
        }
    }
}
