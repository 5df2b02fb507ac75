//! # rm-core
//!
//! The foundation every plumbline crate stands on:
//! - [`types`]: conversations, preference pairs, rankings, unpaired examples, step-labelled solutions;
//! - [`data`]: streaming, checksum-verified loaders for HH-RLHF, GSM8K, PRM800K and generic JSONL;
//! - [`tokenize`] and [`chat`]: `tokenizers`-based encoding with truncation, padding, prompt/completion
//!   masks, and chat templates (ChatML, HH transcripts);
//! - [`device`]: one parser from `auto|flex|wgpu[:N]|cuda:N|tch[:cuda:N]` to a burn
//!   [`burn::tensor::Device`];
//! - [`gguf`]: a hostile-input-safe GGUF v2/v3 reader with dequantization and tokenizer extraction;
//! - [`models`]: backbones (BERT encoder, Llama-family decoder) with weight loading.

pub use burn;
pub use tokenizers;

#[cfg(feature = "mimalloc")]
pub mod allocator;
pub mod chat;
pub mod checkpoint;
pub mod completion_logits;
pub mod data;
pub mod device;
pub mod export;
pub mod fixtures;
pub mod gguf;
pub mod logprobs;
pub mod lora;
pub mod models;
pub mod paths;
#[cfg(feature = "plot")]
pub mod plot;
pub mod policy;
pub mod recipe;
pub mod sampling;
pub mod shared_prompt;
pub mod tokenize;
pub mod train;
pub mod types;
