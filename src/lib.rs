//! emollama: multimodal emotion recognition and reasoning with LLMs, end to end from raw video.
//!
//! Data flow: dataset card → [`data::source`] → samples → [`media`] decode → encoders → projectors →
//! LLaMA (input embeddings with spliced multimodal tokens) → loss (train) | text → label ([`eval`]).

pub mod annotate;
pub mod data;
pub mod device;
pub mod dist;
pub mod doctor;
pub mod accel;
pub mod eval;
pub mod extract;
pub mod feed;
pub mod media;
pub mod model;
pub mod plan;
pub mod predict;
pub mod progress;
pub mod recipe;
pub mod registry;
pub mod report;
pub mod run;
pub mod serve;
pub mod storage;
pub mod train;
pub mod validate;
#[cfg(test)]
mod test_utils;

pub use recipe::RecipeError;

/// The candle version this build uses (recorded in each run's `run_info.json`; a test keeps it equal
/// to Cargo.lock's).
pub const CANDLE_VERSION: &str = "0.11.1";

#[cfg(test)]
mod tests {
    #[test]
    fn candle_version_matches_the_lock_file() {
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
        let entry = lock.split("[[package]]").find(|p| p.contains("name = \"candle-core\"")).unwrap();
        assert!(entry.contains(&format!("version = \"{}\"", super::CANDLE_VERSION)), "{entry}");
    }
}
