//! The k best (score, doc) pairs of a scan, in a deterministic order: higher score first, and
//! among equal scores the lower document id, so the same index gives the same hits everywhere.

use crate::Hit;

pub(crate) struct TopK {
    k: usize,
    hits: Vec<Hit>, // best first, len ≤ k
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        Self { k, hits: Vec::with_capacity(k.min(1024)) }
    }

    /// Offers one candidate. Documents must be offered in increasing id order: then a later
    /// document with an equal score ranks below the earlier ones, which is the tie rule.
    #[inline]
    pub(crate) fn push(&mut self, doc: usize, score: f32) {
        if self.hits.len() == self.k {
            match self.hits.last() {
                Some(last) if score > last.score => {}
                _ => return, // k = 0, or not better than the k-th (NaN is never better)
            }
            self.hits.pop();
        }
        if score.is_nan() {
            return;
        }
        let at = self.hits.partition_point(|h| h.score >= score);
        self.hits.insert(at, Hit { doc, score });
    }

    pub(crate) fn into_hits(self) -> Vec<Hit> {
        self.hits
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_best_k_with_ties_to_the_lower_id() {
        let mut t = TopK::new(3);
        for (doc, s) in [(0, 1.0), (1, 3.0), (2, 1.0), (3, 3.0), (4, 2.0), (5, f32::NAN), (6, 1.0)] {
            t.push(doc, s);
        }
        let got: Vec<_> = t.into_hits().iter().map(|h| (h.doc, h.score)).collect();
        assert_eq!(got, [(1, 3.0), (3, 3.0), (4, 2.0)]);
        let mut none = TopK::new(0);
        none.push(0, 1.0);
        assert!(none.into_hits().is_empty());
    }
}
