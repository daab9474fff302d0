//! `emollama report RUN_DIR`.

use std::path::PathBuf;

use anyhow::Result;

/// Write a run directory's report: report/{loss,lr,validation}.png and report.html (runs write it
/// after each stage; this redraws it, e.g. for an interrupted run).
#[derive(clap::Args)]
pub struct Args {
    /// The run directory (holding log.jsonl, and metrics.json once the run has finished).
    run_dir: PathBuf,
}

impl Args {
    pub fn run(self) -> Result<()> {
        let files = emollama::report::write_report(&self.run_dir)?;
        for path in files.paths() {
            println!("{}", path.display());
        }
        Ok(())
    }
}
