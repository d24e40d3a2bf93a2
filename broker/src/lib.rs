//! cmqd: the cmq broker. See docs/ARCHITECTURE.md for the thread model and data flow.

pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod consensus;
pub mod console;
pub mod engine;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod push;
pub mod server;
pub mod shard;
pub mod sim;
pub mod storage;
pub mod tls;
