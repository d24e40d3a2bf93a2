//! cmqd: the cmq broker. See docs/ARCHITECTURE.md for the thread model and data flow.

pub mod engine;
pub mod storage;
