//! `--http URL`: the same producers and consumers over the CMQ API 2.0
//! gateway (`/v2/index.php` on cmqd's HTTP port) instead of the binary
//! protocol: `SendMessage`, `ReceiveMessage` and `DeleteMessage` over
//! keep-alive HTTP/1.1 connections (one per producer and consumer, one
//! request in flight each, as the CMQ SDKs use them), every request signed.
//! Queues are still set up over the binary protocol (`--server`), which can
//! set their flush policy.
//!
//! * `sign`: the spec's signature and form body.
//! * `conn`: one connection and the JSON envelope.
//! * `agent`: the producer and consumer loops.

pub mod agent;
pub mod conn;
pub mod sign;

use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Context};

use crate::stats::{Counters, Run};
use crate::worker::{Finished, Job, Outcome, Shape};
use agent::Ctx;
use conn::Conn;
use sign::{Hash, Signer};

/// Where and how to send: the gateway's `host:port` and the key.
#[derive(Clone)]
pub struct Target {
    pub authority: String,
    pub secret_id: String,
    pub secret_key: Vec<u8>,
    pub hash: Hash,
}

impl Target {
    /// `--http http://HOST:PORT[/v2/index.php]` (plain HTTP only).
    pub fn parse(url: &str, creds: Option<(&str, &str)>, hash: Hash) -> anyhow::Result<Target> {
        let uri: hyper::Uri = url.parse().with_context(|| format!("--http {url:?} is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            bail!("--http {url:?}: only http:// URLs are supported");
        }
        if !matches!(uri.path(), "" | "/" | sign::API_PATH) {
            bail!("--http {url:?}: the path must be {} (or none)", sign::API_PATH);
        }
        let Some(authority) = uri.authority().filter(|a| a.port().is_some()) else {
            bail!("--http {url:?}: give the host and port, e.g. http://127.0.0.1:7780");
        };
        let (secret_id, secret_key) = creds.unwrap_or((sign::ANONYMOUS_SECRET_ID, ""));
        Ok(Target {
            authority: authority.as_str().to_owned(),
            secret_id: secret_id.to_owned(),
            secret_key: secret_key.as_bytes().to_vec(),
            hash,
        })
    }

    fn signer(&self) -> Signer {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        let seed = u64::from_le_bytes(seed) >> 2;
        Signer::new(&self.secret_id, &self.secret_key, self.hash, &self.authority, seed)
    }
}

/// The threads of an HTTP run and their counters (as `Workers` holds them).
pub type Started = (Vec<JoinHandle<Vec<Finished>>>, Vec<Arc<Counters>>);

/// Spreads `jobs` round-robin over `threads` single-threaded runtimes (0:
/// one per job), each running its jobs as tasks, and starts them.
pub fn start(jobs: Vec<Job>, threads: usize, shape: Shape, target: &Target, run: &Arc<Run>) -> anyhow::Result<Started> {
    let n = if threads == 0 { jobs.len() } else { threads.min(jobs.len()) }.max(1);
    let mut shares: Vec<Vec<Job>> = (0..n).map(|_| Vec::new()).collect();
    for (i, job) in jobs.into_iter().enumerate() {
        shares[i % n].push(job);
    }
    let (mut handles, mut counters) = (Vec::new(), Vec::new());
    for (t, share) in shares.into_iter().enumerate() {
        let c = Arc::new(Counters::new());
        counters.push(c.clone());
        let (run, target) = (run.clone(), target.clone());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting a runtime")?;
        let h = std::thread::Builder::new()
            .name(format!("loadgen-http-{t}"))
            .spawn(move || rt.block_on(drive(share, shape, target, run, c)))
            .context("spawning an HTTP load thread")?;
        handles.push(h);
    }
    Ok((handles, counters))
}

/// Connects every job, runs them all, and collects what they hand back.
async fn drive(jobs: Vec<Job>, shape: Shape, target: Target, run: Arc<Run>, c: Arc<Counters>) -> Vec<Finished> {
    let mut tasks = Vec::new();
    for job in jobs {
        let ctx = Ctx {
            run: run.clone(),
            counters: c.clone(),
            size: shape.size,
            wait_s: shape.wait_s,
            verify: shape.verify,
            backlog_max: shape.backlog_max,
        };
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let conn = match Conn::connect(&target.authority, target.signer()).await {
                Ok(conn) => conn,
                Err(e) => return unconnected(job, &ctx, e),
            };
            match job {
                Job::Produce(spec) => agent::produce(spec, conn, ctx).await,
                Job::Consume(spec) => agent::consume(spec, conn, ctx).await,
            }
        }));
    }
    let mut done = Vec::with_capacity(tasks.len());
    for t in tasks {
        done.push(t.await.unwrap_or_else(|_| Finished {
            producer: None,
            out: Outcome { broken: Some("an HTTP load task panicked".into()), ..Outcome::default() },
        }));
    }
    done
}

fn unconnected(job: Job, ctx: &Ctx, e: conn::CallError) -> Finished {
    let out = Outcome { broken: Some(format!("could not connect to the gateway: {e}")), ..Outcome::default() };
    ctx.counters.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match job {
        Job::Produce(spec) => {
            ctx.run.producers_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Finished { producer: Some(spec.index), out }
        }
        Job::Consume(_) => Finished { producer: None, out },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let t = Target::parse("http://127.0.0.1:7780", None, Hash::Sha256).expect("plain");
        assert_eq!(t.authority, "127.0.0.1:7780");
        assert_eq!(t.secret_id, sign::ANONYMOUS_SECRET_ID);
        let t = Target::parse("http://localhost:80/v2/index.php", Some(("AKID", "k")), Hash::Sha1).expect("path");
        assert_eq!((t.authority.as_str(), t.secret_id.as_str()), ("localhost:80", "AKID"));
        for bad in ["https://h:1", "http://h", "http://h:1/other", "not a url", "127.0.0.1:7780"] {
            assert!(Target::parse(bad, None, Hash::Sha256).is_err(), "{bad}");
        }
    }
}
