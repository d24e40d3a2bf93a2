//! Memory per queued message: fills one queue with N messages (bodies are
//! not kept in memory: they live in the log) and reports the index's heap
//! bytes and the process's resident-set growth per message.
//!
//! `cargo run --release -p cmq-broker --example memory_per_message -- 10000000`

use bytes::Bytes;
use cmq_broker::engine::{Durability, EngineConfig, EngineError, Log, ShardEngine};
use cmq_protocol::{FlushPolicy, QueueAttributesUpdate};

#[derive(Default)]
struct NullLog {
    end: u64,
}

impl Log for NullLog {
    fn append(&mut self, _rtype: u8, parts: &[&[u8]], _d: Durability) -> Result<u64, EngineError> {
        let pos = self.end + 9;
        self.end = pos + parts.iter().map(|p| p.len() as u64).sum::<u64>();
        Ok(pos)
    }
    fn read(&self, _pos: u64, _len: u32) -> Result<&[u8], EngineError> {
        Ok(&[])
    }
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10_000_000);
    let cfg =
        EngineConfig { shard: 0, shard_count: 1, secret: [1; 16], default_flush: FlushPolicy::Async, queues_max: 10 };
    let mut e = ShardEngine::new(cfg);
    let mut log = NullLog::default();
    let attrs = QueueAttributesUpdate { max_msg_heap_num: Some(1_000_000_000), ..Default::default() };
    e.create_queue(&mut log, 1, "q", &attrs, 1).expect("create");
    let bodies: Vec<Bytes> = (0..16).map(|_| Bytes::from_static(&[b'x'; 64])).collect();
    let before = rss_bytes();
    let mut sent = 0;
    while sent < n {
        e.send(&mut log, 1_000, "q", 0, &bodies).expect("send");
        sent += 16;
    }
    let after = rss_bytes();
    let heap = e.index_heap_bytes() as f64;
    println!("messages queued:        {sent}");
    println!("index heap bytes/msg:   {:.1}", heap / sent as f64);
    println!("RSS growth bytes/msg:   {:.1}", (after.saturating_sub(before)) as f64 / sent as f64);
    println!("log bytes written:      {} MiB (stays on disk, read through the page cache)", log.end >> 20);
}
