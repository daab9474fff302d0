//! emollama: multimodal emotion recognition and reasoning with LLMs, end to end from raw video.
//!
//! Data flow: dataset card → [`data::source`] → samples → [`media`] decode → encoders → projectors →
//! LLaMA (input embeddings with spliced multimodal tokens) → loss (train) | text → label ([`eval`]).

pub mod data;
pub mod eval;
pub mod extract;
pub mod media;
pub mod model;
pub mod progress;
pub mod recipe;
pub mod registry;
pub mod run;
pub mod train;
pub mod validate;

pub use recipe::RecipeError;
