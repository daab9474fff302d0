//! Recipe errors: each names where the offending value came from (file and line, environment
//! variable or `--set` argument), the full key path, what was expected and, for typos, the
//! closest valid name.

use std::fmt;
use std::path::PathBuf;

/// Re-exported here because they build and locate errors; defined in [`super::load`].
pub use super::load::{find_key_line, validation_error};

/// One problem with one key of a recipe.
///
/// Displays as `recipes/x.toml:12: stage[0].lr_shedule: unknown key `lr_shedule`, did you mean
/// `lr_schedule`? (valid keys: name, tasks, ...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    /// The recipe file the offending value came from (`None` for environment variables and `--set`).
    pub file: Option<PathBuf>,
    /// Where the value came from, for display: the file path, `environment variable EMOLLAMA_X__Y`
    /// or `--set a.b=value`.
    pub origin: String,
    /// 1-based line in `file`, when it could be found.
    pub line: Option<usize>,
    /// Full key path, with array indices: `stage[1].lr_schedule`.
    pub key_path: String,
    /// What is wrong, including what was expected: "unknown key `lr_shedule`",
    /// "expected a floating point number, found string \"fast\"".
    pub message: String,
    /// The closest valid key or value, for "did you mean ...?".
    pub suggestion: Option<String>,
    /// Further help: the valid keys or values, or how to fix it.
    pub help: Option<String>,
}

impl KeyError {
    /// `file:line`, `file`, or the origin (environment variable / `--set`).
    pub fn location(&self) -> String {
        match (&self.file, self.line) {
            (Some(f), Some(l)) => format!("{}:{l}", f.display()),
            (Some(f), None) => f.display().to_string(),
            (None, _) => self.origin.clone(),
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.location())?;
        if !self.key_path.is_empty() {
            write!(f, "{}: ", self.key_path)?;
        }
        f.write_str(&self.message)?;
        if let Some(s) = &self.suggestion {
            write!(f, ", did you mean `{s}`?")?;
        }
        if let Some(h) = &self.help {
            write!(f, " ({h})")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong loading a recipe. Every message is meant to be enough to fix the
/// problem without reading code.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// A recipe file could not be read.
    #[error("cannot read recipe file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A recipe file is not valid TOML. `line` and `col` are 1-based (0 when unknown).
    #[error("{}: TOML syntax error: {message}", loc(path, *line, *col))]
    Syntax { path: PathBuf, line: usize, col: usize, message: String },
    /// `extends` names a file that does not exist.
    #[error("{}: `extends` names a file that does not exist: {}", loc(from, line.unwrap_or(0), 0), missing.display())]
    ExtendsMissing { from: PathBuf, line: Option<usize>, missing: PathBuf },
    /// A file extends itself, directly or through other files. `chain` starts and ends with the
    /// same file.
    #[error("`extends` cycle: {}", chain.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" → "))]
    ExtendsCycle { chain: Vec<PathBuf> },
    /// An `extends` entry that cannot be used: a remote base that cannot be read, a relative path
    /// leaving a remote base's root, a local path named by a remote base, a malformed pin.
    #[error("{}: `extends` entry `{entry}`: {message}", loc(from, line.unwrap_or(0), 0))]
    Extends { from: PathBuf, line: Option<usize>, entry: String, message: String },
    /// A pinned base whose content is not the pinned content.
    #[error(
        "{}: `extends` base {uri} has sha256 {actual}, but it is pinned to sha256 {pinned}: its content changed since it was pinned; review the change, then update the pin's `sha256` (or point `uri` at the pinned version)",
        loc(from, line.unwrap_or(0), 0)
    )]
    PinMismatch { from: PathBuf, line: Option<usize>, uri: String, pinned: String, actual: String },
    /// A malformed `--set` argument.
    #[error("invalid --set argument `{arg}`: {reason} (expected KEY=VALUE, e.g. --set runtime.threads=2)")]
    BadSet { arg: String, reason: String },
    /// Keys with unknown names, wrong types or invalid values; all that were found.
    #[error("{}", fmt_errors(errors))]
    Invalid { errors: Vec<KeyError> },
    /// A value that deserialised but is not acceptable (e.g. an unknown registry name); built with
    /// [`crate::recipe::load::validation_error`].
    #[error("{}: {key_path}: {message}", loc(file, line.unwrap_or(0), 0))]
    Validation { file: PathBuf, key_path: String, line: Option<usize>, message: String },
    /// The resolved recipe cannot be written as TOML.
    #[error("cannot write the recipe as TOML: {message}")]
    Serialize { message: String },
}

impl RecipeError {
    /// The key errors of an [`RecipeError::Invalid`], else an empty slice.
    pub fn key_errors(&self) -> &[KeyError] {
        match self {
            RecipeError::Invalid { errors } => errors,
            _ => &[],
        }
    }
}

fn loc(path: &std::path::Path, line: usize, col: usize) -> String {
    match (line, col) {
        (0, _) => path.display().to_string(),
        (l, 0) => format!("{}:{l}", path.display()),
        (l, c) => format!("{}:{l}:{c}", path.display()),
    }
}

fn fmt_errors(errors: &[KeyError]) -> String {
    match errors {
        [] => "invalid recipe".to_string(),
        [one] => one.to_string(),
        many => {
            let mut s = format!("{} errors in recipe:", many.len());
            for e in many {
                s.push_str("\n  ");
                s.push_str(&e.to_string());
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_error_display() {
        let e = KeyError {
            file: Some(PathBuf::from("recipes/x.toml")),
            origin: "recipes/x.toml".into(),
            line: Some(12),
            key_path: "stage[0].lr_shedule".into(),
            message: "unknown key `lr_shedule`".into(),
            suggestion: Some("lr_schedule".into()),
            help: Some("valid keys: name, tasks".into()),
        };
        assert_eq!(
            e.to_string(),
            "recipes/x.toml:12: stage[0].lr_shedule: unknown key `lr_shedule`, did you mean `lr_schedule`? (valid keys: name, tasks)"
        );
        let env = KeyError {
            file: None,
            origin: "environment variable EMOLLAMA_SEED".into(),
            line: None,
            key_path: "seed".into(),
            message: "expected a non-negative integer, found string \"x\"".into(),
            suggestion: None,
            help: None,
        };
        assert_eq!(
            env.to_string(),
            "environment variable EMOLLAMA_SEED: seed: expected a non-negative integer, found string \"x\""
        );
        let all = RecipeError::Invalid { errors: vec![e, env] };
        assert!(all.to_string().starts_with("2 errors in recipe:\n  recipes/x.toml:12: "));
    }
}
