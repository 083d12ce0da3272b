//! The analytic cost model of a config (itera-model's own formulas), as JSON for the page's
//! charts: parameters, and FLOPs, decoding-state bytes and the energy estimate against context.

use crate::engine::energy_mj_per_token;
use itera_model::Config;
use serde_json::json;

/// `config_json`: a model's config.json. Returns
/// `{"params": {..}, "points": [{"context", "flops", "state_bytes", "energy_mj"}, ..]}`.
pub fn analytic_json(config_json: &str, contexts: &[usize]) -> Result<String, String> {
    let cfg: Config = serde_json::from_str(config_json).map_err(|e| format!("config.json: {e}"))?;
    cfg.validate().map_err(|e| format!("config.json: {e}"))?;
    let points: Vec<_> = contexts
        .iter()
        .map(|&c| {
            json!({
                "context": c,
                "flops": cfg.decode_flops_per_token(c),
                "state_bytes": cfg.state_bytes(c),
                "energy_mj": energy_mj_per_token(&cfg, c),
            })
        })
        .collect();
    Ok(json!({ "params": cfg.param_count(), "points": points }).to_string())
}
