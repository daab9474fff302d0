//! Data: dataset cards, sources yielding [`Sample`]s, and decoding them into memory.

pub mod card;
pub mod cues;
pub mod dataset;
pub mod feature_cache;
pub mod inspect;
pub mod loader;
pub mod sample;
pub mod sources;
pub mod synth;
pub mod transcript_cache;

pub use card::DatasetCard;
pub use sample::Sample;
