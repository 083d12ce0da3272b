//! Data parallelism (`train --world-size N`): N copies of the model (ranks), each reading its own
//! rows of every global batch. After the backward pass the ranks' gradients are summed (an
//! all-reduce), so every rank takes the same optimizer step, from the gradient one rank reading
//! the whole batch would have had: each rank's loss is first scaled by its share of the batch
//! ([`Shares`]: its tokens, or its answers, over the whole batch's).
//!
//! The group here is in-process, a thread per rank ([`local_group`]): each sum is computed once,
//! in rank order, and handed to every rank, so the ranks hold the same bits at every step and a
//! resumed run at the same world size continues bit for bit. On the CPU the ranks share the
//! `--threads` pool; on several GPUs (`--device cuda`, rank r on `cuda:N+r`) the sums go through
//! host memory (an NCCL group on the devices is issue 16's next step).
//!
//! What is not exactly the one-rank gradient: the MoE's load-balancing loss is a statistic of the
//! batch it sees (the routing shares times the mean router probabilities), so each rank's is of its
//! own rows and the group averages them, as data-parallel MoE training usually does.

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// What the trainer needs from a group of ranks.
pub trait Collective: Send + Sync {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// The element-wise sum of every rank's `values` (all of one length), the same on every rank.
    fn all_reduce_sum(&self, values: Vec<f32>) -> Result<Vec<f32>>;
}

/// Gradients are summed in buckets of at most this many values (one for all small variables).
pub const BUCKET: usize = 1 << 22;

struct Round {
    generation: u64,
    arrived: usize,
    slots: Vec<Option<Vec<f32>>>,
    sum: Arc<Vec<f32>>,
    failure: Option<String>,
}

struct Shared {
    n: usize,
    round: Mutex<Round>,
    turn: Condvar,
}

/// One rank of an in-process group; dropping it (a rank that returns, or fails) makes any later
/// collective of the others an error instead of a wait.
pub struct LocalRank {
    rank: usize,
    shared: Arc<Shared>,
}

/// The `n` ranks of a new in-process group, rank 0 first: move each to its own thread.
pub fn local_group(n: usize) -> Vec<LocalRank> {
    let shared = Arc::new(Shared {
        n,
        round: Mutex::new(Round {
            generation: 0,
            arrived: 0,
            slots: vec![None; n],
            sum: Arc::new(Vec::new()),
            failure: None,
        }),
        turn: Condvar::new(),
    });
    (0..n).map(|rank| LocalRank { rank, shared: shared.clone() }).collect()
}

impl LocalRank {
    fn lock(&self) -> Result<MutexGuard<'_, Round>> {
        self.shared.round.lock().map_err(|_| anyhow::anyhow!("rank {}: the group's lock is poisoned", self.rank))
    }
}

impl Collective for LocalRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.n
    }

    fn all_reduce_sum(&self, values: Vec<f32>) -> Result<Vec<f32>> {
        let mut round = self.lock()?;
        if let Some(why) = &round.failure {
            bail!("rank {}: {why}", self.rank);
        }
        let generation = round.generation;
        round.slots[self.rank] = Some(values);
        round.arrived += 1;
        if round.arrived == self.shared.n {
            // The last to arrive sums, in rank order, for everyone.
            let slots: Vec<Vec<f32>> = round.slots.iter_mut().map(|s| s.take().unwrap_or_default()).collect();
            let len = slots[0].len();
            if let Some((r, s)) = slots.iter().enumerate().find(|(_, s)| s.len() != len) {
                let why = format!("all-reduce of unequal lengths (rank 0: {len} values, rank {r}: {})", s.len());
                round.failure = Some(why.clone());
                self.shared.turn.notify_all();
                bail!("rank {}: {why}", self.rank);
            }
            let mut sum = slots[0].clone();
            for s in &slots[1..] {
                sum.iter_mut().zip(s).for_each(|(a, b)| *a += b);
            }
            round.sum = Arc::new(sum);
            round.arrived = 0;
            round.generation += 1;
            self.shared.turn.notify_all();
            return Ok(round.sum.to_vec());
        }
        while round.generation == generation && round.failure.is_none() {
            round = self
                .shared
                .turn
                .wait(round)
                .map_err(|_| anyhow::anyhow!("rank {}: the group's lock is poisoned", self.rank))?;
        }
        if round.generation == generation {
            bail!("rank {}: {}", self.rank, round.failure.as_deref().unwrap_or("the group failed"));
        }
        // No later round can have finished: it needs this rank.
        Ok(round.sum.to_vec())
    }
}

impl Drop for LocalRank {
    fn drop(&mut self) {
        if let Ok(mut round) = self.shared.round.lock() {
            if round.failure.is_none() {
                round.failure = Some(format!("rank {} left the group", self.rank));
            }
            self.shared.turn.notify_all();
        }
    }
}

/// Sums every variable's gradient over the group, in place (`vars` in the same order on every
/// rank). A variable without a gradient on this rank (an expert none of its tokens chose) counts
/// as zeros, and gets the sum when any rank had one; one that no rank had stays without.
pub fn all_reduce_grads(grads: &mut GradStore, vars: &[Var], group: &dyn Collective) -> Result<()> {
    let have: Vec<f32> = vars.iter().map(|v| f32::from(u8::from(grads.get(v.as_tensor()).is_some()))).collect();
    let have = group.all_reduce_sum(have)?;
    let mut start = 0;
    while start < vars.len() {
        let (mut end, mut len) = (start, 0);
        while end < vars.len() && (end == start || len + vars[end].elem_count() <= BUCKET) {
            len += vars[end].elem_count();
            end += 1;
        }
        let mut bucket = Vec::with_capacity(len);
        for v in &vars[start..end] {
            match grads.get(v.as_tensor()) {
                Some(g) => bucket.extend(g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
                None => bucket.resize(bucket.len() + v.elem_count(), 0.0),
            }
        }
        let sum = group.all_reduce_sum(bucket)?;
        let mut at = 0;
        for (v, &had) in vars[start..end].iter().zip(&have[start..end]) {
            let n = v.elem_count();
            if had > 0.0 {
                let g = Tensor::from_slice(&sum[at..at + n], v.shape(), v.device())?.to_dtype(v.dtype())?;
                grads.insert(v.as_tensor(), g);
            }
            at += n;
        }
        start = end;
    }
    Ok(())
}

/// A rank's share of the global batch, by which its mean losses are scaled before the gradients
/// are summed: text tokens, answer tokens (reading examples, task answers), and the MoE's
/// load-balancing loss (1 / N).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shares {
    pub text: f64,
    pub answers: f64,
    pub aux: f64,
}

impl Shares {
    /// From this rank's counts of text and answer tokens, summed over the group.
    pub fn of(text: usize, answers: usize, group: &dyn Collective) -> Result<Shares> {
        let all = group.all_reduce_sum(vec![text as f32, answers as f32])?;
        let share = |mine: usize, all: f32| if all > 0.0 { mine as f64 / all as f64 } else { 0.0 };
        Ok(Shares { text: share(text, all[0]), answers: share(answers, all[1]), aux: 1.0 / group.world_size() as f64 })
    }
}

/// The rows of a global batch of `batch` that `rank` of `world` reads: a contiguous slice.
pub fn rows(batch: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    let per = batch / world;
    rank * per..(rank + 1) * per
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_sums_in_rank_order_for_everyone_and_a_rank_that_leaves_fails_the_rest() {
        let ranks = local_group(3);
        let sums: Vec<Vec<f32>> = std::thread::scope(|s| {
            let handles: Vec<_> = ranks
                .iter()
                .map(|r| {
                    s.spawn(move || {
                        let mut out = Vec::new();
                        for round in 0..50 {
                            out.extend(r.all_reduce_sum(vec![r.rank() as f32 + round as f32, 1.0]).unwrap());
                        }
                        out
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for s in &sums {
            assert_eq!(s, &sums[0]);
        }
        for round in 0..50 {
            assert_eq!(&sums[0][2 * round..2 * round + 2], &[3.0 + 3.0 * round as f32, 3.0]);
        }
        // Rank 2 leaves: the others' next collective is an error, not a wait.
        let mut ranks = ranks;
        drop(ranks.pop());
        let errs: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> =
                ranks.iter().map(|r| s.spawn(move || r.all_reduce_sum(vec![1.0]).unwrap_err().to_string())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(errs.iter().all(|e| e.contains("rank 2 left the group")), "{errs:?}");
    }

    #[test]
    fn unequal_lengths_are_an_error_on_every_rank() {
        let ranks = local_group(2);
        let errs: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> =
                ranks.iter().map(|r| s.spawn(move || r.all_reduce_sum(vec![0.0; 1 + r.rank()]).is_err())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(errs, [true, true]);
    }

    #[test]
    fn rows_split_the_batch_without_overlap() {
        let all: Vec<usize> = (0..4).flat_map(|r| rows(16, r, 4)).collect();
        assert_eq!(all, (0..16).collect::<Vec<_>>());
    }
}
