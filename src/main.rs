//! The `emollama` command line: parses and dispatches to one module per command (`src/cli/`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(name = "emollama", version, about = "Multimodal emotion recognition and reasoning with LLMs, end to end from raw video")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(cli::run::Args),
    Recipe(cli::recipe::Args),
    Registry(cli::registry::Args),
    Generate(cli::generate::Args),
    Merge(cli::merge::Args),
    Extract(cli::extract::Args),
    Report(cli::report::Args),
    Score(cli::score::Args),
    Eval(cli::eval::Args),
    Judge(cli::judge::Args),
    Data(cli::data::DataArgs),
    Probe(cli::probe::Args),
    Doctor(cli::doctor::Args),
    Predict(cli::predict::Args),
    Annotate(cli::annotate::Args),
    Import(cli::import::Args),
    Serve(cli::serve::Args),
}

fn main() -> ExitCode {
    emollama::accel::init_process();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let result = match cli.command {
        // Its own exit statuses: 3 when some clips failed.
        Command::Predict(a) => return a.run_with_status(),
        Command::Annotate(a) => return a.run_with_status(),
        Command::Run(a) => a.run(),
        Command::Recipe(a) => a.run(),
        Command::Registry(a) => a.run(),
        Command::Generate(a) => a.run(),
        Command::Merge(a) => a.run(),
        Command::Extract(a) => a.run(),
        Command::Report(a) => a.run(),
        Command::Score(a) => a.run(),
        Command::Eval(a) => a.run(),
        Command::Judge(a) => a.run(),
        Command::Data(a) => a.run(),
        Command::Probe(a) => a.run(),
        Command::Doctor(a) => a.run(),
        Command::Import(a) => a.run(),
        Command::Serve(a) => a.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
