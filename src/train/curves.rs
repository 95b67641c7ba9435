//! Line charts as small hand-written SVG files: a frame with five ticks per axis, one polyline per
//! series (points marked when a series has few of them) and a legend.

use std::fmt::Write;

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
/// Series with at most this many points get a dot on each.
const MARKED: usize = 60;

pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let all = || series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (x0, x1) = span(all().map(|p| p.0));
    let (y0, y1) = span(all().map(|p| p.1));
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#, W / 2.0, escape(title));
    let (fx0, fx1, fy0, fy1) = (LEFT, W - RIGHT, TOP, H - BOTTOM);
    let _ = writeln!(
        s,
        r##"<rect x="{fx0}" y="{fy0}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
        fx1 - fx0,
        fy1 - fy0
    );
    for k in 0..=4 {
        let f = k as f64 / 4.0;
        let (x, y) = (x0 + f * (x1 - x0), y0 + f * (y1 - y0));
        let _ = writeln!(s, r##"<line x1="{0:.1}" y1="{fy0}" x2="{0:.1}" y2="{fy1}" stroke="#ddd"/>"##, px(x));
        let _ = writeln!(s, r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#, px(x), fy1 + 16.0, tick(x));
        let _ = writeln!(s, r##"<line x1="{fx0}" y1="{0:.1}" x2="{fx1}" y2="{0:.1}" stroke="#ddd"/>"##, py(y));
        let _ = writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#, fx0 - 6.0, py(y) + 4.0, tick(y));
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (fx0 + fx1) / 2.0,
        H - 12.0,
        escape(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{0}" text-anchor="middle" transform="rotate(-90 16 {0})">{1}</text>"#,
        (fy0 + fy1) / 2.0,
        escape(y_label)
    );
    for (k, series) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let pts: Vec<(f64, f64)> =
            series.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
        let path: Vec<String> = pts.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        let _ =
            writeln!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#, path.join(" "));
        if pts.len() <= MARKED {
            for &(x, y) in &pts {
                let _ = writeln!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"#, px(x), py(y));
            }
        }
        let ly = fy0 + 16.0 + 16.0 * k as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"/>"#,
            fx1 - 150.0,
            fx1 - 130.0
        );
        let _ = writeln!(s, r#"<text x="{}" y="{}">{}</text>"#, fx1 - 124.0, ly + 4.0, escape(&series.name));
    }
    s.push_str("</svg>\n");
    s
}

/// The range of the values, widened when empty or flat so the scale stays defined.
fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    (lo, hi)
}

fn tick(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e5 || v.abs() < 1e-2) {
        format!("{v:.2e}")
    } else {
        let text = format!("{v:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_a_polyline_per_series_and_survives_degenerate_input() {
        let svg = line_chart(
            "loss <train>",
            "step",
            "loss",
            &[
                Series { name: "a".into(), points: vec![(0.0, 1.0), (1.0, 0.5), (2.0, f64::NAN)] },
                Series { name: "b".into(), points: vec![(1.0, 0.7)] },
                Series { name: "empty".into(), points: vec![] },
            ],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("loss &lt;train&gt;") && !svg.contains("NaN"));
        let flat = line_chart("t", "x", "y", &[Series { name: "one".into(), points: vec![(3.0, 2.0)] }]);
        assert!(!flat.contains("NaN") && !flat.contains("inf"));
    }
}
