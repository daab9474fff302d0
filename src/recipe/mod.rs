//! Recipes: the schema ([`schema`]), loading with `extends` (local or remote bases, [`remote`]),
//! environment and `--set` overrides ([`load`]), locks ([`lock`]), `recipe diff` ([`diff`]) and errors a
//! user can act on ([`error`]).

pub mod choices;
pub mod diff;
pub mod error;
pub mod load;
pub mod lock;
pub mod remote;
pub mod schema;
pub mod suggest;

pub use choices::{Distributed, EvalLayout, Family, InferencePrecision, InstructionSet, Modality, ProjectorKind, PromptTurn, RunDtype, Task, TranscriptSetting, ValidationMetric};
pub use error::RecipeError;
pub use load::{load_recipe, FileRecord, LoadedRecipe};
pub use schema::*;
