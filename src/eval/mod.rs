//! Evaluation: label extraction from generated text, and classification metrics.

pub mod extract;
pub mod judge;
pub mod metrics;
pub mod openset;
pub mod score;
pub mod wheel;
pub mod runner;
