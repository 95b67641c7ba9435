//! Chat templates render as transformers renders them: the engine's output against Python's
//! jinja2 configured as `apply_chat_template` configures it (`tools/chat_template_fixtures.py`).

mod common;

use clover_engine::model::{ChatMessage, ChatTemplate};
use serde_json::Value;

#[test]
fn templates_render_as_python_jinja2_renders_them() {
    let text = std::fs::read_to_string(common::fixture("chat_templates.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let messages: Vec<ChatMessage> = fixture["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    let (bos, eos) = (fixture["bos_token"].as_str().unwrap(), fixture["eos_token"].as_str().unwrap());
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        if name.starts_with("assets/") {
            let shipped = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name)).unwrap();
            assert_eq!(
                case["template"].as_str().unwrap(),
                shipped,
                "{name} changed: rerun tools/chat_template_fixtures.py"
            );
        }
        let template = ChatTemplate::new(case["template"].as_str().unwrap(), "fixture", "template");
        let add_generation_prompt = case["add_generation_prompt"].as_bool().unwrap();
        let got = template.render(&messages, add_generation_prompt, bos, eos).unwrap();
        assert_eq!(
            got,
            case["text"].as_str().unwrap(),
            "{} (add_generation_prompt {add_generation_prompt})",
            case["name"]
        );
    }
}

/// The shipped Vicuna template writes FastChat's vicuna_v1.1 prompt, worked out by hand from its
/// rules: the system prompt and a space, then "ROLE: message" with a space after a user turn and
/// `</s>` after an assistant's, and "ASSISTANT:" to prompt the answer.
#[test]
fn the_shipped_vicuna_template_writes_fastchats_prompt() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/chat-templates/vicuna.jinja");
    let template = ChatTemplate::from_file(&path).unwrap();
    let messages =
        [ChatMessage::new("user", "q1"), ChatMessage::new("assistant", "a1"), ChatMessage::new("user", "q2")];
    let system = "A chat between a curious user and an artificial intelligence assistant. The assistant gives \
                  helpful, detailed, and polite answers to the user's questions.";
    assert_eq!(
        template.render(&messages, true, "<s>", "</s>").unwrap(),
        format!("<s>{system} USER: q1 ASSISTANT: a1</s>USER: q2 ASSISTANT:")
    );
    let with_system = [ChatMessage::new("system", "Be brief."), messages[0].clone()];
    assert_eq!(template.render(&with_system, true, "<s>", "</s>").unwrap(), "<s>Be brief. USER: q1 ASSISTANT:");
}
