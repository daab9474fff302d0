//! Models: the trainable LLaMA, the small encoders, projectors, tokenizer, prompt assembly, generation.

pub mod build;
pub mod cnn;
pub mod generate;
pub mod init;
pub mod llama;
pub mod llm_config;
pub mod lora;
pub mod multimodal;
pub mod nn;
pub mod projector;
pub mod prompt;
pub mod tokenizer;
pub mod vit;
pub mod wave;
pub mod weights;
