//! The page's main-thread wasm (trunk's `data-type="main"`). No model runs here: the workers do
//! that. It only exposes the analytic cost model (`itera_web::analytic`) to the page's JS as
//! `window.wasmBindings.analytic`, so that the charts use the same formulas as the report.

#[cfg(target_arch = "wasm32")]
mod exports {
    use wasm_bindgen::prelude::*;

    /// Parameters and, per context, FLOPs / state bytes / energy estimate, as a JSON string.
    #[wasm_bindgen]
    pub fn analytic(config_json: &str, contexts: Vec<u32>) -> Result<String, JsError> {
        let contexts: Vec<usize> = contexts.into_iter().map(|c| c as usize).collect();
        itera_web::analytic::analytic_json(config_json, &contexts).map_err(|e| JsError::new(&e))
    }
}

fn main() {
    #[cfg(target_arch = "wasm32")]
    console_error_panic_hook::set_once();
}
