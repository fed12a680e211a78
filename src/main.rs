//! The `portico` binary: command-line glue only. The edge lives in `portico-node`, the model in
//! `portico-proto`.

mod admin_client;
mod cli;
mod commands;
mod control;
mod dev;
mod echo;
mod edge;
mod fleet;
mod synced_edge;

use clap::Parser;

// The edge allocates and frees small buffers on every request from one thread per core;
// mimalloc's thread-local free lists do that in fewer instructions than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // quinn and rcgen pull in ring, rustls may pull in aws-lc-rs: pick one for the process
    // before anything builds a TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = cli::Cli::parse();
    init_tracing(&cli.log_format);
    let result = match cli.command {
        cli::Command::Edge(args) => match args.action {
            Some(cli::EdgeAction::Remove(args)) => fleet::remove(args),
            None => edge::run(args),
        },
        cli::Command::Dev(args) => dev::run(args),
        cli::Command::Control(c) => control::run(c),
        cli::Command::Apply(args) => commands::apply(args),
        cli::Command::Get(args) => commands::get(args),
        cli::Command::Delete(args) => commands::delete(args),
        cli::Command::Deploy(args) => commands::deploy(args),
        cli::Command::Cluster(c) => commands::cluster(c),
        cli::Command::Token(c) => commands::token(c),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: &cli::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PORTICO_LOG")
        // openraft narrates every vote and replication step at INFO.
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        cli::LogFormat::Json => builder.json().flatten_event(true).init(),
        cli::LogFormat::Text => builder.init(),
    }
}
