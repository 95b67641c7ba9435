//! `import-ge-data`: the reference's per-conversation dumps of a tiny model's features, in
//! torch.save's format (both kinds: Clover-2's with pre-norm features, EAGLE-1's fp16 ones
//! without, with a batch axis), become gen-data shards holding the same tokens, masks and features
//! that distill trains on; dumps of another model, or with a field missing or misshapen, are
//! refused by file and field.

mod common;
#[path = "common/tiny_training.rs"]
mod tiny_training;
#[path = "common/torch_writer.rs"]
mod torch_writer;

use std::path::Path;

use clover_engine::backend::cpu::CpuBackend;
use clover_engine::backend::Backend;
use clover_engine::draft::DraftKind;
use clover_engine::model::{Llama, LogitRows};
use clover_engine::rng::Rng;
use clover_engine::train::distill::distill;
use clover_engine::train::shards::ShardReader;
use common::engine;
use tiny_training::{options, tiny_model, VOCAB};
use torch_writer::{save, Data};

struct Conversation {
    ids: Vec<u32>,
    mask: Vec<i64>,
    postnorm: Vec<f32>,
    prenorm: Vec<f32>,
}

fn conversations(model_dir: &Path, n: usize, seed: u64) -> Vec<Conversation> {
    let model = Llama::load(model_dir, CpuBackend).unwrap();
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let len = 12 + (rng.next_u64() % 20) as usize;
            let ids: Vec<u32> = (0..len).map(|_| (rng.next_u64() % VOCAB as u64) as u32).collect();
            let mut cache = model.new_cache(len);
            let out = model.prefill(&mut cache, &ids, LogitRows::None).unwrap();
            Conversation {
                mask: (0..len).map(|t| (t >= len / 3) as i64).collect(),
                postnorm: model.backend.download(&out.postnorm),
                prenorm: model.backend.download(&out.prenorm),
                ids,
            }
        })
        .collect()
}

/// Clover-2's dump: f32 features, both kinds; EAGLE-1's: fp16 post-norm only, batch axis of 1.
fn write_dump(path: &Path, c: &Conversation, hidden: usize, clover: bool) {
    let t = c.ids.len();
    let ids = Data::I64(c.ids.iter().map(|&i| i as i64).collect());
    if clover {
        save(
            path,
            "data",
            &[
                ("input_ids", vec![t], ids),
                ("hidden_state", vec![t, hidden], Data::F32(c.postnorm.clone())),
                ("hidden_state_onnorm", vec![t, hidden], Data::F32(c.prenorm.clone())),
                ("loss_mask", vec![t], Data::I64(c.mask.clone())),
            ],
        );
    } else {
        save(
            path,
            "data",
            &[
                ("input_ids", vec![1, t], ids),
                ("hidden_state", vec![1, t, hidden], Data::F16(c.postnorm.clone())),
                ("loss_mask", vec![1, t], Data::I64(c.mask.clone())),
            ],
        );
    }
}

fn bf16(values: &[f32]) -> Vec<f32> {
    values.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect()
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn dumps_become_the_same_training_data() {
    let root = common::temp_dir("ge-data");
    let model = root.join("model");
    tiny_model(&model, 32);
    let convs = conversations(&model, 3, 5);
    let dumps = root.join("dumps");
    std::fs::create_dir_all(dumps.join("0")).unwrap();
    // data_10 sorts after data_2, as the reference numbers them; Clover-2 and EAGLE-1 kinds mixed.
    let files = [dumps.join("0/data_2.ckpt"), dumps.join("0/data_10.ckpt"), dumps.join("0/data_1.ckpt")];
    let order = [2usize, 0, 1]; // conversation written to each file, in file order data_1, data_2, data_10
    for (file, &c) in files.iter().zip(&[0usize, 1, 2]) {
        write_dump(file, &convs[c], 32, c != 1);
    }
    let out = root.join("out");
    let run = engine(&["import-ge-data", "--model", &s(&model), "--from", &s(&dumps), "--out", &s(&out)]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("computed by it for 1 conversations"), "{stdout}");

    let reader = ShardReader::open(&out).unwrap();
    assert_eq!(reader.len(), 3);
    let ids: Vec<&str> =
        reader.index.shards.iter().flat_map(|s| s.conversations.iter().map(|c| c.id.as_str())).collect();
    assert_eq!(ids, ["0/data_1", "0/data_2", "0/data_10"]);
    for (i, &c) in order.iter().enumerate() {
        let (rec, want) = (reader.record(i), &convs[c]);
        assert_eq!(rec.input_ids, want.ids, "record {i}");
        assert_eq!(rec.loss_mask, want.mask.iter().map(|&m| m as u8).collect::<Vec<_>>(), "record {i}");
        // Pre-norm features: the dump's, or the model's own (EAGLE-1's dump) — bf16 of the same values.
        assert_eq!(rec.hidden_state_prenorm, bf16(&want.prenorm), "record {i}");
        let postnorm = if c == 1 {
            want.postnorm.iter().map(|&x| half::bf16::from_f32(half::f16::from_f32(x).to_f32()).to_f32()).collect()
        } else {
            bf16(&want.postnorm)
        };
        assert_eq!(rec.hidden_state, postnorm, "record {i}");
    }
    // distill trains on it.
    let trained = distill(&options(&model, &out, DraftKind::Clover2, &root.join("head"), 2), CpuBackend).unwrap();
    assert_eq!(trained.step, 2);
}

#[test]
fn dumps_of_another_model_or_misshapen_are_refused() {
    let root = common::temp_dir("ge-data-bad");
    let (model, other) = (root.join("model"), root.join("other"));
    tiny_model(&model, 32);
    clover_engine::model::random::write_random_model(
        &other,
        &{
            let mut c = clover_engine::model::random::tiny_llama_config(VOCAB);
            c["hidden_size"] = 32.into();
            c
        },
        99,
    )
    .unwrap();
    let foreign = conversations(&other, 1, 7);
    let mine = conversations(&model, 1, 7);
    let case = |name: &str, items: &[(&str, Vec<usize>, Data)], needles: &[&str]| {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        save(&dir.join("data_0.ckpt"), "data_0", items);
        let out = root.join(format!("{name}-out"));
        let run = engine(&["import-ge-data", "--model", &s(&model), "--from", &s(&dir), "--out", &s(&out)]);
        common::assert_clean_error(&run, &[&["data_0.ckpt"][..], needles].concat());
        assert!(!out.join("index.json").exists(), "{name}: no index written");
    };
    let t = mine[0].ids.len();
    let ids = |c: &Conversation| Data::I64(c.ids.iter().map(|&i| i as i64).collect());
    let mask = |c: &Conversation| Data::I64(c.mask.clone());
    let tf = foreign[0].ids.len();
    case(
        "foreign",
        &[
            ("input_ids", vec![tf], ids(&foreign[0])),
            ("hidden_state", vec![tf, 32], Data::F32(foreign[0].postnorm.clone())),
            ("loss_mask", vec![tf], mask(&foreign[0])),
        ],
        &["hidden_state", "another model"],
    );
    case(
        "no-mask",
        &[("input_ids", vec![t], ids(&mine[0])), ("hidden_state", vec![t, 32], Data::F32(mine[0].postnorm.clone()))],
        &["loss_mask", "missing"],
    );
    case(
        "narrow",
        &[
            ("input_ids", vec![t], ids(&mine[0])),
            ("hidden_state", vec![t, 16], Data::F32(mine[0].postnorm[..t * 16].to_vec())),
            ("loss_mask", vec![t], mask(&mine[0])),
        ],
        &["hidden_state", "hidden_size 32"],
    );
    case(
        "big-id",
        &[
            ("input_ids", vec![2], Data::I64(vec![3, VOCAB as i64])),
            ("hidden_state", vec![2, 32], Data::F32(vec![0.5; 64])),
            ("loss_mask", vec![2], Data::I64(vec![1, 1])),
        ],
        &["input_ids", "vocabulary"],
    );
    case(
        "no-tokens",
        &[
            ("input_ids", vec![0], Data::I64(Vec::new())),
            ("hidden_state", vec![0, 32], Data::F32(Vec::new())),
            ("loss_mask", vec![0], Data::I64(Vec::new())),
        ],
        &["input_ids", "no tokens"],
    );
    let mut nan = mine[0].postnorm.clone();
    nan[5] = f32::NAN;
    case(
        "nan",
        &[
            ("input_ids", vec![t], ids(&mine[0])),
            ("hidden_state", vec![t, 32], Data::F32(nan)),
            ("loss_mask", vec![t], mask(&mine[0])),
        ],
        &["hidden_state", "not finite"],
    );
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let run =
        engine(&["import-ge-data", "--model", &s(&model), "--from", &s(&empty), "--out", &s(&root.join("e-out"))]);
    common::assert_clean_error(&run, &["empty", "no .ckpt"]);
}
