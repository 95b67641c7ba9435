//! distill on a tiny random model and a small synthetic data set written with the gen-data layout:
//! the held-out loss falls, the trained head loads for drafting, an interrupted run resumed gives
//! exactly the losses and weights of an uninterrupted one, and bad input fails with messages that
//! name the file and field.

mod common;
#[path = "common/tiny_training.rs"]
mod tiny_training;

use common::engine;
use tiny_training::{options, setup, tiny_model, write_data_seeded, VOCAB};

use std::path::{Path, PathBuf};

use clover_engine::backend::cpu::CpuBackend;
use clover_engine::draft::init::init_head;
use clover_engine::draft::{load_head, DraftKind};
use clover_engine::model::Llama;
use clover_engine::train::distill::{distill, DistillOptions, DistillSummary};
use clover_engine::train::metrics::{MetricsLine, HELDOUT, METRICS_FILE, TRAIN};
use clover_engine::train::tensor_scale::TensorScale;
use clover_engine::weights::safetensors::SafetensorsFiles;
use clover_engine::weights::DType;

fn metrics(out: &Path) -> Vec<MetricsLine> {
    let text = std::fs::read_to_string(out.join(METRICS_FILE)).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn heldout_losses(out: &Path) -> Vec<(u64, f64)> {
    metrics(out).iter().filter(|l| l.split == HELDOUT).map(|l| (l.step, l.loss)).collect()
}

fn learns(kind: DraftKind) -> DistillSummary {
    let (root, model, data) = setup(&format!("learns-{}", kind.name()));
    let out = root.join("out");
    let summary = distill(&options(&model, &data, kind, &out, 30), CpuBackend).unwrap();
    let heldout = heldout_losses(&out);
    assert_eq!(heldout.iter().map(|h| h.0).collect::<Vec<_>>(), [0, 10, 20, 30]);
    let (first, last) = (heldout[0].1, heldout[3].1);
    assert!(last < 0.8 * first, "{kind:?}: held-out loss {first} → {last} over 30 steps: {heldout:?}");
    let lines = metrics(&out);
    assert_eq!(lines.iter().filter(|l| l.split == TRAIN).count(), 30);
    let heads = if kind == DraftKind::Clover2 { 5 } else { 1 };
    assert!(lines.iter().all(|l| l.vloss.len() == heads && l.ploss.len() == heads));
    let e = summary.last_eval.as_ref().unwrap();
    assert!(e.top1.len() == heads && e.top1.iter().all(|a| (0.0..=1.0).contains(a)), "{:?}", e.top1);
    // Top-2 and top-3 agreement contain top-1's and do not exceed 1.
    for i in 0..heads {
        let (t1, t2, t3) = (e.top1[i], e.top2[i], e.top3[i]);
        assert!(t1 <= t2 && t2 <= t3 && t3 <= 1.0, "{kind:?} head {i}: top-1/2/3 {t1} {t2} {t3}");
    }
    assert!(e.top3.iter().sum::<f64>() > e.top1.iter().sum::<f64>(), "top-3 never adds a match: {e:?}");
    // The rollout (clover2.md §8) at k = 1, 2, 3, 5, 10: through depth 0 it is head 0's top-k
    // agreement; each depth keeps a subset of the last, each k a superset of the smaller's.
    let tops: Vec<usize> = e.rollout.iter().map(|r| r.top).collect();
    assert_eq!(tops, [1, 2, 3, 5, 10]);
    for (r, top) in e.rollout.iter().zip([&e.top1, &e.top2, &e.top3]) {
        assert!((r.accepted[0] - top[0]).abs() < 1e-12, "{e:?}");
    }
    for r in &e.rollout {
        assert_eq!(r.accepted.len(), heads);
        assert!(r.accepted.windows(2).all(|w| w[1] <= w[0]), "{:?}", r.accepted);
    }
    for pair in e.rollout.windows(2) {
        assert!(pair[0].accepted.iter().zip(&pair[1].accepted).all(|(a, b)| a <= b), "{:?}", e.rollout);
    }
    for file in ["loss.svg", "accuracy.svg", "config.json", "model.safetensors"] {
        assert!(out.join(file).exists(), "{file} is written");
    }
    // The trained head drafts for the base model it was trained on.
    let base = Llama::load(&model, CpuBackend).unwrap();
    load_head(kind, &out, &base).unwrap();
    summary
}

#[test]
fn clover2_heldout_loss_falls() {
    let s = learns(DraftKind::Clover2);
    assert_eq!((s.start_step, s.step), (0, 30));
}

#[test]
fn eagle_heldout_loss_falls() {
    learns(DraftKind::Eagle);
}

/// 20 steps in one go, and 10 steps then `--resume` to 20: the same training and held-out losses
/// at every step, and the same final weights, optimiser moments and metrics.
fn resume_is_exact(kind: DraftKind) {
    let (root, model, data) = setup(&format!("resume-{}", kind.name()));
    let (whole, split) = (root.join("whole"), root.join("split"));
    distill(&options(&model, &data, kind, &whole, 20), CpuBackend).unwrap();
    distill(&options(&model, &data, kind, &split, 10), CpuBackend).unwrap();
    // A run that went on past its checkpoint before being killed leaves lines the resume drops.
    let mut stale = std::fs::read_to_string(split.join(METRICS_FILE)).unwrap();
    stale.push_str(&stale.lines().find(|l| l.contains(TRAIN)).unwrap().replace("\"step\":1,", "\"step\":11,"));
    stale.push('\n');
    // … and, killed while appending, half a line.
    stale.push_str("{\"split\":\"train\",\"step\":12,\"lo");
    std::fs::write(split.join(METRICS_FILE), stale).unwrap();
    let mut resumed = options(&model, &data, kind, &split, 20);
    resumed.resume = true;
    resumed.lr = None;
    let s = distill(&resumed, CpuBackend).unwrap();
    assert_eq!((s.start_step, s.step), (10, 20));

    // Every number but the measured speed.
    let numbers = |out: &Path| -> Vec<MetricsLine> {
        metrics(out).into_iter().map(|l| MetricsLine { tokens_per_s: None, ..l }).collect()
    };
    assert_eq!(numbers(&whole), numbers(&split));
    let bytes = |dir: &Path, file: &str| std::fs::read(dir.join(file)).unwrap();
    assert!(bytes(&whole, "model.safetensors") == bytes(&split, "model.safetensors"), "the same weights");
    let ckpt = |dir: &Path| dir.join("checkpoints").join("step-00000020");
    assert!(bytes(&ckpt(&whole), "optimizer.safetensors") == bytes(&ckpt(&split), "optimizer.safetensors"));

    // A resumed run keeps its settings.
    let mut changed = resumed.clone();
    changed.steps = 25;
    changed.lr = Some(1e-2);
    let err = distill(&changed, CpuBackend).expect_err("--lr cannot change on resume").to_string();
    assert!(err.contains("state.json") && err.contains("schedule.lr"), "{err}");
    // Without --resume, a folder holding a run is not overwritten.
    let err = distill(&options(&model, &data, kind, &split, 5), CpuBackend).expect_err("a run is there").to_string();
    assert!(err.contains("--resume"), "{err}");
}

#[test]
fn clover2_resume_is_exact() {
    resume_is_exact(DraftKind::Clover2);
}

#[test]
fn eagle_resume_is_exact() {
    resume_is_exact(DraftKind::Eagle);
}

fn fails_with(args: &[&str], needles: &[&str]) {
    common::assert_clean_error(&engine(args), needles);
}

#[test]
fn cli_errors_name_the_file_and_field() {
    let (root, model, data) = setup("cli-errors");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let out = root.join("out");

    let not_data = root.join("not-data");
    std::fs::create_dir_all(&not_data).unwrap();
    fails_with(
        &["distill", "--model", &s(&model), "--data", &s(&not_data), "--head", "eagle", "--out", &s(&out)],
        &["index.json", "gen-data"],
    );

    let eagle_head = root.join("eagle-head");
    init_head(DraftKind::Eagle, &model, &eagle_head, 0).unwrap();
    let args = ["distill", "--model", &s(&model), "--data", &s(&data), "--head", "clover2", "--out", &s(&out)];
    let mut with_init = args.to_vec();
    let init = s(&eagle_head);
    with_init.extend(["--init", &init]);
    fails_with(&with_init, &["config.json", "draft.kind", "eagle", "clover2"]);
    let mut from_base = args.to_vec();
    let base = s(&model);
    from_base.extend(["--init", &base]);
    fails_with(&from_base, &["base model", "not a draft head"]);

    let wide = root.join("wide-model");
    tiny_model(&wide, 48);
    fails_with(
        &["distill", "--model", &s(&wide), "--data", &s(&data), "--head", "eagle", "--out", &s(&out)],
        &["index.json", "hidden_size", "48", "another base model"],
    );
    fails_with(&args.iter().copied().chain(["--resume"]).collect::<Vec<_>>(), &["--resume", "no checkpoint"]);
    // Data made with a larger vocabulary (another tokenizer): named, not an out-of-range read.
    let narrow = root.join("narrow-vocab-model");
    let mut config = clover_engine::model::random::tiny_llama_config(VOCAB / 2);
    config["hidden_size"] = 32.into();
    clover_engine::model::random::write_random_model(&narrow, &config, 7).unwrap();
    fails_with(
        &["distill", "--model", &s(&narrow), "--data", &s(&data), "--head", "eagle", "--out", &s(&out)],
        &["index.json", "input_ids", "another tokenizer"],
    );
    let twice = format!("{},{}", s(&data), s(&data));
    fails_with(
        &["distill", "--model", &s(&model), "--data", &twice, "--head", "eagle", "--out", &s(&out)],
        &["--data", "twice"],
    );
    assert!(!out.join("model.safetensors").exists(), "a failed run writes no head");
    // Into a base model's folder: refused before anything is written, the model untouched.
    let base_weights = std::fs::read(model.join("model.safetensors")).unwrap();
    fails_with(
        &["distill", "--model", &s(&model), "--data", &s(&data), "--head", "eagle", "--out", &s(&model)],
        &["config.json", "draft.kind", "not a draft head"],
    );
    assert_eq!(std::fs::read(model.join("model.safetensors")).unwrap(), base_weights, "the base model was overwritten");

    // A short run through the command line reports its speed and where the time went.
    let ok = engine(&[&args[..], &["--steps", "2", "--eval-every", "2", "--batch-tokens", "64"]].concat());
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    for needle in ["training tokens/s", "forward", "backward", "lm_head", "optimiser", "held-out loss"] {
        assert!(text.contains(needle), "{needle} missing from: {text}");
    }

    // export-head: the trained head in bf16, each value the bf16 rounding of the f32 one; it loads.
    let shipped = root.join("shipped");
    let o = engine(&["export-head", "--from", &s(&out), "--out", &s(&shipped)]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let (trained, exported) =
        (SafetensorsFiles::open_dir(&out).unwrap(), SafetensorsFiles::open_dir(&shipped).unwrap());
    assert_eq!(trained.names().count(), exported.names().count());
    for name in trained.names() {
        let shape = trained.shape(name).unwrap();
        let (a, b) = (trained.get(name, shape).unwrap(), exported.get(name, shape).unwrap());
        assert_eq!(b.dtype, DType::BF16, "{name}");
        let rounded: Vec<f32> = a.to_f32().iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
        assert_eq!(b.to_f32(), rounded, "{name}");
    }
    load_head(DraftKind::Clover2, &shipped, &Llama::load(&model, CpuBackend).unwrap()).unwrap();
    fails_with(&["export-head", "--from", &s(&not_data), "--out", &s(&root.join("x"))], &["config.json"]);
    fails_with(&["export-head", "--from", &s(&model), "--out", &s(&root.join("x"))], &["config.json", "draft.kind"]);
    assert!(!root.join("x").exists(), "a failed export writes nothing");
    // Over a base model's folder: refused, the model untouched. Over a head: updated.
    let before = std::fs::read(model.join("model.safetensors")).unwrap();
    fails_with(&["export-head", "--from", &s(&out), "--out", &s(&model)], &["config.json", "not a draft head"]);
    assert_eq!(std::fs::read(model.join("model.safetensors")).unwrap(), before, "the base model was overwritten");
    let o = engine(&["export-head", "--from", &s(&out), "--out", &s(&shipped), "--dtype", "f32"]);
    assert!(o.status.success(), "{}", common::stderr(&o));

    // A checkpoint whose settings no run could start with (an edited state.json) is refused by
    // its field on --resume, as the option would be on a new run; the head in --out is untouched.
    let state = newest_state(&out);
    let good = std::fs::read_to_string(&state).unwrap();
    let head_before = std::fs::read(out.join("model.safetensors")).unwrap();
    for (field, value) in [("batch_tokens", 0.0), ("max_len", 0.0), ("draft_vocab", 0.0), ("lr", -1.0)] {
        let mut json: serde_json::Value = serde_json::from_str(&good).unwrap();
        let run = &mut json["run"];
        match field {
            "lr" => run["schedule"]["lr"] = value.into(),
            _ => run[field] = (value as u64).into(),
        }
        std::fs::write(&state, serde_json::to_vec(&json).unwrap()).unwrap();
        let needle = if field == "lr" { "run.schedule.lr".to_string() } else { format!("run.{field}") };
        fails_with(&[&args[..], &["--resume", "--steps", "3"]].concat(), &["state.json", &needle]);
        assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), head_before, "{field}");
    }
    std::fs::write(&state, good).unwrap();

    // A diverging run stops at the first non-finite loss, before AdamW spreads it into the
    // weights, and names the step.
    let diverged = root.join("diverged");
    let d = s(&diverged);
    let lr =
        ["--out", &d, "--lr", "1e30", "--warmup", "0", "--steps", "4", "--eval-every", "1", "--batch-tokens", "64"];
    fails_with(&[&args[..7], &lr[..]].concat(), &["training loss", "diverged", "--lr"]);
}

/// `draft-vocab` counts the assistant tokens of the training split (the last 5% of records are
/// held out) and writes the most frequent ones, most frequent first, into the head folder.
#[test]
fn draft_vocab_lists_the_most_frequent_assistant_tokens_of_the_training_split() {
    let (root, model, data) = setup("draft-vocab");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let head = root.join("head");
    init_head(DraftKind::Eagle, &model, &head, 0).unwrap();
    let out = engine(&["draft-vocab", "--data", &s(&data), "--head", &s(&head), "--size", "10"]);
    assert!(out.status.success(), "{}", common::stderr(&out));

    let reader = clover_engine::train::shards::ShardReader::open(&data).unwrap();
    let train = &reader.split(0.05).train;
    assert_eq!(train.len(), 38);
    let mut counts = vec![0u64; VOCAB];
    for &i in train {
        let r = reader.record(i);
        r.input_ids.iter().zip(&r.loss_mask).filter(|(_, &m)| m == 1).for_each(|(&t, _)| counts[t as usize] += 1);
    }
    let vocab = clover_engine::draft::vocab::DraftVocab::load(&head, VOCAB).unwrap().expect("draft_vocab.json");
    assert_eq!(vocab.ids.len(), 10);
    let listed: Vec<u64> = vocab.ids.iter().map(|&t| counts[t as usize]).collect();
    assert!(listed.windows(2).all(|w| w[0] >= w[1]), "{listed:?}");
    let least_listed = *listed.last().unwrap();
    assert!((0..VOCAB as u32).filter(|t| !vocab.ids.contains(t)).all(|t| counts[t as usize] <= least_listed));
    let covered = listed.iter().sum::<u64>() as f64 / counts.iter().sum::<u64>() as f64;
    assert!((vocab.meta["train_coverage"].as_f64().unwrap() - covered).abs() < 1e-12);
    load_head(DraftKind::Eagle, &head, &Llama::load(&model, CpuBackend).unwrap()).unwrap();

    let not_head = root.join("not-a-head");
    std::fs::create_dir_all(&not_head).unwrap();
    fails_with(&["draft-vocab", "--data", &s(&data), "--head", &s(&not_head)], &["config.json"]);
}

/// `--draft-vocab`: the losses run over the list, which is saved beside the head (and in its
/// checkpoints) so the trained head drafts over it; the held-out loss falls, and resuming is
/// exact and refuses another list size.
#[test]
fn draft_vocabulary_run_learns_resumes_exactly_and_ships_its_list() {
    let (root, model, data) = setup("distill-draft-vocab");
    let kind = DraftKind::Clover2;
    let with_vocab =
        |out: &Path, steps: u64| DistillOptions { draft_vocab: Some(24), ..options(&model, &data, kind, out, steps) };
    let (whole, split) = (root.join("whole"), root.join("split"));
    distill(&with_vocab(&whole, 20), CpuBackend).unwrap();
    let heldout = heldout_losses(&whole);
    assert!(heldout[2].1 < 0.8 * heldout[0].1, "held-out loss {heldout:?}");
    let head = load_head(kind, &whole, &Llama::load(&model, CpuBackend).unwrap()).unwrap();
    assert_eq!(head.draft_vocab().map(<[u32]>::len), Some(24));
    let list = std::fs::read(whole.join("draft_vocab.json")).unwrap();
    let ckpt = whole.join("checkpoints").join("step-00000020");
    assert_eq!(std::fs::read(ckpt.join("draft_vocab.json")).unwrap(), list);
    let shipped = root.join("shipped");
    let o = engine(&["export-head", "--from", &ckpt.to_string_lossy(), "--out", &shipped.to_string_lossy()]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(std::fs::read(shipped.join("draft_vocab.json")).unwrap(), list, "export-head ships the list");

    distill(&with_vocab(&split, 10), CpuBackend).unwrap();
    let mut resumed = with_vocab(&split, 20);
    resumed.resume = true;
    distill(&resumed, CpuBackend).unwrap();
    let numbers = |out: &Path| -> Vec<MetricsLine> {
        metrics(out).into_iter().map(|l| MetricsLine { tokens_per_s: None, ..l }).collect()
    };
    assert_eq!(numbers(&whole), numbers(&split));
    let bytes = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(bytes(&whole) == bytes(&split), "the same weights");

    let mut other = DistillOptions { draft_vocab: Some(30), ..resumed };
    other.steps = 25;
    let err = distill(&other, CpuBackend).expect_err("another draft vocabulary on resume").to_string();
    assert!(err.contains("run.draft_vocab") && err.contains("24 tokens"), "{err}");
}

/// `--lr-scale`: the named parameters move further per step than at the plain rate, the others do
/// not; a resumed run keeps the factors. `--init-scale` multiplies the starting values of the named
/// tensors, in new runs only. A prefix that matches no parameter is refused.
#[test]
fn lr_and_init_scales_act_on_the_named_parameters_and_resume_keeps_them() {
    let (root, model, data) = setup("lr-scale");
    let init = root.join("init");
    init_head(DraftKind::Clover2, &model, &init, 0).unwrap();
    let scale: TensorScale = "clover_head_mlp_rnn.v=8".parse().unwrap();
    let run = |name: &str, scales: Vec<TensorScale>| -> PathBuf {
        let out = root.join(name);
        let opts = DistillOptions {
            init: Some(init.clone()),
            lr_scales: scales,
            eval_every: 2,
            ..options(&model, &data, DraftKind::Clover2, &out, 2)
        };
        distill(&opts, CpuBackend).unwrap();
        out
    };
    let (plain, scaled) = (run("plain", Vec::new()), run("scaled", vec![scale.clone()]));
    // How far a tensor moved from its initialisation in two steps (checkpoints hold f32 weights).
    let moved = |out: &Path, name: &str| -> f64 {
        let start = SafetensorsFiles::open_dir(&init).unwrap();
        let end = SafetensorsFiles::open_dir(&out.join("checkpoints").join("step-00000002")).unwrap();
        let shape = start.shape(name).unwrap().to_vec();
        let (a, b) = (start.get(name, &shape).unwrap().to_f32(), end.get(name, &shape).unwrap().to_f32());
        a.iter().zip(&b).map(|(x, y)| ((x - y) as f64).abs()).sum::<f64>() / a.len() as f64
    };
    let v = "clover_head_mlp_rnn.v.weight";
    let ratio = moved(&scaled, v) / moved(&plain, v);
    // Adam's first steps move each element by about lr · factor whatever the gradient's size.
    assert!(ratio > 6.0 && ratio < 9.0, "{v} moved {ratio}× as far at factor 8");
    let q = "clover_head_mlp_rnn.q.weight";
    let ratio = moved(&scaled, q) / moved(&plain, q);
    assert!(ratio > 0.5 && ratio < 2.0, "{q} is not scaled but moved {ratio}× as far");

    let resumed = |scales: Vec<TensorScale>| DistillOptions {
        resume: true,
        lr: None,
        lr_scales: scales,
        ..options(&model, &data, DraftKind::Clover2, &scaled, 4)
    };
    let other_factor = || -> TensorScale { "clover_head_mlp_rnn.v=4".parse().unwrap() };
    let err = distill(&resumed(vec![other_factor()]), CpuBackend).expect_err("another factor on resume").to_string();
    assert!(err.contains("state.json") && err.contains("lr_scales") && err.contains("=8"), "{err}");
    distill(&resumed(Vec::new()), CpuBackend).expect("the run's own factors are kept");

    let err = distill(&DistillOptions { init_scales: vec![other_factor()], ..resumed(Vec::new()) }, CpuBackend)
        .expect_err("--init-scale on resume")
        .to_string();
    assert!(err.contains("--init-scale") && err.contains("--resume"), "{err}");

    // --init-scale multiplies the starting values: the first step runs at learning rate 0 (warm-up),
    // so its checkpoint holds the start exactly.
    let out = root.join("init-scaled");
    let opts = DistillOptions {
        init: Some(init.clone()),
        init_scales: vec!["clover_head_mlp_rnn.v.weight=3".parse().unwrap()],
        eval_every: 1,
        ..options(&model, &data, DraftKind::Clover2, &out, 1)
    };
    distill(&opts, CpuBackend).unwrap();
    let tensor = |dir: &Path, name: &str| {
        let files = SafetensorsFiles::open_dir(dir).unwrap();
        let shape = files.shape(name).unwrap().to_vec();
        files.get(name, &shape).unwrap().to_f32()
    };
    let start = out.join("checkpoints").join("step-00000001");
    let tripled: Vec<f32> = tensor(&init, v).iter().map(|x| x * 3.0).collect();
    assert_eq!(tensor(&start, v), tripled);
    let b = "clover_head_mlp_rnn.v.bias";
    assert_eq!(tensor(&start, b), tensor(&init, b));

    let typo: TensorScale = "clover_head_mlp_rnn.x=3".parse().unwrap();
    let opts =
        DistillOptions { lr_scales: vec![typo], ..options(&model, &data, DraftKind::Clover2, &root.join("typo"), 2) };
    let err = distill(&opts, CpuBackend).expect_err("a prefix matching nothing").to_string();
    assert!(err.contains("clover_head_mlp_rnn.x") && err.contains("clover_head_mlp_rnn.v.weight"), "{err}");
    assert!(!root.join("typo").exists(), "a refused run writes nothing");
}

/// `--loss-weights`: the total weighs each head's vloss and ploss by the given terms times the
/// head's decay (0.7^i for Clover-2), a resumed run keeps them, and non-positive weights are
/// refused before anything is written.
#[test]
fn loss_weights_replace_the_spec_terms_and_resume_keeps_them() {
    let (root, model, data) = setup("loss-weights");
    let out = root.join("reweighted");
    let opts = DistillOptions {
        loss_weights: Some((1.0, 2.0)),
        eval_every: 1,
        ..options(&model, &data, DraftKind::Clover2, &out, 1)
    };
    distill(&opts, CpuBackend).unwrap();
    let lines = metrics(&out);
    let held = lines.iter().find(|l| l.split == HELDOUT).expect("a held-out evaluation");
    let expected: f64 =
        (0..held.vloss.len()).map(|i| 0.7f64.powi(i as i32) * (held.vloss[i] + 2.0 * held.ploss[i])).sum();
    assert!((held.loss - expected).abs() < 1e-4 * expected, "total {} against {expected}", held.loss);

    let resumed = |weights: Option<(f32, f32)>| DistillOptions {
        resume: true,
        lr: None,
        loss_weights: weights,
        ..options(&model, &data, DraftKind::Clover2, &out, 2)
    };
    let err = distill(&resumed(Some((10.0, 1.0))), CpuBackend).expect_err("other weights on resume").to_string();
    assert!(err.contains("state.json") && err.contains("loss_weights") && err.contains("1,2"), "{err}");
    distill(&resumed(None), CpuBackend).expect("the run's own weights are kept");

    let refused = root.join("refused");
    let opts =
        DistillOptions { loss_weights: Some((0.0, 1.0)), ..options(&model, &data, DraftKind::Eagle, &refused, 1) };
    let err = distill(&opts, CpuBackend).expect_err("a zero weight").to_string();
    assert!(err.contains("--loss-weights"), "{err}");
    assert!(!refused.exists(), "a refused run writes nothing");
}

/// `--eval-data`: the held-out figures come from every conversation of another gen-data folder
/// (up to --eval-tokens) instead of the training folders' tails; training itself is unchanged. A
/// folder made from another base model is refused, naming its index.json. `--steps 0` only
/// evaluates the starting head.
#[test]
fn eval_data_replaces_the_heldout_tails() {
    let (root, model, data) = setup("eval-data");
    let other = root.join("other-data");
    write_data_seeded(&model, &other, 6, 99);
    let (out_a, out_b) = (root.join("a"), root.join("b"));
    let a = distill(&options(&model, &data, DraftKind::Eagle, &out_a, 4), CpuBackend).unwrap();
    let with_eval =
        DistillOptions { eval_data: vec![other.clone()], ..options(&model, &data, DraftKind::Eagle, &out_b, 4) };
    let b = distill(&with_eval, CpuBackend).unwrap();
    let other_tokens = clover_engine::train::shards::ShardReader::open(&other).unwrap().index.tokens as u64;
    assert_eq!(b.last_eval.as_ref().unwrap().tokens, other_tokens, "all 6 conversations of the other folder");
    assert_ne!(a.last_eval.as_ref().unwrap().loss, b.last_eval.as_ref().unwrap().loss);
    let train = |out: &Path| metrics(out).into_iter().filter(|l| l.split == TRAIN).map(|l| l.loss).collect::<Vec<_>>();
    assert_eq!(train(&out_a), train(&out_b), "evaluation data must not change training");

    let foreign = root.join("foreign-data");
    std::fs::create_dir_all(&foreign).unwrap();
    for entry in std::fs::read_dir(&other).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, foreign.join(path.file_name().unwrap())).unwrap();
    }
    let index = std::fs::read_to_string(foreign.join("index.json")).unwrap();
    let renamed = index.replacen("\"model\": \"tiny\"", "\"model\": \"another\"", 1);
    assert_ne!(renamed, index);
    std::fs::write(foreign.join("index.json"), renamed).unwrap();
    let refused =
        DistillOptions { eval_data: vec![foreign], ..options(&model, &data, DraftKind::Eagle, &root.join("c"), 4) };
    let err = distill(&refused, CpuBackend).expect_err("another base model").to_string();
    assert!(err.contains("foreign-data") && err.contains("index.json") && err.contains("--eval-data"), "{err}");

    // `--steps 0` evaluates the starting head and trains nothing: the head trained above, read
    // back, scores exactly its own last evaluation on the same data.
    let out_c = root.join("evaluated");
    let only = DistillOptions {
        init: Some(out_b.clone()),
        eval_data: vec![other.clone()],
        ..options(&model, &data, DraftKind::Eagle, &out_c, 0)
    };
    let c = distill(&only, CpuBackend).unwrap();
    assert_eq!((c.start_step, c.step, c.tokens), (0, 0, 0));
    let (trained, evaluated) = (b.last_eval.as_ref().unwrap(), c.last_eval.as_ref().unwrap());
    assert_eq!((evaluated.step, evaluated.loss, &evaluated.top1), (0, trained.loss, &trained.top1));
    let lines = metrics(&out_c);
    assert!(lines.len() == 1 && lines[0].split == HELDOUT, "{lines:?}");
}

/// `--keep-draft-vocab`: a head trained over a counted list, fine-tuned with the list kept, drafts
/// over the same list (saved beside it); a resumed run keeps it without the option; a starting head
/// without a list, or the option beside `--draft-vocab N`, is refused.
#[test]
fn keep_draft_vocab_fine_tunes_over_the_starting_heads_list() {
    let (root, model, data) = setup("distill-keep-vocab");
    let kind = DraftKind::Eagle;
    let first = root.join("first");
    distill(&DistillOptions { draft_vocab: Some(24), ..options(&model, &data, kind, &first, 4) }, CpuBackend).unwrap();
    let list = std::fs::read(first.join("draft_vocab.json")).unwrap();

    let tuned = root.join("tuned");
    let keep = |steps: u64| DistillOptions {
        init: Some(first.clone()),
        keep_draft_vocab: true,
        ..options(&model, &data, kind, &tuned, steps)
    };
    distill(&keep(3), CpuBackend).unwrap();
    assert_eq!(std::fs::read(tuned.join("draft_vocab.json")).unwrap(), list, "the starting head's list");
    let head = load_head(kind, &tuned, &Llama::load(&model, CpuBackend).unwrap()).unwrap();
    assert_eq!(head.draft_vocab().map(<[u32]>::len), Some(24));
    let resumed = DistillOptions { init: None, keep_draft_vocab: false, resume: true, ..keep(6) };
    distill(&resumed, CpuBackend).unwrap();
    assert_eq!(std::fs::read(tuned.join("draft_vocab.json")).unwrap(), list, "kept on resume");
    assert!(metrics(&tuned).iter().any(|l| l.step == 6), "the resumed run trained");

    let full = root.join("full");
    distill(&options(&model, &data, kind, &full, 2), CpuBackend).unwrap();
    let no_list = DistillOptions {
        init: Some(full.clone()),
        keep_draft_vocab: true,
        ..options(&model, &data, kind, &root.join("a"), 2)
    };
    let err = distill(&no_list, CpuBackend).expect_err("a starting head without a list").to_string();
    assert!(err.contains("--keep-draft-vocab") && err.contains("draft_vocab.json"), "{err}");
    assert!(!root.join("a").exists(), "nothing written to --out");
    let both = DistillOptions { draft_vocab: Some(24), ..keep(3) };
    let err =
        distill(&DistillOptions { out: root.join("b"), ..both }, CpuBackend).expect_err("both options").to_string();
    assert!(err.contains("--keep-draft-vocab") && err.contains("--draft-vocab"), "{err}");
}

/// `--label-mask`: training counts fewer rows (the tiny data's tokens are often implausible under
/// the tiny model), so the training losses change while the first held-out evaluation, which
/// counts every row, does not; the plausibility pass is timed as its own phase; a resumed run
/// keeps the mask without the option and refuses to add it to a run started without.
#[test]
fn label_mask_changes_training_not_the_heldout_rows_and_resume_keeps_it() {
    let (root, model, data) = setup("distill-label-mask");
    let kind = DraftKind::Clover2;
    let (plain, masked) = (root.join("plain"), root.join("masked"));
    let masked_opts = |steps: u64| DistillOptions { label_mask: true, ..options(&model, &data, kind, &masked, steps) };
    let p = distill(&options(&model, &data, kind, &plain, 3), CpuBackend).unwrap();
    let m = distill(&masked_opts(3), CpuBackend).unwrap();
    use clover_engine::train::timers::Phase;
    assert_eq!(p.timers.get(Phase::LabelMask).as_nanos(), 0);
    assert!(m.timers.get(Phase::LabelMask).as_nanos() > 0, "the plausibility pass ran");
    assert_eq!(p.label_masked, None);
    let counts = m.label_masked.clone().expect("rows counted under the mask");
    assert_eq!(counts.len(), 5);
    assert!(counts.iter().all(|&(kept, all)| kept <= all && all > 0), "{counts:?}");
    assert!(counts[0].0 < counts[0].1, "some of head 0's rows dropped: {counts:?}");
    let (lp, lm) = (metrics(&plain), metrics(&masked));
    let first_heldout = |lines: &[MetricsLine]| lines.iter().find(|l| l.split == HELDOUT).unwrap().clone();
    let (hp, hm) = (first_heldout(&lp), first_heldout(&lm));
    assert_eq!((hp.step, hp.loss, hp.top1.clone()), (hm.step, hm.loss, hm.top1.clone()), "held-out rows unmasked");
    let train = |lines: &[MetricsLine]| lines.iter().filter(|l| l.split == TRAIN).map(|l| l.loss).collect::<Vec<_>>();
    assert_ne!(train(&lp), train(&lm), "the mask drops training rows");

    let resumed = |out: &Path, label_mask: bool| DistillOptions {
        resume: true,
        lr: None,
        label_mask,
        ..options(&model, &data, kind, out, 5)
    };
    let continued = distill(&resumed(&masked, false), CpuBackend).unwrap();
    assert!(continued.label_masked.is_some(), "the resumed run trains under the mask");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(newest_state(&masked)).unwrap()).unwrap();
    assert_eq!((state["state"]["step"].as_u64(), state["run"]["label_mask"].as_bool()), (Some(5), Some(true)));
    let err = distill(&resumed(&plain, true), CpuBackend).expect_err("adding the mask on resume").to_string();
    assert!(err.contains("state.json") && err.contains("label_mask"), "{err}");
}

/// The state.json of a run's newest checkpoint.
fn newest_state(out: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(out.join("checkpoints")).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.sort();
    dirs.pop().unwrap().join("state.json")
}
