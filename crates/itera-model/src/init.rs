//! Seeded, platform-independent weight initialisation.
//!
//! candle's CPU `randn` draws from an unseedable thread RNG, so a run could not be repeated. Every
//! variable is instead filled from its own SplitMix64 stream, seeded by (run seed, tensor name):
//! the result depends on neither iteration order nor platform (the same bits in wasm).

use crate::config::{BaselineConfig, Config, IteraLiteConfig};
use candle_core::{Result, Tensor};
use candle_nn::VarMap;

/// The project's one random stream (defined in `itera-data`, shared with the world generator).
pub use itera_data::rng::Rng;

/// FNV-1a of a name: mixes the tensor name into its stream's seed.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// How one tensor starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Const(f64),
    Normal(f64),       // N(0, std²)
    Uniform(f64, f64), // U(lo, hi)
    /// Mamba's S4D-real init: A_log[d, n] = ln(n + 1), so A = -(1, 2, ..., N) per channel.
    ALog,
    /// Mamba's Δ bias: Δ ~ exp(U(ln min, ln max)) clamped to ≥ floor, bias = softplus⁻¹(Δ).
    DtBias {
        min: f64,
        max: f64,
        floor: f64,
    },
}

impl Init {
    fn fill(self, shape: &[usize], rng: &mut Rng) -> Vec<f32> {
        let numel: usize = shape.iter().product();
        match self {
            Init::Const(v) => vec![v as f32; numel],
            Init::Normal(std) => (0..numel).map(|_| (rng.normal() * std) as f32).collect(),
            Init::Uniform(lo, hi) => (0..numel).map(|_| (lo + (hi - lo) * rng.uniform()) as f32).collect(),
            Init::ALog => {
                let n = *shape.last().unwrap_or(&1);
                (0..numel).map(|i| ((i % n) as f64 + 1.0).ln() as f32).collect()
            }
            Init::DtBias { min, max, floor } => (0..numel)
                .map(|_| {
                    let dt = (min.ln() + (max.ln() - min.ln()) * rng.uniform()).exp().max(floor);
                    // inverse of softplus: dt + log(-expm1(-dt))
                    (dt + (-(-dt).exp_m1()).ln()) as f32
                })
                .collect(),
        }
    }
}

/// GPT-2 / Llama style: N(0, 0.02), residual-output projections scaled by 1/sqrt(2·layers).
const STD: f64 = 0.02;

fn baseline_init(cfg: &BaselineConfig, name: &str) -> Option<Init> {
    let residual_std = STD / (2.0 * cfg.num_hidden_layers as f64).sqrt();
    if name.ends_with("norm.weight") || name.ends_with("layernorm.weight") {
        Some(Init::Const(1.0))
    } else if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") {
        Some(Init::Normal(residual_std))
    } else if name.ends_with("_proj.weight") || name.ends_with("embed_tokens.weight") {
        Some(Init::Normal(STD))
    } else {
        None
    }
}

/// How Itera-Lite's mixer projections start; everything else is the same in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitScheme {
    /// state-spaces/mamba's reference init, that of the paper's results: `in_proj` and `x_proj`
    /// keep PyTorch's `nn.Linear` default (kaiming-uniform, bound 1/√fan_in) and `out_proj` is that
    /// divided by √(residual branches · layers) (mixer_seq_simple.py `_init_weights`).
    #[default]
    Mamba,
    /// N(0, 0.02) for every projection (`out_proj` scaled by 1/√(branches · layers)), as Hugging
    /// Face's `MambaPreTrainedModel._init_weights` does: 2.5-3.6× smaller mixer weights at d 64.
    Normal,
}

impl InitScheme {
    pub const ALL: [InitScheme; 2] = [InitScheme::Mamba, InitScheme::Normal];
    pub fn name(self) -> &'static str {
        match self {
            InitScheme::Mamba => "mamba",
            InitScheme::Normal => "normal",
        }
    }
}

impl std::fmt::Display for InitScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for InitScheme {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        InitScheme::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown init `{s}` (expected `mamba` or `normal`)"))
    }
}

/// PyTorch's `nn.Linear` / `kaiming_uniform_(a=√5)` bound: 1/√fan_in.
fn bound(fan_in: usize) -> f64 {
    1.0 / (fan_in as f64).sqrt()
}

/// Mamba's init (mamba_simple.py `Mamba.__init__` and `_init_weights`); see [`InitScheme`].
fn itera_init(cfg: &IteraLiteConfig, name: &str, scheme: InitScheme) -> Option<Init> {
    let residuals = if cfg.moe() { 2.0 } else { 1.0 }; // residual branches per block
    let residuals_sqrt = (residuals * cfg.num_hidden_layers as f64).sqrt();
    let residual_std = STD / residuals_sqrt;
    let conv_bound = 1.0 / (cfg.conv_kernel as f64).sqrt(); // kaiming-uniform bound, fan_in = K
    let dt_bound = 1.0 / (cfg.time_step_rank as f64).sqrt(); // dt_init_std = dt_rank^-0.5 * dt_scale
    Some(if name.ends_with("norm.weight") || name.ends_with("norm_f.weight") {
        Init::Const(1.0)
    } else if name.ends_with("mixer.A_log") {
        Init::ALog
    } else if name.ends_with("mixer.D") {
        Init::Const(1.0)
    } else if name.ends_with("conv1d.weight") || name.ends_with("conv1d.bias") {
        Init::Uniform(-conv_bound, conv_bound)
    } else if name.ends_with("dt_proj.weight") {
        Init::Uniform(-dt_bound, dt_bound)
    } else if name.ends_with("dt_proj.bias") {
        Init::DtBias { min: cfg.time_step_min, max: cfg.time_step_max, floor: cfg.time_step_floor }
    } else if scheme == InitScheme::Mamba && name.ends_with("mixer.out_proj.weight") {
        // kaiming_uniform_(a=√5), then p /= sqrt(n_residuals_per_layer * n_layer)
        Init::Uniform(-bound(cfg.d_inner()) / residuals_sqrt, bound(cfg.d_inner()) / residuals_sqrt)
    } else if scheme == InitScheme::Mamba && name.ends_with("mixer.in_proj.weight") {
        Init::Uniform(-bound(cfg.hidden_size), bound(cfg.hidden_size)) // nn.Linear's default
    } else if scheme == InitScheme::Mamba && name.ends_with("mixer.x_proj.weight") {
        Init::Uniform(-bound(cfg.d_inner()), bound(cfg.d_inner())) // nn.Linear's default
    } else if name.ends_with("out_proj.weight") || name.ends_with("down_proj.weight") {
        Init::Normal(residual_std)
    } else if name.ends_with(".weight") {
        Init::Normal(STD) // embeddings, in_proj, x_proj, router, expert gate/up
    } else {
        return None;
    })
}

/// The init rule of a tensor, by name.
pub fn init_rule(cfg: &Config, name: &str, scheme: InitScheme) -> Option<Init> {
    match cfg {
        Config::Baseline(c) => baseline_init(c, name),
        Config::IteraLite(c) => itera_init(c, name, scheme),
    }
}

/// Overwrites every variable of `varmap` with its seeded init (the default [`InitScheme`]).
pub fn init_weights(varmap: &VarMap, cfg: &Config, seed: u64) -> Result<()> {
    init_weights_with(varmap, cfg, seed, InitScheme::default())
}

/// [`init_weights`] with a chosen scheme for Itera-Lite's mixer projections.
pub fn init_weights_with(varmap: &VarMap, cfg: &Config, seed: u64, scheme: InitScheme) -> Result<()> {
    let data = varmap.data().lock().map_err(|_| candle_core::Error::msg("init: var map lock poisoned"))?;
    for (name, var) in data.iter() {
        let rule = init_rule(cfg, name, scheme)
            .ok_or_else(|| candle_core::Error::msg(format!("init: no rule for `{name}`")))?;
        let mut rng = Rng::new(seed ^ fnv1a(name));
        let values = rule.fill(var.dims(), &mut rng);
        var.set(&Tensor::from_vec(values, var.shape(), var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dt_bias_inverts_softplus_into_the_init_range() {
        let mut rng = Rng::new(7);
        let init = Init::DtBias { min: 0.001, max: 0.1, floor: 1e-4 };
        for b in init.fill(&[1000], &mut rng) {
            let dt = (1.0 + (b as f64).exp()).ln();
            assert!((0.000_999..=0.100_01).contains(&dt), "softplus(bias) = {dt}");
        }
    }

    /// `mamba` keeps nn.Linear's kaiming-uniform bound 1/√fan_in on the mixer's projections;
    /// `normal` draws them from N(0, 0.02). Both leave A_log, D, Δ and the conv alone.
    #[test]
    fn init_schemes_scale_the_mixer_projections_as_documented() {
        use crate::config::{Config, IteraLiteConfig, Preset};
        let cfg = Config::IteraLite(IteraLiteConfig { num_experts: 0, ..IteraLiteConfig::preset(Preset::Small, 32) });
        let (d, ed) = (64.0f64, 128.0f64);
        let std_of = |v: &[f32]| (v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        let draw =
            |scheme, name: &str, shape: &[usize]| init_rule(&cfg, name, scheme).unwrap().fill(shape, &mut Rng::new(3));
        let in_proj = draw(InitScheme::Mamba, "backbone.layers.0.mixer.in_proj.weight", &[256, 64]);
        assert!(in_proj.iter().all(|&x| (x as f64).abs() <= 1.0 / d.sqrt()));
        assert!((std_of(&in_proj) - 1.0 / (3.0 * d).sqrt()).abs() < 0.005, "{}", std_of(&in_proj));
        let out_proj = draw(InitScheme::Mamba, "backbone.layers.1.mixer.out_proj.weight", &[64, 128]);
        assert!(out_proj.iter().all(|&x| (x as f64).abs() <= 1.0 / ed.sqrt() / 2f64.sqrt()));
        let x_proj = draw(InitScheme::Normal, "backbone.layers.0.mixer.x_proj.weight", &[36, 128]);
        assert!((std_of(&x_proj) - 0.02).abs() < 0.002, "{}", std_of(&x_proj));
        for name in
            ["backbone.layers.0.mixer.A_log", "backbone.layers.0.mixer.dt_proj.bias", "backbone.embeddings.weight"]
        {
            assert_eq!(init_rule(&cfg, name, InitScheme::Mamba), init_rule(&cfg, name, InitScheme::Normal), "{name}");
        }
    }

    #[test]
    fn normal_draws_have_the_requested_moments() {
        let mut rng = Rng::new(1);
        let v = Init::Normal(2.0).fill(&[20_000], &mut rng);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.05 && (var.sqrt() - 2.0).abs() < 0.05, "mean {mean} std {}", var.sqrt());
    }
}
