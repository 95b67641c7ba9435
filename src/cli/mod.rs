//! Subcommands. Each file parses nothing itself: clap does, and the library does the work.

mod bench;
mod checks;
mod distill;
mod draft_vocab;
mod eval;
mod export_head;
mod gen_data;
mod generate;
mod import;
mod import_ge_data;
mod import_torch;
mod init_head;
mod metrics;
mod rollout;
mod score;
mod stream;

use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use clover_engine::backend::cuda::{check_device, CudaBackend};
use clover_engine::error::{Error, Result};
use clover_engine::paths;

/// `--device`: the backend a command runs its model on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
    /// No `--device`: cuda:0 when it opens, else the CPU (`default_gpu`).
    Default,
}

impl Device {
    /// `cpu`, `cuda`, `cuda:N`, or `Default` without the option.
    fn parse(arg: Option<&str>) -> Result<Device> {
        match arg {
            None => Ok(Device::Default),
            Some("cpu") => Ok(Device::Cpu),
            Some("cuda") => Ok(Device::Cuda(0)),
            Some(other) => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| Error::input(format!("--device {other}: expected cpu, cuda or cuda:N"))),
        }
    }
}

/// Runs `$body` with `$b` bound to the backend of `$device` (the body is compiled for each
/// backend; a GPU that cannot be opened is a clean error).
macro_rules! with_backend {
    ($device:expr, $b:ident => $body:expr) => {
        match $device {
            Device::Cpu => {
                let $b = clover_engine::backend::cpu::CpuBackend;
                $body
            }
            Device::Cuda(n) => {
                let $b = CudaBackend::new(n)?;
                $body
            }
            Device::Default => match default_gpu() {
                Some($b) => $body,
                None => {
                    let $b = clover_engine::backend::cpu::CpuBackend;
                    $body
                }
            },
        }
    };
}

/// cuda:0 when this build and the machine can run on it. A machine without a GPU (or a build
/// without kernels) runs on the CPU silently; a GPU that is there but cannot be opened (a driver
/// older than the kernels, a GPU this build has no code for) is said once before the CPU is used,
/// so that a command without `--device` still runs.
fn default_gpu() -> Option<CudaBackend> {
    check_device(0).ok()?;
    match CudaBackend::new(0) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("note: {e}; running on the CPU (--device cuda makes this an error)");
            None
        }
    }
}

/// `--chat-template`, for the commands that render chats.
#[derive(Args, Clone, Default)]
pub struct ChatTemplateArg {
    /// A Jinja chat template file to render chats with instead of the model folder's own, e.g.
    /// for a model that ships none: assets/chat-templates/vicuna.jinja is Vicuna's (FastChat's
    /// vicuna_v1.1, as the EAGLE, Clover-2 and Spec-Bench evaluations prompt it).
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
}

#[derive(Parser)]
#[command(name = "clover-engine", version, about = "Speculative decoding with Clover-2 and EAGLE-1 draft heads")]
pub struct Cli {
    /// Worker threads for the CPU backend (default, or 0: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Where the model runs, for the commands that run one (generate, score, gen-data,
    /// import-ge-data, distill, eval, bench, rollout): cpu, cuda or cuda:N (default: cuda:0 when a GPU and this build's kernels are
    /// there and it opens, else cpu).
    #[arg(long, global = true)]
    device: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a GGUF model (F32/F16/BF16/Q8_0/Q4_0/Q4_1) into an HF folder.
    ImportGguf(import::ImportArgs),
    /// Convert a PyTorch checkpoint (pytorch_model.bin, torch.save's zip format) into a
    /// model.safetensors, without Python: e.g. a released EAGLE-1 or Clover-2 head.
    ImportTorch(import_torch::ImportTorchArgs),
    /// Turn the reference's ge_data dumps (one torch.save file per conversation) into gen-data
    /// shards for distill.
    ImportGeData(import_ge_data::ImportGeDataArgs),
    /// Generate text, streaming it as it is produced.
    Generate(generate::GenerateArgs),
    /// Write an untrained draft head for a base model, initialised as the reference does.
    InitHead(init_head::InitHeadArgs),
    /// Run the base model over conversations and store features for draft-head training.
    GenData(gen_data::GenDataArgs),
    /// Train a draft head by distillation from gen-data features (resumable).
    Distill(distill::DistillArgs),
    /// Re-encode a head folder (e.g. a distill output) as bf16, f16 or f32 for shipping.
    ExportHead(export_head::ExportHeadArgs),
    /// Give a head a reduced draft vocabulary: the N most frequent assistant tokens of gen-data output.
    DraftVocab(draft_vocab::DraftVocabArgs),
    /// Perplexity of a text; optionally dump its logits for comparison with other engines.
    Score(score::ScoreArgs),
    /// A draft head's rollout on evaluation conversations: chains of top-k drafts accepted per
    /// depth, run free through the drafting path (clover2.md §8, eagle.md §5).
    Rollout(rollout::RolloutArgs),
    /// Answer benchmark questions (MT-bench / Spec-Bench JSONL) into a resumable answers file.
    Eval(eval::EvalArgs),
    /// τ, speed and speedup per category from answers files; table, JSON and SVG.
    Metrics(metrics::MetricsArgs),
    /// Per-step latency of plain decoding and draft heads, interleaved in one process.
    Bench(bench::BenchArgs),
}

impl Cli {
    /// The command line, parsed. Every option that takes a value also takes a negative number
    /// (`--temperature -1`), so that the option's own check says what is wrong with it, where clap
    /// would call `-1` an unexpected argument.
    pub fn parse_args() -> Cli {
        let matches = negative_numbers_allowed(Cli::command()).get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

fn negative_numbers_allowed(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|a| if a.get_action().takes_values() { a.allow_negative_numbers(true) } else { a })
        .mut_subcommands(negative_numbers_allowed)
}

/// Runs the command on a thread of its own worker pool (`--threads`, default one per core).
/// Called from outside a pool, every parallel region (a token of the default model has several
/// hundred: each matmul, each attention) injects its tasks, wakes the workers and puts the caller
/// to sleep until they finish; from a worker, the region's tasks go on that worker's own queue and
/// the other workers take them directly. That hand-off cost about a third of the decode time of
/// the Q4_1 model (docs/cpu-kernels.md).
pub fn run(cli: Cli) -> Result<()> {
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(n) = cli.threads {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if n > cores {
            // Allowed (a benchmark may want it), but more workers than cores slow every step down.
            eprintln!("note: --threads {n} on {cores} cores: the workers will take turns, slower than {cores}");
        }
        pool = pool.num_threads(n);
    }
    let pool = pool.build().map_err(|e| Error::input(format!("--threads: {e}")))?;
    pool.install(|| run_command(cli))
}

fn run_command(cli: Cli) -> Result<()> {
    let device = || Device::parse(cli.device.as_deref());
    let runs_no_model = match &cli.command {
        Command::ImportGguf(_) => Some("import-gguf"),
        Command::ImportTorch(_) => Some("import-torch"),
        Command::InitHead(_) => Some("init-head"),
        Command::Metrics(_) => Some("metrics"),
        Command::ExportHead(_) => Some("export-head"),
        Command::DraftVocab(_) => Some("draft-vocab"),
        _ => None,
    };
    if let (Some(command), Some(device)) = (runs_no_model, &cli.device) {
        // Said rather than ignored: someone asking for a device expects the command to use it.
        return Err(Error::input(format!("--device {device}: {command} runs no model, on any device")));
    }
    match cli.command {
        Command::ImportGguf(a) => import::run(a),
        Command::ImportTorch(a) => import_torch::run(a),
        Command::ImportGeData(a) => with_backend!(device()?, b => import_ge_data::run(a, b)),
        Command::Generate(a) => with_backend!(device()?, b => generate::run(a, b)),
        Command::Score(a) => with_backend!(device()?, b => score::run(a, b)),
        Command::Rollout(a) => with_backend!(device()?, b => rollout::run(a, b)),
        Command::InitHead(a) => init_head::run(a),
        Command::GenData(a) => with_backend!(device()?, b => gen_data::run(a, b)),
        Command::Eval(a) => with_backend!(device()?, b => eval::run(a, b)),
        Command::Metrics(a) => metrics::run(a),
        Command::Bench(a) => with_backend!(device()?, b => bench::run(a, b)),
        Command::Distill(a) => with_backend!(device()?, b => distill::run(a, b)),
        Command::ExportHead(a) => export_head::run(a),
        Command::DraftVocab(a) => draft_vocab::run(a),
    }
}

/// `--model DIR`, or the default model from the setup script's cache.
fn model_dir(arg: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = arg {
        if dir.is_file() {
            return Err(Error::input(format!("--model {}: a file, not a model folder", dir.display())));
        }
        if !dir.is_dir() {
            return Err(Error::input(format!("--model {}: no such folder", dir.display())));
        }
        if !dir.join("config.json").is_file() {
            return Err(Error::input(format!(
                "--model {}: not a model folder (no config.json): give an HF model folder or the output of import-gguf",
                dir.display()
            )));
        }
        return Ok(dir);
    }
    let dir = paths::default_model_dir();
    if !dir.join("config.json").exists() {
        return Err(Error::input(format!(
            "no --model given and the default model ({}) is not in {}; run tools/fetch-default-model.sh to get it",
            paths::DEFAULT_MODEL_NAME,
            dir.display()
        )));
    }
    Ok(dir)
}
