//! The event loop: one thread drives many connections.
//!
//! Each connection is a non-blocking `RawPipe` with one job (a producer or a
//! consumer) attached. The thread waits in `epoll` for answers on any of its
//! connections and for the earliest deadline any job asked for, then reads
//! each ready connection once, hands every whole answer to its job (which
//! refills its window right away), and writes what the jobs submitted, one
//! write per connection and wake-up.
//!
//! Why not a thread per connection: with one request in flight per
//! connection (`--pipeline 1`), every answer woke its own thread, so on a
//! small machine the load generator spent a core on context switches and
//! took that core from the broker it was measuring. Here a wake-up collects
//! every answer that arrived meanwhile; what is measured (connections,
//! requests in flight on each, closed or open loop) is unchanged.
//!
//! Deadlines are precise: `epoll_wait` counts in whole milliseconds, so a wait
//! shorter than `PRECISE_BELOW` sleeps in `ppoll` on the epoll descriptor
//! itself, which takes nanoseconds. An open-loop producer therefore sends
//! each request when it is due, not up to a millisecond later (and its
//! latency is counted from the due time anyway; see `schedule.rs`).

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cmq_client::ClientError;
use rustix::event::epoll::{self, CreateFlags, EventData, EventFlags};
use rustix::event::{PollFd, PollFlags};
use rustix::fd::OwnedFd;

use crate::pipe::{timespec, RawPipe};
use crate::route::Router;
use crate::stats::{Counters, Run};
use crate::worker::{Agent, Finished, Job, Shape, Step};
use cmq_client::routes::Learned;

/// How often every job is stepped even without answers or a deadline of its
/// own: how quickly jobs notice a phase change (stop, drain) when idle.
pub const SWEEP: Duration = Duration::from_millis(100);

/// Events taken per `epoll_wait`; more simply wait for the next call.
const EVENTS_MAX: usize = 256;

/// Waits shorter than this use `ppoll` (nanoseconds) instead of `epoll_wait`
/// (milliseconds, rounded up).
const PRECISE_BELOW: Duration = Duration::from_millis(2);

struct Slot {
    /// None while reconnecting (to the shard's new leader).
    pipe: Option<RawPipe>,
    shard: u16,
    agent: Agent,
    /// Failed reconnects (and reroutes to no known leader) since the last
    /// good answer, and since when there is no connection.
    reconnects: u32,
    /// The last reroute found no leader named (an election): back off
    /// before connecting again.
    back_off: bool,
    unconnected_since: Option<Instant>,
    /// When the job wants to be stepped at the latest, answers or not.
    deadline: Option<Instant>,
    /// The job waits for another job's progress: step it on every wake-up.
    paused: bool,
    /// Registered for writability: submitted bytes the socket would not take.
    out_armed: bool,
}

/// How long a job may go without a connection (its shard's leader
/// unreachable, no other node naming a new one) before it gives up. An
/// election takes about a second; this allows for several.
pub const RECONNECT_GIVE_UP: Duration = Duration::from_secs(30);

/// Runs `jobs` to completion on the calling thread, each on its own
/// connection to its shard's leader, and returns what each one hands back.
pub fn drive(jobs: Vec<Job>, shape: Shape, router: Arc<Router>, run: Arc<Run>, c: Arc<Counters>) -> Vec<Finished> {
    let mut finished = Vec::with_capacity(jobs.len());
    let epfd = match epoll::create(CreateFlags::CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => return jobs.into_iter().map(|j| j.failed(&run, &c, ClientError::Io(e.into()))).collect(),
    };
    let mut slots: Vec<Option<Slot>> = Vec::with_capacity(jobs.len());
    for job in jobs {
        let shard = job.shard();
        let pipe = match router.connect(shard) {
            Ok(pipe) => pipe,
            Err(e) => {
                finished.push(job.failed(&run, &c, e));
                continue;
            }
        };
        if let Err(e) = epoll::add(&epfd, pipe.fd(), EventData::new_u64(slots.len() as u64), EventFlags::IN) {
            finished.push(job.failed(&run, &c, ClientError::Io(e.into())));
            continue;
        }
        let agent = job.start(&shape, &run);
        slots.push(Some(Slot {
            pipe: Some(pipe),
            shard,
            agent,
            reconnects: 0,
            back_off: false,
            unconnected_since: None,
            deadline: None,
            paused: false,
            out_armed: false,
        }));
    }
    let mut lp = Loop { epfd, slots, router, run, c, finished };
    lp.run();
    lp.finished
}

struct Loop {
    epfd: OwnedFd,
    slots: Vec<Option<Slot>>,
    router: Arc<Router>,
    run: Arc<Run>,
    c: Arc<Counters>,
    finished: Vec<Finished>,
}

impl Loop {
    fn run(&mut self) {
        for i in 0..self.slots.len() {
            self.turn(i, false);
        }
        let mut events: Vec<epoll::Event> = Vec::with_capacity(EVENTS_MAX);
        let mut next_sweep = Instant::now() + SWEEP;
        let mut serviced: Vec<bool> = vec![false; self.slots.len()];
        while self.slots.iter().any(Option::is_some) {
            let wake = self.slots.iter().flatten().filter_map(|s| s.deadline).fold(next_sweep, Instant::min);
            if let Err(e) = wait(&self.epfd, &mut events, wake) {
                self.abandon(e);
                return;
            }
            serviced.fill(false);
            for ev in &events {
                let i = ev.data.u64() as usize;
                if self.slots.get(i).is_some_and(Option::is_some) {
                    serviced[i] = true;
                    self.turn(i, true);
                }
            }
            let now = Instant::now();
            let sweep = now >= next_sweep;
            if sweep {
                next_sweep = now + SWEEP;
            }
            for (i, &done) in serviced.iter().enumerate() {
                let due =
                    self.slots[i].as_ref().is_some_and(|s| sweep || s.paused || s.deadline.is_some_and(|d| d <= now));
                if due && !done {
                    self.turn(i, false);
                }
            }
        }
    }

    /// Services slot `i`: reads once if `readable`, books every whole answer
    /// (stepping the job after each, as it refills its window), steps it once
    /// when woken without answers, and writes what it submitted.
    fn turn(&mut self, i: usize, readable: bool) {
        let Some(slot) = self.slots[i].as_mut() else { return };
        let (run, c, router) = (&*self.run, &*self.c, &*self.router);
        let Some(pipe) = slot.pipe.as_mut() else { return self.reconnect(i) };
        let mut result = Ok(false);
        if readable {
            result = pipe.read_some();
        }
        let mut last = None;
        while result.is_ok() {
            match pipe.take_frame() {
                Ok(Some(reply)) => {
                    slot.agent.answer(pipe, reply, run, c);
                    match slot.agent.take_not_leader() {
                        Some(msg) => {
                            slot.back_off = router.not_leader(slot.shard, pipe.node(), &msg) == Learned::NoLeader
                        }
                        None => slot.reconnects = 0,
                    }
                    let step = slot.agent.step(pipe, run, c);
                    last = Some(step);
                    if matches!(step, Step::Done | Step::Reroute) {
                        break;
                    }
                }
                Ok(None) => {
                    if last.is_none() {
                        last = Some(slot.agent.step(pipe, run, c));
                    }
                    break;
                }
                Err(e) => result = Err(e),
            }
        }
        if let Err(e) = result {
            // The node went away (or broke the stream): book what was in
            // flight, and find the shard's leader again.
            slot.agent.lost(run, c, &e);
            router.lost(slot.shard, pipe.node());
            return self.disconnect(i);
        }
        (slot.deadline, slot.paused) = match last {
            Some(Step::Wait(d)) => (d, false),
            Some(Step::Paused(d)) => (Some(d), true),
            Some(Step::Reroute) => return self.disconnect(i),
            Some(Step::Done) | None => return self.retire(i),
        };
        if pipe.wants_write() {
            if let Err(e) = pipe.write_some() {
                slot.agent.lost(run, c, &e);
                router.lost(slot.shard, pipe.node());
                return self.disconnect(i);
            }
        }
        let want_out = pipe.wants_write();
        if want_out != slot.out_armed {
            let flags = if want_out { EventFlags::IN | EventFlags::OUT } else { EventFlags::IN };
            if let Err(e) = epoll::modify(&self.epfd, pipe.fd(), EventData::new_u64(i as u64), flags) {
                slot.agent.broke(c, ClientError::Io(e.into()));
                return self.retire(i);
            }
            slot.out_armed = want_out;
        }
    }

    /// Closes slot `i`'s connection and connects again, to its shard's
    /// leader as the router now knows it.
    fn disconnect(&mut self, i: usize) {
        let Some(slot) = self.slots[i].as_mut() else { return };
        if let Some(pipe) = slot.pipe.take() {
            let _ = epoll::delete(&self.epfd, pipe.fd());
        }
        (slot.out_armed, slot.deadline, slot.paused) = (false, None, false);
        slot.unconnected_since.get_or_insert_with(Instant::now);
        if std::mem::take(&mut slot.back_off) {
            // No leader known yet: give the election time.
            slot.deadline = Some(Instant::now() + cmq_client::retry::backoff(slot.reconnects));
            slot.reconnects += 1;
            return;
        }
        self.reconnect(i);
    }

    /// A job without a connection: connect when due (backing off after
    /// failures), give up after [`RECONNECT_GIVE_UP`], or end if there is
    /// nothing left to do.
    fn reconnect(&mut self, i: usize) {
        let Some(slot) = self.slots[i].as_mut() else { return };
        if slot.agent.done_without_connection(&self.run) {
            return self.retire(i);
        }
        let now = Instant::now();
        if slot.deadline.is_some_and(|d| now < d) {
            return;
        }
        match self.router.connect(slot.shard) {
            Ok(pipe) => {
                if let Err(e) = epoll::add(&self.epfd, pipe.fd(), EventData::new_u64(i as u64), EventFlags::IN) {
                    slot.agent.broke(&self.c, ClientError::Io(e.into()));
                    return self.retire(i);
                }
                slot.pipe = Some(pipe);
                slot.agent.connected();
                // Stepped by the loop right away (not from here: a node that
                // refuses again must not recurse).
                (slot.unconnected_since, slot.deadline, slot.paused) = (None, Some(now), false);
            }
            Err(e) if slot.unconnected_since.is_some_and(|t| now - t >= RECONNECT_GIVE_UP) => {
                slot.agent.broke(&self.c, e);
                self.retire(i);
            }
            Err(_) => {
                slot.deadline = Some(now + cmq_client::retry::backoff(slot.reconnects));
                slot.reconnects += 1;
            }
        }
    }

    /// Ends slot `i`'s job and closes its connection.
    fn retire(&mut self, i: usize) {
        if let Some(slot) = self.slots[i].take() {
            if let Some(pipe) = &slot.pipe {
                let _ = epoll::delete(&self.epfd, pipe.fd());
            }
            self.finished.push(slot.agent.finish(&self.run));
        }
    }

    /// The loop itself failed: every job still running ends with `e`.
    fn abandon(&mut self, e: rustix::io::Errno) {
        for i in 0..self.slots.len() {
            if let Some(slot) = self.slots[i].as_mut() {
                slot.agent.broke(&self.c, ClientError::Io(io::Error::from(e)));
                self.retire(i);
            }
        }
    }
}

/// Waits for events until `until` at the latest, leaving them in `events`.
fn wait(epfd: &OwnedFd, events: &mut Vec<epoll::Event>, until: Instant) -> Result<(), rustix::io::Errno> {
    events.clear();
    let left = until.saturating_duration_since(Instant::now());
    let result = if left >= PRECISE_BELOW {
        // Rounded up to whole milliseconds: ask for one less and wake early
        // (the loop then waits the rest) rather than late.
        epoll::wait(epfd, rustix::buffer::spare_capacity(events), Some(&timespec(left - Duration::from_millis(1))))
    } else {
        if !left.is_zero() {
            let mut fds = [PollFd::new(epfd, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&timespec(left))) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        epoll::wait(epfd, rustix::buffer::spare_capacity(events), Some(&timespec(Duration::ZERO)))
    };
    match result {
        Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (with no connection ready) until `until` the way the loop does.
    fn wait_until(epfd: &OwnedFd, until: Instant) {
        let mut events = Vec::with_capacity(EVENTS_MAX);
        while Instant::now() < until {
            wait(epfd, &mut events, until).unwrap();
            assert!(events.is_empty());
        }
    }

    #[test]
    fn waits_end_on_time_not_a_millisecond_late() {
        let epfd = epoll::create(CreateFlags::CLOEXEC).unwrap();
        for wait_us in [150, 700, 3_500] {
            // The best of a few tries, so a busy test machine does not fail it.
            let late = (0..5)
                .map(|_| {
                    let until = Instant::now() + Duration::from_micros(wait_us);
                    wait_until(&epfd, until);
                    Instant::now() - until
                })
                .min()
                .unwrap();
            assert!(late < Duration::from_micros(500), "a {wait_us} µs wait ended {late:?} late");
        }
    }
}
