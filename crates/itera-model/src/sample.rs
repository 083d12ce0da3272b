//! Next-token sampling: greedy, temperature, top-k and top-p (nucleus), from a seeded stream.
//! Shared by the native CLI and the browser so that the same seed gives the same text in both.

use crate::init::Rng;

/// Sampling settings. `temperature == 0` means greedy (argmax); `top_k == 0` and `top_p >= 1`
/// switch those filters off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingConfig {
    pub temperature: f64, // logits are divided by it; 0 = greedy
    pub top_k: usize,     // keep the k most likely tokens; 0 = all
    pub top_p: f64,       // keep the smallest set whose probability reaches p; 1 = all
    pub seed: u64,        // seeds the sampling stream
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self { temperature: 0.8, top_k: 40, top_p: 0.95, seed: 0 }
    }
}

impl SamplingConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("temperature must be a finite number ≥ 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p must be in (0, 1], got {}", self.top_p));
        }
        Ok(())
    }
}

pub struct Sampler {
    cfg: SamplingConfig,
    rng: Rng,
}

impl Sampler {
    pub fn new(cfg: SamplingConfig) -> Self {
        Self { rng: Rng::new(cfg.seed), cfg }
    }

    /// Picks the next token from one row of logits (V).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.cfg.temperature == 0.0 || self.cfg.top_k == 1 {
            return argmax(logits);
        }
        // Candidates sorted by logit, descending; ties broken by id so the order is total.
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        idx.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        if self.cfg.top_k > 0 {
            idx.truncate(self.cfg.top_k);
        }
        // Softmax at temperature over the survivors (f64: sums of small terms).
        let t = self.cfg.temperature;
        let max = logits[idx[0] as usize] as f64;
        let mut probs: Vec<f64> = idx.iter().map(|&i| ((logits[i as usize] as f64 - max) / t).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        // Nucleus: the shortest prefix whose mass reaches top_p.
        if self.cfg.top_p < 1.0 {
            let mut mass = 0.0;
            let mut keep = probs.len();
            for (j, p) in probs.iter().enumerate() {
                mass += p;
                if mass >= self.cfg.top_p {
                    keep = j + 1;
                    break;
                }
            }
            probs.truncate(keep);
            idx.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut u = self.rng.uniform() * total;
        for (j, p) in probs.iter().enumerate() {
            u -= p;
            if u < 0.0 {
                return idx[j];
            }
        }
        idx[probs.len() - 1]
    }
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_argmax() {
        let mut s = Sampler::new(SamplingConfig { temperature: 0.0, ..Default::default() });
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0]), 1);
    }

    #[test]
    fn top_k_and_top_p_never_pick_outside_their_set() {
        let logits = [5.0f32, 4.0, 3.0, -2.0, -3.0, 1.0];
        let mut k2 = Sampler::new(SamplingConfig { temperature: 1.0, top_k: 2, top_p: 1.0, seed: 1 });
        let mut p = Sampler::new(SamplingConfig { temperature: 1.0, top_k: 0, top_p: 0.5, seed: 1 });
        for _ in 0..500 {
            assert!(k2.sample(&logits) < 2);
            assert_eq!(p.sample(&logits), 0); // token 0 alone holds > 0.5 of the mass
        }
    }

    #[test]
    fn sampling_follows_the_softmax_and_is_seeded() {
        let logits = [0.0f32, (3.0f32).ln()]; // probabilities 1/4, 3/4
        let cfg = SamplingConfig { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 7 };
        let mut s = Sampler::new(cfg);
        let draws: Vec<u32> = (0..4000).map(|_| s.sample(&logits)).collect();
        let ones = draws.iter().filter(|&&t| t == 1).count() as f64 / 4000.0;
        assert!((ones - 0.75).abs() < 0.03, "share of token 1: {ones}");
        let mut again = Sampler::new(cfg);
        assert!(draws.iter().all(|&t| t == again.sample(&logits)));
    }

    #[test]
    fn bad_settings_are_rejected_with_the_setting_named() {
        let bad = SamplingConfig { top_p: 0.0, ..Default::default() };
        assert!(bad.validate().unwrap_err().contains("top-p"));
        let bad = SamplingConfig { temperature: -1.0, ..Default::default() };
        assert!(bad.validate().unwrap_err().contains("temperature"));
    }
}
