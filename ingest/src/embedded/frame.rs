//! Frames: the unit written to a segment file. One append is one frame.
//!
//! ```text
//! payload_len: u32 | crc32c: u32 | base_offset: u64 | count: u32 | payload (count encoded events)
//! ```
//! All integers little-endian; the checksum covers `base_offset`, `count` and the payload.

use strata_proto::Event;
use strata_proto::codec::{decode_event, encode_event};

/// Bytes before a frame's payload.
pub const HEADER_LEN: usize = 20;
/// A payload length above this is treated as corruption rather than allocated.
pub const MAX_PAYLOAD: usize = 1 << 30;

/// Appends one frame holding `events` at `base_offset` to `out`.
pub fn encode_frame(base_offset: u64, events: &[Event], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    for e in events {
        encode_event(e, out);
    }
    let payload_len = (out.len() - start - HEADER_LEN) as u32;
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 8..start + 16].copy_from_slice(&base_offset.to_le_bytes());
    out[start + 16..start + 20].copy_from_slice(&(events.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The fixed part of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Bytes of payload after the header.
    pub payload_len: usize,
    /// Checksum of everything after the checksum field.
    pub crc: u32,
    /// Offset of the frame's first event.
    pub base_offset: u64,
    /// Number of events.
    pub count: u32,
}

impl FrameHeader {
    /// Parses a header; `None` when the length is implausible.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Option<Self> {
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let payload_len = u32_at(0) as usize;
        if payload_len > MAX_PAYLOAD {
            return None;
        }
        let mut base = [0u8; 8];
        base.copy_from_slice(&bytes[8..16]);
        Some(Self {
            payload_len,
            crc: u32_at(4),
            base_offset: u64::from_le_bytes(base),
            count: u32_at(16),
        })
    }

    /// Total frame length, header included.
    pub fn frame_len(&self) -> u64 {
        (HEADER_LEN + self.payload_len) as u64
    }

    /// Offset after the frame's last event.
    pub fn end_offset(&self) -> u64 {
        self.base_offset + u64::from(self.count)
    }

    /// Checks the checksum of `header` + `payload`.
    pub fn verify(&self, header: &[u8; HEADER_LEN], payload: &[u8]) -> bool {
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header[8..]), payload);
        crc == self.crc
    }
}

/// Decodes the events of a verified payload; fails when it does not hold exactly `count` events.
pub fn decode_payload(header: &FrameHeader, mut payload: &[u8]) -> Result<Vec<Event>, String> {
    let mut events = Vec::with_capacity(header.count.min(1 << 16) as usize);
    for _ in 0..header.count {
        events.push(decode_event(&mut payload).map_err(|e| e.to_string())?);
    }
    if !payload.is_empty() {
        return Err(format!(
            "{} stray bytes after the last event",
            payload.len()
        ));
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_roundtrip_and_checksum() {
        let events = vec![
            Event {
                time_ms: 1,
                key: Some("a".into()),
                id: None,
                event_type: None,
                data: "1".into(),
                condition: None,
            },
            Event {
                time_ms: 2,
                key: None,
                id: Some("x".into()),
                event_type: Some("t".into()),
                data: "{}".into(),
                condition: None,
            },
        ];
        let mut buf = Vec::new();
        encode_frame(10, &events, &mut buf);
        let header_bytes: [u8; HEADER_LEN] = buf[..HEADER_LEN].try_into().unwrap();
        let h = FrameHeader::parse(&header_bytes).unwrap();
        assert_eq!(
            (h.base_offset, h.count, h.frame_len()),
            (10, 2, buf.len() as u64)
        );
        assert!(h.verify(&header_bytes, &buf[HEADER_LEN..]));
        assert_eq!(decode_payload(&h, &buf[HEADER_LEN..]).unwrap(), events);
        for i in 4..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            let hb: [u8; HEADER_LEN] = bad[..HEADER_LEN].try_into().unwrap();
            let ok = FrameHeader::parse(&hb).is_some_and(|h| h.verify(&hb, &bad[HEADER_LEN..]));
            assert!(!ok, "flipping byte {i} went unnoticed");
        }
    }
}
