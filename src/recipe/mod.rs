//! Recipes: the schema ([`schema`]), loading with `extends`, environment and `--set` overrides ([`load`]),
//! and errors a user can act on ([`error`]).

pub mod choices;
pub mod error;
pub mod load;
pub mod schema;
pub mod suggest;

pub use choices::{Distributed, EvalLayout, InferencePrecision, InstructionSet, Modality, ProjectorKind, RunDtype, Task, TranscriptSetting, ValidationMetric};
pub use error::RecipeError;
pub use load::{load_recipe, LoadedRecipe};
pub use schema::*;
