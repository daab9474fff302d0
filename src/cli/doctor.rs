//! `emollama doctor`: devices, dtypes and backends of this machine, and the numerics on one device. Also
//! the whole of the `emollama-doctor` binary (src/bin/emollama-doctor.rs), so it uses nothing else of `cli`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// Check this machine: devices, dtypes, backends, parity with PyTorch, a few training steps.
#[derive(clap::Args)]
pub struct Args {
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The parity fixtures: the repository's `tests/fixtures`, or a doctor bundle's `fixtures/` (default:
    /// `$EMOLLAMA_FIXTURES`, then `fixtures/` beside the binary, then `tests/fixtures`).
    #[arg(long)]
    fixtures: Option<PathBuf>,
    /// Training steps of the tiny quick-start model.
    #[arg(long, default_value_t = 12)]
    steps: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

impl Args {
    pub fn run(self) -> Result<()> {
        let opts = emollama::doctor::Options { device: self.device, fixtures: self.fixtures, train_steps: self.steps };
        let report = emollama::doctor::run(&opts)?;
        let text = if self.json { format!("{}\n", serde_json::to_string_pretty(&report)?) } else { emollama::doctor::render(&report) };
        std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()).context("writing the report")?;
        if !report.passed {
            bail!("{} check(s) failed on {}", report.checks.iter().filter(|c| !c.pass).count(), report.device);
        }
        Ok(())
    }
}
