//! `emollama-doctor`: `emollama doctor` alone. It links no media code, so the CUDA build of it needs
//! neither FFmpeg nor oneDNN on the machine it runs on: what `just doctor-bundle` ships to GPU machines
//! that have no Rust toolchain and no network.

use std::process::ExitCode;

use clap::Parser;

#[path = "../cli/doctor.rs"]
mod doctor;

#[derive(Parser)]
#[command(name = "emollama-doctor", version, about = "Check this machine: devices, dtypes, backends, parity with PyTorch, a few training steps")]
struct Cli {
    #[command(flatten)]
    args: doctor::Args,
}

fn main() -> ExitCode {
    emollama::accel::init_process();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match cli.args.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
