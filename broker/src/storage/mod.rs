//! Per-shard write-ahead log: segments, group commit, durable marks,
//! recovery (torn write versus corruption), the spare segment for a full
//! disk, checkpoint files; plus the data-directory manifest and lock.
//!
//! # On-disk format (format version 2)
//!
//! A shard's log lives in `<data-dir>/shard-<k>/` as a sequence of segment
//! files. A log position ([`LogPos`]) is a global byte offset: position `p`
//! is stored in the segment whose `base <= p < base + capacity`, at file
//! offset `p - base`. Positions never move; released segments leave a hole
//! below the oldest segment.
//!
//! ## Segment files
//!
//! * Name: the base position, zero-padded to 20 decimal digits, plus `.log`
//!   (`00000000000000000000.log`), so `ls` sorts them in log order.
//! * Capacity: the file length, fixed at creation (`segment_bytes` then;
//!   segments created under an older configuration keep their size, and
//!   an adopted spare has [`SPARE_SEGMENT_BYTES`]). The next segment's base
//!   is always `base + capacity`, so a missing file shows up as a gap
//!   between one segment's end and the next one's base.
//! * Created as `<name>.log.tmp`, preallocated with `fallocate` to its full
//!   capacity (so an `fdatasync` after a write into it has no file-size
//!   metadata to commit), header written, `fsync`ed, renamed to its final
//!   name, then the directory is `fsync`ed. A `*.log.tmp` found at open is
//!   an interrupted creation and is deleted.
//! * Segment header, 32 bytes at file offset 0, integers little-endian:
//!
//!   | offset | size | field |
//!   | ---: | ---: | --- |
//!   | 0 | 8 | magic `b"cmq-wal\n"` |
//!   | 8 | 4 | format version, u32 = 2 |
//!   | 12 | 8 | base position, u64 (must equal the file name) |
//!   | 20 | 8 | capacity in bytes, u64 (the file length at creation) |
//!   | 28 | 4 | CRC32C of bytes 0..28 |
//!
//!   A segment of another format version is refused with
//!   [`WalError::Format`] (never "repaired"); the manifest's version 2
//!   refuses an older data directory before that.
//! * Records follow from file offset 32, packed back to back with no
//!   alignment or padding between them. A record never spans segments: when
//!   a record does not fit in the rest of a segment, the log continues at
//!   the next segment's first record, and the rest of the old segment stays
//!   zero. Records of the engine stop [`SEGMENT_MARK_ROOM_BYTES`] (88) short
//!   of a segment's end, so that the durable marks that follow them always
//!   fit.
//! * End of data: the first record slot whose length field is 0, or fewer
//!   than 13 bytes left in the segment. Every byte from there to the end of
//!   the segment is zero (preallocated space), except in the torn tail
//!   described under recovery.
//!
//! ## Record framing (13-byte header + payload), integers little-endian
//!
//! | offset | size | field |
//! | ---: | ---: | --- |
//! | 0 | 4 | `len`, u32 = the whole record, header included (13 + payload length); never 0, so a zero length means end of data; at most [`RECORD_BYTES_MAX`] |
//! | 4 | 1 | `rtype`: 0 is the WAL's own (padding, durable marks), never delivered; 1..=255 belong to the engine |
//! | 5 | 4 | `payload_crc`, u32 = CRC32C (Castagnoli) of the payload |
//! | 9 | 4 | `header_crc`, u32 = CRC32C of the record's log position (u64, little-endian) followed by bytes 0..9 |
//! | 13 | len-13 | payload, opaque to the WAL (for `rtype` 0: see below) |
//!
//! The header CRC binds a record to its position: a record image found
//! anywhere else (stale bytes, a log record inside a message body) does not
//! verify there. It also makes the search for the next record after damage
//! cheap and reliable: a candidate costs a 17-byte CRC, and only a verifying
//! header leads to the payload CRC. [`Wal::append`] returns the position of
//! the payload (record start + 13); that is the position [`Wal::read`]
//! takes.
//!
//! WAL records (`rtype` 0) have a kind in their first payload byte:
//!
//! * kind 0, padding: all-zero payload; written by repair over damaged
//!   bytes.
//! * kind 1, durable mark: payload `[1, durable: u64]`, 22 bytes with the
//!   header: every byte of the log below `durable` had been covered by a
//!   completed `fdatasync` when the mark was appended.
//!
//! ## Durable marks
//!
//! After a crash, recovery must tell a torn write (bytes that were written
//! but never durable: dropped silently) from damage to durable data (never
//! dropped silently). The log records where durability stood:
//!
//! * When an `fdatasync` completes and it covered engine records that no
//!   mark claims yet, the WAL appends a mark claiming the new synced end
//!   and writes it at once (in [`Wal::poll_completions`], before returning;
//!   records appended but not submitted yet are written with it). If
//!   records appended this turn are pending at a `submit`, the mark goes at
//!   the end of that write instead.
//! * [`Wal::durable_end`], which sync acknowledgements wait for, advances
//!   only once such a mark is written: no acknowledgement of sync data ever
//!   goes out before a mark claiming it is in the page cache. After kill -9
//!   (the page cache survives) every acknowledged byte lies below a claim
//!   found in the log. After a power loss the last mark may be lost with
//!   the other unsynced bytes; the claims then lag by at most the last
//!   `fdatasync` (the next one would have covered the mark).
//! * Marks cost one small write per `fdatasync` and 22 bytes of log; a mark
//!   alone asks for no `fdatasync` (`submit(true)` with only marks unsynced
//!   does nothing). On the Raft log of issue 11 the same claim is what a
//!   follower reports as persisted.
//!
//! # Recovery rules (applied by [`Wal::open`] and [`Wal::open_replay`])
//!
//! 1. Segments are listed by name and must be contiguous (`next.base ==
//!    base + capacity`); every header and every record (both CRCs) is
//!    verified. A gap is an error naming the missing range; with `repair`
//!    the gap is filled with an empty sparse segment and reported.
//! 2. A segment file shorter than its header's capacity (someone truncated
//!    it) is read as if zero-extended and is extended back with `fallocate`.
//! 3. The *newest data segment* is the last one holding any non-zero byte
//!    after its header. In it, the first bad record (a CRC mismatch, an
//!    impossible length, a length running past the segment, or non-zero
//!    bytes after the zero end marker) at offset `X` is a **torn write**
//!    if both hold:
//!    * no durable mark in the valid records after `X` (found by the same
//!      search repair uses) claims a position beyond `X`: otherwise `X`
//!      was durable before the mark was written, and its damage is not a
//!      crash artifact; and
//!    * every non-zero byte lies within `max(TORN_WINDOW_BYTES, L)` of
//!      `X`, where `L` is the length of the record at `X` if its header
//!      verifies, else [`RECORD_BYTES_MAX`]: the writer never lets more
//!      than [`TORN_WINDOW_BYTES`] be written but not synced, except for
//!      one larger record written alone (see "Write path"), and it writes
//!      nothing into a new segment until every byte of the old one is
//!      durable, so everything a crash can leave half-written lies in one
//!      segment, in that span after the last durable byte, which is at or
//!      before `X`.
//!
//!    A torn tail is dropped: the bytes from `X` to the last non-zero byte
//!    are zeroed and `fdatasync`ed (valid records among them are unsynced
//!    writes that a power loss kept out of order: nothing claims them), a
//!    `log::warn!` names the segment, the offset and the byte count, and
//!    [`RecoveryReport::torn_tail`] says the same. After kill -9 nothing is
//!    torn except a write the kill cut short, which was never acknowledged.
//! 4. Anything else is corruption: a bad record or non-zero garbage in an
//!    older segment (all of it was durable), or in the newest data segment
//!    damage that a mark shows was durable, or that reaches past the span
//!    above. `open` fails with [`WalError::Corrupt`], naming the file, the
//!    offset of the damaged record and `--repair`. With `repair`, exactly
//!    the damaged records are skipped: the next valid record is the one
//!    right after the damaged one when its header verifies (its length is
//!    known), else the first offset at least a header further whose
//!    record verifies; the skipped range is first saved to
//!    `quarantine/<segment file>@<file offset>` in the log's directory
//!    (fsync'd, listed in [`RecoveryReport::quarantined`]), then
//!    overwritten with padding records (or zeroed if no valid record
//!    follows), so the next open is clean; every valid record after it is
//!    kept, and every skip is in [`RecoveryReport::skipped`].
//! 5. Empty segments after the newest data segment are segments prepared
//!    ahead of time and are kept.
//!
//! The zero checks (the end-of-data rule, rules 3 and 4, which segment is
//! the newest data segment, and repair's search for the next valid
//! record) read only the ranges that `lseek(SEEK_DATA / SEEK_HOLE)`
//! reports as data; the rest of a segment is a hole, or an unwritten
//! preallocated extent, and reads as zeros by definition, so skipping it
//! changes no outcome. That makes `open` cost proportional to the data,
//! not to the preallocated capacity. Measured on ext4 (kernel 6.18): an
//! unwritten (fallocated) extent is a hole, except for its pages in the
//! page cache, which count as data whether written (dirty, before any
//! writeback) or only read (cached zeros: more than the truth, which only
//! costs reading them); after a crash, blocks whose write never completed
//! read as zeros and are holes. A file system without `SEEK_DATA` reports
//! all of the file as data (and an unexpected `lseek` error is treated
//! the same way): the full read of before.
//!
//! [`Wal::open_replay`] hands each record to the caller right after the
//! open-time scan verified its CRC, so start-up reads and checks every
//! byte once instead of twice (`open`, then `replay`). Only records that
//! every outcome of these rules keeps are delivered: the scan of a segment
//! stops at its first bad record, and what follows a repaired range is
//! delivered after the repair, from the re-verifying rescan.
//!
//! # Write path
//!
//! Appends are copied into an in-memory batch (readable at once).
//! [`Wal::submit`] seals it and writes it right away, on the calling
//! (shard) thread: one `pwrite` per touched segment (normally one), a
//! buffered write into a preallocated segment, that is a copy into the
//! page cache. Only the `fdatasync` runs in the background, on a per-WAL
//! flusher thread or as an io_uring entry (`Backend::Auto` takes the
//! thread; see `AUTO_ORDER` in `wal.rs` for the measurement), at most
//! [`FLIGHTS_MAX`] at a time. An fdatasync covers everything written
//! before it started; what is written (or asked to be synced) while it
//! runs waits for the next one, which starts as soon as it completes and
//! covers all of it: one fdatasync per flight, shared by every batch
//! written before it (group commit). Writes never wait for a running
//! fdatasync, except in the two cases that keep recovery correct:
//!
//! * at most [`TORN_WINDOW_BYTES`] may be written but not durable (rule 3
//!   above): a write that would pass it is held back (whole records at a
//!   time) until an fdatasync completes; a single record larger than the
//!   window is written alone, once nothing else is unsynced, and nothing
//!   follows it until it is durable. To make waiting rare, the WAL starts
//!   an fdatasync by itself once [`SYNC_AHEAD_BYTES`] are outstanding;
//! * nothing is written into a segment while an older one holds bytes
//!   that are not durable (only the newest data segment may hold a torn
//!   tail): at a segment roll, the first write into the new segment waits
//!   for the fdatasync of the old one, about once per segment. Near the
//!   end of a segment the WAL syncs ahead sooner
//!   ([`ROLL_SYNC_AHEAD_MIN_BYTES`]), so that wait is short.
//!
//! What is held back is written by [`Wal::poll_completions`] when that
//! fdatasync completes. Progress is two positions: [`Wal::written_end`]
//! (every byte below is in the OS: async acknowledgements may go out;
//! advances inside `submit`) and [`Wal::durable_end`] (every byte below is
//! fdatasync'd and claimed by a written durable mark: sync
//! acknowledgements may go out, a crash loses nothing below it; advances
//! when `poll_completions` collects an fdatasync and writes its mark). Both
//! only grow. Submitted batches complete in id order when their end is
//! written (async) or durable (sync); completion of an fdatasync is
//! signalled on an eventfd the shard registers in its mio `Poll`, while
//! async batches need no signal: they are complete when `submit` returns.
//! The write costs the shard's thread what it used to cost the flusher
//! thread (measured with `WAL_LAT=1 cargo bench -p cmq-broker --bench
//! wal`, the `submit` call alone): one 64-byte record 0.3 µs (p99 3 µs,
//! also while an fdatasync runs); 64 of them (4.7 KB, a fresh page-cache
//! page each time) 2 µs, p99 about 150 µs (not from our code: the 1-record
//! case runs the same path; probably ext4's work on fresh pages of an
//! unwritten extent right after an fdatasync, unverified); a 1 MiB batch
//! about 0.2-0.3 ms, p99 about 1-2 ms. New segments are created, and
//! released ones unmapped and deleted, by a per-shard housekeeper thread
//! (an unmap of a 64 MiB segment with resident pages took about 20 ms on
//! the shard's loop); so are checkpoints (below).
//!
//! After a write or fsync error, or a segment creation failing for any
//! other reason than a full disk, the WAL refuses all writes (the
//! PostgreSQL fsync lesson) until [`Wal::try_recover`] has re-validated the
//! tail (it re-reads what was written but not synced, checks it, writes it
//! again and fdatasyncs it; it keeps failing while the fault lasts).
//! Appended bytes not yet written are dropped; once a running fdatasync
//! has finished, every batch that has not completed fails (the first with
//! the error, later ones with [`WalError::Unavailable`]), and recovery
//! resumes at `written_end`. Nothing is acknowledged that an fdatasync did
//! not cover: a sync batch whose fdatasync failed fails.
//!
//! # Full disk
//!
//! Segments are preallocated, so a full disk cannot fail a write into an
//! existing segment; it fails the creation of the next one (fallocate,
//! file creation or rename with ENOSPC / EDQUOT). That failure writes
//! nothing and loses nothing, so it does not fail the WAL. Recovery from it
//! never depends on a whole free segment appearing:
//!
//! * Each log keeps a **spare segment**: `spare-segment` in its
//!   directory, [`SPARE_SEGMENT_BYTES`] preallocated (created at open,
//!   before the first segment, and renewed by the housekeeper before it
//!   creates any other segment, so a shard on a shared disk keeps its own
//!   emergency allowance). When the next segment cannot be created for
//!   lack of space, the housekeeper turns the spare into it instead
//!   (header, fsync, rename: no new space needed): an *emergency segment*,
//!   recognised by its size (smaller than [`SEGMENT_BYTES_MIN`]).
//! * Appends have a class ([`AppendClass`]). `Normal` appends (new data)
//!   fill the last normal segment and never go into an emergency segment:
//!   they get [`WalError::NoSpace`] and add nothing. `Reserve` appends (the
//!   broker's deletes, receives and visibility changes: small, and they
//!   lead to space being freed) go on in the emergency segment, and get
//!   `NoSpace` only once it is full and no further spare can be made. The
//!   WAL stays writable and readable; batches already appended complete
//!   normally.
//! * The head of the log has moved into the emergency segment, so every
//!   older segment, including the one that filled up, can be released as
//!   soon as its messages are deleted (the shard's housekeeping, about once
//!   a second, takes a catalog; the segments go as soon as it is durable).
//!   A release retries the creation of the next segment at once (queued
//!   behind the deletions, so it sees their space); otherwise it is retried
//!   by the housekeeper at most every [`NO_SPACE_RETRY_MS`] while appends
//!   need it. As soon as a normal segment exists, the head moves into it
//!   (appends or not), so the emergency segment is released in turn and
//!   its space, too, goes back to the disk, and `Normal` appends resume; no
//!   operator action, restart or `try_recover` is needed. Shards sharing
//!   the disk recover one after the other as each gives its emergency
//!   segment back. A released segment's file is never held open (its
//!   space would stay allocated).
//! * A restart on a full disk finds the emergency segment and goes on the
//!   same way; an emergency segment prepared ahead of the head and never
//!   written to becomes the spare again (or is deleted if a spare exists),
//!   so a shard never holds two allowances.
//! * A write or fdatasync that fails (with ENOSPC, EIO or anything else)
//!   is not this case: it fails the WAL as described above.
//!
//! # Checkpoints
//!
//! [`Wal::checkpoint`] writes a file beside the log (the shard's catalog:
//! `engine/catalog.rs`) on the housekeeper thread, never on the shard's
//! loop: the housekeeper first fdatasyncs the log up to the checkpoint's
//! position (so the file never claims records a crash could lose), then
//! writes `<name>.next` (kept preallocated, so a full disk does not stop
//! it), fsyncs it, renames it over `<name>` and fsyncs the directory.
//! [`Wal::poll_checkpoint`] reports the outcome; only then may the caller
//! release segments below the checkpoint's position.

mod checkpoint;
mod error;
mod format;
mod housekeeper;
mod io;
pub mod lock;
pub mod manifest;
mod mmap;
mod recovery;
mod segment;
mod uring;
mod wal;

pub use error::{ReplayError, WalError};
pub use lock::{DataDirLock, LockError};
pub use manifest::{Manifest, ManifestError};
pub use wal::{
    AppendClass, Backend, BatchId, LogPos, Progress, RecoveryReport, SegmentInfo, SkippedRange, TornTail, Wal,
    WalConfig,
};

use cmq_protocol::limits::{BATCH_MSGS_MAX, MSG_BYTES_MAX};

/// Bytes of the segment header at file offset 0.
pub const SEGMENT_HEADER_BYTES: u64 = 32;

/// Bytes of a record header: length (4), type (1), payload CRC (4), header
/// CRC (4).
pub const RECORD_HEADER_BYTES: u64 = 13;

/// Room for everything of an engine record but its message bodies: per-body
/// lengths and record fields, the tags and routing key of a publish, and up
/// to 65,535 matched subscription ids (4 bytes each, 256 KiB) of one
/// `Published` record; twice that for headroom.
pub const RECORD_OVERHEAD_MAX_BYTES: u32 = 512 << 10;

/// Largest record payload: the engine's largest record is a batch of
/// `BATCH_MSGS_MAX` message bodies of up to `MSG_BYTES_MAX` each (16 MiB)
/// plus their headers. An append beyond it fails with `RecordTooLarge`.
pub const RECORD_PAYLOAD_MAX_BYTES: u32 = BATCH_MSGS_MAX as u32 * MSG_BYTES_MAX + RECORD_OVERHEAD_MAX_BYTES;

/// Largest record on disk, header included.
pub const RECORD_BYTES_MAX: u64 = RECORD_HEADER_BYTES + RECORD_PAYLOAD_MAX_BYTES as u64;

/// Default segment size: big enough that rolls (one file creation in the
/// background, one extra fdatasync) are rare, small enough that releasing
/// a segment frees space in reasonable steps.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;

/// Room kept free at the end of every segment for durable marks: data
/// records stop this short of a segment's end, so the marks that claim
/// them always fit behind them (at most three follow the last data record
/// of a segment, see `Wal::append_mark`; one more for margin).
pub const SEGMENT_MARK_ROOM_BYTES: u64 = 4 * format::DURABLE_MARK_BYTES;

/// Smallest allowed segment: the largest record (a record never spans
/// segments) behind the header, plus the mark room, rounded up to whole
/// MiB (17 MiB).
pub const SEGMENT_BYTES_MIN: u64 = 17 << 20;

/// Largest allowed segment: the open-time scan maps whole segments, and
/// release works in whole segments.
pub const SEGMENT_BYTES_MAX: u64 = 4 << 30;

/// Most bytes that may be written but not yet covered by a completed
/// fdatasync at any moment, except for one record larger than this,
/// which is written alone (nothing else unsynced before or after it); see
/// the recovery rules. Bounds what a power loss can leave half-written,
/// and so how far beyond a bad record the recovery scan accepts garbage
/// as a torn write.
pub const TORN_WINDOW_BYTES: u64 = 8 << 20;

/// fdatasyncs running at once. One is enough: while it runs, what is
/// written meanwhile waits for the next one, which covers all of it
/// (natural group commit), and durable positions advance in order by
/// construction.
pub const FLIGHTS_MAX: usize = 1;

/// Written-but-not-durable bytes at which the WAL starts an fdatasync on
/// its own, though no batch asked for one: half the torn window, so that
/// with async data streaming in, the sync of one half runs while the
/// other half is written, and writes rarely wait for a full window.
pub const SYNC_AHEAD_BYTES: u64 = TORN_WINDOW_BYTES / 2;

/// Near the end of a segment the WAL syncs ahead sooner: once the bytes
/// not yet durable reach the room left in the segment (but at least this
/// many), so that at the roll, where the first write into the next segment
/// waits for the old one to be durable, little is left to sync. Costs a
/// few extra fdatasyncs per segment, only for async data (sync data is
/// synced at once anyway).
pub const ROLL_SYNC_AHEAD_MIN_BYTES: u64 = 1 << 20;

/// Submitted batches not yet reported. Past this, `submit` joins the last
/// batch whatever its kind (an async batch may then wait for an
/// fdatasync). Only reached when writes are held back for a long time
/// (a stalled disk) while the loop keeps submitting alternately sync and
/// async batches: one batch per loop turn at most.
pub const BATCHES_MAX: usize = 1024;

/// Size of the spare segment file each log keeps preallocated (the
/// emergency allowance): when the disk is too full for a new segment, the
/// spare becomes the next segment, and only [`AppendClass::Reserve`]
/// records (receives, deletes, visibility changes: what leads to space
/// being freed) may go into it while it is the last segment. Sized to
/// receive and delete, one at a time, every message of a full default
/// segment of 1 KiB messages: about 62,400 `Enqueued` records of 1,079
/// bytes fit in 64 MiB, and a `Received` (43 bytes) plus a `Deleted` (27
/// bytes) record per message take 70 x 62,400 = 4.2 MiB; segments are
/// released as soon as their messages are deleted, so this is rarely used
/// up.
pub const SPARE_SEGMENT_BYTES: u64 = 5 << 20;

/// While the disk is full, creation of the next segment is retried (by the
/// housekeeper thread, never on the shard's loop) at most this often, so a
/// full disk is not hammered with fallocate calls; a `release_before` that
/// frees a segment retries at once.
pub const NO_SPACE_RETRY_MS: u64 = 100;

/// Space a checkpoint file (the shard's catalog) keeps preallocated for its
/// next version, at least: twice the last version's size, and never less
/// than this. Writing the catalog is what lets segments be released, so a
/// full disk must not stop it.
pub const CHECKPOINT_RESERVE_MIN_BYTES: u64 = 64 << 10;

const _: () = assert!(SEGMENT_BYTES_DEFAULT >= SEGMENT_BYTES_MIN);
const _: () = assert!(SEGMENT_HEADER_BYTES + RECORD_BYTES_MAX + SEGMENT_MARK_ROOM_BYTES <= SEGMENT_BYTES_MIN);
// The minimum is no larger than it needs to be (less than 1 MiB of slack).
const _: () =
    assert!(SEGMENT_BYTES_MIN - (SEGMENT_HEADER_BYTES + RECORD_BYTES_MAX + SEGMENT_MARK_ROOM_BYTES) < 1 << 20);
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_MAX);
// The torn window covers only part of the smallest segment.
const _: () = assert!(TORN_WINDOW_BYTES < SEGMENT_BYTES_MIN / 2);
const _: () = assert!(SYNC_AHEAD_BYTES > 0 && SYNC_AHEAD_BYTES < TORN_WINDOW_BYTES);
const _: () = assert!(ROLL_SYNC_AHEAD_MIN_BYTES > 0 && ROLL_SYNC_AHEAD_MIN_BYTES <= SYNC_AHEAD_BYTES);
// The spare is a small emergency segment (segments that small are told
// apart from normal ones by their size) with room for many small records.
const _: () = assert!(SPARE_SEGMENT_BYTES < SEGMENT_BYTES_MIN);
const _: () = assert!(SPARE_SEGMENT_BYTES >= SEGMENT_HEADER_BYTES + SEGMENT_MARK_ROOM_BYTES + (1 << 20));
// The length field stores the whole record length in a u32.
const _: () = assert!(RECORD_BYTES_MAX < u32::MAX as u64);
