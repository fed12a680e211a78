//! The Raft log as append-only segment files (`DIR/wal/{seq}.wal`).
//!
//! Why not redb, which holds everything else: every commit waits for log writes (without the
//! early acknowledgement in log.rs it would pay the leader's log write and then a follower's, one
//! after the other, as openraft 0.9 replicates only once the leader's own write is reported
//! flushed), and a redb transaction rewrites about a dozen scattered pages before its fsync. An
//! append here is one positioned write into a file whose size is already durable, then one
//! `fdatasync`: about a third of a redb commit on this project's machines (BENCHMARKS.md).
//!
//! A segment is preallocated (`set_len`, made durable when the segment is created), so an append
//! never changes the file's size and `fdatasync` has no metadata to write. Records follow each
//! other from offset 0; the first all-zero header ends the segment:
//!
//! ```text
//! record = u32 LE body length | u32 LE CRC-32 of body | body
//! body   = kind (1 entry | 2 truncate | 3 committed) | bincode payload
//! ```
//!
//! Replaying every segment in order rebuilds the log: entries must follow each other without a
//! hole, a truncate record removes the entries from its index on, and the last committed record
//! is the commit pointer. Committed records are written without an fsync of their own; the next
//! append's makes them durable (see `LogStore::save_committed`).
//!
//! A crash can leave the last write half done. A record in the last segment that is cut short
//! or fails its checksum is therefore taken as the end of the log: its fsync did not return, so
//! nothing in it or after it was answered to a client, applied, or reported committed (a leader
//! acknowledges its own entries to openraft before they are durable, but nothing depends on them
//! until they are: see log.rs). It is zeroed before anything is appended, so that
//! stale bytes can never be read as records later. Anything else that does not decode — a bad
//! record in an older segment, a record whose checksum holds but whose content does not, an
//! entry out of sequence — is corruption, and opening the log fails with what and where.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::AnyError;
use tokio::sync::watch;

use super::{
    Ctx, MAX_ENCODED_ENTRY_BYTES, MAX_RECORD_BYTES, decode, decode_entry, decode_stored_entry,
    encode, lock,
};
use crate::raft::{Entry, LogId};

/// The size a new segment is given. A batch larger than this gets a segment of its own size.
/// Small under test, so that every store test (openraft's suite included) crosses segments.
const SEGMENT_BYTES: u64 = if cfg!(test) { 4096 } else { 16 * 1024 * 1024 };
const HEADER: usize = 8;
/// The largest record body replay accepts: an encoded entry plus its kind byte.
const MAX_BODY: usize = MAX_ENCODED_ENTRY_BYTES + 1;

pub(super) const KIND_ENTRY: u8 = 1;
pub(super) const KIND_TRUNCATE: u8 = 2;
pub(super) const KIND_COMMITTED: u8 = 3;

/// Where a live entry's record is.
#[derive(Clone, Copy)]
struct Loc {
    seq: u64,
    offset: u64,
    len: u32,
    log_id: LogId,
}

struct Segment {
    file: Arc<File>,
    /// The highest entry index written to it, to know when a purge may delete it.
    max_index: Option<u64>,
}

/// What readers see: the live entries and the files that hold them, and the entries handed to
/// the writer but not yet written ([`Wal::add_pending`]).
#[derive(Default)]
struct Index {
    entries: BTreeMap<u64, Loc>,
    pending: BTreeMap<u64, Entry>,
    segments: BTreeMap<u64, Segment>,
    committed: Option<LogId>,
}

/// The writing end: the active segment. Only one write runs at a time: writes come from the
/// writer thread in log.rs (or, with inline storage and during an upgrade, from the one caller),
/// and this lock serialises them anyway. Readers never take it; they wait only for the brief
/// `index` updates around a write (recording what it wrote, or adding a new segment).
struct Writer {
    seq: u64,
    file: Arc<File>,
    at: u64,
    capacity: u64,
}

pub(super) struct Wal {
    dir: PathBuf,
    writer: Mutex<Writer>,
    index: Mutex<Index>,
    /// The last entry known to be on disk (written and fsynced), with everything before it.
    durable: watch::Sender<Option<LogId>>,
    /// Tests set it to make every later write fail, as a failing disk would.
    #[cfg(test)]
    fail_writes: std::sync::atomic::AtomicBool,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

fn record(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    let body_len = payload.len() + 1;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(payload);
    // Bodies are at most MAX_BODY (checked by the callers), far below u32::MAX.
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

fn sync_dir(dir: &Path) -> Result<(), AnyError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(format!("syncing the directory {}", dir.display()))
}

fn create_segment(dir: &Path, seq: u64, capacity: u64) -> Result<Arc<File>, AnyError> {
    let path = segment_path(dir, seq);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .ctx(format!("creating {}", path.display()))?;
    file.set_len(capacity)
        .ctx(format!("sizing {}", path.display()))?;
    file.sync_all().ctx(format!("syncing {}", path.display()))?;
    sync_dir(dir)?;
    Ok(Arc::new(file))
}

/// One record read back during replay.
enum Parsed {
    Record {
        kind: u8,
        body_at: u64,
        body: Vec<u8>,
    },
    /// A zero header: the unused rest of the segment.
    End,
    /// Cut short or failing its checksum.
    Bad(String),
}

fn parse(bytes: &[u8], at: usize) -> Parsed {
    let Some(header) = bytes.get(at..at + HEADER) else {
        return Parsed::End;
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 && crc == 0 {
        return Parsed::End;
    }
    if len == 0 || len > MAX_BODY {
        return Parsed::Bad(format!("a record claims {len} bytes"));
    }
    let Some(body) = bytes.get(at + HEADER..at + HEADER + len) else {
        return Parsed::Bad(format!("a {len}-byte record is cut short"));
    };
    if crc32fast::hash(body) != crc {
        return Parsed::Bad("a record fails its checksum".to_string());
    }
    Parsed::Record {
        kind: body[0],
        body_at: (at + HEADER + 1) as u64,
        body: body[1..].to_vec(),
    }
}

impl Wal {
    /// Opens the log in `dir` (creating it), replays it, drops entries at or before
    /// `last_purged`, and repairs a torn last write.
    pub(super) fn open(dir: &Path, last_purged: Option<LogId>) -> Result<Wal, AnyError> {
        std::fs::create_dir_all(dir).ctx(format!("creating {}", dir.display()))?;
        let mut seqs = Vec::new();
        for item in std::fs::read_dir(dir).ctx(format!("listing {}", dir.display()))? {
            let item = item.ctx(format!("listing {}", dir.display()))?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name
                .strip_suffix(".wal")
                .and_then(|s| s.parse::<u64>().ok())
            {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();

        let mut index = Index::default();
        let mut tail: Option<(u64, Arc<File>, u64, u64)> = None;
        for (i, &seq) in seqs.iter().enumerate() {
            let last = i + 1 == seqs.len();
            let path = segment_path(dir, seq);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .ctx(format!("opening {}", path.display()))?;
            let bytes = std::fs::read(&path).ctx(format!("reading {}", path.display()))?;
            let mut at = 0usize;
            let mut max_index = None;
            loop {
                match parse(&bytes, at) {
                    Parsed::End => break,
                    Parsed::Bad(why) if last => {
                        tracing::warn!(file = %path.display(), offset = at, discarded_bytes = bytes.len() - at, "{why}: taking it as a write cut short by a crash (never acknowledged), and the end of the log");
                        // Zeroed, so that what follows can never be read as records.
                        let zeros = vec![0u8; bytes.len() - at];
                        file.write_all_at(&zeros, at as u64)
                            .and_then(|()| file.sync_data())
                            .ctx(format!("zeroing the torn end of {}", path.display()))?;
                        break;
                    }
                    Parsed::Bad(why) => {
                        return Err(AnyError::error(format!(
                            "{} at offset {at}: {why}",
                            path.display()
                        )));
                    }
                    Parsed::Record {
                        kind,
                        body_at,
                        body,
                    } => {
                        let place = || format!("{} at offset {at}", path.display());
                        match kind {
                            KIND_ENTRY => {
                                let entry = decode_stored_entry(&body, "a log entry")
                                    .map_err(|e| AnyError::error(format!("{}: {e}", place())))?;
                                let i = entry.log_id.index;
                                if let Some((&prev, _)) = index.entries.last_key_value()
                                    && i != prev + 1
                                {
                                    return Err(AnyError::error(format!(
                                        "{}: the log has a hole: entry {i} follows entry {prev}",
                                        place()
                                    )));
                                }
                                max_index = max_index.max(Some(i));
                                index.entries.insert(
                                    i,
                                    Loc {
                                        seq,
                                        offset: body_at,
                                        len: body.len() as u32,
                                        log_id: entry.log_id,
                                    },
                                );
                            }
                            KIND_TRUNCATE => {
                                let from: u64 =
                                    decode::<u64, MAX_RECORD_BYTES>(&body, "a truncate record")
                                        .map_err(|e| {
                                            AnyError::error(format!("{}: {e}", place()))
                                        })?;
                                index.entries.split_off(&from);
                            }
                            KIND_COMMITTED => {
                                index.committed = decode::<Option<LogId>, MAX_RECORD_BYTES>(
                                    &body,
                                    "a committed record",
                                )
                                .map_err(|e| AnyError::error(format!("{}: {e}", place())))?;
                            }
                            other => {
                                return Err(AnyError::error(format!(
                                    "{}: unknown record kind {other}",
                                    place()
                                )));
                            }
                        }
                        at += HEADER + 1 + body.len();
                    }
                }
            }
            let file = Arc::new(file);
            if last {
                tail = Some((seq, file.clone(), at as u64, bytes.len() as u64));
            }
            index.segments.insert(seq, Segment { file, max_index });
        }
        if let Some(purged) = last_purged {
            index.entries = index.entries.split_off(&(purged.index + 1));
        }

        let writer = match tail {
            Some((seq, file, at, capacity)) => Writer {
                seq,
                file,
                at,
                capacity,
            },
            None => {
                let file = create_segment(dir, 1, SEGMENT_BYTES)?;
                index.segments.insert(
                    1,
                    Segment {
                        file: file.clone(),
                        max_index: None,
                    },
                );
                Writer {
                    seq: 1,
                    file,
                    at: 0,
                    capacity: SEGMENT_BYTES,
                }
            }
        };
        let durable = index.entries.last_key_value().map(|(_, l)| l.log_id);
        Ok(Wal {
            dir: dir.to_path_buf(),
            writer: Mutex::new(writer),
            index: Mutex::new(index),
            durable: watch::Sender::new(durable.or(last_purged)),
            #[cfg(test)]
            fail_writes: Default::default(),
        })
    }

    /// The last entry, written or pending.
    pub(super) fn last(&self) -> Option<LogId> {
        let index = lock(&self.index);
        match index.pending.last_key_value() {
            Some((_, e)) => Some(e.log_id),
            None => index.entries.last_key_value().map(|(_, l)| l.log_id),
        }
    }

    /// How many entries are written.
    pub(super) fn written_len(&self) -> u64 {
        lock(&self.index).entries.len() as u64
    }

    /// Watches the last durable entry.
    pub(super) fn durable(&self) -> watch::Receiver<Option<LogId>> {
        self.durable.subscribe()
    }

    /// Makes entries readable before they are written: the leader replicates them while its
    /// own write is under way.
    pub(super) fn add_pending(&self, entries: impl IntoIterator<Item = Entry>) {
        let mut index = lock(&self.index);
        for e in entries {
            index.pending.insert(e.log_id.index, e);
        }
    }

    /// Forgets pending entries that will not be written (their write failed to be queued).
    pub(super) fn drop_pending(&self, from: u64) {
        lock(&self.index).pending.split_off(&from);
    }

    pub(super) fn committed(&self) -> Option<LogId> {
        lock(&self.index).committed
    }

    /// Appends entries (already encoded, with their log ids) and waits until they are durable.
    pub(super) fn append(&self, entries: &[(LogId, Vec<u8>)]) -> Result<(), AnyError> {
        self.append_with(None, entries)
    }

    /// Appends entries, then a commit pointer record if `committed` is given, in one write and
    /// one fsync (or no fsync when there are no entries).
    pub(super) fn append_with(
        &self,
        committed: Option<Option<LogId>>,
        entries: &[(LogId, Vec<u8>)],
    ) -> Result<(), AnyError> {
        let Some(first) = entries.first() else {
            return match committed {
                Some(c) => self.save_committed(c),
                None => Ok(()),
            };
        };
        {
            let index = lock(&self.index);
            if let Some((&last, _)) = index.entries.last_key_value()
                && first.0.index != last + 1
            {
                return Err(AnyError::error(format!(
                    "appending entry {} after entry {last} would leave a hole or overwrite without a truncate",
                    first.0
                )));
            }
        }
        let mut buf = Vec::new();
        let mut offsets = Vec::with_capacity(entries.len());
        for (log_id, bytes) in entries {
            offsets.push((*log_id, buf.len() + HEADER + 1, bytes.len()));
            record(KIND_ENTRY, bytes, &mut buf);
        }
        // After the entries: were the write torn, a commit pointer must not survive the
        // entries it points at.
        if let Some(c) = committed {
            record(KIND_COMMITTED, &encode(&c)?, &mut buf);
        }
        let (seq, at) = self.write(&buf, true)?;
        let mut index = lock(&self.index);
        if let Some(c) = committed {
            index.committed = c;
        }
        for (log_id, offset, len) in offsets {
            if index
                .pending
                .get(&log_id.index)
                .is_some_and(|p| p.log_id == log_id)
            {
                index.pending.remove(&log_id.index);
            }
            index.entries.insert(
                log_id.index,
                Loc {
                    seq,
                    offset: at + offset as u64,
                    len: len as u32,
                    log_id,
                },
            );
        }
        if let Some(segment) = index.segments.get_mut(&seq) {
            segment.max_index = segment.max_index.max(entries.last().map(|e| e.0.index));
        }
        drop(index);
        self.durable.send_replace(entries.last().map(|e| e.0));
        Ok(())
    }

    /// Makes everything written so far durable.
    pub(super) fn sync(&self) -> Result<(), AnyError> {
        let w = lock(&self.writer);
        w.file
            .sync_data()
            .ctx(format!("syncing log segment {}", w.seq))
    }

    /// Records the commit pointer without an fsync: the next append makes it durable.
    pub(super) fn save_committed(&self, committed: Option<LogId>) -> Result<(), AnyError> {
        let mut buf = Vec::new();
        record(KIND_COMMITTED, &encode(&committed)?, &mut buf);
        self.write(&buf, false)?;
        lock(&self.index).committed = committed;
        Ok(())
    }

    /// Removes the entries from `from` on, durably.
    pub(super) fn truncate(&self, from: u64) -> Result<(), AnyError> {
        let mut buf = Vec::new();
        record(KIND_TRUNCATE, &encode(&from)?, &mut buf);
        self.write(&buf, true)?;
        let mut index = lock(&self.index);
        index.entries.split_off(&from);
        index.pending.split_off(&from);
        let last = index.entries.last_key_value().map(|(_, l)| l.log_id);
        drop(index);
        self.durable.send_modify(|d| {
            if d.is_some_and(|d| d.index >= from) {
                *d = last;
            }
        });
        Ok(())
    }

    /// Forgets the entries up to `upto` (the caller has durably recorded the purged log id
    /// first) and deletes the oldest segments that hold nothing newer.
    pub(super) fn purge(&self, upto: u64) -> Result<(), AnyError> {
        let active = lock(&self.writer).seq;
        let doomed: Vec<u64> = {
            let mut index = lock(&self.index);
            index.entries = index.entries.split_off(&(upto + 1));
            index.pending = index.pending.split_off(&(upto + 1));
            let doomed: Vec<u64> = index
                .segments
                .iter()
                .take_while(|(seq, s)| **seq != active && s.max_index.is_none_or(|m| m <= upto))
                .map(|(seq, _)| *seq)
                .collect();
            for seq in &doomed {
                index.segments.remove(seq);
            }
            doomed
        };
        for seq in &doomed {
            let path = segment_path(&self.dir, *seq);
            std::fs::remove_file(&path).ctx(format!("deleting {}", path.display()))?;
        }
        if !doomed.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Reads the live entries in `range`, written or pending.
    pub(super) fn read(
        &self,
        range: impl RangeBounds<u64> + Clone,
    ) -> Result<Vec<Entry>, AnyError> {
        let (written, pending): (Vec<(Loc, Arc<File>)>, Vec<Entry>) = {
            let index = lock(&self.index);
            let written = index
                .entries
                .range(range.clone())
                .filter(|(i, _)| !index.pending.contains_key(i))
                .filter_map(|(_, loc)| index.segments.get(&loc.seq).map(|s| (*loc, s.file.clone())))
                .collect();
            let pending = index.pending.range(range).map(|(_, e)| e.clone()).collect();
            (written, pending)
        };
        let mut out = Vec::with_capacity(written.len() + pending.len());
        for (loc, file) in written {
            let mut body = vec![0u8; loc.len as usize];
            file.read_exact_at(&mut body, loc.offset)
                .ctx(format!("reading log entry {}", loc.log_id))?;
            out.push(decode_entry(loc.log_id.index, &body)?);
        }
        // Pending entries follow the written ones: they are appended after them.
        out.extend(pending);
        Ok(out)
    }

    /// Makes every write from now on fail, as a failing disk would.
    #[cfg(test)]
    pub(super) fn fail_writes(&self) {
        self.fail_writes
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Writes `buf` at the end of the active segment (a new one if it does not fit), and
    /// `fdatasync`s it if `durable`. Returns the segment and the offset written at.
    fn write(&self, buf: &[u8], durable: bool) -> Result<(u64, u64), AnyError> {
        #[cfg(test)]
        if self.fail_writes.load(std::sync::atomic::Ordering::Acquire) {
            return Err(AnyError::error("the test made this log's writes fail"));
        }
        let mut w = lock(&self.writer);
        if w.at + buf.len() as u64 > w.capacity {
            // Everything in the old segment is durable before the new one gets a record, so
            // only the last segment can ever hold a torn write.
            w.file.sync_data().ctx("syncing the full log segment")?;
            // Each segment restates the commit pointer, so that purging older segments never
            // loses it. The index is not held while the segment is created (two fsyncs): the
            // commit pointer changes only after a write returns, and writes are serialised, so
            // it cannot change meanwhile; and no entry points into the new segment before this
            // write returns, so readers need not see the segment until then.
            let committed = lock(&self.index).committed;
            let mut head = Vec::new();
            record(KIND_COMMITTED, &encode(&committed)?, &mut head);
            let seq = w.seq + 1;
            let capacity = SEGMENT_BYTES.max((head.len() + buf.len()) as u64);
            let file = create_segment(&self.dir, seq, capacity)?;
            file.write_all_at(&head, 0)
                .ctx(format!("writing to log segment {seq}"))?;
            lock(&self.index).segments.insert(
                seq,
                Segment {
                    file: file.clone(),
                    max_index: None,
                },
            );
            *w = Writer {
                seq,
                file,
                at: head.len() as u64,
                capacity,
            };
        }
        let at = w.at;
        w.file
            .write_all_at(buf, at)
            .ctx(format!("writing to log segment {}", w.seq))?;
        w.at += buf.len() as u64;
        if durable {
            w.file
                .sync_data()
                .ctx(format!("syncing log segment {}", w.seq))?;
        }
        Ok((w.seq, at))
    }
}

/// Writes a raw record (for tests that build damaged logs).
#[cfg(test)]
pub(super) fn raw_record(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    record(kind, payload, &mut out);
    out
}
