//! Itera-Lite's model crate: the Transformer baseline and Itera-Lite (selective SSM + sparse MoE)
//! in candle, used as they are by the native trainer and by the browser (wasm32).
//!
//! - [`config`]: configs (Hugging Face `config.json` keys), presets, param / FLOP / state counts;
//! - [`baseline`]: Llama-style decoder; [`itera_lite`]: Mamba-1 mixer + MoE blocks;
//! - [`scan`]: the selective scan (fused CustomOp, reference twin, stateful inference);
//! - [`moe`]: sparse MoE (gathered dispatch, dense reference twin), load-balancing loss;
//! - [`ops`]: differentiable norms, softplus, causal conv (the reference twins), `Kernels`;
//! - [`fused`]: fused RMSNorm and conv + SiLU with hand-written backwards; [`init`]: seeded init;
//! - [`optim`]: AdamW with checkpointable state, gradient clipping; [`weights`]: safetensors I/O;
//! - [`sample`]: greedy / temperature / top-k / top-p sampling; [`runtime`]: allocator tuning;
//! - [`energy`]: estimated energy per token; `nvml` (native only): NVIDIA's power and energy counters;
//! - [`decode`]: batch-1 decoding on plain slices, allocation-free (twin: [`Model::forward_with_state`]).
//!
//! [`Model`] and [`State`] wrap the two architectures behind one interface.

pub mod baseline;
pub mod config;
pub mod decode;
pub mod energy;
pub mod flops;
pub mod fused;
pub mod init;
pub mod itera_lite;
pub mod moe;
#[cfg(not(target_arch = "wasm32"))]
pub mod nvml;
pub mod ops;
pub mod optim;
pub mod runtime;
pub mod sample;
pub mod scan;
pub mod weights;

pub use baseline::{Baseline, KvState};
pub use config::{BaselineConfig, Config, IteraLiteConfig, ModelKind, ParamCount, Preset};
pub use itera_lite::{IteraLite, SsmState};
pub use moe::MoeKernel;
pub use ops::{Kernels, ScanKernel};

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::collections::HashMap;

/// Tokens per forward pass when a prompt is read into a [`State`], by the trainer's `generate`
/// and by the browser's worker alike: it bounds the memory of a long prompt (a whole prompt at
/// once would hold every position's logits), and the worker yields between passes.
pub const PREFILL_CHUNK: usize = 256;

/// Either model, behind one interface.
pub enum Model {
    Baseline(Baseline),
    IteraLite(IteraLite),
}

/// The caller-owned decoding state of a [`Model`].
pub enum State {
    /// KV cache: grows with every token.
    Kv(KvState),
    /// Conv windows + SSM states: fixed size.
    Ssm(SsmState),
}

/// The outputs of a full-sequence forward.
pub struct Output {
    pub logits: Tensor,   // (B, L, V)
    pub aux_loss: Tensor, // () MoE load-balancing loss (zero for the baseline and without MoE)
}

/// Training loss and its parts.
pub struct Losses {
    pub total: Tensor, // () cross-entropy + aux
    pub ce: Tensor,    // () mean next-token cross-entropy (nats)
    pub aux: Tensor,   // () MoE load-balancing loss
}

impl Model {
    /// Builds the model named by `cfg` from a `VarBuilder`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(match cfg {
            Config::Baseline(c) => Model::Baseline(Baseline::new(c, vb)?),
            Config::IteraLite(c) => Model::IteraLite(IteraLite::new(c, vb)?),
        })
    }

    /// A freshly initialised model for training: its variables live in the returned `VarMap`,
    /// drawn from the seeded init of [`init::init_weights`].
    pub fn init(cfg: &Config, seed: u64, device: &Device) -> Result<(VarMap, Self)> {
        Self::init_with(cfg, seed, init::InitScheme::default(), device)
    }

    /// [`Model::init`] with a chosen init scheme for Itera-Lite's mixer projections.
    pub fn init_with(cfg: &Config, seed: u64, scheme: init::InitScheme, device: &Device) -> Result<(VarMap, Self)> {
        let varmap = VarMap::new();
        let model = Model::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
        init::init_weights_with(&varmap, cfg, seed, scheme)?;
        Ok((varmap, model))
    }

    /// Loads a model from safetensors bytes (f32 or f16/bf16, computed in f32). Missing,
    /// mis-shaped and unexpected tensors are [`weights::WeightsError`]s naming the tensor.
    pub fn from_safetensors(cfg: &Config, bytes: &[u8], device: &Device) -> Result<Self> {
        Self::from_tensors(cfg, weights::read_safetensors(bytes, device)?, device)
    }

    /// From named tensors (any reader's of `weights`), checked against `cfg`, computed in f32.
    pub fn from_tensors(cfg: &Config, tensors: HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        weights::build_checked(tensors, DType::F32, device, |vb| Model::new(cfg, vb))
    }

    /// From a GGUF file (`weights::write_gguf`), its tensors dequantized to f32.
    pub fn from_gguf(cfg: &Config, bytes: &[u8], device: &Device) -> Result<Self> {
        Self::from_tensors(cfg, weights::read_gguf(bytes, device)?, device)
    }

    /// From a sharded `model.safetensors` (`weights::write_sharded`): the index JSON, and each
    /// shard it names from `shard(file)`.
    pub fn from_sharded(
        cfg: &Config,
        index_json: &[u8],
        shard: impl FnMut(&str) -> Option<Vec<u8>>,
        device: &Device,
    ) -> Result<Self> {
        Self::from_tensors(cfg, weights::read_sharded(index_json, shard, device)?, device)
    }

    /// From the weights file of an export in `format` (`WeightFormat::file_name`).
    pub fn from_weights(cfg: &Config, format: weights::WeightFormat, bytes: &[u8], device: &Device) -> Result<Self> {
        match format {
            weights::WeightFormat::F32 => Self::from_safetensors(cfg, bytes, device),
            _ => Self::from_gguf(cfg, bytes, device),
        }
    }

    pub fn config(&self) -> Config {
        match self {
            Model::Baseline(m) => Config::Baseline(m.config().clone()),
            Model::IteraLite(m) => Config::IteraLite(m.config().clone()),
        }
    }

    /// Chooses fast paths or reference twins.
    pub fn set_kernels(&mut self, kernels: Kernels) {
        match self {
            Model::Baseline(m) => m.set_kernels(kernels),
            Model::IteraLite(m) => m.set_kernels(kernels),
        }
    }

    /// The fast paths or reference twins it runs.
    pub fn kernels(&self) -> Kernels {
        match self {
            Model::Baseline(m) => m.kernels(),
            Model::IteraLite(m) => m.kernels(),
        }
    }

    /// Full-sequence forward.  tokens (B, L) u32 -> logits (B, L, V) and the aux loss.
    pub fn forward(&self, tokens: &Tensor) -> Result<Output> {
        match self {
            Model::Baseline(m) => {
                let logits = m.forward(tokens)?;
                let aux_loss = Tensor::zeros((), DType::F32, logits.device())?;
                Ok(Output { logits, aux_loss })
            }
            Model::IteraLite(m) => {
                let (logits, aux_loss) = m.forward(tokens)?;
                Ok(Output { logits, aux_loss })
            }
        }
    }

    /// Next-token loss: inputs (B, L) and targets (B, L) u32, targets[t] = inputs[t + 1].
    pub fn loss(&self, inputs: &Tensor, targets: &Tensor) -> Result<Losses> {
        let (h, aux) = self.hidden_rows(inputs)?;
        let ce = self.head_loss(&h, &targets.flatten_all()?)?;
        Ok(Losses { total: (&ce + &aux)?, ce, aux })
    }

    /// Loss at chosen positions only, for tasks whose answers are a few tokens of a long
    /// sequence (the rest is unpredictable noise that would drown their gradient).
    /// inputs (B, L) u32; positions (P,) u32 flat indices `b * L + t` into the (B, L) grid;
    /// targets (P,) u32, the token expected at each of them. The head runs on those rows only.
    pub fn loss_at(&self, inputs: &Tensor, positions: &Tensor, targets: &Tensor) -> Result<Losses> {
        let (h, aux) = self.hidden_rows(inputs)?;
        let ce = self.head_loss(&h.index_select(positions, 0)?, targets)?;
        Ok(Losses { total: (&ce + &aux)?, ce, aux })
    }

    /// The final hidden states of every position as rows (B·L, D), and the MoE loss.
    fn hidden_rows(&self, inputs: &Tensor) -> Result<(Tensor, Tensor)> {
        let (h, aux) = match self {
            Model::Baseline(m) => {
                let h = m.hidden(inputs)?;
                let aux = Tensor::zeros((), DType::F32, h.device())?;
                (h, aux)
            }
            Model::IteraLite(m) => m.hidden(inputs)?,
        };
        let (b, l, d) = h.dims3()?;
        Ok((h.reshape((b * l, d))?, aux))
    }

    /// Mean cross-entropy of the head's logits for rows h (N, D) against targets (N,): the fused
    /// head + loss (`fused::linear_cross_entropy`, the CPU's), the head then the loss as one op
    /// under the device ops (`fused::cross_entropy_rows`), or their twin, candle's `cross_entropy`
    /// of the logits.
    fn head_loss(&self, h: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let (head, kernels) = match self {
            Model::Baseline(m) => (m.head(), m.kernels()),
            Model::IteraLite(m) => (m.head(), m.kernels()),
        };
        if kernels.fused_ops {
            let (n, d) = h.dims2()?;
            crate::flops::add(2.0 * (n * d * head.dim(0)?) as f64);
            fused::linear_cross_entropy(h, head, targets)
        } else if kernels.device_ops {
            fused::cross_entropy_rows(&ops::linear(h, head)?, targets)?.mean(0)
        } else {
            candle_nn::loss::cross_entropy(&ops::linear(h, head)?, targets)
        }
    }

    /// A fresh decoding state for `batch` sequences.
    pub fn new_state(&self, batch: usize) -> Result<State> {
        Ok(match self {
            Model::Baseline(m) => State::Kv(m.new_state(batch)),
            Model::IteraLite(m) => State::Ssm(m.new_state(batch)?),
        })
    }

    /// Forward of the next tokens from `state` (prefill: L > 1; decode: L = 1).
    /// tokens (B, L) u32 -> logits (B, L, V)
    pub fn forward_with_state(&self, tokens: &Tensor, state: &mut State) -> Result<Tensor> {
        match (self, state) {
            (Model::Baseline(m), State::Kv(s)) => m.forward_with_state(tokens, s),
            (Model::IteraLite(m), State::Ssm(s)) => m.forward_with_state(tokens, s),
            _ => candle_core::bail!("forward_with_state: the state belongs to the other architecture"),
        }
    }
}

impl State {
    /// Tokens seen so far.
    pub fn len(&self) -> usize {
        match self {
            State::Kv(s) => s.len(),
            State::Ssm(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of decoding state held now.
    pub fn bytes(&self) -> usize {
        match self {
            State::Kv(s) => s.bytes(),
            State::Ssm(s) => s.bytes(),
        }
    }
}
