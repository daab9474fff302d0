//! Training: stages, batches, optimiser with parameter groups, schedules, checkpoints.

pub mod batch;
pub mod optim;
pub mod schedule;
pub mod trainer;
