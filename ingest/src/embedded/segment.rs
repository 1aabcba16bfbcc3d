//! Segment files and their sparse indexes.
//!
//! A partition directory holds segments named `<base offset, 20 digits>.log`, each a sequence of
//! frames. Sealed segments have a `.idx` beside them (the sparse index plus the segment's length and
//! end offset), so that opening a partition only scans its last, active segment.

use super::frame::{FrameHeader, HEADER_LEN};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// A sparse index entry: the frame starting at `pos` begins with `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// First offset of the frame.
    pub offset: u64,
    /// Byte position of the frame in the segment.
    pub pos: u64,
}

/// What is known of one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentMeta {
    /// Offset of the segment's first event.
    pub base: u64,
    /// Offset after the segment's last event.
    pub end: u64,
    /// Bytes of valid frames.
    pub len: u64,
    /// Sparse index, ascending, first entry at position 0 once a frame exists.
    pub index: Vec<IndexEntry>,
}

/// Minimum bytes between two sparse index entries.
pub const INDEX_INTERVAL: u64 = 4096;

impl SegmentMeta {
    /// An empty segment starting at `base`.
    pub fn empty(base: u64) -> Self {
        Self {
            base,
            end: base,
            len: 0,
            index: Vec::new(),
        }
    }

    /// Records a frame of `frame_len` bytes holding `count` events written at the end.
    pub fn push_frame(&mut self, frame_len: u64, count: u64) {
        let due = self
            .index
            .last()
            .is_none_or(|last| self.len - last.pos >= INDEX_INTERVAL);
        if due {
            self.index.push(IndexEntry {
                offset: self.end,
                pos: self.len,
            });
        }
        self.len += frame_len;
        self.end += count;
    }

    /// The last indexed frame starting at or before `offset` (the segment start when none).
    pub fn seek(&self, offset: u64) -> IndexEntry {
        let i = self.index.partition_point(|e| e.offset <= offset);
        match i.checked_sub(1).and_then(|i| self.index.get(i)) {
            Some(entry) => *entry,
            None => IndexEntry {
                offset: self.base,
                pos: 0,
            },
        }
    }
}

/// The segment file of `base` in `dir`.
pub fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

/// The index file of `base` in `dir`.
pub fn index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.idx"))
}

/// Base offsets of the segments in `dir`, ascending.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(base) = name
            .strip_suffix(".log")
            .and_then(|n| n.parse::<u64>().ok())
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Why a scan stopped before the end of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanStop {
    /// Byte position of the first bad frame.
    pub pos: u64,
    /// What is wrong there.
    pub reason: String,
    /// Whether an intact frame follows the bad one. A torn write only ever damages the end of
    /// the file, so this means acknowledged events were damaged in place.
    pub intact_after: bool,
}

/// Reads every frame of a segment from the start, verifying lengths, offsets and checksums.
/// Returns what is valid and, when the file holds more than that, where and why the scan stopped.
pub fn scan_segment(path: &Path, base: u64) -> io::Result<(SegmentMeta, Option<ScanStop>)> {
    let (meta, stop) = scan_frames(path, base)?;
    let stop = match stop {
        Some(mut stop) => {
            stop.intact_after = intact_frame_after(path, stop.pos, meta.end)?;
            Some(stop)
        }
        None => None,
    };
    Ok((meta, stop))
}

fn scan_frames(path: &Path, base: u64) -> io::Result<(SegmentMeta, Option<ScanStop>)> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut meta = SegmentMeta::empty(base);
    let mut payload = Vec::new();
    let stop = |meta: &SegmentMeta, reason: String| {
        Some(ScanStop {
            pos: meta.len,
            reason,
            intact_after: false,
        })
    };
    loop {
        let remaining = file_len - meta.len;
        if remaining == 0 {
            return Ok((meta, None));
        }
        if remaining < HEADER_LEN as u64 {
            return Ok((
                meta.clone(),
                stop(&meta, format!("torn frame header ({remaining} bytes)")),
            ));
        }
        let mut header_bytes = [0u8; HEADER_LEN];
        reader.read_exact(&mut header_bytes)?;
        let Some(header) = FrameHeader::parse(&header_bytes) else {
            return Ok((meta.clone(), stop(&meta, "implausible frame length".into())));
        };
        if header.frame_len() > remaining {
            return Ok((
                meta.clone(),
                stop(
                    &meta,
                    format!(
                        "torn frame: {} bytes announced, {remaining} left",
                        header.frame_len()
                    ),
                ),
            ));
        }
        payload.resize(header.payload_len, 0);
        reader.read_exact(&mut payload)?;
        if !header.verify(&header_bytes, &payload) {
            return Ok((
                meta.clone(),
                Some(ScanStop {
                    pos: meta.len,
                    reason: format!(
                        "checksum mismatch in the frame of offsets {}..{}",
                        header.base_offset,
                        header.end_offset()
                    ),
                    intact_after: false,
                }),
            ));
        }
        if header.base_offset != meta.end {
            return Ok((
                meta.clone(),
                stop(
                    &meta,
                    format!(
                        "frame starts at offset {}, expected {}",
                        header.base_offset, meta.end
                    ),
                ),
            ));
        }
        meta.push_frame(header.frame_len(), u64::from(header.count));
    }
}

/// Whether an intact frame (plausible header, offsets at or after `end`, checksum holding)
/// starts anywhere in `path` after byte `pos`. Only called when a scan stopped early; a torn
/// write leaves nothing intact after the damage, so a hit means the damage is elsewhere.
fn intact_frame_after(path: &Path, pos: u64, end: u64) -> io::Result<bool> {
    let mut file = File::open(path)?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(pos))?;
    let mut rest = Vec::new();
    file.read_to_end(&mut rest)?;
    for start in 1..rest.len().saturating_sub(HEADER_LEN - 1) {
        let Ok(header_bytes) = <[u8; HEADER_LEN]>::try_from(&rest[start..start + HEADER_LEN])
        else {
            break;
        };
        let Some(header) = FrameHeader::parse(&header_bytes) else {
            continue;
        };
        let payload_end = start + HEADER_LEN + header.payload_len;
        if header.count == 0 || header.base_offset < end || payload_end > rest.len() {
            continue;
        }
        if header.verify(&header_bytes, &rest[start + HEADER_LEN..payload_end]) {
            return Ok(true);
        }
    }
    Ok(false)
}

const INDEX_MAGIC: &[u8; 4] = b"STIX";
const INDEX_VERSION: u32 = 1;

/// Writes the index file of a sealed segment and syncs it.
pub fn write_index(dir: &Path, meta: &SegmentMeta) -> io::Result<()> {
    let mut buf = Vec::with_capacity(36 + meta.index.len() * 16);
    buf.extend_from_slice(INDEX_MAGIC);
    buf.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    for v in [meta.base, meta.end, meta.len] {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    buf.extend_from_slice(&(meta.index.len() as u32).to_le_bytes());
    for e in &meta.index {
        buf.extend_from_slice(&e.offset.to_le_bytes());
        buf.extend_from_slice(&e.pos.to_le_bytes());
    }
    let crc = crc32c::crc32c(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    let path = index_path(dir, meta.base);
    let tmp = path.with_extension("idx.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&buf)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// Reads the index file of the segment at `base`; `None` when it is missing, damaged or does not
/// describe the segment file as it is.
pub fn read_index(dir: &Path, base: u64) -> Option<SegmentMeta> {
    let buf = std::fs::read(index_path(dir, base)).ok()?;
    let (body, crc) = buf.split_last_chunk::<4>()?;
    if crc32c::crc32c(body) != u32::from_le_bytes(*crc) {
        return None;
    }
    let mut input = body;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, rest) = input.split_at_checked(n)?;
        input = rest;
        Some(head)
    };
    if take(4)? != INDEX_MAGIC {
        return None;
    }
    let u32_of = |b: &[u8]| b.try_into().ok().map(u32::from_le_bytes);
    let u64_of = |b: &[u8]| b.try_into().ok().map(u64::from_le_bytes);
    if u32_of(take(4)?)? != INDEX_VERSION {
        return None;
    }
    let (b, end, len) = (u64_of(take(8)?)?, u64_of(take(8)?)?, u64_of(take(8)?)?);
    let n = u32_of(take(4)?)? as usize;
    let mut index = Vec::with_capacity(n.min(1 << 20));
    for _ in 0..n {
        index.push(IndexEntry {
            offset: u64_of(take(8)?)?,
            pos: u64_of(take(8)?)?,
        });
    }
    let file_len = std::fs::metadata(segment_path(dir, base)).ok()?.len();
    (b == base && file_len == len && end >= base).then_some(SegmentMeta {
        base,
        end,
        len,
        index,
    })
}

#[cfg(test)]
mod tests {
    use super::super::frame::encode_frame;
    use super::*;
    use strata_proto::Event;

    fn ev(i: u64) -> Event {
        Event {
            time_ms: i as i64,
            key: None,
            id: None,
            event_type: None,
            data: format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(100)),
            condition: None,
        }
    }

    fn write_frames(path: &Path, frames: &[(u64, usize)]) -> Vec<u8> {
        let mut buf = Vec::new();
        for (base, n) in frames {
            let events: Vec<_> = (0..*n as u64).map(|i| ev(base + i)).collect();
            encode_frame(*base, &events, &mut buf);
        }
        std::fs::write(path, &buf).unwrap();
        buf
    }

    #[test]
    fn scan_finds_frames_and_builds_a_sparse_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 5);
        let frames: Vec<(u64, usize)> = (0..100).map(|i| (5 + i * 10, 10)).collect();
        let buf = write_frames(&path, &frames);
        let (meta, stop) = scan_segment(&path, 5).unwrap();
        assert_eq!(stop, None);
        assert_eq!((meta.base, meta.end, meta.len), (5, 1005, buf.len() as u64));
        assert!(
            meta.index.len() > 10 && meta.index.len() < 100,
            "{}",
            meta.index.len()
        );
        assert_eq!(meta.seek(4), IndexEntry { offset: 5, pos: 0 });
        let far = meta.seek(1004);
        assert!(
            far.pos > 0 && far.offset <= 1004 && far.offset > 900,
            "{far:?}"
        );
        write_index(dir.path(), &meta).unwrap();
        assert_eq!(read_index(dir.path(), 5), Some(meta));
    }

    #[test]
    fn torn_tail_and_checksum_mismatch_stop_the_scan() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 0);
        let buf = write_frames(&path, &[(0, 3), (3, 3), (6, 3)]);
        let (full, _) = scan_segment(&path, 0).unwrap();
        // Torn: cut in the middle of the last frame.
        std::fs::write(&path, &buf[..buf.len() - 7]).unwrap();
        let (meta, stop) = scan_segment(&path, 0).unwrap();
        assert_eq!(meta.end, 6);
        assert!(stop.unwrap().reason.starts_with("torn frame"));
        // Corrupt: flip a payload byte of the second frame.
        let mut bad = buf.clone();
        let second = full.len as usize / 3 + 30;
        bad[second] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let (meta, stop) = scan_segment(&path, 0).unwrap();
        assert_eq!(meta.end, 3);
        let stop = stop.unwrap();
        assert!(stop.reason.starts_with("checksum mismatch"), "{stop:?}");
        assert!(stop.intact_after);
        // A damaged index is ignored.
        std::fs::write(&path, &buf).unwrap();
        let (meta, _) = scan_segment(&path, 0).unwrap();
        write_index(dir.path(), &meta).unwrap();
        let idx = index_path(dir.path(), 0);
        let mut raw = std::fs::read(&idx).unwrap();
        raw[10] ^= 1;
        std::fs::write(&idx, raw).unwrap();
        assert_eq!(read_index(dir.path(), 0), None);
    }
}
