//! Sparse Mixture-of-Experts feed-forward: a softmax router picks the top-k of E SwiGLU experts for
//! every token, their outputs are summed with the router's probabilities renormalised over the
//! chosen k (Mixtral: `routing_weights /= routing_weights.sum(dim=-1, keepdim=True)`), and a
//! Switch Transformer load-balancing loss (arXiv 2101.03961, Eqn (4)–(6)) is returned beside:
//!
//! ```text
//! aux = α · E · Σ_i f_i · P_i
//! f_i = share of the T·k routing assignments that went to expert i   (no gradient; Σ f_i = 1)
//! P_i = mean over tokens of the router probability of expert i         (carries the gradient)
//! ```
//! With perfectly uniform routing aux = α. For top-k, f counts every one of the k assignments, as
//! HF's `load_balancing_loss_func` does (there normalised per slot, here over all T·k).
//!
//! Two kernels with one signature: [`SparseMoe::forward_sparse`] gathers each expert's tokens
//! (`index_select`), runs the expert on them only, and adds the weighted outputs back with
//! `index_add` (candle's `scatter_add` backward fails); [`SparseMoe::forward_dense`], the reference
//! twin, runs every expert on every token and multiplies by the dense routing weights. On the CPU
//! with fused ops, the sparse kernel is [`SparseMoe::forward_grouped`]: the same, as one op with a
//! hand-written backward (`fused::experts`).
//!
//! Shape letters: T tokens (B·L), D hidden, E experts, K top-k, H expert width.

use crate::baseline::SwiGlu;
use crate::config::IteraLiteConfig;
use crate::fused::experts::{moe_experts, ExpertPlan};
use crate::ops::{project_f32, softmax_last};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// How a [`SparseMoe`] dispatches tokens to experts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MoeKernel {
    /// Tokens gathered per expert: each token costs k experts.
    #[default]
    Sparse,
    /// Reference: every expert on every token, times the routing mask (E/k times the work).
    Dense,
}

pub struct SparseMoe {
    pub(crate) router: Tensor, // (E, D)
    pub(crate) experts: Vec<SwiGlu>,
    pub(crate) top_k: usize,
    aux_coef: f64,
}

/// The router's decision for a batch of tokens.
pub struct Routing {
    pub probs: Tensor,    // (T, E) softmax of the router logits
    pub gates: Tensor,    // (T, K) probabilities of the chosen experts, renormalised to sum 1
    pub chosen: Vec<u32>, // (T·K) expert index per token and slot, on the host
    pub aux_loss: Tensor, // () load-balancing loss, already scaled by α
}

impl SparseMoe {
    pub fn new(cfg: &IteraLiteConfig, vb: VarBuilder) -> Result<Self> {
        let (d, e, h) = (cfg.hidden_size, cfg.num_experts, cfg.expert_intermediate_size);
        let router = vb.get((e, d), "router.weight")?;
        let experts = (0..e).map(|j| SwiGlu::new(d, h, vb.pp(format!("experts.{j}")))).collect::<Result<Vec<_>>>()?;
        Ok(Self { router, experts, top_k: cfg.num_experts_per_tok, aux_coef: cfg.router_aux_loss_coef })
    }

    pub fn num_experts(&self) -> usize {
        self.experts.len()
    }

    /// x (B, L, D) -> (y (B, L, D), aux loss ()). `fused_ops`: the sparse path's experts gate
    /// with the fused SwiGLU (CPU only); the dense reference always with elementary ops.
    pub fn forward(&self, x: &Tensor, kernel: MoeKernel, fused_ops: bool) -> Result<(Tensor, Tensor)> {
        let (b, l, d) = x.dims3()?;
        let x2 = x.reshape((b * l, d))?; // (T, D)
        let routing = self.route(&x2, fused_ops)?;
        let y = match kernel {
            MoeKernel::Sparse if fused_ops && x.device().is_cpu() => self.forward_grouped(&x2, &routing)?,
            MoeKernel::Sparse => self.forward_sparse(&x2, &routing, fused_ops)?,
            MoeKernel::Dense => self.forward_dense(&x2, &routing)?,
        };
        Ok((y.reshape((b, l, d))?, routing.aux_loss))
    }

    /// Router probabilities, top-k choice and the load-balancing loss, the router's product by
    /// `fused::linear` (`fused_ops`) or candle's.  x (T, D)
    pub fn route(&self, x: &Tensor, fused_ops: bool) -> Result<Routing> {
        let (t, _) = x.dims2()?;
        let e = self.experts.len();
        let k = self.top_k;
        // f32 under any autocast (`ops::project_f32`)
        let probs = softmax_last(&project_f32(x, &self.router, fused_ops)?)?.contiguous()?; // (T, E)
        crate::flops::add(5.0 * probs.elem_count() as f64);
        // routing_weights, selected_experts = torch.topk(routing_weights, self.top_k, dim=-1)
        let top = probs.arg_sort_last_dim(false)?.narrow(1, 0, k)?.contiguous()?; // (T, K) u32
        let gates = probs.gather(&top, 1)?; // (T, K)
        let gates = gates.broadcast_div(&gates.sum_keepdim(1)?)?; // renormalise over the chosen k
        let chosen = top.flatten_all()?.to_vec1::<u32>()?;

        let mut counts = vec![0f32; e];
        for &j in &chosen {
            counts[j as usize] += 1.0;
        }
        record_load(&counts);
        let f = Tensor::from_vec(counts, e, x.device())?.affine(1.0 / (t * k) as f64, 0.0)?; // (E)
        let p = probs.mean(0)?; // (E)
        let aux_loss = ((f * p)?.sum_all()? * (self.aux_coef * e as f64))?;
        Ok(Routing { probs, gates, chosen, aux_loss })
    }

    /// Fast path on the CPU (`fused_ops`): the experts as one op with a hand-written backward
    /// (`fused::experts`), each on its own tokens, gathered and summed back in place; the same
    /// function as [`Self::forward_sparse`], its twin. x (T, D) -> (T, D)
    pub fn forward_grouped(&self, x: &Tensor, routing: &Routing) -> Result<Tensor> {
        let (_, d) = x.dims2()?;
        let plan = ExpertPlan::new(&routing.chosen, self.experts.len(), self.top_k);
        let mut parts = Vec::with_capacity(3 * plan.active.len());
        for &j in &plan.active {
            parts.push(self.experts[j].gate_proj.flatten_all()?);
            parts.push(self.experts[j].up_proj.flatten_all()?);
        }
        for &j in &plan.active {
            parts.push(self.experts[j].down_proj.flatten_all()?);
        }
        let h = match plan.active.first() {
            Some(&j) => self.experts[j].gate_proj.dim(0)?,
            None => candle_core::bail!("moe: no tokens routed"),
        };
        // What the twin counts: gate and up, SwiGLU, down, gate scaling and the add.
        let pairs = routing.chosen.len() as f64;
        crate::flops::add(pairs * (6.0 * (d * h) as f64 + 5.0 * h as f64 + 2.0 * d as f64));
        moe_experts(x, &Tensor::cat(&parts, 0)?, &routing.gates, plan, h)
    }

    /// Each expert runs on its own tokens only, gathered with `index_select` and added back with
    /// `index_add` (`fused_ops`: with the fused SwiGLU). x (T, D) -> (T, D)
    pub fn forward_sparse(&self, x: &Tensor, routing: &Routing, fused_ops: bool) -> Result<Tensor> {
        let (t, d) = x.dims2()?;
        let k = self.top_k;
        let e = self.experts.len();
        // For each expert: the tokens routed to it, and the flat (token, slot) index of its gate.
        let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); e];
        let mut slots: Vec<Vec<u32>> = vec![Vec::new(); e];
        for (slot, &j) in routing.chosen.iter().enumerate() {
            tokens[j as usize].push((slot / k) as u32);
            slots[j as usize].push(slot as u32);
        }
        let gates = routing.gates.flatten_all()?; // (T·K)
        let dev = x.device();
        let mut outs = Vec::with_capacity(e);
        let mut dest = Vec::with_capacity(t * k);
        for (j, expert) in self.experts.iter().enumerate() {
            if tokens[j].is_empty() {
                continue;
            }
            let n = tokens[j].len();
            let ids = Tensor::from_slice(&tokens[j], n, dev)?;
            let xe = x.index_select(&ids, 0)?; // (n, D)
            let g = gates.index_select(&Tensor::from_slice(&slots[j], n, dev)?, 0)?.unsqueeze(1)?; // (n, 1)
            outs.push(expert.forward(&xe, fused_ops, fused_ops)?.broadcast_mul(&g)?); // (n, D)
            crate::flops::add(2.0 * (n * d) as f64); // gate scaling, then the add into the output
            dest.extend_from_slice(&tokens[j]);
        }
        let dest = Tensor::from_vec(dest, t * k, dev)?;
        Tensor::zeros((t, d), x.dtype(), dev)?.index_add(&dest, &Tensor::cat(&outs, 0)?, 0)
        // (T, D)
    }

    /// Reference twin: every expert on every token, weighted by the dense routing matrix.
    pub fn forward_dense(&self, x: &Tensor, routing: &Routing) -> Result<Tensor> {
        let (t, _) = x.dims2()?;
        let e = self.experts.len();
        let mut mask = vec![0f32; t * e];
        for (slot, &j) in routing.chosen.iter().enumerate() {
            mask[(slot / self.top_k) * e + j as usize] = 1.0;
        }
        let mask = Tensor::from_vec(mask, (t, e), x.device())?.to_dtype(routing.probs.dtype())?;
        let w = (&routing.probs * mask)?; // (T, E), zero off the chosen k
        let w = w.broadcast_div(&w.sum_keepdim(1)?)?;
        let mut y: Option<Tensor> = None;
        for (j, expert) in self.experts.iter().enumerate() {
            let yj = expert.forward(x, false, false)?.broadcast_mul(&w.narrow(1, j, 1)?)?; // (T, D)
            y = Some(match y {
                None => yj,
                Some(y) => (y + yj)?,
            });
        }
        match y {
            Some(y) => Ok(y),
            None => candle_core::bail!("moe: no experts"),
        }
    }
}

/// Tokens routed to each expert, for diagnostics: (E) counts.
pub fn expert_load(routing: &Routing, num_experts: usize) -> Vec<usize> {
    let mut load = vec![0; num_experts];
    for &j in &routing.chosen {
        load[j as usize] += 1;
    }
    load
}

thread_local! {
    static LOADS: std::cell::RefCell<Option<Vec<Vec<f32>>>> = const { std::cell::RefCell::new(None) };
}

fn record_load(counts: &[f32]) {
    LOADS.with(|l| {
        if let Some(v) = l.borrow_mut().as_mut() {
            v.push(counts.to_vec());
        }
    });
}

/// Records how many tokens each routing (one per MoE layer and forward pass) sent to each
/// expert, on this thread, while alive: the trainer's expert-load entropy. Off by default.
pub struct LoadRecording(());

impl LoadRecording {
    pub fn start() -> Self {
        LOADS.with(|l| *l.borrow_mut() = Some(Vec::new()));
        LoadRecording(())
    }

    /// Mean over the recorded routings of the entropy of their expert loads, divided by
    /// ln(experts): 1 when every expert got the same number of tokens, 0 when one got them all.
    /// `None` when nothing was routed (the baseline, MoE off).
    pub fn normalized_entropy(&self) -> Option<f64> {
        LOADS.with(|l| {
            let loads = l.borrow();
            let loads = loads.as_ref()?;
            let per: Vec<f64> = loads.iter().filter(|c| c.len() > 1).map(|c| load_entropy(c)).collect();
            (!per.is_empty()).then(|| per.iter().sum::<f64>() / per.len() as f64)
        })
    }
}

impl Drop for LoadRecording {
    fn drop(&mut self) {
        LOADS.with(|l| *l.borrow_mut() = None);
    }
}

/// Entropy of the distribution `counts / Σ counts`, divided by ln(len).
pub fn load_entropy(counts: &[f32]) -> f64 {
    let total: f64 = counts.iter().map(|&c| c as f64).sum();
    if total <= 0.0 || counts.len() < 2 {
        return 0.0;
    }
    let h: f64 = counts.iter().map(|&c| c as f64 / total).filter(|&p| p > 0.0).map(|p| -p * p.ln()).sum();
    h / (counts.len() as f64).ln()
}
