//! Token ids identical to Python `tokenizers` on the same tokenizer.json, for real texts
//! (Spec-Bench questions, ShareGPT turns) and edge cases (digits, CJK, emoji, specials).

mod common;

use clover_engine::model::TextTokenizer;
use serde_json::Value;

#[test]
fn ids_match_python_tokenizers() {
    let Some(dir) = common::default_model() else {
        return;
    };
    let tok = TextTokenizer::load(&dir).unwrap();
    let text = std::fs::read_to_string(common::fixture("tokenizer_cases.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 200, "only {} cases", cases.len());
    let mut mismatches = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = tok.encode(text, false).unwrap();
        if got != want {
            mismatches.push(format!("{text:?}: engine {got:?} python {want:?}"));
        }
        assert_eq!(tok.decode(&got).unwrap(), text, "decode does not round-trip {text:?}");
    }
    assert!(mismatches.is_empty(), "{} mismatches:\n{}", mismatches.len(), mismatches.join("\n"));
}

#[test]
fn chat_template_renders_chatml_with_default_system_turn() {
    let Some(dir) = common::default_model() else {
        return;
    };
    let tok = TextTokenizer::load(&dir).unwrap();
    let msgs = [clover_engine::model::ChatMessage::new("user", "Hi")];
    let text = tok.render_chat(&msgs, true).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(tok.encode("<|im_start|>", false).unwrap(), vec![1]);
}
