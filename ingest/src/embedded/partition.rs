//! One partition of the embedded log: a group-commit writer task and cheap readers.

use super::frame::{FrameHeader, HEADER_LEN, decode_payload, encode_frame};
use super::segment::{
    SegmentMeta, index_path, list_segments, read_index, scan_segment, segment_path, write_index,
};
use parking_lot::{Mutex, RwLock};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_proto::{Error, Event, OffsetRange, Record, Result};
use tokio::sync::{mpsc, oneshot, watch};

/// State shared by the writer task and the readers of a partition.
pub(crate) struct PartitionShared {
    dir: PathBuf,
    partition: u32,
    /// Every segment; the last one is active. Lengths only ever cover durable frames.
    segments: RwLock<Vec<SegmentMeta>>,
    /// The end offset of the durable log.
    durable: watch::Sender<u64>,
    /// Set when a failed write could not be rolled back; the partition then refuses appends.
    failed: Mutex<Option<String>>,
}

impl PartitionShared {
    /// The error for `offset`, deleted by retention now that the log starts at `start`.
    fn gone(&self, offset: u64, start: u64) -> Error {
        Error::OffsetGone(format!(
            "offset {offset} of partition {} was deleted by the log's retention; the log starts at offset {start}",
            self.partition
        ))
    }
}

struct AppendReq {
    events: Vec<Event>,
    reply: oneshot::Sender<Result<OffsetRange>>,
}

/// Handle to one partition; appends go through its writer task.
pub(crate) struct PartitionLog {
    shared: Arc<PartitionShared>,
    tx: mpsc::Sender<AppendReq>,
}

/// Settings of a partition's writer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WriterConfig {
    pub segment_bytes: u64,
    pub group_commit_bytes: usize,
}

impl PartitionLog {
    /// Opens (recovering) or creates the partition in `dir` and starts its writer task.
    pub fn open(dir: &Path, partition: u32, config: WriterConfig) -> Result<Self> {
        let at = |e| Error::io(dir.display().to_string(), e);
        std::fs::create_dir_all(dir).map_err(at)?;
        let mut bases = list_segments(dir).map_err(at)?;
        if bases.is_empty() {
            File::create(segment_path(dir, 0)).map_err(at)?;
            sync_dir(dir)?;
            bases.push(0);
        }
        let mut segments = Vec::with_capacity(bases.len());
        let last = bases.len() - 1;
        for (i, base) in bases.iter().copied().enumerate() {
            let path = segment_path(dir, base);
            let at = |e| Error::io(path.display().to_string(), e);
            let meta = if i < last {
                match read_index(dir, base) {
                    Some(meta) => meta,
                    None => {
                        let (meta, stop) = scan_segment(&path, base).map_err(at)?;
                        if let Some(stop) = stop {
                            return Err(Error::Corrupt(format!(
                                "{} at byte {}: {} (a sealed segment; refusing to serve past it)",
                                path.display(),
                                stop.pos,
                                stop.reason
                            )));
                        }
                        write_index(dir, &meta).map_err(at)?;
                        meta
                    }
                }
            } else {
                let (meta, stop) = scan_segment(&path, base).map_err(at)?;
                if let Some(stop) = stop {
                    let file_len = std::fs::metadata(&path).map_err(at)?.len();
                    if stop.intact_after {
                        // Not a torn write: events that were acknowledged are damaged.
                        return Err(Error::Corrupt(format!(
                            "{} at byte {}: {}, and intact frames follow it, so acknowledged events are damaged; \
                             refusing to serve past it. Restore the file from a replica or backup, or truncate it to {} bytes \
                             to give up this frame and the {} bytes after it",
                            path.display(),
                            stop.pos,
                            stop.reason,
                            stop.pos,
                            file_len - stop.pos
                        )));
                    }
                    tracing::warn!(
                        segment = %path.display(),
                        at_byte = stop.pos,
                        dropped_bytes = file_len - stop.pos,
                        reason = %stop.reason,
                        "truncating the unacknowledged tail of the log"
                    );
                    let f = OpenOptions::new().write(true).open(&path).map_err(at)?;
                    f.set_len(stop.pos).map_err(at)?;
                    f.sync_all().map_err(at)?;
                }
                meta
            };
            if let Some(prev) = segments.last().map(|s: &SegmentMeta| s.end)
                && prev != meta.base
            {
                return Err(Error::Corrupt(format!(
                    "{}: segment starts at offset {}, but the one before ends at {prev}",
                    path.display(),
                    meta.base
                )));
            }
            segments.push(meta);
        }
        let active = segments[last].clone();
        let path = segment_path(dir, active.base);
        let mut file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(path.display().to_string(), e))?;
        file.seek(SeekFrom::Start(active.len))
            .map_err(|e| Error::io(path.display().to_string(), e))?;
        let (durable, _) = watch::channel(active.end);
        let shared = Arc::new(PartitionShared {
            dir: dir.to_owned(),
            partition,
            segments: RwLock::new(segments),
            durable,
            failed: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel(1024);
        let writer = Writer {
            shared: shared.clone(),
            file,
            base: active.base,
            len: active.len,
            end: active.end,
            config,
            buf: Vec::new(),
        };
        tokio::spawn(writer.run(rx));
        Ok(Self { shared, tx })
    }

    /// Appends `events` as one frame; resolves once they are fsync'd.
    pub async fn append(&self, events: Vec<Event>) -> Result<OffsetRange> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(AppendReq { events, reply })
            .await
            .map_err(|_| Error::Unavailable("the log writer has stopped".into()))?;
        rx.await
            .map_err(|_| Error::Unavailable("the log writer has stopped".into()))?
    }

    /// The durable end offset.
    pub fn end_offset(&self) -> u64 {
        *self.shared.durable.borrow()
    }

    /// Deletes sealed segments, oldest first, while `expired` says the oldest is past retention
    /// (given the partition's bytes and the segment file's age), but never one holding an offset
    /// at or after `stored` (not yet in the shards). Returns the segments deleted and whether one
    /// past retention was kept for the shards.
    pub fn enforce_retention(
        &self,
        stored: u64,
        expired: impl Fn(u64, Option<Duration>) -> bool,
    ) -> Result<(usize, bool)> {
        let mut deleted = 0;
        loop {
            let (base, end, bytes) = {
                let segments = self.shared.segments.read();
                if segments.len() < 2 {
                    return Ok((deleted, false));
                }
                let bytes = segments.iter().map(|s| s.len).sum::<u64>();
                (segments[0].base, segments[0].end, bytes)
            };
            let path = segment_path(&self.shared.dir, base);
            let age = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            if !expired(bytes, age) {
                return Ok((deleted, false));
            }
            if end > stored {
                return Ok((deleted, true));
            }
            {
                let mut segments = self.shared.segments.write();
                if segments.first().map(|s| s.base) != Some(base) || segments.len() < 2 {
                    return Ok((deleted, false));
                }
                segments.remove(0);
            }
            // Readers with the file open keep reading it; new ones start at the next segment.
            for file in [path, index_path(&self.shared.dir, base)] {
                match std::fs::remove_file(&file) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(file.display().to_string(), e)),
                }
            }
            tracing::info!(segment = %segment_path(&self.shared.dir, base).display(),
                offsets = %format!("{}..{}", base, end), "retention deleted a log segment");
            deleted += 1;
        }
    }

    /// A reader positioned at `from`; [`Error::OffsetGone`] when retention deleted `from`.
    pub fn reader(&self, from: u64) -> Result<EmbeddedReader> {
        let start = self.shared.segments.read().first().map_or(0, |s| s.base);
        if from < start {
            return Err(self.shared.gone(from, start));
        }
        Ok(self.reader_at(from))
    }

    fn reader_at(&self, from: u64) -> EmbeddedReader {
        EmbeddedReader {
            durable: self.shared.durable.subscribe(),
            position: from,
            state: Some(ReaderState {
                shared: self.shared.clone(),
                cursor: None,
            }),
        }
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir.display().to_string(), e))
}

struct Writer {
    shared: Arc<PartitionShared>,
    file: File,
    /// Base, durable length and end offset of the active segment.
    base: u64,
    len: u64,
    end: u64,
    config: WriterConfig,
    buf: Vec<u8>,
}

impl Writer {
    /// Writes each group of waiting appends and fsyncs it until every sender is gone. The write
    /// and its fsync block the task's thread, which hands the runtime's other tasks to another
    /// worker meanwhile (`block_in_place`; on a current-thread runtime they go to the blocking
    /// pool): handing each group to the blocking pool and waiting for it there took two more
    /// crossings of threads per group, 3 ms of a partition append's 7.6 ms on a busy node.
    async fn run(mut self, mut rx: mpsc::Receiver<AppendReq>) {
        while let Some(first) = rx.recv().await {
            let mut bytes = first.events.iter().map(Event::approx_size).sum::<usize>();
            let mut group = vec![first];
            while bytes < self.config.group_commit_bytes {
                match rx.try_recv() {
                    Ok(req) => {
                        bytes += req.events.iter().map(Event::approx_size).sum::<usize>();
                        group.push(req);
                    }
                    Err(_) => break,
                }
            }
            let (events, replies): (Vec<_>, Vec<_>) =
                group.into_iter().map(|r| (r.events, r.reply)).unzip();
            let result;
            let written = crate::off_the_runtime(move || {
                let result = self.write_group(&events);
                (self, result)
            });
            (self, result) = match written.await {
                Ok(done) => done,
                Err(e) => {
                    tracing::error!(error = %e, "log writer task failed");
                    return;
                }
            };
            match result {
                Ok(ranges) => {
                    for (reply, range) in replies.into_iter().zip(ranges) {
                        let _ = reply.send(Ok(range));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    let full = matches!(e, Error::StorageFull(_));
                    for reply in replies {
                        let _ = reply.send(Err(if full {
                            Error::StorageFull(msg.clone())
                        } else {
                            Error::Unavailable(msg.clone())
                        }));
                    }
                }
            }
        }
    }

    fn location(&self) -> String {
        segment_path(&self.shared.dir, self.base)
            .display()
            .to_string()
    }

    /// Writes one frame per entry of `groups`, then one fdatasync for all of them.
    fn write_group(&mut self, groups: &[Vec<Event>]) -> Result<Vec<OffsetRange>> {
        if let Some(reason) = self.shared.failed.lock().clone() {
            return Err(Error::Unavailable(format!(
                "partition {} is failed since an earlier write error: {reason}",
                self.shared.partition
            )));
        }
        if self.len >= self.config.segment_bytes {
            self.roll()?;
        }
        self.buf.clear();
        let mut ranges = Vec::with_capacity(groups.len());
        let mut frames = Vec::with_capacity(groups.len());
        let mut next = self.end;
        for events in groups {
            let start = self.buf.len();
            encode_frame(next, events, &mut self.buf);
            let count = events.len() as u64;
            ranges.push(OffsetRange {
                first: next,
                last: next + count.saturating_sub(1),
            });
            frames.push(((self.buf.len() - start) as u64, count));
            next += count;
        }
        let started = Instant::now();
        let written = self
            .file
            .write_all(&self.buf)
            .and_then(|()| self.file.sync_data());
        metrics::histogram!("strata_log_fsync_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("strata_log_fsyncs_total").increment(1);
        if let Err(e) = written {
            let err = Error::io(self.location(), e);
            // Roll the file back to its durable length so that a retry starts clean.
            let rollback = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.seek(SeekFrom::Start(self.len)).map(|_| ()));
            if let Err(e2) = rollback {
                *self.shared.failed.lock() = Some(format!("{err}; rollback failed: {e2}"));
            }
            return Err(err);
        }
        metrics::counter!("strata_log_bytes_written_total").increment(self.buf.len() as u64);
        {
            let mut segments = self.shared.segments.write();
            if let Some(active) = segments.last_mut() {
                for (frame_len, count) in frames {
                    active.push_frame(frame_len, count);
                }
                self.len = active.len;
                self.end = active.end;
            }
        }
        self.shared.durable.send_replace(self.end);
        if self.buf.capacity() > 4 * self.config.group_commit_bytes.max(1 << 20) {
            self.buf = Vec::new();
        }
        Ok(ranges)
    }

    /// Seals the active segment (writing its index) and starts a new one at the end offset.
    fn roll(&mut self) -> Result<()> {
        let dir = self.shared.dir.clone();
        let sealed = self.shared.segments.read().last().cloned();
        if let Some(sealed) = sealed {
            write_index(&dir, &sealed).map_err(|e| Error::io(self.location(), e))?;
        }
        let path = segment_path(&dir, self.end);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(path.display().to_string(), e))?;
        sync_dir(&dir)?;
        self.file = file;
        self.base = self.end;
        self.len = 0;
        self.shared
            .segments
            .write()
            .push(SegmentMeta::empty(self.end));
        Ok(())
    }
}

/// A reader of one embedded partition.
pub struct EmbeddedReader {
    durable: watch::Receiver<u64>,
    /// The offset of the next record to return.
    position: u64,
    /// Moved into the blocking read and back; `None` only after a failed read task.
    state: Option<ReaderState>,
}

struct ReaderState {
    shared: Arc<PartitionShared>,
    cursor: Option<Cursor>,
}

/// An open segment file and a window of its durable bytes.
struct Cursor {
    base: u64,
    file: File,
    /// Position of the next frame to read, and the offset it starts with.
    pos: u64,
    offset: u64,
    /// `buf` holds the segment's bytes from `buf_pos`.
    buf: Vec<u8>,
    buf_pos: u64,
}

const READ_CHUNK: u64 = 1 << 20;

impl Cursor {
    /// Makes `buf` cover `[self.pos, end)` (end ≤ the segment's durable length).
    fn ensure(&mut self, end: u64, seg_len: u64) -> std::io::Result<()> {
        let buf_end = self.buf_pos + self.buf.len() as u64;
        if self.pos >= self.buf_pos && end <= buf_end {
            return Ok(());
        }
        let want = (end - self.pos).max(READ_CHUNK).min(seg_len - self.pos);
        self.buf.resize(want as usize, 0);
        self.file.read_exact_at(&mut self.buf, self.pos)?;
        self.buf_pos = self.pos;
        Ok(())
    }

    fn slice(&self, from: u64, len: usize) -> &[u8] {
        let start = (from - self.buf_pos) as usize;
        &self.buf[start..start + len]
    }
}

impl ReaderState {
    /// Reads up to `max` records from `*position` up to `durable_end`, advancing `position`.
    fn read(&mut self, position: &mut u64, durable_end: u64, max: usize) -> Result<Vec<Record>> {
        let mut records = Vec::new();
        while records.len() < max && *position < durable_end {
            let (base, seg_end, seg_len, seek) = {
                let segments = self.shared.segments.read();
                let i = segments.partition_point(|s| s.base <= *position);
                let Some(s) = i.checked_sub(1).and_then(|i| segments.get(i)) else {
                    let start = segments.first().map_or(0, |s| s.base);
                    return Err(self.shared.gone(*position, start));
                };
                (s.base, s.end, s.len, s.seek(*position))
            };
            let path = segment_path(&self.shared.dir, base);
            let at = |e| Error::io(path.display().to_string(), e);
            let reopen = self
                .cursor
                .as_ref()
                .is_none_or(|c| c.base != base || c.offset > *position);
            if reopen {
                let file = File::open(&path).map_err(at)?;
                self.cursor = Some(Cursor {
                    base,
                    file,
                    pos: seek.pos,
                    offset: seek.offset,
                    buf: Vec::new(),
                    buf_pos: 0,
                });
            }
            let Some(cursor) = self.cursor.as_mut() else {
                break;
            };
            if cursor.pos >= seg_len {
                if *position >= seg_end && seg_end < durable_end {
                    // This segment is done; the next turn opens the one after it.
                    continue;
                }
                break;
            }
            let pos = cursor.pos;
            let corrupt =
                |what: &str| Error::Corrupt(format!("{} at byte {pos}: {what}", path.display()));
            cursor
                .ensure(pos + HEADER_LEN as u64, seg_len)
                .map_err(at)?;
            let mut header_bytes = [0u8; HEADER_LEN];
            header_bytes.copy_from_slice(cursor.slice(pos, HEADER_LEN));
            let header = FrameHeader::parse(&header_bytes)
                .ok_or_else(|| corrupt("implausible frame length"))?;
            if pos + header.frame_len() > seg_len {
                return Err(corrupt("frame runs past the durable end of the segment"));
            }
            cursor
                .ensure(pos + header.frame_len(), seg_len)
                .map_err(at)?;
            let payload = cursor.slice(pos + HEADER_LEN as u64, header.payload_len);
            if !header.verify(&header_bytes, payload) {
                return Err(corrupt("checksum mismatch"));
            }
            if header.base_offset != cursor.offset {
                return Err(corrupt("frame offset out of sequence"));
            }
            let frame_end = header.end_offset();
            if frame_end > *position {
                let events = decode_payload(&header, payload).map_err(|e| corrupt(&e))?;
                let skip = (*position - header.base_offset) as usize;
                let room = max - records.len();
                for (i, event) in events.into_iter().enumerate().skip(skip).take(room) {
                    let offset = header.base_offset + i as u64;
                    records.push(Record {
                        partition: self.shared.partition,
                        offset,
                        event,
                    });
                    *position = offset + 1;
                }
            }
            if *position >= frame_end {
                cursor.pos += header.frame_len();
                cursor.offset = frame_end;
            }
        }
        Ok(records)
    }
}

#[async_trait::async_trait]
impl strata_proto::LogReader for EmbeddedReader {
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>> {
        if self.position >= *self.durable.borrow_and_update() {
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                match tokio::time::timeout_at(deadline, self.durable.changed()).await {
                    Ok(Ok(())) if self.position < *self.durable.borrow_and_update() => break,
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) | Err(_) => return Ok(Vec::new()),
                }
            }
        }
        let mut state = self
            .state
            .take()
            .ok_or_else(|| Error::Unavailable("the log reader failed earlier".into()))?;
        let mut position = self.position;
        let durable_end = *self.durable.borrow();
        let (state, position, result) = tokio::task::spawn_blocking(move || {
            let result = state.read(&mut position, durable_end, max.max(1));
            (state, position, result)
        })
        .await
        .map_err(|e| Error::Unavailable(format!("log reader task failed: {e}")))?;
        self.state = Some(state);
        self.position = position;
        result
    }

    fn position(&self) -> u64 {
        self.position
    }
}
