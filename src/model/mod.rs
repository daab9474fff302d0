//! Models: the trainable LLaMA, the small encoders, projectors, tokenizer, prompt assembly, generation.

pub mod asr;
pub mod autograd;
pub mod build;
pub mod chat;
pub mod cnn;
pub mod emotion_llama;
pub mod encoders;
pub mod generate;
pub mod hub;
pub mod gguf;
pub mod hf_config;
pub mod init;
pub mod llama;
pub mod llm_config;
pub mod llm_load;
pub mod lora;
pub mod media_batch;
pub mod multimodal;
pub mod nn;
pub mod projector;
pub mod prompt;
pub mod shapes;
pub mod tokenizer;
pub mod vit;
pub mod wave;
pub mod weights;
