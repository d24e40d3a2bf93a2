//! raft-rs logs through `slog`; this drain forwards its records to the
//! `log` crate (which cmqd configures), under the target `cmq::raft`.

use slog::{o, Drain, Level, Logger, OwnedKVList, Record};

struct ToLog;

impl Drain for ToLog {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, _values: &OwnedKVList) -> Result<(), slog::Never> {
        let level = match record.level() {
            Level::Critical | Level::Error => log::Level::Error,
            Level::Warning => log::Level::Warn,
            Level::Info => log::Level::Info,
            Level::Debug => log::Level::Debug,
            Level::Trace => log::Level::Trace,
        };
        if log::log_enabled!(target: "cmq::raft", level) {
            log::log!(target: "cmq::raft", level, "{}", record.msg());
        }
        Ok(())
    }
}

/// A logger for the replica of node `id`.
pub fn logger(id: u64) -> Logger {
    Logger::root(ToLog.fuse(), o!("node" => id))
}
