//! What training and evaluation both feed the model: prompts built and tokenised per task and template
//! ([`batch`]), and the decoded media or cached encoder features of each sample ([`inputs`]).

pub mod batch;
pub mod inputs;
