use std::path::PathBuf;

use clap::Args;

use clover_engine::error::{Error, Result};
use clover_engine::eval::answers::read_answers;
use clover_engine::eval::metrics::compute;
use clover_engine::eval::svg::metrics_svg;
use clover_engine::fsutil::write_atomically;

#[derive(Args)]
pub struct MetricsArgs {
    /// Answers written by `eval`, or by the reference scripts.
    #[arg(long)]
    answers: PathBuf,
    /// Plain-decoding answers to compute speedups against.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Also write the metrics as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also draw acceptance per depth and τ per category as SVG bar charts.
    #[arg(long)]
    svg: Option<PathBuf>,
}

pub fn run(a: MetricsArgs) -> Result<()> {
    let answers = read_answers(&a.answers)?;
    if answers.is_empty() {
        return Err(Error::input(format!("{}: no answers", a.answers.display())));
    }
    let mut methods: Vec<&str> = answers.iter().map(|x| x.model_id.as_str()).collect();
    methods.sort_unstable();
    methods.dedup();
    if methods.len() > 1 {
        eprintln!(
            "warning: {} holds the answers of {} model_ids ({}): the figures below average them together",
            a.answers.display(),
            methods.len(),
            methods.join(", ")
        );
    }
    let baseline = a.baseline.as_deref().map(read_answers).transpose()?;
    if let (Some(base), Some(path)) = (&baseline, &a.baseline) {
        // A baseline that shares no question is a wrong file, not a table with no speedups.
        if !answers.iter().any(|x| base.iter().any(|b| b.question_id == x.question_id)) {
            return Err(Error::input(format!(
                "--baseline {}: answers none of the {} questions of {}: no speedup can be computed",
                path.display(),
                answers.len(),
                a.answers.display()
            )));
        }
    }
    let m = compute(&answers, baseline.as_deref());
    print!("{}", m.table());
    if let (Some(n), Some(path)) = (m.compared_questions, &a.baseline) {
        if n < answers.len() {
            println!("speedup over the {n} of {} questions that {} also answers", answers.len(), path.display());
        }
    }
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&m).map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
        write_atomically(path, text.as_bytes())?;
    }
    if let Some(path) = &a.svg {
        write_atomically(path, metrics_svg(&m).as_bytes())?;
    }
    Ok(())
}
