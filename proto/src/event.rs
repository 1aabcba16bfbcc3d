//! The event envelope.

/// One validated event as the log and the store keep it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Event time, milliseconds since the Unix epoch (UTC).
    pub time_ms: i64,
    /// Partitioning key: events with the same key go to the same partition, in order.
    pub key: Option<String>,
    /// Producer-chosen id: an event whose id the partition already holds is not stored twice.
    pub id: Option<String>,
    /// Free-form event type.
    pub event_type: Option<String>,
    /// The payload as compact JSON text (one line, no raw newlines).
    pub data: String,
    /// The expected-version condition it travels with to the log (see [`crate::condition`]);
    /// `None` for a plain append. Never stored in a shard.
    pub condition: Option<crate::Condition>,
}

impl Event {
    /// Approximate size in bytes of the event's payload fields, for metrics and limits.
    pub fn approx_size(&self) -> usize {
        8 + self.key.as_ref().map_or(0, String::len)
            + self.id.as_ref().map_or(0, String::len)
            + self.event_type.as_ref().map_or(0, String::len)
            + self.data.len()
    }
}

/// An event at its place in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Partition of the stream.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
    /// The event.
    pub event: Event,
}

impl Record {
    /// Appends this record as one NDJSON line (with the trailing newline) to `out`:
    /// `{"partition","offset","time","key","id","type","data"}`, `data` verbatim as stored JSON.
    pub fn write_ndjson(&self, out: &mut Vec<u8>) {
        crate::line::Line {
            partition: self.partition,
            offset: self.offset,
            time_ms: self.event.time_ms,
            key: self.event.key.as_deref(),
            id: self.event.id.as_deref(),
            event_type: self.event.event_type.as_deref(),
            version: None,
            data: &self.event.data,
        }
        .write(out, false);
    }
}
