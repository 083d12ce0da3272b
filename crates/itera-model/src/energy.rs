//! Energy per token, estimated from the analytic cost model: used where no power counter can be
//! read (the browser; machines without RAPL). Always labelled an estimate where shown.

use crate::config::Config;

/// Energy per operation at 45 nm, M. Horowitz, "Computing's energy problem (and what we can do
/// about it)", ISSCC 2014, Fig. 1.1.9: 32-bit float add 0.9 pJ, multiply 3.7 pJ; a 32-bit DRAM
/// read 640 pJ.
pub const PJ_PER_FLOP: f64 = (0.9 + 3.7) / 2.0; // a multiply-add is 2 FLOPs
pub const PJ_PER_DRAM_BYTE: f64 = 640.0 / 4.0;

/// Estimated energy of decoding one token, in millijoules: every FLOP of the analytic count, plus
/// reading every active weight and the whole decoding state from DRAM once per token (an upper
/// bound for models small enough to stay in a CPU's cache).
pub fn energy_mj_per_token(config: &Config, context: usize) -> f64 {
    let flops = config.decode_flops_per_token(context.max(1));
    let bytes = (config.param_count().active_per_token * 4 + config.state_bytes(context)) as f64;
    (flops * PJ_PER_FLOP + bytes * PJ_PER_DRAM_BYTE) * 1e-9
}

/// The estimate's formula, as the page shows it.
pub fn energy_formula() -> String {
    format!(
        "E/token ≈ FLOPs × {PJ_PER_FLOP:.1} pJ + bytes × {PJ_PER_DRAM_BYTE:.0} pJ, FLOPs = the analytic count at the current \
         context, bytes = active weights (4 B each) + decoding state read once from DRAM; per-operation energies from \
         Horowitz, ISSCC 2014, 45 nm (fp32 add 0.9 pJ + multiply 3.7 pJ per multiply-add of 2 FLOPs; 640 pJ per \
         32-bit DRAM read)"
    )
}
