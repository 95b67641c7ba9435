//! What a model folder's tokenizer files mean, read as transformers reads them: where the chat
//! template is, and when raw text gets a BOS.

mod common;

use clover_engine::model::{ChatMessage, TextTokenizer};
use serde_json::Value;

/// A word-level tokenizer.json small enough to write inline: the template tests need a folder
/// the tokenizer loads from, not a real vocabulary.
fn tiny_tokenizer_folder(name: &str, tokenizer_config: &Value) -> std::path::PathBuf {
    tokenizer_folder(name, tokenizer_config, Value::Null)
}

fn tokenizer_folder(name: &str, tokenizer_config: &Value, post_processor: Value) -> std::path::PathBuf {
    let dir = common::temp_dir(name);
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "normalizer": null,
        "added_tokens": [{"id": 2, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": true}],
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": post_processor, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "hi": 1, "<s>": 2}, "unk_token": "[UNK]"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), tokenizer_config.to_string()).unwrap();
    dir
}

#[test]
fn the_template_is_found_where_transformers_looks() {
    let hi = [ChatMessage::new("user", "hi")];
    // A list of named templates: the one named "default".
    let listed = serde_json::json!({"chat_template": [
        {"name": "tool_use", "template": "tools {{ messages[0].content }}"},
        {"name": "default", "template": "default {{ messages[0].content }}"}
    ]});
    let dir = tiny_tokenizer_folder("template-list", &listed);
    assert_eq!(TextTokenizer::load(&dir).unwrap().render_chat(&hi, false).unwrap(), "default hi");
    // chat_template.jinja beside it wins over tokenizer_config.json.
    std::fs::write(dir.join("chat_template.jinja"), "file {{ messages[0].content }}\n").unwrap();
    assert_eq!(TextTokenizer::load(&dir).unwrap().render_chat(&hi, false).unwrap(), "file hi");
    // A list without a default, and a template that is not a string, are named.
    for (config, needle) in [
        (serde_json::json!({"chat_template": [{"name": "tool_use", "template": "x"}]}), "default"),
        (serde_json::json!({"chat_template": 7}), "template string"),
    ] {
        let dir = tiny_tokenizer_folder("template-bad", &config);
        let err = TextTokenizer::load(&dir).err().expect("refused").to_string();
        assert!(
            err.contains("tokenizer_config.json") && err.contains("chat_template") && err.contains(needle),
            "{err}"
        );
    }
    // --chat-template stands in for a folder template that cannot be used (the folder's is then
    // not read at all).
    let unusable = tiny_tokenizer_folder("template-unusable", &serde_json::json!({"chat_template": 7}));
    let file = unusable.join("mine.jinja");
    std::fs::write(&file, "mine {{ messages[0].content }}").unwrap();
    let tok = TextTokenizer::load_with_template(&unusable, Some(&file)).unwrap();
    assert_eq!(tok.render_chat(&hi, false).unwrap(), "mine hi");
    // A template that fails to render names its file.
    let dir =
        tiny_tokenizer_folder("template-raises", &serde_json::json!({"chat_template": "{{ raise_exception('no') }}"}));
    let err = TextTokenizer::load(&dir).unwrap().render_chat(&hi, false).unwrap_err().to_string();
    assert!(err.contains("tokenizer_config.json") && err.contains("no"), "{err}");
}

/// Raw text (`generate --prompt`, `score`) is encoded as `tokenizer(text)`: a BOS from the
/// post-processor (Llama 3's way) or from `add_bos_token` (Llama 2's), never twice; chat templates
/// write their own, so rendered text gets none added.
#[test]
fn raw_text_gets_one_bos_from_either_place() {
    let adds_bos = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [2], "tokens": ["<s>"]}}
    });
    let flag = |on: bool| serde_json::json!({"bos_token": "<s>", "add_bos_token": on});
    for (name, config, post, want) in [
        ("bos-none", flag(false), Value::Null, vec![1, 1]),
        ("bos-flag", flag(true), Value::Null, vec![2, 1, 1]),
        ("bos-post", flag(false), adds_bos.clone(), vec![2, 1, 1]),
        ("bos-both", flag(true), adds_bos, vec![2, 1, 1]),
    ] {
        let tok = TextTokenizer::load(&tokenizer_folder(name, &config, post)).unwrap();
        assert_eq!(tok.encode("hi hi", true).unwrap(), want, "{name}");
        assert_eq!(tok.encode("hi hi", false).unwrap(), vec![1, 1], "{name}");
    }
}
