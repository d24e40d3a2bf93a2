//! The engine's send → receive → delete cycle without I/O: what the broker
//! spends per message besides the network and the disk.

use bytes::Bytes;
use cmq_broker::engine::{Durability, EngineConfig, EngineError, Log, ShardEngine};
use cmq_protocol::{FlushPolicy, QueueAttributesUpdate};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// A log that keeps nothing: positions advance, bodies are not stored.
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

fn engine() -> (ShardEngine, NullLog) {
    let cfg =
        EngineConfig { shard: 0, shard_count: 1, secret: [1; 16], default_flush: FlushPolicy::Async, queues_max: 10 };
    let mut e = ShardEngine::new(cfg);
    let mut log = NullLog::default();
    e.create_queue(&mut log, 1, "q", &QueueAttributesUpdate::default(), 1).expect("create");
    (e, log)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    for batch in [1usize, 16] {
        let bodies: Vec<Bytes> = (0..batch).map(|_| Bytes::from_static(&[b'x'; 64])).collect();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("send_receive_delete_batch{batch}"), |b| {
            let (mut e, mut log) = engine();
            let mut now = 1_000u64;
            b.iter(|| {
                now += 1;
                e.send(&mut log, now, "q", 0, &bodies).expect("send");
                let got = e.receive(&mut log, now, "q", batch, Some(0)).expect("receive").deliveries();
                let handles: Vec<_> = got.iter().map(|d| d.head.receipt_handle).collect();
                e.delete(&mut log, now, "q", &handles).expect("delete").len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
