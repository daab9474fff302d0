//! Training: stages, batches, optimiser with parameter groups, schedules, checkpoints.

pub mod checkpoint;
pub mod optim;
pub mod sampler;
pub mod schedule;
pub mod trainer;
