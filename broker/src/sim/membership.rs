//! Membership changes in the simulation: now and then during the faulty
//! phase a new, empty node joins (`cmq cluster add-node`) and then an old
//! voter other than the leader is removed (`remove-node`) and stopped for
//! good: a dead node replaced. One change at a time, each proposed to the
//! leader through the path the shard uses (`Shard::membership`:
//! `Replica::propose_add_node` / `propose_remove_node`, after the turn's own
//! entry), and proposed again, to whoever leads, until the leader has
//! applied it.

use rand::Rng;

use super::{Node, Sim};

/// Virtual milliseconds between tries of a change not yet applied.
const RETRY_MS: u64 = 50;

/// The change under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Idle,
    /// Node `id` (new, empty) is being added.
    Adding {
        id: u64,
    },
    /// Node `id` is being removed.
    Removing {
        id: u64,
    },
}

/// A change for the leader to propose in its next turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proposal {
    Add(u64),
    Remove(u64),
}

impl Sim {
    /// Starts a change now and then (faulty phase only), and drives the one
    /// under way: proposes it again until the leader applied it.
    pub(super) fn drive_membership(&mut self, faults: bool) {
        if self.now < self.next_change_ms {
            return;
        }
        self.next_change_ms = self.now + RETRY_MS;
        let Some(leader) = self.leader() else { return };
        let voters = self.nodes[leader].replica.as_ref().map(|r| r.voters()).unwrap_or_default();
        match self.change {
            Change::Idle => {
                let start = faults && self.rng.random_range(0..1000) < self.opts.membership_per_mille;
                if start {
                    let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
                    self.nodes.push(Node::new(id, true));
                    let i = self.nodes.len() - 1;
                    // A new node starts at once (an empty data directory, `--join`).
                    self.nodes[i].restart_at = self.now;
                    self.change = Change::Adding { id };
                    self.trace(0xadd ^ id);
                }
            }
            Change::Adding { id } if voters.contains(&id) => {
                // Added: now replace an old voter, never the leader.
                let leader_id = self.nodes[leader].id;
                let old: Vec<u64> = voters.iter().copied().filter(|v| *v != id && *v != leader_id).collect();
                let Some(victim) = old.get(self.rng.random_range(0..old.len().max(1))).copied() else {
                    self.change = Change::Idle;
                    return;
                };
                self.change = Change::Removing { id: victim };
                self.trace(0x4e3 ^ victim);
            }
            Change::Adding { id } => self.nodes[leader].proposal = Some(Proposal::Add(id)),
            Change::Removing { id } if !voters.contains(&id) => {
                // Removed (the change is committed): the node is stopped for good.
                if let Some(i) = self.nodes.iter().position(|n| n.id == id) {
                    self.retire(i);
                }
                self.change = Change::Idle;
            }
            Change::Removing { id } => self.nodes[leader].proposal = Some(Proposal::Remove(id)),
        }
    }

    /// The leader proposes the change it was asked for (after the turn's
    /// own entry, as `Shard::membership` runs; a refusal is retried).
    pub(super) fn propose_change(&mut self, i: usize) {
        let Some(p) = self.nodes[i].proposal.take() else { return };
        let Some(r) = self.nodes[i].replica.as_mut().filter(|r| r.is_leader()) else { return };
        let voters = r.voters();
        let proposed = match p {
            Proposal::Add(id) if voters.contains(&id) => Ok(()),
            Proposal::Add(id) => r.propose_add_node(id, &format!("sim:{id}")),
            Proposal::Remove(id) if !voters.contains(&id) => Ok(()),
            Proposal::Remove(id) => r.propose_remove_node(id),
        };
        self.trace(0xc0c ^ u64::from(proposed.is_ok()));
    }

    /// Node `i` was removed from the group: it stops and never restarts.
    fn retire(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.retired = true;
        n.up = false;
        n.replica = None;
        n.restart_at = u64::MAX;
        for h in std::mem::take(&mut n.held) {
            super::fail_reply(&mut self.ledger, &h.reply);
            self.clients[h.client].busy = None;
        }
        for (c, op, _) in std::mem::take(&mut n.inbox) {
            super::fail_op(&mut self.ledger, &op);
            self.clients[c].busy = None;
        }
        self.report.removed += 1;
    }

    /// The node that leads (and may serve), if any.
    pub(super) fn leader(&self) -> Option<usize> {
        self.nodes.iter().position(|n| n.up && n.replica.as_ref().is_some_and(|r| r.is_leader()))
    }

    /// A node that was not removed, at random.
    pub(super) fn random_member(&mut self) -> u64 {
        let ids: Vec<u64> = self.nodes.iter().filter(|n| !n.retired).map(|n| n.id).collect();
        ids[self.rng.random_range(0..ids.len())]
    }
}
