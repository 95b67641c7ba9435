//! Bad draft inputs get clear errors: a head built for another base model, a base model given as
//! a head, truncated weights, a malformed tree file, a tree deeper than the head drafts.

mod common;

use std::process::Command;

use clover_engine::backend::cpu::CpuBackend;
use clover_engine::draft::eagle::EagleHead;
use clover_engine::draft::init::init_head;
use clover_engine::draft::DraftKind;
use clover_engine::model::random::{tiny_llama_config, write_random_model};
use clover_engine::model::Llama;
use clover_engine::sampling::SamplingParams;
use clover_engine::spec::drafting::TreeSpec;
use clover_engine::spec::engine::{generate_speculative, GenerationConfig};
use clover_engine::spec::tree::StaticTree;

fn tiny_base(name: &str, hidden: usize, vocab: usize) -> std::path::PathBuf {
    let dir = common::temp_dir(name);
    let mut config = tiny_llama_config(vocab);
    config["hidden_size"] = hidden.into();
    write_random_model(&dir, &config, 1).unwrap();
    dir
}

#[test]
fn head_for_another_base_model_is_refused() {
    let base = tiny_base("base-a", 32, 64);
    let model = Llama::load(&base, CpuBackend).unwrap();
    for (name, hidden, vocab, field) in [("other-hidden", 48, 64, "hidden_size"), ("other-vocab", 32, 80, "vocab_size")]
    {
        let other = tiny_base(name, hidden, vocab);
        let head_dir = other.join("head");
        init_head(DraftKind::Eagle, &other, &head_dir, 0).unwrap();
        let err = EagleHead::load(&head_dir, &model).err().expect("a mismatched head must be refused").to_string();
        assert!(err.contains("config.json") && err.contains(field) && err.contains("another base model"), "{err}");
    }
}

#[test]
fn base_model_given_as_a_head_is_named_so() {
    let base = tiny_base("base-as-head", 32, 64);
    let model = Llama::load(&base, CpuBackend).unwrap();
    let err = EagleHead::load(&base, &model).err().expect("a base model is no head").to_string();
    assert!(err.contains("base model") && err.contains("not a draft head"), "{err}");
    let err = clover_engine::draft::clover2::Clover2Head::load(&base, &model).err().expect("refused").to_string();
    assert!(err.contains("base model") && err.contains("not a draft head"), "{err}");
}

/// A config that counts fewer layers than the weights hold is refused, base model and heads
/// alike, where the missing layers would otherwise be dropped silently.
#[test]
fn configs_that_count_fewer_layers_than_the_weights_are_refused() {
    let base = tiny_base("base-layers", 32, 64);
    let config_path = base.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let model = Llama::load(&base, CpuBackend).unwrap();
    let clover_dir = base.join("clover2");
    init_head(DraftKind::Clover2, &base, &clover_dir, 0).unwrap();
    let head_config = clover_dir.join("config.json");
    let mut head: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&head_config).unwrap()).unwrap();
    head["clover"]["num_layers"] = 1.into();
    std::fs::write(&head_config, head.to_string()).unwrap();
    let err = clover_engine::draft::clover2::Clover2Head::load(&clover_dir, &model).err().expect("refused").to_string();
    assert!(err.contains("clover.num_layers") && err.contains("layers.1."), "{err}");

    let eagle_dir = base.join("eagle");
    init_head(DraftKind::Eagle, &base, &eagle_dir, 0).unwrap();
    let head_config = eagle_dir.join("config.json");
    let mut head: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&head_config).unwrap()).unwrap();
    head["num_hidden_layers"] = 3.into();
    std::fs::write(&head_config, head.to_string()).unwrap();
    let err = EagleHead::load(&eagle_dir, &model).err().expect("refused").to_string();
    assert!(err.contains("num_hidden_layers") && err.contains("one decoder layer"), "{err}");
    // One layer in the config, a second one in the weights.
    head["num_hidden_layers"] = 1.into();
    std::fs::write(&head_config, head.to_string()).unwrap();
    let weights = eagle_dir.join("model.safetensors");
    let files = clover_engine::weights::safetensors::SafetensorsFiles::open(std::slice::from_ref(&weights)).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = files
        .names()
        .map(|n| {
            let t = files.get(n, files.shape(n).unwrap()).unwrap();
            (n.to_string(), t.shape.clone(), t.to_f32())
        })
        .collect();
    drop(files);
    tensors.push(("layers.1.input_layernorm.weight".into(), vec![32], vec![1.0; 32]));
    clover_engine::weights::write_f32_safetensors(&weights, &tensors).unwrap();
    let err = EagleHead::load(&eagle_dir, &model).err().expect("refused").to_string();
    assert!(err.contains("num_hidden_layers") && err.contains("layers.1.input_layernorm.weight"), "{err}");

    config["num_hidden_layers"] = 1.into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = Llama::load(&base, CpuBackend).err().expect("refused").to_string();
    assert!(err.contains("model.layers.1.") && err.contains("num_hidden_layers 1"), "{err}");
}

#[test]
fn head_with_a_wrong_tensor_shape_is_refused() {
    let base = tiny_base("base-shape", 32, 64);
    let head_dir = base.join("head");
    init_head(DraftKind::Eagle, &base, &head_dir, 0).unwrap();
    let model = Llama::load(&base, CpuBackend).unwrap();
    // Rewrite fc.weight with the wrong shape.
    let tensors = vec![("fc.weight".to_string(), vec![32, 32], vec![0.0f32; 32 * 32])];
    clover_engine::weights::write_f32_safetensors(&head_dir.join("model.safetensors"), &tensors).unwrap();
    let err = EagleHead::load(&head_dir, &model).err().expect("refused").to_string();
    assert!(err.contains("model.safetensors") && err.contains("fc.weight"), "{err}");
}

#[test]
fn truncated_head_weights_are_named_as_truncated() {
    let base = tiny_base("base-truncated", 32, 64);
    let head_dir = base.join("head");
    init_head(DraftKind::Eagle, &base, &head_dir, 0).unwrap();
    let model = Llama::load(&base, CpuBackend).unwrap();
    let weights = head_dir.join("model.safetensors");
    let full = std::fs::metadata(&weights).unwrap().len();
    for keep in [full / 2, 5] {
        let file = std::fs::OpenOptions::new().write(true).open(&weights).unwrap();
        file.set_len(keep).unwrap();
        let err = EagleHead::load(&head_dir, &model).err().expect("a truncated head must be refused").to_string();
        assert!(err.contains("model.safetensors") && err.contains("truncated"), "{keep} bytes: {err}");
    }
}

#[test]
fn tree_deeper_than_the_head_is_refused() {
    let base = tiny_base("base-deep", 32, 64);
    let head_dir = base.join("head");
    init_head(DraftKind::Eagle, &base, &head_dir, 0).unwrap();
    let model = Llama::load(&base, CpuBackend).unwrap();
    let mut head = EagleHead::load(&head_dir, &model).unwrap();
    let paths: Vec<Vec<usize>> = (1..=17).map(|d| vec![0; d]).collect();
    let tree = TreeSpec::Static(StaticTree::from_paths(paths, 10).unwrap());
    let cfg = GenerationConfig { max_new_tokens: 8, sampling: SamplingParams::greedy(), seed: 0, stop_ids: vec![] };
    let Err(err) = generate_speculative(&model, &mut head, &tree, &[1, 2, 3], &cfg, |_| {}) else {
        panic!("a 17-level tree was accepted");
    };
    assert!(err.to_string().contains("17 levels deep"), "{err}");

    // A tree larger than the whole context could never be verified: refused, not run plainly.
    let huge = TreeSpec::Eagle2(clover_engine::spec::tree::Eagle2Params {
        max_depth: 5,
        total_tokens: 600,
        ..Default::default()
    });
    let Err(err) = generate_speculative(&model, &mut head, &huge, &[1, 2, 3], &cfg, |_| {}) else {
        panic!("a 600-node tree was accepted with a 512-position context");
    };
    assert!(err.to_string().contains("600 nodes") && err.to_string().contains("context of 512"), "{err}");
}

#[test]
fn malformed_tree_json_names_the_file() {
    let Some(model) = common::default_model() else { return };
    let dir = common::temp_dir("bad-tree");
    let head = dir.join("head");
    init_head(DraftKind::Eagle, &model, &head, 0).unwrap();
    let tree = dir.join("tree.json");
    std::fs::write(&tree, "[[0], [0, 0], [2]]").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_clover-engine"))
        .args(["generate", "--prompt", "Hi", "--max-new-tokens", "4", "--draft", "eagle"])
        .args(["--draft-model", head.to_str().unwrap(), "--tree", tree.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("tree.json") && !err.contains("panicked"), "{err}");
}

/// Out-of-range clover-tree settings are refused before anything is generated.
#[test]
fn clover_tree_settings_out_of_range_are_refused_first() {
    let Some(model) = common::default_model() else { return };
    let dir = common::temp_dir("bad-clover-settings");
    let head = dir.join("head");
    init_head(DraftKind::Eagle, &model, &head, 0).unwrap();
    for (flag, value) in [("--tree-top-p", "1.5"), ("--tree-ratio", "2")] {
        let o = Command::new(env!("CARGO_BIN_EXE_clover-engine"))
            .args(["generate", "--prompt", "Hi", "--max-new-tokens", "4", "--draft", "eagle"])
            .args(["--draft-model", head.to_str().unwrap(), "--tree", "clover", flag, value])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(flag) && !err.contains("panicked"), "{flag}: {err}");
        assert!(o.stdout.is_empty(), "{flag}: text was generated before the error");
    }
}

/// A Qwen2 base's layers carry q/k/v biases; a head made for it by init-head must carry them
/// too, or the loader (which follows the config's `model_type`) refuses it.
#[test]
fn init_head_on_a_qwen2_base_loads() {
    let dir = common::temp_dir("qwen2-heads");
    let base = dir.join("base");
    let mut config = tiny_llama_config(64);
    config["model_type"] = "qwen2".into();
    write_random_model(&base, &config, 4).unwrap();
    let model = Llama::load(&base, CpuBackend).unwrap();
    assert!(model.config.qkv_bias);
    init_head(DraftKind::Eagle, &base, &dir.join("eagle"), 0).unwrap();
    EagleHead::load(&dir.join("eagle"), &model).unwrap();
    init_head(DraftKind::Clover2, &base, &dir.join("clover2"), 0).unwrap();
    clover_engine::draft::clover2::Clover2Head::load(&dir.join("clover2"), &model).unwrap();
}
