//! The loss curves of a run as an SVG, and the font every plot measures and draws text with.

use crate::train::Metric;
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::register_font;
use std::path::Path;

/// Registers DejaVu Sans (embedded by the `dejavu` crate; no system fonts, nothing fetched) as
/// plotters' sans-serif: text is measured with it for SVG and rasterised with it for PNG.
pub fn register_fonts() -> Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok =
        *REGISTERED.get_or_init(|| register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!("plot: could not register the embedded DejaVu Sans font"))
    }
}

/// Draws training cross-entropy and validation loss against training tokens into `path`,
/// with the unigram loss as a dashed reference line when known.
pub fn loss_curves_svg(path: &Path, title: &str, metrics: &[Metric], unigram: Option<f64>) -> Result<()> {
    let mut train: Vec<(f64, f64)> = Vec::new();
    let mut valid: Vec<(f64, f64)> = Vec::new();
    let mut tokens_at_step = std::collections::HashMap::new();
    for m in metrics {
        match m {
            Metric::Train { step, tokens, ce, .. } => {
                tokens_at_step.insert(*step, *tokens as f64);
                train.push((*tokens as f64, *ce));
            }
            Metric::Eval { step, valid_loss, .. } => {
                if let Some(&t) = tokens_at_step.get(step) {
                    valid.push((t, *valid_loss));
                }
            }
        }
    }
    if train.is_empty() {
        return Ok(());
    }
    let x_max = train.iter().map(|p| p.0).fold(1.0, f64::max);
    let ys = train.iter().chain(&valid).map(|p| p.1).chain(unigram);
    let (y_min, y_max) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let pad = 0.05 * (y_max - y_min).max(1e-3);

    register_fonts()?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x_max, (y_min - pad)..(y_max + pad))
            .map_err(|e| anyhow!("plot: {e}"))?;
        chart
            .configure_mesh()
            .x_desc("training tokens")
            .y_desc("loss (nats / token)")
            .x_label_formatter(&|x| format!("{:.0}k", x / 1e3))
            .draw()
            .map_err(|e| anyhow!("plot: {e}"))?;
        chart
            .draw_series(LineSeries::new(train, BLUE.stroke_width(1)))
            .map_err(|e| anyhow!("plot: {e}"))?
            .label("train cross-entropy")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE));
        chart
            .draw_series(LineSeries::new(valid.clone(), RED.stroke_width(2)))
            .map_err(|e| anyhow!("plot: {e}"))?
            .label("validation loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED));
        chart.draw_series(valid.iter().map(|&p| Circle::new(p, 3, RED.filled()))).map_err(|e| anyhow!("plot: {e}"))?;
        if let Some(u) = unigram {
            chart
                .draw_series(DashedLineSeries::new(vec![(0.0, u), (x_max, u)], 6, 4, BLACK.stroke_width(1)))
                .map_err(|e| anyhow!("plot: {e}"))?
                .label("unigram loss (no context)")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("plot: {e}"))?;
        root.present().map_err(|e| anyhow!("plot: {e}"))?;
    }
    crate::files::write_atomic(path, svg.as_bytes())
}
