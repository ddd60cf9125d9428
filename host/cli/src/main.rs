//! `kiln`: the command-line front end of the Kiln inference host.

mod bench;
mod catalog;
mod cli;
mod inspect;
mod perplexity;

/// The longest `--sampler-deadline-ms` accepted.
pub const MAX_SAMPLER_DEADLINE_MS: u64 = kiln_runtime::sampler::MAX_DEADLINE_MS;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    // The daemon logs each request by default; the one-shot commands only warnings.
    let serving = matches!(args.command, cli::Command::Serve(_));
    let filter = match args.verbose {
        0 if serving => "info",
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let env = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt()
        .with_env_filter(env)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = cli::dispatch(args) {
        // One readable line: the error and its causes.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
