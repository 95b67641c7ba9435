//! `import-gguf`: turns a GGUF file into an HF folder (`config.json`, `model.safetensors`,
//! `tokenizer.json`, `tokenizer_config.json`, `generation_config.json`) that the normal loader
//! memory-maps, following `spec/gguf.md`.
//!
//! OUT_DIR must not exist or be an empty folder. Everything is written into a hidden sibling
//! folder that is renamed onto OUT_DIR only once complete, so a failed import leaves nothing behind.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use half::bf16;
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::fsutil::temp_sibling;
use crate::weights::gguf::{GgmlType, GgufFile, GgufTensorInfo};
use crate::weights::gguf_tokenizer::TokenizerMeta;
use crate::weights::safetensors::QUANT_KEY_PREFIX;
use crate::weights::DType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportDType {
    /// Every tensor expanded to bf16.
    Bf16,
    /// Every tensor expanded to f32 (the GGUF's values exactly).
    F32,
    /// Every tensor as the GGUF stores it: Q8_0 / Q4_0 / Q4_1 blocks stay quantized (the CPU
    /// backend multiplies them in place), float tensors keep their type.
    Keep,
}

impl ImportDType {
    fn torch_name(self) -> &'static str {
        match self {
            ImportDType::Bf16 => "bfloat16",
            // The quantized weights' values are computed in f32.
            ImportDType::F32 | ImportDType::Keep => "float32",
        }
    }

    /// How a tensor of `ty` is written.
    fn stored(self, ty: GgmlType) -> DType {
        match (self, ty) {
            (ImportDType::Bf16, _) => DType::BF16,
            (ImportDType::F32, _) => DType::F32,
            (ImportDType::Keep, GgmlType::F32) => DType::F32,
            (ImportDType::Keep, GgmlType::F16) => DType::F16,
            (ImportDType::Keep, GgmlType::Bf16) => DType::BF16,
            (ImportDType::Keep, GgmlType::Q8_0) => DType::Q8_0,
            (ImportDType::Keep, GgmlType::Q4_0) => DType::Q4_0,
            (ImportDType::Keep, GgmlType::Q4_1) => DType::Q4_1,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ImportSummary {
    /// HF `model_type`: llama, qwen2 or mistral.
    pub model_type: &'static str,
    pub tensors: usize,
    /// All files of the folder together.
    pub bytes_written: u64,
    pub tied_embeddings: bool,
}

pub fn import_gguf(gguf: &Path, out_dir: &Path, dtype: ImportDType) -> Result<ImportSummary> {
    let file = GgufFile::open(gguf)?;
    let tok = TokenizerMeta::read(&file)?;
    let hp = HParams::read(&file, tok.tokens.len())?;
    let plan = plan_tensors(&file, &hp)?;
    let tied = file.tensor("output.weight").is_none();
    let staging = Staging::new(out_dir)?;
    let dir = &staging.dir;
    let mut bytes = write_safetensors(&file, &plan, dtype, &dir.join("model.safetensors"))?;
    bytes += write_json(&dir.join("config.json"), &config_json(&hp, &tok, tied, dtype))?;
    bytes += write_json(&dir.join("tokenizer.json"), &tok.tokenizer_json())?;
    bytes += write_json(&dir.join("tokenizer_config.json"), &tok.tokenizer_config(hp.n_ctx))?;
    bytes += write_json(&dir.join("generation_config.json"), &tok.generation_config())?;
    staging.commit()?;
    Ok(ImportSummary { model_type: hp.arch.name(), tensors: plan.len(), bytes_written: bytes, tied_embeddings: tied })
}

/// `Ok(None)` when the key is absent; a present key of the wrong type is still an error.
pub(super) fn optional<'a, T>(
    g: &'a GgufFile,
    key: &str,
    get: impl Fn(&'a GgufFile, &str) -> Result<T>,
) -> Result<Option<T>> {
    if g.metadata.contains_key(key) {
        get(g, key).map(Some)
    } else {
        Ok(None)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arch {
    Llama,
    Qwen2,
    Mistral,
}

impl Arch {
    fn read(g: &GgufFile) -> Result<Self> {
        const KEY: &str = "general.architecture";
        match g.get_str(KEY)? {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            "mistral" => Ok(Arch::Mistral),
            other => Err(Error::format(
                &g.path,
                KEY,
                format!("unsupported architecture `{other}` (llama, qwen2, mistral are)"),
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Mistral => "mistral",
        }
    }

    fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
        }
    }
}

struct HParams {
    arch: Arch,
    n_layer: u32,
    n_embd: u32,
    n_ff: u32,
    n_head: u32,
    n_head_kv: u32,
    head_dim: Option<u32>,
    rms_eps: f32,
    rope_theta: f32,
    n_ctx: u32,
    vocab_size: u32,
    attention_bias: bool,
}

impl HParams {
    fn read(g: &GgufFile, n_tokens: usize) -> Result<Self> {
        let arch = Arch::read(g)?;
        let key = |k: &str| format!("{}.{k}", arch.name());
        let nonzero = |k: String, v: u32| match v {
            0 => Err(Error::format(&g.path, k, "must be > 0")),
            v => Ok(v),
        };
        let n_head = nonzero(key("attention.head_count"), g.get_u32(&key("attention.head_count"))?)?;
        let n_head_kv = optional(g, &key("attention.head_count_kv"), GgufFile::get_u32)?.unwrap_or(n_head);
        let n_tokens = u32::try_from(n_tokens)
            .map_err(|_| Error::format(&g.path, "tokenizer.ggml.tokens", "more than 2^32 tokens"))?;
        Ok(HParams {
            arch,
            n_layer: g.get_u32(&key("block_count"))?,
            n_embd: g.get_u32(&key("embedding_length"))?,
            n_ff: g.get_u32(&key("feed_forward_length"))?,
            n_head,
            n_head_kv: nonzero(key("attention.head_count_kv"), n_head_kv)?,
            head_dim: optional(g, &key("attention.key_length"), GgufFile::get_u32)?,
            rms_eps: g.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            // llama.cpp's default when the converter did not write it.
            rope_theta: optional(g, &key("rope.freq_base"), GgufFile::get_f32)?.unwrap_or(10_000.0),
            n_ctx: g.get_u32(&key("context_length"))?,
            vocab_size: optional(g, &key("vocab_size"), GgufFile::get_u32)?.unwrap_or(n_tokens),
            attention_bias: g.tensor("blk.0.attn_q.bias").is_some(),
        })
    }
}

/// f32 metadata printed as its shortest decimal, so 1e-5 stored as f32 reads 1e-05 in config.json
/// rather than 9.999999747378752e-06.
fn shortest(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

fn config_json(hp: &HParams, tok: &TokenizerMeta, tied: bool, dtype: ImportDType) -> Value {
    let mut config = json!({
        "architectures": [hp.arch.hf_class()],
        "model_type": hp.arch.name(),
        "hidden_size": hp.n_embd,
        "intermediate_size": hp.n_ff,
        "num_hidden_layers": hp.n_layer,
        "num_attention_heads": hp.n_head,
        "num_key_value_heads": hp.n_head_kv,
        "hidden_act": "silu",
        "rms_norm_eps": shortest(hp.rms_eps),
        "rope_theta": shortest(hp.rope_theta),
        "rope_scaling": null,
        "max_position_embeddings": hp.n_ctx,
        "vocab_size": hp.vocab_size,
        "attention_bias": hp.attention_bias,
        "bos_token_id": tok.bos,
        "eos_token_id": tok.eos,
        "tie_word_embeddings": tied,
        "torch_dtype": dtype.torch_name(),
    });
    if let Some(head_dim) = hp.head_dim {
        config["head_dim"] = json!(head_dim);
    }
    config
}

/// GGUF name → HF name per `spec/gguf.md`; `None` for tensors HF llama/qwen2 have no place for.
fn hf_name(gguf_name: &str) -> Option<String> {
    let (stem, kind) = gguf_name.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let hf = match stem {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let (layer, part) = stem.strip_prefix("blk.")?.split_once('.')?;
            let layer: u32 = layer.parse().ok()?;
            let sub = match part {
                "attn_norm" => "input_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_norm" => "post_attention_layernorm",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return None,
            };
            format!("model.layers.{layer}.{sub}")
        }
    };
    Some(format!("{hf}.{kind}"))
}

/// How many heads llama.cpp permuted this tensor's rows over: only llama's Q (n_head) and K
/// (n_head_kv), weights and biases alike.
fn permuted_heads(hp: &HParams, gguf_name: &str) -> Option<u32> {
    if hp.arch != Arch::Llama {
        return None;
    }
    let stem = gguf_name.rsplit_once('.')?.0;
    if stem.ends_with(".attn_q") {
        Some(hp.n_head)
    } else if stem.ends_with(".attn_k") {
        Some(hp.n_head_kv)
    } else {
        None
    }
}

struct PlannedTensor<'a> {
    info: &'a GgufTensorInfo,
    /// HF order: the GGUF dims reversed.
    shape: Vec<u64>,
    /// `(n_head, row_len)` when the rows must be un-permuted.
    unpermute: Option<(usize, usize)>,
}

/// Sorted by HF name: the safetensors header lists tensors in that order and the data follows it.
fn plan_tensors<'a>(g: &'a GgufFile, hp: &HParams) -> Result<BTreeMap<String, PlannedTensor<'a>>> {
    let mut plan = BTreeMap::new();
    for info in &g.tensors {
        let name = hf_name(&info.name)
            .ok_or_else(|| Error::format(&g.path, &info.name, "tensor has no HF llama/qwen2 equivalent"))?;
        let unpermute = match permuted_heads(hp, &info.name) {
            Some(n_head) => Some(unpermute_params(g, info, n_head)?),
            None => None,
        };
        let planned = PlannedTensor { info, shape: info.dims.iter().rev().copied().collect(), unpermute };
        if plan.insert(name.clone(), planned).is_some() {
            return Err(Error::format(&g.path, &info.name, format!("second tensor mapping to `{name}`")));
        }
    }
    Ok(plan)
}

fn unpermute_params(g: &GgufFile, info: &GgufTensorInfo, n_head: u32) -> Result<(usize, usize)> {
    let row_len = if info.dims.len() == 1 { 1 } else { info.dims[0] };
    let rows = info.n_elements().checked_div(row_len).unwrap_or(0);
    if rows == 0 || rows % (2 * u64::from(n_head)) != 0 {
        return Err(Error::format(
            &g.path,
            &info.name,
            format!("{rows} rows cannot be split into {n_head} heads of an even head size"),
        ));
    }
    let too_big = || Error::format(&g.path, &info.name, "tensor too large for this machine");
    Ok((n_head as usize, usize::try_from(row_len).map_err(|_| too_big())?))
}

/// Undoes llama.cpp's Q/K row permutation: per head, GGUF row `2j + i` holds HF row
/// `i·hd/2 + j` (rows viewed as [n_head, hd/2, 2] are transposed back to [n_head, 2, hd/2]).
/// `data` holds whole rows of `row_len` values and the row count is a multiple of 2·n_head.
fn unpermute_qk<T: Copy>(data: &[T], n_head: usize, row_len: usize) -> Vec<T> {
    let head_dim = data.len() / row_len / n_head;
    let mut out = Vec::with_capacity(data.len());
    for head in 0..n_head {
        for i in 0..2 {
            for j in 0..head_dim / 2 {
                let src = head * head_dim + 2 * j + i;
                out.extend_from_slice(&data[src * row_len..(src + 1) * row_len]);
            }
        }
    }
    out
}

/// Streams one tensor at a time: only the current tensor's values are ever in memory.
fn write_safetensors(
    g: &GgufFile,
    plan: &BTreeMap<String, PlannedTensor>,
    dtype: ImportDType,
    path: &Path,
) -> Result<u64> {
    let io_err = |e: io::Error| Error::io(path, e);
    let order = data_order(plan, dtype);
    let header = safetensors_header(&order, dtype);
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io_err)?);
    w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io_err)?;
    w.write_all(&header).map_err(io_err)?;
    let mut written = 8 + header.len() as u64;
    for (_, t) in order {
        written += if dtype == ImportDType::Keep {
            // Rows are whole blocks, so un-permuting moves bytes of rows.
            let mut bytes = g.tensor_bytes(t.info)?.to_vec();
            if let Some((n_head, row_len)) = t.unpermute {
                let row_bytes = bytes.len() / (t.info.n_elements() as usize / row_len);
                bytes = unpermute_qk(&bytes, n_head, row_bytes);
            }
            w.write_all(&bytes).map_err(io_err)?;
            bytes.len() as u64
        } else {
            let mut values = g.tensor_to_f32(t.info)?;
            if let Some((n_head, row_len)) = t.unpermute {
                values = unpermute_qk(&values, n_head, row_len);
            }
            write_values(&mut w, &values, dtype).map_err(io_err)?
        };
    }
    let file = w.into_inner().map_err(|e| io_err(e.into_error()))?;
    file.sync_all().map_err(io_err)?;
    Ok(written)
}

/// The order of the data section: 4-byte types first, then 2-byte ones and blocks, by name within
/// each, so every tensor starts aligned for its typed view (safetensors allows no gaps).
fn data_order<'p, 'a>(
    plan: &'p BTreeMap<String, PlannedTensor<'a>>,
    dtype: ImportDType,
) -> Vec<(&'p String, &'p PlannedTensor<'a>)> {
    let mut order: Vec<_> = plan.iter().collect();
    order.sort_by_key(|(name, t)| (std::cmp::Reverse(dtype.stored(t.info.ggml_type).align()), name.as_str()));
    order
}

/// The header's JSON, padded with spaces to a multiple of 8 bytes. A quantized tensor is U8
/// `[rows, bytes per row]`, its type named in the metadata (`safetensors::QUANT_KEY_PREFIX`).
fn safetensors_header(order: &[(&String, &PlannedTensor)], dtype: ImportDType) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut metadata = serde_json::Map::new();
    metadata.insert("format".into(), json!("pt"));
    let mut offset = 0u64;
    for &(name, t) in order {
        let stored = dtype.stored(t.info.ggml_type);
        let bytes = stored.bytes_for(t.info.n_elements() as usize).expect("GGUF tensors are whole blocks") as u64;
        let (st_dtype, shape) = if stored.is_quantized() {
            metadata.insert(format!("{QUANT_KEY_PREFIX}{name}"), json!(stored.name()));
            let mut shape = t.shape.clone();
            if let Some(last) = shape.last_mut() {
                *last = *last / stored.block().0 as u64 * stored.block().1 as u64;
            }
            ("U8", shape)
        } else {
            (stored.name(), t.shape.clone())
        };
        let end = offset + bytes;
        header.insert(name.clone(), json!({ "dtype": st_dtype, "shape": shape, "data_offsets": [offset, end] }));
        offset = end;
    }
    header.insert("__metadata__".into(), Value::Object(metadata));
    let mut bytes = Value::Object(header).to_string().into_bytes();
    // With the 8-byte length prefix this makes the data section start 8-aligned; each tensor then
    // starts aligned to its element size (`data_order`).
    bytes.resize(bytes.len().div_ceil(8) * 8, b' ');
    bytes
}

fn write_values(w: &mut impl Write, values: &[f32], dtype: ImportDType) -> io::Result<u64> {
    const CHUNK: usize = 1 << 16;
    let mut buf = Vec::with_capacity(CHUNK * 4);
    for chunk in values.chunks(CHUNK) {
        buf.clear();
        match dtype {
            ImportDType::Bf16 => chunk.iter().for_each(|&v| buf.extend(bf16::from_f32(v).to_le_bytes())),
            ImportDType::F32 => chunk.iter().for_each(|&v| buf.extend(v.to_le_bytes())),
            ImportDType::Keep => unreachable!("kept tensors are copied as bytes"),
        }
        w.write_all(&buf)?;
    }
    let size = if dtype == ImportDType::Bf16 { 2 } else { 4 };
    Ok(values.len() as u64 * size)
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<u64> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::io(path, e.into()))?;
    fs::write(path, &bytes).map_err(|e| Error::io(path, e))?;
    Ok(bytes.len() as u64)
}

/// A hidden sibling of OUT_DIR that becomes OUT_DIR only on `commit`; dropped uncommitted, it is removed.
struct Staging {
    dir: PathBuf,
    out: PathBuf,
    committed: bool,
}

impl Staging {
    fn new(out: &Path) -> Result<Self> {
        check_out_dir(out)?;
        if out.file_name().is_none() {
            return Err(Error::input(format!("{}: output folder needs a name", out.display())));
        }
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let dir = temp_sibling(out);
        // Only a crashed earlier run with the same pid can have left this behind.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Staging { dir, out: out.to_path_buf(), committed: false })
    }

    fn commit(mut self) -> Result<()> {
        // check_out_dir allowed an empty folder; remove_dir refuses one that filled up since.
        match fs::remove_dir(&self.out) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(Error::io(&self.out, e)),
            _ => {}
        }
        fs::rename(&self.dir, &self.out).map_err(|e| Error::io(&self.out, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn check_out_dir(out: &Path) -> Result<()> {
    match fs::read_dir(out).map(|mut entries| entries.next().is_some()) {
        Ok(true) => Err(Error::input(format!(
            "{}: output folder exists and is not empty; remove it or choose another",
            out.display()
        ))),
        Ok(false) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(out, e)),
    }
}

#[cfg(test)]
mod tests {
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

    fn import_tiny(test: &str, b: &GgufBuilder, dtype: ImportDType) -> (PathBuf, Result<ImportSummary>) {
        let dir = scratch_dir(test);
        let gguf = dir.join("tiny.gguf");
        fs::write(&gguf, b.build()).expect("write gguf");
        let out = dir.join("hf");
        let result = import_gguf(&gguf, &out, dtype);
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
        assert_eq!(
            (q["dtype"].as_str(), q["shape"].clone()),
            (Some("U8"), json!([32, 20])),
            "32 rows of one Q4_1 block"
        );
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
        b.f32_tensor("blk.0.attn_q.bias", &[32], &iota(32)).f32_tensor(
            "output.weight",
            &[N_EMBD, 8],
            &iota(N_EMBD * 8),
        );
        let (out, result) = import_tiny("qwen2", &b, ImportDType::F32);
        assert!(!result.expect("import").tied_embeddings);
        let (header, data) = read_safetensors(&out.join("model.safetensors"));
        assert_eq!(tensor_values(&header, &data, "model.layers.0.self_attn.k_proj.weight"), iota(N_EMBD * 16));
        assert_eq!(tensor_values(&header, &data, "model.layers.0.self_attn.q_proj.bias"), iota(32));
        assert_eq!(header["lm_head.weight"]["shape"], json!([8, 32]));
        let config = read_json(&out.join("config.json"));
        assert_eq!(
            (config["model_type"].as_str(), config["tie_word_embeddings"].as_bool()),
            (Some("qwen2"), Some(false))
        );
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
        let err = import_gguf(&gguf, &out, ImportDType::Bf16).expect_err("second import").to_string();
        assert!(err.contains("not empty"), "{err}");
        fs::remove_dir_all(&out).unwrap();
        fs::create_dir(&out).unwrap();
        import_gguf(&gguf, &out, ImportDType::Bf16).expect("an empty folder is fine");
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
        let summary = import_gguf(gguf, &out, ImportDType::Bf16).expect("import");
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
}
