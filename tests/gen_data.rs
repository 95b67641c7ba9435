//! gen-data on the default model: the loss mask covers exactly the assistant's tokens (ChatML and
//! a Vicuna-style template), an interrupted run resumed gives the same bytes as an uninterrupted
//! one, records hold the model's own features, and bad input fails cleanly.

mod common;

use common::engine;

use std::path::{Path, PathBuf};

use clover_engine::backend::cpu::CpuBackend;
use clover_engine::backend::Backend;
use clover_engine::model::{ChatMessage, Llama, LogitRows, TextTokenizer};
use clover_engine::train::data::{gen_data, GenDataOptions};
use clover_engine::train::layout::shard_file;
use clover_engine::train::loss_mask::{render_masked, MaskedTokens};
use clover_engine::train::shards::ShardReader;

fn three_turns() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("user", "What is the capital of France?"),
        ChatMessage::new("assistant", "The capital of France is Paris."),
        ChatMessage::new("user", "And of Italy?"),
        ChatMessage::new("assistant", "Rome.\n\nIt has been the capital since 1871."),
        ChatMessage::new("user", "Thanks!"),
        ChatMessage::new("assistant", "  You're welcome 😊"),
    ]
}

/// The decoded runs of masked-in tokens.
fn masked_spans(tok: &TextTokenizer, m: &MaskedTokens) -> Vec<String> {
    let mut spans = Vec::new();
    let mut run = Vec::new();
    for (&id, &mask) in m.ids.iter().zip(&m.loss_mask).chain([(&0, &0)]) {
        if mask == 1 {
            run.push(id);
        } else if !run.is_empty() {
            spans.push(tok.decode(&run).unwrap());
            run.clear();
        }
    }
    spans
}

#[test]
fn loss_mask_is_exactly_the_assistant_turns_in_chatml() {
    let Some(dir) = common::default_model() else {
        return;
    };
    let tok = TextTokenizer::load(&dir).unwrap();
    let msgs = three_turns();
    let m = render_masked(&tok, &msgs).unwrap();
    assert_eq!(m.ids.len(), m.loss_mask.len());
    assert_eq!(tok.decode(&m.ids).unwrap(), tok.render_chat(&msgs, false).unwrap());
    let mut want: Vec<String> =
        msgs.iter().filter(|m| m.role == "assistant").map(|m| format!("{}<|im_end|>", m.content)).collect();
    // The BPE merges the header's "\n" with the first of the reply's two leading spaces into one
    // token that starts in the header, so it stays out (see loss_mask.rs).
    want[2] = " You're welcome 😊<|im_end|>".to_string();
    assert_eq!(masked_spans(&tok, &m), want);
}

#[test]
fn loss_mask_follows_the_template_not_chatml() {
    let Some(src) = common::default_model() else {
        return;
    };
    let dir = common::temp_dir("vicuna-template");
    std::fs::copy(src.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let template = "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] + ' ' }}\
        {% elif m['role'] == 'user' %}{{ 'USER: ' + m['content'] + ' ' }}\
        {% else %}{{ 'ASSISTANT: ' + m['content'] + eos_token }}{% endif %}{% endfor %}\
        {% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}";
    let config = serde_json::json!({"chat_template": template, "eos_token": "<|endoftext|>"});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let tok = TextTokenizer::load(&dir).unwrap();
    let mut msgs = three_turns();
    msgs.insert(0, ChatMessage::new("system", "A chat."));
    let m = render_masked(&tok, &msgs).unwrap();
    let want: Vec<String> =
        msgs.iter().filter(|m| m.role == "assistant").map(|m| format!(" {}<|endoftext|>", m.content)).collect();
    assert_eq!(masked_spans(&tok, &m), want);
}

/// A ShareGPT file cut off mid-record, with one conversation to skip (it starts with gpt).
fn write_sharegpt(path: &Path) {
    let turn = |from: &str, value: &str| serde_json::json!({"from": from, "value": value});
    let mut records = Vec::new();
    for i in 0..8 {
        let mut turns = vec![turn("human", &format!("Question {i}: name {} colours.", i + 1))];
        turns.push(turn("gpt", &"Red, green and blue are colours. ".repeat(1 + i % 3)));
        if i % 2 == 1 {
            turns.push(turn("human", "More?"));
            turns.push(turn("gpt", "Yellow."));
        }
        records.push(serde_json::json!({"id": format!("conv{i}"), "conversations": turns}));
    }
    records.insert(3, serde_json::json!({"id": "cont", "conversations": [turn("gpt", "a continuation")]}));
    let text = serde_json::to_string_pretty(&records).unwrap();
    let cut = text.rfind("\"Yellow").unwrap();
    std::fs::write(path, &text[..cut]).unwrap();
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

#[test]
fn resumed_run_is_byte_identical_and_records_hold_the_models_features() {
    let Some(model_dir) = common::default_model() else {
        return;
    };
    let root = common::temp_dir("gen-data");
    let data = root.join("sharegpt.json");
    write_sharegpt(&data);
    let (whole, resumed) = (root.join("whole"), root.join("resumed"));
    let args = |out: &PathBuf| {
        vec![
            "gen-data".to_string(),
            "--model".into(),
            model_dir.to_string_lossy().into_owned(),
            "--data".into(),
            data.to_string_lossy().into_owned(),
            "--out".into(),
            out.to_string_lossy().into_owned(),
            "--start".into(),
            "1".into(),
            "--max-len".into(),
            "48".into(),
            "--shard-tokens".into(),
            "100".into(),
        ]
    };
    let o = engine(&args(&whole).iter().map(String::as_str).collect::<Vec<_>>());
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("8 complete records, 7 usable") && stdout.contains("cut off"), "{stdout}");

    let opts = GenDataOptions {
        model_dir: model_dir.clone(),
        data: data.clone(),
        out: resumed.clone(),
        start: 1,
        end: None,
        max_len: 48,
        shard_tokens: 100,
        chat_template: None,
        system: None,
    };
    let first = gen_data(&opts, CpuBackend).unwrap();
    let shards = first.index.shards.len();
    assert!(shards >= 3, "{shards} shards");
    assert_eq!(first.index.conversations, 6);
    assert!(first.index.truncated > 0);
    // An interrupted run: one finished shard lost, a half-written one left behind.
    std::fs::remove_file(resumed.join(shard_file(1))).unwrap();
    std::fs::write(resumed.join(format!(".{}.partial-1", shard_file(2))), b"half").unwrap();
    let second = gen_data(&opts, CpuBackend).unwrap();
    assert_eq!((second.shards_written, second.shards_present), (1, shards - 1));
    assert_eq!(files(&whole), files(&resumed), "resumed output differs from the uninterrupted one");

    let reader = ShardReader::open(&whole).unwrap();
    assert_eq!(reader.len(), 6);
    let tok = TextTokenizer::load(&model_dir).unwrap();
    let model = Llama::load(&model_dir, CpuBackend).unwrap();
    let rec = reader.record(2);
    assert_eq!(rec.index, 3);
    let (convs, _) = clover_engine::train::conversations::read_sharegpt(&data).unwrap();
    let mut want = render_masked(&tok, &convs[3].messages).unwrap();
    want.truncate(48);
    assert_eq!((&rec.input_ids, &rec.loss_mask), (&want.ids, &want.loss_mask));
    let mut cache = model.new_cache(want.ids.len());
    let out = model.prefill(&mut cache, &want.ids, LogitRows::None).unwrap();
    let bf16 = |v: Vec<f32>| v.into_iter().map(|x| half::bf16::from_f32(x).to_f32()).collect::<Vec<_>>();
    assert_eq!(rec.hidden_state, bf16(model.backend.download(&out.postnorm)));
    assert_eq!(rec.hidden_state_prenorm, bf16(model.backend.download(&out.prenorm)));

    // Two folders read as one: records in folder order, each folder holding out its own tail.
    let both = ShardReader::open_all(&[&whole, &resumed]).unwrap();
    assert_eq!((both.len(), both.index.conversations), (12, 12));
    assert_eq!(both.record(8).input_ids, reader.record(2).input_ids);
    let split = both.split(0.34);
    assert_eq!(split.heldout, [4, 5, 10, 11]);
    assert_eq!(split.train, [0, 1, 2, 3, 6, 7, 8, 9]);
    // A folder from another base model is refused, naming its index.json.
    let other = root.join("other-model");
    std::fs::create_dir_all(&other).unwrap();
    for (name, bytes) in files(&whole) {
        std::fs::write(other.join(name), bytes).unwrap();
    }
    let index = std::fs::read_to_string(whole.join("index.json")).unwrap();
    let renamed = index.replacen(&format!("\"model\": \"{}\"", first.index.model), "\"model\": \"another\"", 1);
    assert_ne!(renamed, index);
    std::fs::write(other.join("index.json"), renamed).unwrap();
    let err = ShardReader::open_all(&[&whole, &other]).err().expect("another model");
    assert!(err.to_string().contains("other-model") && err.to_string().contains("same base model"), "{err}");

    // Other parameters into the same folder: refused before anything is written.
    let err = gen_data(&GenDataOptions { max_len: 40, ..opts.clone() }, CpuBackend).err().expect("plan mismatch");
    let err = err.to_string();
    assert!(err.contains("index.json") && err.contains("field `max_len`") && err.contains("with 40"), "{err}");
    let system = GenDataOptions { system: Some("Be brief.".into()), ..opts.clone() };
    let err = gen_data(&system, CpuBackend).err().expect("another system message").to_string();
    assert!(err.contains("field `system`") && err.contains("\"Be brief.\""), "{err}");
    // A folder whose run read the data file differently (an older gen-data) is refused too.
    let path = resumed.join("index.json");
    let index = std::fs::read_to_string(&path).unwrap();
    let older = index.replacen("\"usable_conversations\": 7", "\"usable_conversations\": 6", 1);
    assert_ne!(older, index);
    std::fs::write(&path, older).unwrap();
    let err = gen_data(&opts, CpuBackend).err().expect("another reading of the data").to_string();
    assert!(err.contains("field `usable_conversations`") && err.contains("opens with an assistant turn"), "{err}");
}

#[test]
fn bad_input_fails_cleanly_without_output() {
    let Some(src) = common::default_model() else {
        return;
    };
    let root = common::temp_dir("gen-data-errors");
    let out = root.join("out");
    let model = src.to_string_lossy().into_owned();
    let run = |model: &str, data: &str| {
        let o = engine(&["gen-data", "--model", model, "--data", data, "--out", out.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success() && !err.contains("panicked"), "{err}");
        assert!(!out.exists(), "output written despite the error");
        err
    };
    let missing = root.join("nope.json");
    let err = run(&model, missing.to_str().unwrap());
    assert!(err.contains("nope.json"), "{err}");

    let data = root.join("sharegpt.json");
    write_sharegpt(&data);
    let bare = root.join("no-template");
    std::fs::create_dir_all(&bare).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), bare.join(f)).unwrap();
    }
    std::fs::write(bare.join("tokenizer_config.json"), "{}").unwrap();
    let err = run(bare.to_str().unwrap(), data.to_str().unwrap());
    assert!(err.contains("tokenizer_config.json") && err.contains("chat_template"), "{err}");

    std::fs::write(&data, "{\"not\": \"an array\"}").unwrap();
    let err = run(&model, data.to_str().unwrap());
    assert!(err.contains("sharegpt.json") && err.contains("array"), "{err}");
}
