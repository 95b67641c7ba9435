use std::fs;
use std::path::{Path, PathBuf};

use half::bf16;
use serde_json::{json, Value};

use super::tensor_plan::unpermute_qk;
use super::*;
use crate::weights::gguf::test_writer::{scratch_dir, strings, GgufBuilder};
use crate::weights::gguf::GgufValue;
use crate::weights::gguf_tokenizer::QWEN2_REGEX;

const N_EMBD: u64 = 32;
const N_FF: u64 = 64;
const TOKENS: [&str; 8] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab", "Ġ", "Ġab"];

/// Values equal to their flat index, so a value tells which GGUF row it came from.
fn iota(n: u64) -> Vec<f32> {
    (0..n).map(|i| i as f32).collect()
}

/// One layer, 32 wide, 4 heads of 8 (2 KV heads), vocab of 8, no `output.weight`.
fn tiny_model(arch: &str, pre: &str) -> GgufBuilder {
    let key = |k: &str| format!("{arch}.{k}");
    let mut b = GgufBuilder::default();
    b.kv("general.architecture", GgufValue::String(arch.into()))
        .kv(&key("block_count"), GgufValue::U32(1))
        .kv(&key("context_length"), GgufValue::U32(128))
        .kv(&key("embedding_length"), GgufValue::U32(N_EMBD as u32))
        .kv(&key("feed_forward_length"), GgufValue::U32(N_FF as u32))
        .kv(&key("attention.head_count"), GgufValue::U32(4))
        .kv(&key("attention.head_count_kv"), GgufValue::U32(2))
        .kv(&key("rope.freq_base"), GgufValue::F32(100_000.0))
        .kv(&key("attention.layer_norm_rms_epsilon"), GgufValue::F32(1e-5))
        .kv("tokenizer.ggml.model", GgufValue::String("gpt2".into()))
        .kv("tokenizer.ggml.pre", GgufValue::String(pre.into()))
        .kv("tokenizer.ggml.tokens", strings(&TOKENS))
        .kv("tokenizer.ggml.token_type", GgufValue::Array([3, 3, 4, 1, 1, 1, 1, 1].map(GgufValue::I32).to_vec()))
        .kv("tokenizer.ggml.merges", strings(&["a b", "Ġ ab"]))
        .kv("tokenizer.ggml.bos_token_id", GgufValue::U32(1))
        .kv("tokenizer.ggml.eos_token_id", GgufValue::U32(2))
        .kv("tokenizer.ggml.add_bos_token", GgufValue::Bool(false))
        .kv("tokenizer.chat_template", GgufValue::String("{{ messages }}".into()))
        .f32_tensor("token_embd.weight", &[N_EMBD, 8], &iota(N_EMBD * 8))
        .f32_tensor("output_norm.weight", &[N_EMBD], &iota(N_EMBD))
        .f32_tensor("blk.0.attn_norm.weight", &[N_EMBD], &iota(N_EMBD))
        .f32_tensor("blk.0.ffn_norm.weight", &[N_EMBD], &iota(N_EMBD))
        .f32_tensor("blk.0.attn_q.weight", &[N_EMBD, 32], &iota(N_EMBD * 32))
        .f32_tensor("blk.0.attn_k.weight", &[N_EMBD, 16], &iota(N_EMBD * 16))
        .tensor("blk.0.attn_v.weight", &[N_EMBD, 16], 8, vec![0; 16 * 34])
        .tensor("blk.0.attn_output.weight", &[N_EMBD, 32], 1, vec![0; 32 * 32 * 2])
        .f32_tensor("blk.0.ffn_gate.weight", &[N_EMBD, N_FF], &iota(N_EMBD * N_FF))
        .f32_tensor("blk.0.ffn_up.weight", &[N_EMBD, N_FF], &iota(N_EMBD * N_FF))
        .f32_tensor("blk.0.ffn_down.weight", &[N_FF, N_EMBD], &iota(N_EMBD * N_FF));
    b
}

/// What the CLI checks an import with: the folder loads as a model.
fn loads(dir: &Path) -> Result<()> {
    crate::model::Llama::load(dir, crate::backend::cpu::CpuBackend).map(|_| ())
}

fn import_tiny(test: &str, b: &GgufBuilder, dtype: ImportDType) -> (PathBuf, Result<ImportSummary>) {
    let dir = scratch_dir(test);
    let gguf = dir.join("tiny.gguf");
    fs::write(&gguf, b.build()).expect("write gguf");
    let out = dir.join("hf");
    let result = import_gguf(&gguf, &out, dtype, &loads);
    (out, result)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).expect("read json")).expect("parse json")
}

/// Parses a safetensors file the way the `safetensors` crate validates it.
fn read_safetensors(path: &Path) -> (Value, Vec<u8>) {
    let bytes = fs::read(path).expect("read safetensors");
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!((8 + n) % 8, 0, "data section must start 8-aligned");
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header is JSON");
    let data = bytes[8 + n..].to_vec();
    let mut spans: Vec<(u64, u64)> = (header.as_object().unwrap().iter())
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, v)| (v["data_offsets"][0].as_u64().unwrap(), v["data_offsets"][1].as_u64().unwrap()))
        .collect();
    spans.sort();
    let end = spans.iter().fold(0, |start, &(s, e)| {
        assert_eq!(s, start, "tensors must be contiguous");
        e
    });
    assert_eq!(end as usize, data.len());
    (header, data)
}

fn tensor_values(header: &Value, data: &[u8], name: &str) -> Vec<f32> {
    let [s, e] = [0, 1].map(|i| header[name]["data_offsets"][i].as_u64().unwrap() as usize);
    match header[name]["dtype"].as_str().unwrap() {
        "F32" => data[s..e].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
        "BF16" => data[s..e].chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => panic!("unexpected dtype {other}"),
    }
}

#[test]
fn unpermute_moves_rows_as_specified() {
    // 2 heads of head_dim 4, rows of 3 values: row r holds 10·r + column.
    let data: Vec<f32> = (0..8).flat_map(|r| (0..3).map(move |c| (10 * r + c) as f32)).collect();
    let out = unpermute_qk(&data, 2, 3);
    let row_sources: Vec<f32> = out.chunks(3).map(|row| row[0] / 10.0).collect();
    assert_eq!(row_sources, [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
    assert_eq!(out[3..6], [20.0, 21.0, 22.0]);
}

#[test]
fn imports_tiny_llama() {
    let (out, result) = import_tiny("llama", &tiny_model("llama", "smollm"), ImportDType::F32);
    let summary = result.expect("import");
    assert_eq!((summary.model_type, summary.tensors, summary.tied_embeddings), ("llama", 11, true));

    let config = read_json(&out.join("config.json"));
    let expect = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
        "max_position_embeddings": 128, "vocab_size": 8, "bos_token_id": 1, "eos_token_id": 2,
        "tie_word_embeddings": true, "torch_dtype": "float32",
    });
    for (k, v) in expect.as_object().unwrap() {
        assert_eq!(&config[k], v, "config.json {k}");
    }

    let (header, data) = read_safetensors(&out.join("model.safetensors"));
    assert!(header.get("lm_head.weight").is_none());
    let shape = |name: &str| header[name]["shape"].clone();
    assert_eq!(shape("model.embed_tokens.weight"), json!([8, 32]));
    assert_eq!(shape("model.layers.0.self_attn.k_proj.weight"), json!([16, 32]));
    assert_eq!(shape("model.layers.0.mlp.down_proj.weight"), json!([32, 64]));
    assert_eq!(shape("model.layers.0.mlp.up_proj.weight"), json!([64, 32]));
    assert_eq!(shape("model.norm.weight"), json!([32]));

    // K: 2 heads of 8 rows; HF row h·8 + i·4 + j comes from GGUF row h·8 + 2j + i.
    let k = tensor_values(&header, &data, "model.layers.0.self_attn.k_proj.weight");
    let source_row = |hf_row: usize| k[hf_row * 32] as usize / 32;
    let expected = [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15];
    assert_eq!((0..16).map(source_row).collect::<Vec<_>>(), expected);
    // Q is un-permuted over its 4 heads; row 13 = head 1, i = 1, j = 1 ← GGUF row 8 + 3.
    let q = tensor_values(&header, &data, "model.layers.0.self_attn.q_proj.weight");
    assert_eq!(q[13 * 32] as usize / 32, 11);
    let up = tensor_values(&header, &data, "model.layers.0.mlp.up_proj.weight");
    assert_eq!(up, iota(N_EMBD * N_FF));
}

/// Blocks of GGUF type `type_id` (8 = Q8_0, 2 = Q4_0, 3 = Q4_1) for `values` values: random
/// quants, scales of a trained model's size.
fn random_blocks(type_id: u32, values: u64, rng: &mut crate::rng::Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..values / 32 {
        let mut scale = || half::f16::from_f32((rng.uniform_f32() - 0.5) * 0.02).to_le_bytes();
        let (scales, quant_bytes) = match type_id {
            8 => (vec![scale()], 32),
            2 => (vec![scale()], 16),
            _ => (vec![scale(), scale()], 16),
        };
        out.extend(scales.concat());
        out.extend((0..quant_bytes).map(|_| rng.next_u64() as u8));
    }
    out
}

/// `--dtype keep` stores the blocks (U8 rows, the type in the metadata) and the engine
/// multiplies them in place: the model gives exactly the logits of the f32 import of the
/// same file, whose weights are the dequantized values.
#[test]
fn kept_blocks_give_the_logits_of_the_f32_import() {
    use crate::backend::cpu::CpuBackend;
    use crate::model::{Llama, LogitRows};
    let mut rng = crate::rng::Rng::new(11);
    let mut b = tiny_model("llama", "smollm");
    b.tensor("token_embd.weight", &[N_EMBD, 8], 8, random_blocks(8, N_EMBD * 8, &mut rng))
        .tensor("blk.0.attn_q.weight", &[N_EMBD, 32], 3, random_blocks(3, N_EMBD * 32, &mut rng))
        .tensor("blk.0.attn_k.weight", &[N_EMBD, 16], 3, random_blocks(3, N_EMBD * 16, &mut rng))
        .tensor("blk.0.attn_v.weight", &[N_EMBD, 16], 2, random_blocks(2, N_EMBD * 16, &mut rng))
        .tensor("blk.0.attn_output.weight", &[N_EMBD, 32], 8, random_blocks(8, N_EMBD * 32, &mut rng))
        .tensor("blk.0.ffn_gate.weight", &[N_EMBD, N_FF], 3, random_blocks(3, N_EMBD * N_FF, &mut rng))
        .tensor("blk.0.ffn_up.weight", &[N_EMBD, N_FF], 2, random_blocks(2, N_EMBD * N_FF, &mut rng))
        .tensor("blk.0.ffn_down.weight", &[N_FF, N_EMBD], 3, random_blocks(3, N_EMBD * N_FF, &mut rng))
        .f32_tensor("output_norm.weight", &[N_EMBD], &[1.0; N_EMBD as usize])
        .f32_tensor("blk.0.attn_norm.weight", &[N_EMBD], &[1.0; N_EMBD as usize])
        .f32_tensor("blk.0.ffn_norm.weight", &[N_EMBD], &[1.0; N_EMBD as usize]);
    let (kept, result) = import_tiny("keep", &b, ImportDType::Keep);
    result.expect("keep import");
    let (header, data) = read_safetensors(&kept.join("model.safetensors"));
    let q = &header["model.layers.0.self_attn.q_proj.weight"];
    assert_eq!((q["dtype"].as_str(), q["shape"].clone()), (Some("U8"), json!([32, 20])), "32 rows of one Q4_1 block");
    assert_eq!(header["__metadata__"]["clover.quant.model.layers.0.self_attn.q_proj.weight"], "Q4_1");
    assert_eq!(header["__metadata__"]["clover.quant.model.embed_tokens.weight"], "Q8_0");
    assert_eq!(header["model.norm.weight"]["dtype"], "F32");
    assert_eq!(data.len(), 3 * 32 * 4 + (8 + 32) * 34 + (32 + 16 + 64 + 64) * 20 + (16 + 64) * 18);
    let (expanded, result) = import_tiny("keep_f32", &b, ImportDType::F32);
    result.expect("f32 import");

    let logits = |dir: &Path| {
        let model = Llama::load(dir, CpuBackend).expect("load");
        let mut cache = model.new_cache(16);
        model.prefill(&mut cache, &[3, 4, 5, 6, 7, 0, 1], LogitRows::All).expect("prefill").logits
    };
    let (got, want) = (logits(&kept), logits(&expanded));
    assert_eq!(got.len(), 7 * 8);
    assert!(got.iter().all(|v| v.is_finite()) && got.iter().any(|&v| v != 0.0), "{got:?}");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "logit {i}: kept {g} vs f32 {w}");
    }
    fs::remove_dir_all(kept.parent().unwrap()).unwrap();
    fs::remove_dir_all(expanded.parent().unwrap()).unwrap();
}

/// A quantized vector (a Q4_0 or Q8_0 Q bias) is expanded to f32 by `--dtype keep` and
/// un-permuted like the f32 import's (it divided by zero, or scrambled the Q8_0 one's blocks).
#[test]
fn kept_import_expands_quantized_vectors() {
    let mut rng = crate::rng::Rng::new(12);
    let name = "model.layers.0.self_attn.q_proj.bias";
    for type_id in [2, 8] {
        let mut b = tiny_model("llama", "smollm");
        b.tensor("blk.0.attn_q.bias", &[32], type_id, random_blocks(type_id, 32, &mut rng))
            .f32_tensor("blk.0.attn_k.bias", &[16], &iota(16))
            .f32_tensor("blk.0.attn_v.bias", &[16], &iota(16));
        let (kept, result) = import_tiny(&format!("keep-vector-{type_id}"), &b, ImportDType::Keep);
        result.expect("keep import");
        let (expanded, result) = import_tiny(&format!("f32-vector-{type_id}"), &b, ImportDType::F32);
        result.expect("f32 import");
        let (hk, dk) = read_safetensors(&kept.join("model.safetensors"));
        let (he, de) = read_safetensors(&expanded.join("model.safetensors"));
        assert_eq!(hk[name]["dtype"], "F32", "type {type_id}");
        assert_eq!(tensor_values(&hk, &dk, name), tensor_values(&he, &de, name), "type {type_id}");
        fs::remove_dir_all(kept.parent().unwrap()).unwrap();
        fs::remove_dir_all(expanded.parent().unwrap()).unwrap();
    }
}

/// Tensors that contradict the file's own metadata (here an embedding of 7 rows for 8 tokens),
/// a scaled RoPE and the `mistral` architecture name are refused naming the GGUF, leaving no folder.
#[test]
fn inconsistent_or_unsupported_files_are_refused_without_output() {
    let mut b = tiny_model("llama", "smollm");
    b.f32_tensor("token_embd.weight", &[N_EMBD, 7], &iota(N_EMBD * 7));
    let (out, result) = import_tiny("inconsistent", &b, ImportDType::F32);
    let err = result.expect_err("an embedding of 7 rows for 8 tokens").to_string();
    assert!(err.contains("tiny.gguf") && err.contains("model.embed_tokens.weight") && err.contains("[7, 32]"), "{err}");
    assert!(!out.exists() && fs::read_dir(out.parent().unwrap()).unwrap().count() == 1, "only the GGUF is left");

    let mut b = tiny_model("llama", "smollm");
    b.kv("llama.rope.scaling.type", GgufValue::String("linear".into()));
    let err = import_tiny("scaled", &b, ImportDType::F32).1.expect_err("scaled RoPE").to_string();
    assert!(err.contains("rope.scaling.type") && err.contains("linear"), "{err}");
    let err = import_tiny("mistral", &tiny_model("mistral", "smollm"), ImportDType::F32).1.expect_err("mistral");
    assert!(err.to_string().contains("writes Mistral models as llama"), "{err}");
}

#[test]
fn writes_hf_tokenizer_files() {
    let (out, result) = import_tiny("tokenizer", &tiny_model("llama", "smollm"), ImportDType::Bf16);
    result.expect("import");
    let tok = read_json(&out.join("tokenizer.json"));
    assert_eq!(tok["version"], "1.0");
    assert_eq!(tok["normalizer"], Value::Null);
    assert_eq!(tok["pre_tokenizer"]["pretokenizers"][0], json!({ "type": "Digits", "individual_digits": true }));
    assert_eq!(tok["pre_tokenizer"]["pretokenizers"][1]["type"], "ByteLevel");
    assert_eq!(tok["decoder"]["type"], "ByteLevel");
    assert_eq!(tok["post_processor"]["type"], "ByteLevel");
    let added = tok["added_tokens"].as_array().unwrap();
    assert_eq!(added.len(), 3);
    assert_eq!(
        added[1],
        json!({ "id": 1, "content": "<|im_start|>", "single_word": false, "lstrip": false,
                                 "rstrip": false, "normalized": false, "special": true })
    );
    assert_eq!(added[2]["special"], false, "user-defined tokens are added but not special");
    assert_eq!(tok["model"]["type"], "BPE");
    assert_eq!(tok["model"]["vocab"]["Ġab"], 7);
    assert_eq!(tok["model"]["merges"], json!(["a b", "Ġ ab"]));

    let config = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(config["bos_token"], "<|im_start|>");
    assert_eq!(config["eos_token"], "<|im_end|>");
    assert_eq!(config["add_bos_token"], false);
    assert_eq!(config["chat_template"], "{{ messages }}");
    assert_eq!(config["model_max_length"], 128);
    assert_eq!(read_json(&out.join("generation_config.json")), json!({ "bos_token_id": 1, "eos_token_id": 2 }));
    let (header, _) = read_safetensors(&out.join("model.safetensors"));
    assert_eq!(header["model.norm.weight"]["dtype"], "BF16");
    assert_eq!(read_json(&out.join("config.json"))["torch_dtype"], "bfloat16");
}

#[test]
fn qwen2_is_not_unpermuted_and_gets_its_pre_tokenizer() {
    let mut b = tiny_model("qwen2", "qwen2");
    b.f32_tensor("blk.0.attn_q.bias", &[32], &iota(32))
        .f32_tensor("blk.0.attn_k.bias", &[16], &iota(16))
        .f32_tensor("blk.0.attn_v.bias", &[16], &iota(16))
        .f32_tensor("output.weight", &[N_EMBD, 8], &iota(N_EMBD * 8));
    let (out, result) = import_tiny("qwen2", &b, ImportDType::F32);
    assert!(!result.expect("import").tied_embeddings);
    let (header, data) = read_safetensors(&out.join("model.safetensors"));
    assert_eq!(tensor_values(&header, &data, "model.layers.0.self_attn.k_proj.weight"), iota(N_EMBD * 16));
    assert_eq!(tensor_values(&header, &data, "model.layers.0.self_attn.q_proj.bias"), iota(32));
    assert_eq!(header["lm_head.weight"]["shape"], json!([8, 32]));
    let config = read_json(&out.join("config.json"));
    assert_eq!((config["model_type"].as_str(), config["tie_word_embeddings"].as_bool()), (Some("qwen2"), Some(false)));
    let tok = read_json(&out.join("tokenizer.json"));
    assert_eq!(tok["normalizer"], json!({ "type": "NFC" }));
    assert_eq!(tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"], QWEN2_REGEX);
}

#[test]
fn unknown_pre_tokenizer_is_rejected_without_leaving_output() {
    let (out, result) = import_tiny("bad_pre", &tiny_model("llama", "llama-bpe"), ImportDType::Bf16);
    let err = result.expect_err("must fail").to_string();
    assert!(err.contains("tokenizer.ggml.pre") && err.contains("llama-bpe"), "{err}");
    let parent = out.parent().unwrap();
    let left: Vec<_> = fs::read_dir(parent).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["tiny.gguf"]);
}

#[test]
fn unmapped_tensor_is_rejected_by_name() {
    let mut b = tiny_model("llama", "smollm");
    b.f32_tensor("blk.0.attn_q_norm.weight", &[8], &iota(8));
    let (out, result) = import_tiny("unmapped", &b, ImportDType::Bf16);
    let err = result.expect_err("must fail").to_string();
    assert!(err.contains("blk.0.attn_q_norm.weight"), "{err}");
    assert!(!out.exists());
}

#[test]
fn refuses_non_empty_output_folder() {
    let b = tiny_model("llama", "smollm");
    let (out, result) = import_tiny("non_empty", &b, ImportDType::Bf16);
    result.expect("first import");
    let gguf = out.parent().unwrap().join("tiny.gguf");
    let err = import_gguf(&gguf, &out, ImportDType::Bf16, &loads).expect_err("second import").to_string();
    assert!(err.contains("not empty"), "{err}");
    fs::remove_dir_all(&out).unwrap();
    fs::create_dir(&out).unwrap();
    // A killed import's staging folder (its process gone) is removed by the next import.
    let abandoned = out.parent().unwrap().join(".hf.partial-4000000000");
    fs::create_dir(&abandoned).unwrap();
    fs::write(abandoned.join("model.safetensors"), b"half").unwrap();
    import_gguf(&gguf, &out, ImportDType::Bf16, &loads).expect("an empty folder is fine");
    assert!(!abandoned.exists(), "the abandoned staging folder is left");
}

/// Where `tools/fetch-default-model.sh` leaves the GGUF.
fn smollm2_gguf() -> std::path::PathBuf {
    crate::paths::default_gguf_file()
}

#[test]
fn imports_real_smollm2() {
    let gguf = smollm2_gguf();
    if !gguf.exists() {
        eprintln!("skipping imports_real_smollm2: {} not found", gguf.display());
        return;
    }
    let gguf = gguf.as_path();
    let out = scratch_dir("smollm2").join("hf");
    let summary = import_gguf(gguf, &out, ImportDType::Bf16, &loads).expect("import");
    assert_eq!((summary.tensors, summary.tied_embeddings), (272, true));
    let config = read_json(&out.join("config.json"));
    let expect = json!({
        "num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
        "num_key_value_heads": 3, "vocab_size": 49152, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 8192, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": true,
    });
    for (k, v) in expect.as_object().unwrap() {
        assert_eq!(&config[k], v, "config.json {k}");
    }
    let tok = read_json(&out.join("tokenizer.json"));
    assert_eq!(tok["model"]["vocab"].as_object().unwrap().len(), 49152);
    assert_eq!(tok["added_tokens"].as_array().unwrap().len(), 17);
    let tok_config = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tok_config["eos_token"], "<|im_end|>");
    assert!(tok_config["chat_template"].as_str().unwrap().contains("named SmolLM"));
    let (header, data) = read_safetensors(&out.join("model.safetensors"));
    assert_eq!(header["model.embed_tokens.weight"]["shape"], json!([49152, 576]));
    assert_eq!(data.len(), 134_515_008 * 2);
    fs::remove_dir_all(out.parent().unwrap()).unwrap();
}
