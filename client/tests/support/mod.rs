//! Test support. Queue semantics come from the real `cmqd` (started per test
//! on an ephemeral port with a temporary data directory: it is ready in
//! milliseconds); a [`tap::Tap`] in front of it shows what a client sent; a
//! [`scripted::ScriptedServer`] stands in only where a test needs a server
//! that misbehaves.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod cli;
pub mod scripted;
pub mod tap;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cmq_client::Client;
#[allow(unused_imports)]
pub use cmq_integration_tests::{Broker, HttpRequest, HttpSink};

/// How long test clients wait on a silent server.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a test waits for something the broker does in the background
/// (a redrive, a transaction check, a push): generous, since tests share
/// two CPUs with other builds.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// A fresh cmqd with `shards` shards.
pub fn broker(shards: u16) -> Broker {
    Broker::start(&["--shards", &shards.to_string()])
}

pub fn client(addr: SocketAddr) -> Client {
    Client::connect_with_timeout(addr, Some(CLIENT_TIMEOUT)).expect("connect")
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Polls `cond` until it holds or [`EVENT_TIMEOUT`] passes; panics naming `what`.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
