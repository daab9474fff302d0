//! Data: dataset cards, sources yielding [`Sample`]s, and decoding them into memory.

pub mod card;
pub mod feature_cache;
pub mod loader;
pub mod sample;
pub mod source;
pub mod synth;

pub use card::DatasetCard;
pub use sample::Sample;
