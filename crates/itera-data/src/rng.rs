//! SplitMix64: the one seeded random stream of the project (model init, sampling, the generated
//! world and tasks). Its state is one `u64`, so a checkpoint stores and restores it exactly.

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough for init and sampling.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The raw state, so that a checkpoint can store and restore the stream exactly.
    pub fn state(&self) -> u64 {
        self.0
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }

    /// `n` distinct items of `items` (all of them if there are fewer), chosen uniformly by a
    /// partial Fisher-Yates shuffle, returned in their original order.
    pub fn sample<T: Clone>(&mut self, items: &[T], n: usize) -> Vec<T> {
        let mut idx: Vec<usize> = (0..items.len()).collect();
        let n = n.min(items.len());
        for i in 0..n {
            let j = i + self.below(items.len() - i);
            idx.swap(i, j);
        }
        let mut chosen = idx[..n].to_vec();
        chosen.sort_unstable();
        chosen.into_iter().map(|i| items[i].clone()).collect()
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_distinct_in_order_seeded_and_covers_every_residue() {
        let items: Vec<usize> = (0..6000).collect();
        let a = Rng::new(7).sample(&items, 100);
        assert_eq!(a.len(), 100);
        assert!(a.windows(2).all(|w| w[0] < w[1]), "not distinct and in order");
        assert_eq!(a, Rng::new(7).sample(&items, 100));
        assert_ne!(a, Rng::new(8).sample(&items, 100));
        // items grouped in sixes (entity, then attribute): a stride of 60 would hit one residue only
        let mut residues = [0; 6];
        for i in &a {
            residues[i % 6] += 1;
        }
        assert!(residues.iter().all(|&r| r >= 5), "residues {residues:?}");
        assert_eq!(Rng::new(1).sample(&items[..3], 10), vec![0, 1, 2]);
    }
}
