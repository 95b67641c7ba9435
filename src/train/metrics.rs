//! The run's numbers: `metrics.jsonl`, one line per optimiser step (`"split": "train"`) and per
//! held-out evaluation (`"split": "heldout"`), appended as they come; and the curves drawn from
//! them, `loss.svg` and `accuracy.svg`. A resumed run drops the lines past its checkpoint, which an
//! interrupted run may have written, so the file reads as one uninterrupted run.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil::write_atomically;
use crate::train::curves::{line_chart, Series};
use crate::train::rollout::Rollout;

pub const METRICS_FILE: &str = "metrics.jsonl";
pub const LOSS_SVG: &str = "loss.svg";
pub const ACCURACY_SVG: &str = "accuracy.svg";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsLine {
    /// "train" (one optimiser step) or "heldout" (an evaluation after `step` steps).
    pub split: String,
    pub step: u64,
    /// The objective: Σ_i weight_i · (vloss_i, ploss_i).
    #[serde(deserialize_with = "non_finite_as_null::one")]
    pub loss: f64,
    /// Per head, the spec's masked means.
    #[serde(deserialize_with = "non_finite_as_null::many")]
    pub vloss: Vec<f64>,
    #[serde(deserialize_with = "non_finite_as_null::many")]
    pub ploss: Vec<f64>,
    /// Held-out: per head, the fraction of rows whose top-1 token is the base model's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top1: Vec<f64>,
    /// Held-out: per head, the fraction whose base token is among the head's first two / three.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top2: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top3: Vec<f64>,
    /// Held-out: the rollout at each k of `ROLLOUT_TOPS` (`HeadSums::rollout`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollout: Vec<Rollout>,
    /// Tokens in the batch (train) or in the held-out set (heldout).
    pub tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
}

/// Per-head fractions as percentages, "37.6% 35.0% …", for the progress lines.
pub fn percents(fractions: &[f64]) -> String {
    fractions.iter().map(|a| format!("{:.1}%", 100.0 * a)).collect::<Vec<_>>().join(" ")
}

pub const TRAIN: &str = "train";
pub const HELDOUT: &str = "heldout";

pub struct MetricsLog {
    path: PathBuf,
    file: File,
    pub lines: Vec<MetricsLine>,
}

impl MetricsLog {
    /// A fresh log in `out` (an older one is replaced).
    pub fn create(out: &Path) -> Result<Self> {
        Self::open(out, Vec::new())
    }

    /// The log of a run resumed at `step`: its lines up to that step.
    pub fn resume(out: &Path, step: u64) -> Result<Self> {
        let path = out.join(METRICS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io(&path, e)),
        };
        // A run killed while appending leaves a last line without its newline: it was written
        // after the checkpoint being resumed from, so it is dropped with the other later lines.
        let complete = match text.rfind('\n') {
            Some(end) => &text[..=end],
            None => "",
        };
        let mut lines = Vec::new();
        for (n, line) in complete.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let parsed: MetricsLine = serde_json::from_str(line)
                .map_err(|e| Error::format(&path, format!("line {}", n + 1), e.to_string()))?;
            if parsed.step <= step {
                lines.push(parsed);
            }
        }
        Self::open(out, lines)
    }

    fn open(out: &Path, lines: Vec<MetricsLine>) -> Result<Self> {
        let path = out.join(METRICS_FILE);
        let mut text = String::new();
        for line in &lines {
            text.push_str(&to_json(line)?);
        }
        write_atomically(&path, text.as_bytes())?;
        let file = OpenOptions::new().append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        Ok(MetricsLog { path, file, lines })
    }

    pub fn push(&mut self, line: MetricsLine) -> Result<()> {
        self.file.write_all(to_json(&line)?.as_bytes()).map_err(|e| Error::io(&self.path, e))?;
        self.lines.push(line);
        Ok(())
    }

    /// Writes `loss.svg` (training and held-out loss per step) and `accuracy.svg` (held-out
    /// top-1 agreement per head).
    pub fn write_curves(&self, out: &Path) -> Result<()> {
        let points = |split: &str, value: &dyn Fn(&MetricsLine) -> Option<f64>| -> Vec<(f64, f64)> {
            self.lines.iter().filter(|l| l.split == split).filter_map(|l| Some((l.step as f64, value(l)?))).collect()
        };
        let loss = [
            Series { name: "train".into(), points: points(TRAIN, &|l| Some(l.loss)) },
            Series { name: "held-out".into(), points: points(HELDOUT, &|l| Some(l.loss)) },
        ];
        let svg = line_chart("distillation loss", "optimiser step", "loss", &loss);
        write_atomically(&out.join(LOSS_SVG), svg.as_bytes())?;
        let heads = self.lines.iter().filter(|l| l.split == HELDOUT).map(|l| l.top1.len()).max().unwrap_or(0);
        let accuracy: Vec<Series> = (0..heads)
            .map(|i| Series {
                name: format!("head {i}"),
                points: points(HELDOUT, &|l| l.top1.get(i).map(|a| 100.0 * a)),
            })
            .collect();
        let svg = line_chart("held-out top-1 agreement with the base model", "optimiser step", "top-1 %", &accuracy);
        write_atomically(&out.join(ACCURACY_SVG), svg.as_bytes())
    }
}

/// JSON has no NaN or infinity: serde_json writes them as `null`. Reading `null` back as NaN
/// keeps a log that holds one (a diverged held-out loss, say) readable by `--resume`.
mod non_finite_as_null {
    use serde::{Deserialize, Deserializer};

    pub fn one<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }

    pub fn many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Ok(Vec::<Option<f64>>::deserialize(d)?.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
    }
}

fn to_json(line: &MetricsLine) -> Result<String> {
    serde_json::to_string(line).map(|s| s + "\n").map_err(|e| Error::input(format!("{METRICS_FILE}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NaN written as `null` reads back as NaN, so a log holding one can still be resumed.
    #[test]
    fn non_finite_values_survive_a_round_trip() {
        let line = MetricsLine {
            split: HELDOUT.into(),
            step: 3,
            loss: f64::NAN,
            vloss: vec![1.5, f64::INFINITY],
            ploss: vec![f64::NAN, 2.0],
            top1: vec![0.25],
            top2: Vec::new(),
            top3: Vec::new(),
            rollout: Vec::new(),
            tokens: 7,
            lr: None,
            tokens_per_s: None,
        };
        let text = to_json(&line).unwrap();
        assert!(text.contains("\"loss\":null"), "{text}");
        let back: MetricsLine = serde_json::from_str(&text).unwrap();
        assert!(back.loss.is_nan() && back.vloss[1].is_nan() && back.ploss[0].is_nan());
        assert_eq!((back.vloss[0], back.ploss[1], back.top1.clone(), back.step), (1.5, 2.0, vec![0.25], 3));
    }
}
