//! cmq-loadgen: load generator and verifier for the cmq broker.
//! `cmq-loadgen --help` documents every option; README-level notes are in
//! `docs/BENCHMARKS.md`.

mod body;
mod driver;
mod http;
mod opts;
mod pipe;
mod report;
mod route;
mod schedule;
mod stats;
mod transport;
mod verify;
mod worker;

use std::process::ExitCode;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use cmq_client::{Client, ClientError, ErrorCode, FlushPolicy, QueueAttributesUpdate, ToSeeds};
use cmq_protocol::names::shard_for;

use crate::opts::{Flush, Mode, Opts};
use crate::report::{Measured, Report};
use crate::route::Router;
use crate::stats::{Counters, ErrorCounts, Hists, Phase, Run, Snapshot};
use crate::verify::{AckSet, Delivery};
use crate::worker::{ConsumerSpec, Finished, Job, Outcome, ProducerSpec, Shape};

/// How often the monitor looks at the run (phase changes, completion).
const TICK: Duration = Duration::from_millis(50);

/// How often the per-second progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// How often a draining run asks the broker whether its queues are empty.
const EMPTY_CHECK_EVERY: Duration = Duration::from_millis(250);

/// Candidate names tried per queue when looking for one on a given shard;
/// with S shards about S tries are needed, so this is never reached in practice.
const NAME_TRIES_MAX: usize = 1_000_000;

fn main() -> ExitCode {
    let opts = Opts::parse().effective();
    if let Err(e) = opts.validate() {
        eprintln!("cmq-loadgen: {e}");
        return ExitCode::from(1);
    }
    match run(opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cmq-loadgen: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Queue names `PREFIX-K`, the i-th on shard `i % shards`, so that N queues
/// spread as evenly as possible. Deterministic: `--reuse` finds the same names.
pub fn pick_queue_names(prefix: &str, n: usize, shards: u16) -> anyhow::Result<Vec<(String, u16)>> {
    let shards = shards.max(1);
    let mut out = Vec::with_capacity(n);
    let mut k = 0usize;
    for i in 0..n {
        let want = (i % usize::from(shards)) as u16;
        let start = k;
        loop {
            let name = format!("{prefix}-{k}");
            k += 1;
            if shard_for(&name, shards) == want {
                out.push((name, want));
                break;
            }
            if k - start > NAME_TRIES_MAX {
                bail!("found no queue name for shard {want} with prefix {prefix:?}");
            }
        }
    }
    Ok(out)
}

/// Splits `n` workers (producers or consumers, one connection each) over the
/// queues: worker t serves the shard `t % shards-with-queues`, and the queues
/// of one shard are divided among that shard's workers (shared when there are
/// more workers than queues).
/// Every worker's queues live on one shard, so its connection needs no hop.
pub fn assign(n: usize, queues: &[(String, u16)]) -> Vec<(u16, Vec<String>)> {
    let mut by_shard: Vec<(u16, Vec<String>)> = Vec::new();
    for (name, shard) in queues {
        match by_shard.iter_mut().find(|(s, _)| s == shard) {
            Some((_, v)) => v.push(name.clone()),
            None => by_shard.push((*shard, vec![name.clone()])),
        }
    }
    let groups = by_shard.len();
    if groups == 0 {
        return Vec::new();
    }
    if n < groups {
        // Fewer workers than shards: each takes whole shards; its connection
        // goes to the first, and the broker forwards the rest.
        return (0..n)
            .map(|t| {
                let mine: Vec<&(u16, Vec<String>)> = by_shard.iter().skip(t).step_by(n).collect();
                (mine[0].0, mine.iter().flat_map(|(_, names)| names.iter().cloned()).collect())
            })
            .collect();
    }
    (0..n)
        .map(|t| {
            let (shard, names) = &by_shard[t % groups];
            let workers = n / groups + usize::from(t % groups < n % groups);
            let k = t / groups;
            let mine: Vec<String> = if names.len() >= workers {
                names.iter().skip(k).step_by(workers).cloned().collect()
            } else {
                vec![names[k % names.len()].clone()]
            };
            (*shard, mine)
        })
        .collect()
}

/// Splits `total` into `parts` near-equal shares.
pub fn split_budget(total: u64, parts: usize) -> Vec<u64> {
    let parts_u = parts.max(1) as u64;
    (0..parts as u64).map(|i| total / parts_u + u64::from(i < total % parts_u)).collect()
}

fn setup_queues(admin: &mut Client, opts: &Opts, names: &[(String, u16)]) -> anyhow::Result<()> {
    let attrs = QueueAttributesUpdate {
        visibility_timeout: Some(opts.visibility_timeout),
        flush_policy: Some(match opts.flush {
            Flush::Sync => FlushPolicy::Sync,
            Flush::Async => FlushPolicy::Async,
        }),
        max_msg_size: Some((opts.size as u32).max(cmq_protocol::limits::MSG_BYTES_LIMIT_MIN)),
        ..Default::default()
    };
    for (name, _) in names {
        if !opts.reuse {
            match admin.delete_queue(name) {
                Ok(()) => {}
                Err(e) if e.code() == Some(ErrorCode::QUEUE_NOT_FOUND) => {}
                Err(e) => return Err(e).with_context(|| format!("deleting queue {name}")),
            }
        }
        match admin.create_queue(name, &attrs) {
            Ok(_) => {}
            Err(e) if opts.reuse && e.code() == Some(ErrorCode::QUEUE_ALREADY_EXISTS) => {}
            Err(e) => return Err(e).with_context(|| format!("creating queue {name}")),
        }
    }
    Ok(())
}

/// True when none of the queues holds a message (ready, in flight or delayed).
fn queues_empty(admin: &mut Client, names: &[(String, u16)]) -> Result<bool, ClientError> {
    for (name, _) in names {
        let info = admin.queue_info(name)?;
        if info.active_msg_num + info.inactive_msg_num + info.delay_msg_num > 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The event-loop threads of a run, each driving its share of the connections.
struct Workers {
    handles: Vec<JoinHandle<Vec<Finished>>>,
    /// One set per thread.
    counters: Vec<Arc<Counters>>,
}

impl Workers {
    /// Spreads `jobs` round-robin over `threads` event loops (0: one per job)
    /// and starts them.
    fn start(
        jobs: Vec<Job>,
        threads: usize,
        shape: Shape,
        router: &Arc<Router>,
        run: &Arc<Run>,
    ) -> anyhow::Result<Workers> {
        let n = if threads == 0 { jobs.len() } else { threads.min(jobs.len()) };
        let mut shares: Vec<Vec<Job>> = (0..n).map(|_| Vec::new()).collect();
        for (i, job) in jobs.into_iter().enumerate() {
            shares[i % n].push(job);
        }
        let mut w = Workers { handles: Vec::new(), counters: Vec::new() };
        for (t, share) in shares.into_iter().enumerate() {
            let c = Arc::new(Counters::new());
            w.counters.push(c.clone());
            let (run, router) = (run.clone(), router.clone());
            let h = std::thread::Builder::new()
                .name(format!("loadgen-{t}"))
                .spawn(move || driver::drive(share, shape, router, run, c))
                .context("spawning an event-loop thread")?;
            w.handles.push(h);
        }
        Ok(w)
    }

    fn all_finished(&self) -> bool {
        self.handles.iter().all(JoinHandle::is_finished)
    }

    fn join(self) -> Vec<Finished> {
        let mut all = Vec::new();
        for h in self.handles {
            match h.join() {
                Ok(f) => all.extend(f),
                Err(_) => all.push(Finished {
                    producer: None,
                    out: Outcome { broken: Some("an event-loop thread panicked".into()), ..Outcome::default() },
                }),
            }
        }
        all
    }

    /// Moves every thread's latency samples into `into`.
    fn collect(&self, into: &mut Hists) {
        for c in &self.counters {
            if let Ok(mut h) = c.hists.lock() {
                into.absorb(&mut h);
            }
        }
    }
}

fn producer_jobs(opts: &Opts, queues: &[(String, u16)], budget: Option<u64>) -> Vec<Job> {
    let plan = assign(opts.producers, queues);
    let budgets = budget.map(|b| split_budget(b, opts.producers));
    let rate = opts.rate.map(|r| r / opts.producers as f64);
    plan.into_iter()
        .enumerate()
        .map(|(i, (shard, names))| {
            Job::Produce(ProducerSpec {
                index: i as u32,
                shard,
                queues: names,
                budget: budgets.as_ref().map(|b| b[i]),
                rate,
            })
        })
        .collect()
}

fn consumer_jobs(consumers: usize, queues: &[(String, u16)]) -> Vec<Job> {
    assign(consumers, queues)
        .into_iter()
        .enumerate()
        .map(|(i, (shard, names))| Job::Consume(ConsumerSpec { index: i as u32, shard, queues: names }))
        .collect()
}

/// `--tls`, `--ca-file`, `--tls-cert/--tls-key`, `--tls-server-name`: the
/// TLS settings (None: plaintext), as `cmq` reads them.
fn tls_options(opts: &Opts) -> anyhow::Result<Option<cmq_client::TlsOptions>> {
    let wanted = opts.tls || opts.ca_file.is_some() || opts.tls_cert.is_some() || opts.tls_server_name.is_some();
    if !wanted {
        return Ok(None);
    }
    let client_cert = opts.tls_cert.as_deref().zip(opts.tls_key.as_deref());
    let mut options = cmq_client::TlsOptions::new(opts.ca_file.as_deref(), client_cert)?;
    if let Some(name) = &opts.tls_server_name {
        options = options.with_server_name(name)?;
    }
    Ok(Some(options))
}

fn run(opts: Opts) -> anyhow::Result<ExitCode> {
    let seeds = opts.server.to_seeds().with_context(|| format!("--server {}", opts.server))?;
    let creds = cmq_client::Credentials::resolve(
        opts.secret_id.as_deref(),
        opts.secret_key.as_deref(),
        opts.credentials.as_deref(),
        None,
    )?;
    if let Some(c) = &creds {
        pipe::use_credentials(c.clone());
    }
    let http_target = match &opts.http {
        Some(url) => {
            let key = creds.as_ref().map(|c| (c.secret_id.as_str(), c.secret_key.as_str()));
            let hash = if opts.sha1 { http::sign::Hash::Sha1 } else { http::sign::Hash::Sha256 };
            Some(http::Target::parse(url, key, hash)?)
        }
        None => None,
    };
    let tls = tls_options(&opts)?;
    if let Some(t) = &tls {
        pipe::use_tls(t.clone());
    }
    let mut admin = Client::connect_secure(&seeds[..], Some(Duration::from_secs(10)), creds, tls)
        .with_context(|| format!("connecting to {}", opts.server))?;
    let shards = admin.shard_count();
    let cluster = admin.known_cluster();
    // Keys where the client library sends them by default: in a cluster.
    let keys = match (opts.idempotency_keys, opts.no_idempotency_keys) {
        (_, true) => false,
        (true, _) => true,
        _ => cluster.nodes.len() > 1 || seeds.len() > 1,
    };
    let router = Arc::new(Router::new(seeds, shards, &cluster));
    let n_queues = if opts.queues == 0 { usize::from(shards) } else { opts.queues };
    let queues = pick_queue_names(&opts.queue_prefix, n_queues, shards)?;
    setup_queues(&mut admin, &opts, &queues)?;
    let nonce = run_nonce();
    let shape = Shape {
        pipeline: opts.pipeline,
        batch: opts.batch,
        size: opts.size,
        wait_s: opts.wait,
        verify: opts.verify,
        backlog_max: opts.backlog_max_n(),
        keys,
    };
    let mut outcomes: Vec<Finished> = Vec::new();

    // Consume mode: fill the queues first, unmeasured, at full speed.
    let mut preloaded = 0;
    if opts.mode == Mode::Consume && opts.preload_n() > 0 {
        let t = Instant::now();
        let pre_run = Arc::new(Run::new(nonce, Phase::Measure));
        let pre_shape = Shape { pipeline: opts.pipeline.max(8), ..shape };
        let mut pre_opts = opts.clone();
        pre_opts.rate = None;
        pre_opts.producers = opts.producers.max(1);
        let jobs = producer_jobs(&pre_opts, &queues, Some(opts.preload_n()));
        let pre = Workers::start(jobs, opts.threads, pre_shape, &router, &pre_run)?;
        outcomes.extend(pre.join());
        preloaded = pre_run.acked_total.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("preloaded {preloaded} messages in {:.1} s", t.elapsed().as_secs_f64());
    }

    let warmup = Duration::from_secs_f64(opts.warmup_s());
    let run = Arc::new(Run::new(nonce, if warmup.is_zero() { Phase::Measure } else { Phase::Warmup }));
    let spawned_at = Instant::now();
    run.acked_total.store(preloaded, std::sync::atomic::Ordering::Relaxed);
    let producers = if opts.mode == Mode::Consume { 0 } else { opts.producers };
    let mut jobs = Vec::new();
    if producers > 0 {
        jobs.extend(producer_jobs(&opts, &queues, opts.messages));
    }
    let consumers = if opts.mode == Mode::Produce { 0 } else { opts.consumers };
    jobs.extend(consumer_jobs(consumers, &queues));
    let workers = match &http_target {
        Some(target) => {
            let (handles, counters) = http::start(jobs, opts.threads, shape, target, &run)?;
            Workers { handles, counters }
        }
        None => Workers::start(jobs, opts.threads, shape, &router, &run)?,
    };

    let measured = monitor(&opts, &run, &workers, &mut admin, &queues, producers, spawned_at)?;
    outcomes.extend(workers.join());

    // Merge what the threads kept.
    let mut errors = ErrorCounts::new();
    let mut acks: Vec<AckSet> = Vec::new();
    let mut deliveries: Vec<Delivery> = Vec::new();
    let mut broken: Vec<String> = Vec::new();
    // acks[p] is producer p's set. Producer indices restart at 0 for the main
    // run; preload producers and main producers never coexist (consume mode
    // has no main producers).
    for Finished { producer, out: o } in outcomes {
        for (k, v) in o.errors {
            *errors.entry(k).or_default() += v;
        }
        if let Some(p) = producer {
            let p = p as usize;
            if acks.len() <= p {
                acks.resize_with(p + 1, AckSet::default);
            }
            acks[p] = o.acks.unwrap_or_default();
        }
        deliveries.extend(o.deliveries);
        broken.extend(o.broken);
    }
    let verdict = (opts.verify && opts.mode != Mode::Produce).then(|| {
        let mut v = verify::judge(&acks, &mut deliveries);
        v.sample_lost = verify::some_lost(&acks, &deliveries, 5);
        v
    });
    let report = Report::new(&opts, shards, &queues, measured, errors, verdict, broken);
    report.print();
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())? + "\n")
            .with_context(|| format!("writing {path}"))?;
    }
    Ok(ExitCode::from(report.exit_code()))
}

/// A random-enough value per run (no RNG dependency needed for this).
fn run_nonce() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let x = (t as u64) ^ (u64::from(std::process::id()) << 32);
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32
}

/// Latency samples on their way from the threads to the report.
struct Samples {
    /// Just taken from the threads.
    step: Hists,
    /// Since the last progress line.
    second: Hists,
    /// The measured interval.
    total: Hists,
}

impl Samples {
    /// Takes every thread's samples, counting them for `phase` (only the
    /// measured phase's go into the report). A pass over every histogram's
    /// buckets, so done once per progress line and right before phase changes.
    fn gather(&mut self, workers: &Workers, phase: Phase) {
        workers.collect(&mut self.step);
        if phase == Phase::Measure {
            let _ = self.total.send_ack.add(&self.step.send_ack);
            let _ = self.total.e2e.add(&self.step.e2e);
        }
        self.second.absorb(&mut self.step);
    }
}

/// Drives the run's phases, prints progress, and returns the measured interval.
fn monitor(
    opts: &Opts,
    run: &Run,
    workers: &Workers,
    admin: &mut Client,
    queues: &[(String, u16)],
    producers: usize,
    spawned_at: Instant,
) -> anyhow::Result<Measured> {
    use std::sync::atomic::Ordering::Relaxed;
    let pid = opts.server_pid.map(|p| p.to_string());
    let broker_cpu = || pid.as_deref().and_then(stats::cpu_seconds);
    let self_cpu = || stats::cpu_seconds("self");
    // Counters start at zero when the threads are spawned.
    let begin = spawned_at;
    let warmup = Duration::from_secs_f64(opts.warmup_s());
    let duration = opts.duration_s().map(Duration::from_secs_f64);
    let drain_timeout = Duration::from_secs_f64(opts.drain_timeout);
    let has_consumers = opts.mode != Mode::Produce;

    let mut m = Measured::default();
    let mut start: Option<(Instant, Snapshot, Option<f64>, Option<f64>)> = None;
    let mut machine_start = None;
    if run.phase() == Phase::Measure {
        start = Some((begin, Snapshot::default(), broker_cpu(), self_cpu()));
        machine_start = stats::machine_busy_seconds();
    }
    let mut samples = Samples { step: Hists::new(), second: Hists::new(), total: Hists::new() };
    let mut last_progress = begin;
    let mut last_snap = Snapshot::default();
    let mut drain_since: Option<Instant> = None;
    let mut last_empty_check = begin;
    let mut drained_empty = false;

    loop {
        std::thread::sleep(TICK);
        let now = Instant::now();
        let phase = run.phase();
        // Moving samples costs a pass over every histogram's buckets, so it
        // happens once per progress line and right before each phase change.
        if now - last_progress >= PROGRESS_EVERY {
            samples.gather(workers, phase);
            let snap = Snapshot::take(&workers.counters);
            report::progress(now - begin, phase, &snap.since(&last_snap), now - last_progress, &samples.second);
            samples.second.send_ack.reset();
            samples.second.e2e.reset();
            last_snap = snap;
            last_progress = now;
        }

        let producers_done = run.producers_done.load(Relaxed) >= producers;
        let accounted = producers_done
            && !run.uncertain.load(Relaxed)
            // Acquire: pairs with the consumers' Release, so the deleted
            // counts read next include the deletes these firsts waited for.
            && run.first_deliveries.load(std::sync::atomic::Ordering::Acquire) >= run.acked_total.load(Relaxed);
        // Once producers are done, an empty broker means nothing more will arrive.
        let mut check_empty = |admin: &mut Client| -> bool {
            if drained_empty {
                return true;
            }
            if !has_consumers || !producers_done || now - last_empty_check < EMPTY_CHECK_EVERY {
                return false;
            }
            last_empty_check = now;
            drained_empty = queues_empty(admin, queues).unwrap_or(false);
            drained_empty
        };
        let everyone_gone = workers.all_finished();

        match phase {
            Phase::Warmup => {
                if now - begin >= warmup || everyone_gone {
                    samples.gather(workers, phase);
                    run.set_phase(Phase::Measure);
                    start = Some((now, Snapshot::take(&workers.counters), broker_cpu(), self_cpu()));
                    machine_start = stats::machine_busy_seconds();
                }
            }
            Phase::Measure => {
                let (t0, _, _, _) = start.expect("measuring has a start");
                let done = match (duration, opts.mode) {
                    _ if everyone_gone => true,
                    (Some(d), _) => now - t0 >= d,
                    (None, Mode::Produce) => producers_done,
                    // Consume N: N deliveries (any body, so --reuse backlogs count), or nothing left.
                    (None, Mode::Consume) => {
                        Snapshot::take(&workers.counters).received >= opts.messages.unwrap_or(0) || check_empty(admin)
                    }
                    (None, Mode::Cycle) => accounted || check_empty(admin),
                };
                if done {
                    samples.gather(workers, phase);
                    let (t0, s0, b0, l0) = start.take().expect("measuring has a start");
                    m.secs = (now - t0).as_secs_f64();
                    m.counts = Snapshot::take(&workers.counters).since(&s0);
                    m.broker_cpu_s = broker_cpu().zip(b0).map(|(b1, b0)| b1 - b0);
                    m.loadgen_cpu_s = self_cpu().zip(l0).map(|(l1, l0)| l1 - l0);
                    m.machine_cpu_s = stats::machine_busy_seconds().zip(machine_start).map(|(b, a)| b - a);
                    let drain = opts.verify && has_consumers && !accounted && !drained_empty && !everyone_gone;
                    run.set_phase(if drain { Phase::Drain } else { Phase::Stop });
                    if drain {
                        drain_since = Some(now);
                        eprintln!(
                            "draining: {} messages unaccounted for",
                            run.acked_total.load(Relaxed).saturating_sub(run.first_deliveries.load(Relaxed))
                        );
                    }
                }
            }
            Phase::Drain => {
                let since = drain_since.unwrap_or(now);
                if accounted || everyone_gone || check_empty(admin) || now - since >= drain_timeout {
                    m.drain_secs = (now - since).as_secs_f64();
                    m.drain_timed_out = !accounted && !drained_empty && now - since >= drain_timeout;
                    run.set_phase(Phase::Stop);
                }
            }
            Phase::Stop => break,
        }
    }
    m.hists = samples.total;
    m.acked_total = run.acked_total.load(Relaxed);
    m.wall_secs = begin.elapsed().as_secs_f64();
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_spread_evenly_over_shards() {
        let names = pick_queue_names("lg", 6, 3).unwrap();
        let shards: Vec<u16> = names.iter().map(|(_, s)| *s).collect();
        assert_eq!(shards, vec![0, 1, 2, 0, 1, 2]);
        for (n, s) in &names {
            assert_eq!(shard_for(n, 3), *s);
        }
        // Deterministic, so --reuse finds them again.
        assert_eq!(names, pick_queue_names("lg", 6, 3).unwrap());
    }

    #[test]
    fn every_worker_stays_on_one_shard_and_every_queue_is_served() {
        let queues = pick_queue_names("lg", 4, 2).unwrap();
        for threads in [1, 2, 3, 4, 5, 8] {
            let plan = assign(threads, &queues);
            assert_eq!(plan.len(), threads);
            for (shard, names) in &plan {
                assert!(!names.is_empty());
                if threads >= 2 {
                    assert!(names.iter().all(|n| shard_for(n, 2) == *shard));
                }
            }
            for (q, _) in &queues {
                assert!(plan.iter().any(|(_, n)| n.contains(q)), "{q} unserved with {threads} threads");
            }
        }
    }

    #[test]
    fn budgets_add_up() {
        assert_eq!(split_budget(10, 3), vec![4, 3, 3]);
        assert_eq!(split_budget(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(split_budget(20_000, 8).iter().sum::<u64>(), 20_000);
    }
}
