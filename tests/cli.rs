//! The binary as a user runs it: the France answer, `score`, and clear errors (non-zero exit,
//! the file and field named, no panic) for every kind of bad input.

mod common;

use common::{assert_clean_error, engine, stderr};

use std::path::Path;

use clover_engine::model::random::{tiny_llama_config, write_random_model};

/// A copy of the default model folder whose files the test may break; weights are linked,
/// not copied, unless the test replaces them.
fn model_copy(src: &Path, name: &str) -> std::path::PathBuf {
    let dir = common::temp_dir(name);
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    std::os::unix::fs::symlink(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    dir
}

#[test]
fn chat_answer_names_paris() {
    let Some(dir) = common::default_model() else {
        return;
    };
    let o = engine(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--chat",
        "What is the capital of France?",
        "--temperature",
        "0",
        "--max-new-tokens",
        "24",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(text.contains("Paris"), "answer: {text}");
    // The answer ends at the end-of-turn token, which is not part of the text.
    assert!(!text.contains("<|im_end|>"), "the stop token was printed: {text}");
    assert!(stderr(&o).contains("decode:"), "no speed line: {}", stderr(&o));
}

#[test]
fn score_writes_logits_safetensors() {
    let Some(dir) = common::default_model() else {
        return;
    };
    let tmp = common::temp_dir("score");
    let text = tmp.join("text.txt");
    std::fs::write(&text, "The capital of France is Paris. The capital of Italy is Rome.").unwrap();
    let out = tmp.join("logits.safetensors");
    let o = engine(&[
        "score",
        "--model",
        dir.to_str().unwrap(),
        "--text-file",
        text.to_str().unwrap(),
        "--logits-out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let ppl: f64 = stdout.split("perplexity: ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(ppl > 1.0 && ppl < 100.0, "perplexity {ppl}");
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let logits = st.tensor("logits").unwrap();
    let ids = st.tensor("token_ids").unwrap();
    assert_eq!(logits.shape()[0], ids.shape()[0]);
    assert_eq!(logits.shape()[1], 49152);
}

#[test]
fn missing_model_folder_is_named() {
    let o = engine(&["generate", "--model", "/nonexistent/model", "--prompt", "hi"]);
    assert_clean_error(&o, &["/nonexistent/model"]);
}

#[test]
fn folder_without_a_model_and_a_missing_prompt_are_named() {
    let dir = common::temp_dir("not-a-model");
    let o = engine(&["generate", "--model", dir.to_str().unwrap(), "--prompt", "hi"]);
    assert_clean_error(&o, &["not a model folder", "config.json"]);
    let o = engine(&["generate", "--model", dir.to_str().unwrap()]);
    assert_clean_error(&o, &["--prompt", "--chat"]);
}

#[test]
fn config_without_required_field_names_file_and_field() {
    let dir = common::temp_dir("no-field");
    let mut config = tiny_llama_config(64);
    write_random_model(&dir, &config, 1).unwrap();
    config.as_object_mut().unwrap().remove("num_hidden_layers");
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    let o = engine(&["score", "--model", dir.to_str().unwrap(), "--text-file", "Cargo.toml"]);
    assert_clean_error(&o, &["config.json", "num_hidden_layers"]);
}

#[test]
fn missing_and_truncated_weights_are_reported() {
    let Some(src) = common::default_model() else {
        return;
    };
    let dir = model_copy(&src, "truncated");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let o = engine(&["generate", "--model", dir.to_str().unwrap(), "--prompt", "hi"]);
    assert_clean_error(&o, &["model.safetensors"]);

    let full = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &full[..full.len() / 2]).unwrap();
    let o = engine(&["generate", "--model", dir.to_str().unwrap(), "--prompt", "hi"]);
    assert_clean_error(&o, &["model.safetensors"]);

    std::fs::write(dir.join("model.safetensors"), &full[..3]).unwrap();
    let o = engine(&["generate", "--model", dir.to_str().unwrap(), "--prompt", "hi"]);
    assert_clean_error(&o, &["model.safetensors"]);
}

#[test]
fn missing_tokenizer_is_named() {
    let Some(src) = common::default_model() else {
        return;
    };
    let dir = model_copy(&src, "no-tokenizer");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let o = engine(&["generate", "--model", dir.to_str().unwrap(), "--prompt", "hi"]);
    assert_clean_error(&o, &["tokenizer.json"]);
}

#[test]
fn prompt_longer_than_the_context_is_refused() {
    let Some(dir) = common::default_model() else {
        return;
    };
    let long = "one two three four five six seven eight nine ten ".repeat(900);
    let o = engine(&["generate", "--model", dir.to_str().unwrap(), "--prompt", &long, "--max-new-tokens", "4"]);
    assert_clean_error(&o, &["prompt", "context", "8192"]);
}

/// GGUF v3 with one tensor of type id 99.
fn gguf_with_unknown_type() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes()); // tensors
    b.extend_from_slice(&1u64.to_le_bytes()); // metadata entries
    let key = b"general.architecture";
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&8u32.to_le_bytes()); // string
    b.extend_from_slice(&5u64.to_le_bytes());
    b.extend_from_slice(b"llama");
    let name = b"token_embd.weight";
    b.extend_from_slice(&(name.len() as u64).to_le_bytes());
    b.extend_from_slice(name);
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(&32u64.to_le_bytes());
    b.extend_from_slice(&4u64.to_le_bytes());
    b.extend_from_slice(&99u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend(std::iter::repeat_n(0u8, 4096));
    b
}

#[test]
fn gguf_with_unknown_tensor_type_names_tensor_and_type() {
    let dir = common::temp_dir("bad-gguf");
    let path = dir.join("bad.gguf");
    std::fs::write(&path, gguf_with_unknown_type()).unwrap();
    let out = dir.join("out");
    let o = engine(&["import-gguf", path.to_str().unwrap(), out.to_str().unwrap()]);
    assert_clean_error(&o, &["token_embd.weight", "99"]);
    assert!(!out.exists(), "a failed import left an output folder");
}

#[test]
fn truncated_gguf_is_reported() {
    let dir = common::temp_dir("trunc-gguf");
    let path = dir.join("trunc.gguf");
    std::fs::write(&path, &gguf_with_unknown_type()[..40]).unwrap();
    let o = engine(&["import-gguf", path.to_str().unwrap(), dir.join("out").to_str().unwrap()]);
    assert_clean_error(&o, &["trunc.gguf"]);
}

/// `--device`: an unknown name is refused; `cuda` either runs (a GPU machine) or says what is
/// missing, never panics.
#[test]
fn device_option_is_checked() {
    let dir = common::temp_dir("device-model");
    write_random_model(&dir, &tiny_llama_config(64), 3).unwrap();
    let o = engine(&["--device", "tpu", "score", "--model", dir.to_str().unwrap(), "--text-file", "nope.txt"]);
    assert_clean_error(&o, &["--device tpu", "cpu, cuda or cuda:N"]);
    let o = engine(&["--device", "cuda:7", "generate", "--model", dir.to_str().unwrap(), "--prompt", "x"]);
    if !o.status.success() {
        assert_clean_error(&o, &["CUDA backend"]);
    }
}

/// Out-of-range option values are refused by name before any model loads, negative numbers
/// included (clap would call `-1` an unexpected argument), on every command that takes them.
#[test]
fn option_values_out_of_range_are_named() {
    let cases: &[(&[&str], &str)] = &[
        (&["generate", "--chat", "hi", "--temperature", "-1"], "--temperature -1: expected a finite number ≥ 0"),
        (&["generate", "--chat", "hi", "--temperature", "nan"], "--temperature NaN"),
        (&["eval", "--bench", "q.jsonl", "--out", "a.jsonl", "--temperature", "inf"], "--temperature inf"),
        (&["bench", "--temperature", "-0.5"], "--temperature -0.5"),
        (&["generate", "--chat", "hi", "--top-p", "1.5"], "--top-p 1.5: expected a value in (0, 1]"),
        (&["generate", "--chat", "hi", "--max-new-tokens", "0"], "--max-new-tokens 0: expected at least 1"),
        (&["bench", "--steps", "0"], "--steps 0"),
        (&["bench", "--verify-latency", "0"], "--verify-latency 0"),
        (&["bench", "--json", "."], "--json .: a folder"),
        (
            &["generate", "--chat", "hi", "--draft", "eagle", "--draft-model", "h", "--tree-top-p", "2"],
            "--tree-top-p 2",
        ),
        (&["generate", "--chat", "hi", "--seed", "-1"], "invalid value '-1' for '--seed <SEED>'"),
    ];
    for (args, message) in cases {
        let o = engine(args);
        assert_clean_error(&o, &[message]);
    }
}
