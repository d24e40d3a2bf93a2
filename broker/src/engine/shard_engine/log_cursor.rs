//! Where the engine stands in its log: the last position written or
//! replayed (positions only grow), how much of the log a loaded catalog
//! already reflects, and the buffer records are encoded into.

#[derive(Default)]
pub(super) struct LogCursor {
    /// Reused for every record's fixed fields (bodies are never copied in).
    pub(super) scratch: Vec<u8>,
    /// Position of the last record logged or replayed (positions only grow).
    pub(super) last_log_pos: u64,
    /// Queue-management records before this log position are already in
    /// the loaded catalog and are skipped by replay.
    pub(super) catalog_pos: u64,
    /// A snapshot's catalog reflects entries up to this one, which are
    /// still to be applied: until then every queue-management record is
    /// already in the catalog (see `load_snapshot_catalog`).
    pub(super) catalog_entry: Option<u64>,
}
