//! The base model: config, weights, KV cache, forward passes, tokenizer and chat template.

pub mod chat_template;
pub mod config;
pub mod kv_cache;
pub mod layer;
pub mod llama;
pub mod logits;
pub mod random;
pub mod tokenizer;

pub use chat_template::ChatTemplate;
pub use config::ModelConfig;
pub use kv_cache::KvCache;
pub use llama::{ForwardOutput, Llama, LogitRows};
pub use logits::Logits;
pub use tokenizer::{ChatMessage, TextTokenizer};
