//! The metrics as pictures, in hand-written SVG: acceptance rate per depth and τ per category,
//! as two bar charts one above the other.

use std::fmt::Write;

use crate::eval::metrics::Metrics;

const WIDTH: f64 = 720.0;
const PANEL_HEIGHT: f64 = 300.0;
const MARGIN_LEFT: f64 = 60.0;
const MARGIN_RIGHT: f64 = 20.0;
const MARGIN_TOP: f64 = 56.0;
const MARGIN_BOTTOM: f64 = 50.0;

struct Panel<'a> {
    title: &'a str,
    labels: Vec<String>,
    values: Vec<f64>,
    /// Top of the y axis; values are drawn against 0..y_max.
    y_max: f64,
    /// Shown instead of bars when there are none.
    empty_note: &'a str,
}

pub fn metrics_svg(m: &Metrics) -> String {
    const NO_LENGTHS: &str = "no accept_lengths in the answers";
    let accept = &m.overall.acceptance_per_depth;
    let depth_panel = Panel {
        title: "Acceptance rate per depth (steps that accepted ≥ d drafts)",
        labels: (1..=accept.len()).map(|d| d.to_string()).collect(),
        values: accept.clone(),
        y_max: 1.0,
        empty_note: if m.overall.steps.is_some() { "no draft was accepted" } else { NO_LENGTHS },
    };
    let taus: Vec<(String, f64)> =
        m.categories.iter().chain([&m.overall]).filter_map(|g| Some((g.category.clone(), g.tau?))).collect();
    let tau_max = taus.iter().map(|(_, t)| *t).fold(1.0, f64::max).ceil();
    let tau_panel = Panel {
        title: "τ per category (tokens committed per verification step)",
        labels: taus.iter().map(|(c, _)| c.clone()).collect(),
        values: taus.iter().map(|(_, t)| *t).collect(),
        y_max: tau_max,
        empty_note: NO_LENGTHS,
    };
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{h}\" viewBox=\"0 0 {WIDTH} {h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        h = 2.0 * PANEL_HEIGHT
    );
    draw_panel(&mut s, &depth_panel, 0.0);
    draw_panel(&mut s, &tau_panel, PANEL_HEIGHT);
    s += "</svg>\n";
    s
}

fn draw_panel(s: &mut String, p: &Panel, top: f64) {
    let (x0, x1) = (MARGIN_LEFT, WIDTH - MARGIN_RIGHT);
    let (y0, y1) = (top + PANEL_HEIGHT - MARGIN_BOTTOM, top + MARGIN_TOP);
    let y_of = |v: f64| y0 - (v / p.y_max).clamp(0.0, 1.0) * (y0 - y1);
    // `write!` into a String cannot fail.
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"14\">{}</text>",
        WIDTH / 2.0,
        top + 24.0,
        xml(p.title)
    );
    for i in 0..=4 {
        let v = p.y_max * i as f64 / 4.0;
        let y = y_of(v);
        let _ = writeln!(s, "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{x1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>");
        let _ = writeln!(s, "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.2}</text>", x0 - 6.0, y + 4.0);
    }
    let _ = writeln!(s, "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"black\"/>");
    if p.values.is_empty() {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#666\">{}</text>",
            WIDTH / 2.0,
            (y0 + y1) / 2.0,
            p.empty_note
        );
        return;
    }
    let slot = (x1 - x0) / p.values.len() as f64;
    for (i, (label, &v)) in p.labels.iter().zip(&p.values).enumerate() {
        let x = x0 + slot * i as f64 + slot * 0.15;
        let y = y_of(v);
        let _ = writeln!(
            s,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#4e79a7\"/>",
            slot * 0.7,
            y0 - y
        );
        let cx = x + slot * 0.35;
        let _ = writeln!(s, "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{v:.2}</text>", y - 4.0);
        let _ = writeln!(s, "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>", y0 + 16.0, xml(label));
    }
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
