//! Frame encode/decode cost: the per-request work every message pays twice
//! (client and broker).

use bytes::{Bytes, BytesMut};
use cmq_protocol::frame;
use cmq_protocol::*;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn batch_send(size: usize) -> Request {
    Request::BatchSendMessage(BatchSendMessage {
        queue: "bench-queue".into(),
        delay_seconds: 0,
        bodies: (0..16).map(|_| Bytes::from(vec![b'x'; size])).collect(),
        ..Default::default()
    })
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for size in [64usize, 1024] {
        let req = batch_send(size);
        g.throughput(Throughput::Elements(16));
        g.bench_function(format!("encode_batch_send_16x{size}"), |b| {
            let mut out = Vec::with_capacity(64 * 1024);
            b.iter(|| {
                out.clear();
                req.encode_frame(1, &mut out);
                out.len()
            })
        });
        let mut encoded = Vec::new();
        req.encode_frame(1, &mut encoded);
        g.bench_function(format!("decode_batch_send_16x{size}"), |b| {
            b.iter_batched(
                || BytesMut::from(&encoded[..]),
                |mut buf| {
                    let total = frame::check(&buf).ok().flatten().unwrap_or(0);
                    let (h, payload) = frame::split(&mut buf, total);
                    Request::decode(h.opcode, payload).map(|r| r.opcode())
                },
                BatchSize::SmallInput,
            )
        });
        let msg = ReceivedMessage { body: Bytes::from(vec![b'y'; size]), ..Default::default() };
        let resp = Response::BatchReceiveMessage(BatchReceiveMessageOk { messages: vec![msg; 16] });
        g.bench_function(format!("encode_batch_receive_16x{size}"), |b| {
            let mut out = Vec::with_capacity(64 * 1024);
            b.iter(|| {
                out.clear();
                resp.encode_frame(1, &mut out);
                out.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
