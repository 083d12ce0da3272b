//! Model configurations, named presets and the analytic size / cost model.
//!
//! Field names are the Hugging Face `config.json` keys (`LlamaConfig`, `MambaConfig`), so that an
//! exported `config.json` is simply this struct serialised with its `model_type` tag. Itera-Lite's
//! MoE fields are extra keys that `MambaConfig` does not know (see docs/weights.md).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One of the two architectures, tagged by Hugging Face's `model_type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model_type")]
pub enum Config {
    #[serde(rename = "llama")]
    Baseline(BaselineConfig),
    #[serde(rename = "mamba")]
    IteraLite(IteraLiteConfig),
}

/// The longest context a baseline config may declare: its RoPE tables hold every position.
pub const MAX_POSITIONS: usize = 1 << 20;

/// Llama-style decoder: RMSNorm pre-norm, RoPE (rotate-half), causal MHA, SwiGLU MLP, no biases,
/// output head tied to the token embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineConfig {
    pub vocab_size: usize,              // tokens in the vocabulary (V)
    pub hidden_size: usize,             // model width (D)
    pub intermediate_size: usize,       // SwiGLU hidden width (I)
    pub num_hidden_layers: usize,       // decoder layers
    pub num_attention_heads: usize,     // query heads (H); head_dim = D / H
    pub num_key_value_heads: usize,     // key/value heads (H for plain MHA, fewer for GQA)
    pub max_position_embeddings: usize, // longest context the RoPE tables cover
    pub rms_norm_eps: f64,              // epsilon inside every RMSNorm
    pub rope_theta: f64,                // RoPE base frequency
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool, // output head = embedding^T (always true here)
}

/// Itera-Lite: Mamba-1 mixer blocks, each followed by a sparse top-k MoE feed-forward.
/// With `num_experts == 0` a block is a plain Mamba block and the weights map onto
/// `MambaForCausalLM`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IteraLiteConfig {
    pub vocab_size: usize,        // tokens in the vocabulary (V)
    pub hidden_size: usize,       // model width (D)
    pub num_hidden_layers: usize, // blocks
    pub state_size: usize,        // SSM state per channel (N)
    pub expand: usize,            // inner width ED = expand * D
    pub conv_kernel: usize,       // causal depthwise conv width (K)
    pub time_step_rank: usize,    // rank of the Δ projection (R), Mamba uses ceil(D / 16)
    pub layer_norm_epsilon: f64,  // epsilon inside every RMSNorm
    pub time_step_min: f64,       // Δ init range, lower end (init only)
    pub time_step_max: f64,       // Δ init range, upper end (init only)
    pub time_step_floor: f64,     // smallest Δ at init (init only)
    #[serde(default = "yes")]
    pub use_conv_bias: bool, // conv1d has a bias (always true here)
    #[serde(default)]
    pub use_bias: bool, // in/out projections have biases (always false here)
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool, // output head = embedding^T (always true here)
    // --- sparse MoE feed-forward (extra keys, unknown to MambaConfig) ---
    #[serde(default)]
    pub num_experts: usize, // experts per block (E); 0 switches MoE off
    #[serde(default = "two")]
    pub num_experts_per_tok: usize, // experts each token is routed to (top-k)
    #[serde(default)]
    pub expert_intermediate_size: usize, // SwiGLU hidden width of one expert (H)
    #[serde(default = "aux_coef")]
    pub router_aux_loss_coef: f64, // α of the Switch load-balancing loss
}

fn yes() -> bool {
    true
}
fn two() -> usize {
    2
}
fn aux_coef() -> f64 {
    0.01
}

/// Which architecture; the trainer's `--model` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    Baseline,
    IteraLite,
}

/// Named sizes; the trainer's `--preset` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// Tests: under 100K parameters at a 256-token vocabulary.
    Tiny,
    /// The Mamba paper's synthetic-task size: 2 layers of width 64 (arXiv 2312.00752, App. E.1).
    Small,
    /// Between small and demo: 4 layers of width 128, about 1.1M parameters at the world's 2048-token
    /// vocabulary (issue 11's sweep: the size where a quantized Itera-Lite is near 100× fewer bytes
    /// than the seed baseline).
    Mid,
    /// The page's models: a few million parameters, trains in minutes on 2 cores.
    Demo,
    /// The seed's scale: 10-50M parameters.
    Seed,
}

impl ModelKind {
    pub const ALL: [ModelKind; 2] = [ModelKind::Baseline, ModelKind::IteraLite];
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Baseline => "baseline",
            ModelKind::IteraLite => "itera-lite",
        }
    }
}

impl Preset {
    pub const ALL: [Preset; 5] = [Preset::Tiny, Preset::Small, Preset::Mid, Preset::Demo, Preset::Seed];
    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Small => "small",
            Preset::Mid => "mid",
            Preset::Demo => "demo",
            Preset::Seed => "seed",
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ModelKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "baseline" | "llama" | "transformer" => Ok(ModelKind::Baseline),
            "itera-lite" | "itera_lite" | "itera" | "mamba" => Ok(ModelKind::IteraLite),
            _ => Err(format!("unknown model `{s}` (expected `baseline` or `itera-lite`)")),
        }
    }
}

impl FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tiny" => Ok(Preset::Tiny),
            "small" => Ok(Preset::Small),
            "mid" => Ok(Preset::Mid),
            "demo" => Ok(Preset::Demo),
            "seed" => Ok(Preset::Seed),
            _ => Err(format!("unknown preset `{s}` (expected `tiny`, `small`, `mid`, `demo` or `seed`)")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Presets

impl BaselineConfig {
    pub fn preset(preset: Preset, vocab_size: usize) -> Self {
        // (D, I, layers, heads): I ≈ 8/3 D rounded up to a multiple of 64, as Llama does.
        let (d, i, layers, heads) = match preset {
            Preset::Tiny => (32, 64, 2, 2),
            Preset::Small => (64, 192, 2, 4),
            Preset::Mid => (128, 384, 4, 4),
            Preset::Demo => (256, 704, 4, 4),
            Preset::Seed => (512, 1408, 8, 8),
        };
        Self {
            vocab_size,
            hidden_size: d,
            intermediate_size: i,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: heads,
            max_position_embeddings: 4096,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            tie_word_embeddings: true,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Width of the key (and value) projection: H_kv * head_dim.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim()
    }

    pub fn validate(&self) -> Result<(), String> {
        let h = self.num_attention_heads;
        nonzero(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", h),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ])?;
        at_most(&[
            ("vocab_size", self.vocab_size, MAX_WIDTH),
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("intermediate_size", self.intermediate_size, MAX_WIDTH),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
        ])?;
        // The RoPE tables are built for every position when the model is (`Rope::new`): a
        // config.json asking for 2^64 positions must be an error, not a 2 GiB allocation (issue 14).
        if self.max_position_embeddings > MAX_POSITIONS {
            return Err(format!("max_position_embeddings {} is over {MAX_POSITIONS}", self.max_position_embeddings));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(format!("rope_theta {} is not a finite value > 0", self.rope_theta));
        }
        if !self.hidden_size.is_multiple_of(h) || !self.head_dim().is_multiple_of(2) {
            return Err(format!("hidden_size {} must split into {h} heads of even size", self.hidden_size));
        }
        if !h.is_multiple_of(self.num_key_value_heads) {
            return Err(format!(
                "num_attention_heads {h} is not a multiple of num_key_value_heads {}",
                self.num_key_value_heads
            ));
        }
        if !self.tie_word_embeddings {
            return Err("tie_word_embeddings = false is not supported".into());
        }
        Ok(())
    }
}

impl IteraLiteConfig {
    pub fn preset(preset: Preset, vocab_size: usize) -> Self {
        // (D, layers, N, E, H): E experts of SwiGLU width H per block, top-2.
        let (d, layers, n, e, h) = match preset {
            Preset::Tiny => (32, 2, 8, 8, 16),
            Preset::Small => (64, 2, 16, 8, 32), // Mamba's d_state 16, as the paper's 2-layer d 64 model
            Preset::Mid => (128, 4, 16, 8, 32),
            Preset::Demo => (256, 4, 16, 8, 64),
            Preset::Seed => (512, 8, 16, 16, 128),
        };
        Self {
            vocab_size,
            hidden_size: d,
            num_hidden_layers: layers,
            state_size: n,
            expand: 2,
            conv_kernel: 4,
            time_step_rank: d.div_ceil(16),
            layer_norm_epsilon: 1e-5,
            time_step_min: 0.001,
            time_step_max: 0.1,
            time_step_floor: 1e-4,
            use_conv_bias: true,
            use_bias: false,
            tie_word_embeddings: true,
            num_experts: e,
            num_experts_per_tok: 2,
            expert_intermediate_size: h,
            router_aux_loss_coef: 0.01,
        }
    }

    /// ED: width of the mixer's inner stream.
    pub fn d_inner(&self) -> usize {
        self.expand * self.hidden_size
    }

    /// Whether each block carries a sparse MoE feed-forward after its mixer.
    pub fn moe(&self) -> bool {
        self.num_experts > 0
    }

    pub fn validate(&self) -> Result<(), String> {
        nonzero(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("state_size", self.state_size),
            ("expand", self.expand),
            ("conv_kernel", self.conv_kernel),
            ("time_step_rank", self.time_step_rank),
        ])?;
        at_most(&[
            ("vocab_size", self.vocab_size, MAX_WIDTH),
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("state_size", self.state_size, MAX_SMALL),
            ("expand", self.expand, MAX_EXPAND),
            ("conv_kernel", self.conv_kernel, MAX_SMALL),
            ("time_step_rank", self.time_step_rank, MAX_WIDTH),
            ("num_experts", self.num_experts, MAX_SMALL),
            ("expert_intermediate_size", self.expert_intermediate_size, MAX_WIDTH),
        ])?;
        if self.moe() {
            nonzero(&[
                ("num_experts_per_tok", self.num_experts_per_tok),
                ("expert_intermediate_size", self.expert_intermediate_size),
            ])?;
            if self.num_experts_per_tok > self.num_experts {
                return Err(format!(
                    "num_experts_per_tok {} exceeds num_experts {}",
                    self.num_experts_per_tok, self.num_experts
                ));
            }
        }
        if !self.use_conv_bias || self.use_bias || !self.tie_word_embeddings {
            return Err("only use_conv_bias = true, use_bias = false and tied embeddings are supported".into());
        }
        Ok(())
    }
}

// Upper bounds on sizes, far past any model this project trains (the seed preset: width 512,
// 8 layers), chosen so that every count below (parameters, FLOPs, state bytes at contexts up
// to 2^20) fits a usize: a config.json of huge numbers is an error, not an overflow (issue 14,
// found by itera-fuzz).
const MAX_WIDTH: usize = 1 << 20; // vocabulary, widths, ranks
const MAX_LAYERS: usize = 1 << 10;
const MAX_SMALL: usize = 1 << 10; // state size, conv width, experts
const MAX_EXPAND: usize = 1 << 6;

fn at_most(fields: &[(&str, usize, usize)]) -> Result<(), String> {
    match fields.iter().find(|(_, v, max)| v > max) {
        Some((name, v, max)) => Err(format!("config field `{name}` is {v}, over the limit {max}")),
        None => Ok(()),
    }
}

fn nonzero(fields: &[(&str, usize)]) -> Result<(), String> {
    match fields.iter().find(|(_, v)| *v == 0) {
        Some((name, _)) => Err(format!("config field `{name}` must be > 0")),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// The analytic cost model. FLOPs count a multiply-add as 2; elementwise work is counted at a
// handful of FLOPs per element (written next to each term) — small next to the matmuls, but
// counted so that a measured op count can be compared with this one.

/// Parameter counts. Tied embeddings are counted once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamCount {
    pub total: usize,            // every stored parameter
    pub active_per_token: usize, // those one token's forward touches (top-k of E experts)
}

/// Bytes of one f32 value.
const F32_BYTES: usize = 4;

impl Config {
    pub fn preset(kind: ModelKind, preset: Preset, vocab_size: usize) -> Self {
        match kind {
            ModelKind::Baseline => Config::Baseline(BaselineConfig::preset(preset, vocab_size)),
            ModelKind::IteraLite => Config::IteraLite(IteraLiteConfig::preset(preset, vocab_size)),
        }
    }

    pub fn kind(&self) -> ModelKind {
        match self {
            Config::Baseline(_) => ModelKind::Baseline,
            Config::IteraLite(_) => ModelKind::IteraLite,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Config::Baseline(c) => c.vocab_size,
            Config::IteraLite(c) => c.vocab_size,
        }
    }

    pub fn hidden_size(&self) -> usize {
        match self {
            Config::Baseline(c) => c.hidden_size,
            Config::IteraLite(c) => c.hidden_size,
        }
    }

    pub fn num_layers(&self) -> usize {
        match self {
            Config::Baseline(c) => c.num_hidden_layers,
            Config::IteraLite(c) => c.num_hidden_layers,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        match self {
            Config::Baseline(c) => c.validate(),
            Config::IteraLite(c) => c.validate(),
        }
    }

    pub fn param_count(&self) -> ParamCount {
        match self {
            Config::Baseline(c) => {
                let (d, i, kv) = (c.hidden_size, c.intermediate_size, c.kv_dim());
                let attn = d * d + 2 * d * kv + d * d; // q, k, v, o
                let mlp = 3 * d * i; // gate, up, down
                let layer = attn + mlp + 2 * d; // + two RMSNorm weights
                let total = c.vocab_size * d + c.num_hidden_layers * layer + d;
                ParamCount { total, active_per_token: total }
            }
            Config::IteraLite(c) => {
                let (d, ed, n, r, k) = (c.hidden_size, c.d_inner(), c.state_size, c.time_step_rank, c.conv_kernel);
                let mixer = d * 2 * ed // in_proj
                    + ed * k + ed // conv1d weight + bias
                    + ed * (r + 2 * n) // x_proj
                    + r * ed + ed // dt_proj weight + bias
                    + ed * n + ed // A_log, D
                    + ed * d; // out_proj
                let expert = 3 * d * c.expert_intermediate_size;
                let (moe_total, moe_active) = if c.moe() {
                    let shared = d + d * c.num_experts; // moe_norm + router
                    (shared + c.num_experts * expert, shared + c.num_experts_per_tok * expert)
                } else {
                    (0, 0)
                };
                let layer = d + mixer; // norm + mixer
                let base = c.vocab_size * d + d; // embedding + final norm
                ParamCount {
                    total: base + c.num_hidden_layers * (layer + moe_total),
                    active_per_token: base + c.num_hidden_layers * (layer + moe_active),
                }
            }
        }
    }

    /// FLOPs of one decoded token whose query sees `context` positions (itself included).
    /// The Transformer's cost grows with the context; the SSM's does not.
    pub fn decode_flops_per_token(&self, context: usize) -> f64 {
        self.forward_flops(context as f64)
    }

    /// FLOPs of one training token (forward + backward ≈ 3 × forward) at sequence length
    /// `seq_len`. Training computes the full L×L score matrix and masks it, so every token pays
    /// for L keys.
    pub fn train_flops_per_token(&self, seq_len: usize) -> f64 {
        3.0 * self.forward_flops(seq_len as f64)
    }

    /// Forward FLOPs of one token attending to `keys` positions.
    fn forward_flops(&self, keys: f64) -> f64 {
        let rms = |d: usize| 4.0 * d as f64; // square, sum, scale, weight
        match self {
            Config::Baseline(c) => {
                let (d, i, kv, h) =
                    (c.hidden_size as f64, c.intermediate_size as f64, c.kv_dim() as f64, c.num_attention_heads as f64);
                let proj = 2.0 * d * (d + 2.0 * kv + d);
                let rope = 3.0 * (d + kv); // x*cos + rot(x)*sin
                let scores = 2.0 * keys * d + 5.0 * keys * h; // q·k over all heads, + scale/mask/softmax
                let mix = 2.0 * keys * d; // attention-weighted sum of values
                let mlp = 2.0 * 3.0 * d * i + 5.0 * i; // gate, up, down + silu·mul
                let layer = 2.0 * rms(c.hidden_size) + proj + rope + scores + mix + mlp + 2.0 * d; // + residuals
                c.num_hidden_layers as f64 * layer + rms(c.hidden_size) + 2.0 * d * c.vocab_size as f64
            }
            Config::IteraLite(c) => {
                let (d, ed, n, r, k) = (
                    c.hidden_size as f64,
                    c.d_inner() as f64,
                    c.state_size as f64,
                    c.time_step_rank as f64,
                    c.conv_kernel as f64,
                );
                let mixer = 2.0 * d * 2.0 * ed // in_proj
                    + 2.0 * k * ed + ed + 4.0 * ed // conv + bias + SiLU
                    + 2.0 * ed * (r + 2.0 * n) // x_proj
                    + 2.0 * r * ed + ed + 3.0 * ed // dt_proj + bias + softplus
                    + ed + 7.0 * ed * n // scan: Δ·x, then per state exp(Δ·A), h = e·h + (Δx)·B, y += C·h
                    + 2.0 * ed + 5.0 * ed // D skip, SiLU(z) gate
                    + 2.0 * ed * d; // out_proj
                let moe = if c.moe() {
                    let (e, kk, hh) =
                        (c.num_experts as f64, c.num_experts_per_tok as f64, c.expert_intermediate_size as f64);
                    rms(c.hidden_size) + 2.0 * d * e + 5.0 * e // norm, router, softmax
                        + kk * (2.0 * 3.0 * d * hh + 5.0 * hh + d) // k experts, each output scaled by its gate
                        + (kk + 1.0) * d // combine + residual
                } else {
                    0.0
                };
                let layer = rms(c.hidden_size) + mixer + d + moe;
                c.num_hidden_layers as f64 * layer + rms(c.hidden_size) + 2.0 * d * c.vocab_size as f64
            }
        }
    }

    /// Bytes of decoding state for one sequence that has seen `context` tokens (f32):
    /// the KV cache grows linearly, the SSM's conv window + state is constant.
    pub fn state_bytes(&self, context: usize) -> usize {
        match self {
            Config::Baseline(c) => 2 * c.num_hidden_layers * c.kv_dim() * context * F32_BYTES,
            Config::IteraLite(c) => {
                c.num_hidden_layers * c.d_inner() * ((c.conv_kernel - 1) + c.state_size) * F32_BYTES
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_sizes_the_issue_asks_for() {
        for kind in ModelKind::ALL {
            let tiny = Config::preset(kind, Preset::Tiny, 256).param_count().total;
            let demo = Config::preset(kind, Preset::Demo, 4096).param_count().total;
            let seed = Config::preset(kind, Preset::Seed, 4096).param_count().total;
            assert!(tiny < 100_000, "{kind} tiny has {tiny} params");
            assert!((2_000_000..=6_000_000).contains(&demo), "{kind} demo has {demo} params");
            assert!((10_000_000..=50_000_000).contains(&seed), "{kind} seed has {seed} params");
            // mid sits between small and demo at the world's vocabulary, near a million.
            let sizes: Vec<usize> =
                Preset::ALL[1..4].iter().map(|&p| Config::preset(kind, p, 2048).param_count().total).collect();
            assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{kind} small, mid, demo: {sizes:?}");
            assert!((800_000..=1_500_000).contains(&sizes[1]), "{kind} mid has {} params", sizes[1]);
        }
    }

    #[test]
    fn config_json_round_trips_with_the_hf_model_type_tag() {
        for kind in ModelKind::ALL {
            let cfg = Config::preset(kind, Preset::Demo, 4096);
            let json = serde_json::to_string(&cfg).unwrap();
            let want = match kind {
                ModelKind::Baseline => "\"model_type\":\"llama\"",
                ModelKind::IteraLite => "\"model_type\":\"mamba\"",
            };
            assert!(json.contains(want), "{json}");
            assert_eq!(serde_json::from_str::<Config>(&json).unwrap(), cfg);
        }
    }

    #[test]
    fn ssm_state_is_constant_and_kv_cache_grows_with_context() {
        let b = Config::preset(ModelKind::Baseline, Preset::Demo, 4096);
        let i = Config::preset(ModelKind::IteraLite, Preset::Demo, 4096);
        assert_eq!(b.state_bytes(2048), 2 * b.state_bytes(1024));
        assert_eq!(i.state_bytes(64), i.state_bytes(4096));
        assert!(b.decode_flops_per_token(4096) > b.decode_flops_per_token(64));
        assert_eq!(i.decode_flops_per_token(4096), i.decode_flops_per_token(64));
    }

    /// Found by itera-fuzz (`config`): `max_position_embeddings` 2^64 - 1 passed `validate`, and
    /// loading the model then built RoPE tables of 2^32 positions (a 2 GiB allocation, then an
    /// abort). See issue 14.
    #[test]
    fn huge_max_position_embeddings_is_an_error_not_an_allocation() {
        let mut c = BaselineConfig::preset(Preset::Tiny, 256);
        c.max_position_embeddings = usize::MAX;
        let e = c.validate().unwrap_err();
        assert!(e.contains("max_position_embeddings") && e.contains("is over"), "{e}");
        c.max_position_embeddings = MAX_POSITIONS;
        assert!(c.validate().is_ok());
        c.rope_theta = f64::NAN;
        assert!(c.validate().unwrap_err().contains("rope_theta"));
    }

    /// Found by itera-fuzz (`config`, debug build): sizes near 2^64 passed `validate`, then
    /// `d_inner`, `param_count` and `state_bytes` overflowed (a panic with overflow checks, a
    /// wrong count without).
    #[test]
    fn huge_sizes_are_errors_not_overflows() {
        let mut c = IteraLiteConfig::preset(Preset::Tiny, 256);
        c.expand = usize::MAX;
        let e = c.validate().unwrap_err();
        assert!(e.contains("`expand`") && e.contains("over the limit"), "{e}");
        let mut b = BaselineConfig::preset(Preset::Tiny, 256);
        b.num_hidden_layers = 1 << 40;
        assert!(b.validate().unwrap_err().contains("`num_hidden_layers`"));
        // At every limit at once the counts still fit.
        let mut c = IteraLiteConfig::preset(Preset::Tiny, MAX_WIDTH);
        (c.hidden_size, c.num_hidden_layers, c.state_size, c.expand) = (MAX_WIDTH, MAX_LAYERS, MAX_SMALL, MAX_EXPAND);
        (c.conv_kernel, c.time_step_rank, c.num_experts, c.expert_intermediate_size) =
            (MAX_SMALL, MAX_WIDTH, MAX_SMALL, MAX_WIDTH);
        let c = Config::IteraLite(c);
        assert!(c.validate().is_ok());
        let _ = (c.param_count(), c.state_bytes(1 << 20), c.decode_flops_per_token(1 << 20));
        let mut b = BaselineConfig::preset(Preset::Tiny, MAX_WIDTH);
        (b.hidden_size, b.intermediate_size, b.num_hidden_layers) = (MAX_WIDTH, MAX_WIDTH, MAX_LAYERS);
        (b.num_attention_heads, b.num_key_value_heads) = (1, 1);
        let b = Config::Baseline(b);
        assert!(b.validate().is_ok());
        let _ = (b.param_count(), b.state_bytes(1 << 20), b.decode_flops_per_token(1 << 20));
    }

    #[test]
    fn invalid_configs_name_the_bad_field() {
        let mut c = BaselineConfig::preset(Preset::Tiny, 256);
        c.num_attention_heads = 3;
        assert!(c.validate().unwrap_err().contains("heads"));
        let mut m = IteraLiteConfig::preset(Preset::Tiny, 256);
        m.state_size = 0;
        assert!(m.validate().unwrap_err().contains("state_size"));
    }
}
