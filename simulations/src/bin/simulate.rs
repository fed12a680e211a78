//! Runs simulation scenarios over many seeds, or replays one seed.
//!
//! ```text
//! simulate --seeds 100                         every scenario, seeds 0..100
//! simulate --scenario partition --seeds 20 --first 1000
//! simulate --scenario leader-crash --seed 42   replay one seed (PORTICO_SIM_LOG=info for logs)
//! ```

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use portico_simulations::{Outcome, SCENARIOS, Scenario, scenario};

#[derive(Parser)]
#[command(about = "Run Portico's simulation scenarios on turmoil")]
struct Args {
    /// A scenario name (see --list); every scenario when absent.
    #[arg(long)]
    scenario: Option<String>,
    /// Run this many seeds, from --first.
    #[arg(long, default_value_t = 10, conflicts_with = "seed")]
    seeds: u64,
    /// The first seed of --seeds.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Replay exactly this seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Run each seed this many times and report whether the runs agree (a determinism check).
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Keep going after a failing seed.
    #[arg(long)]
    keep_going: bool,
    /// List the scenarios.
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Ok(filter) = std::env::var("PORTICO_SIM_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    if args.list {
        for s in SCENARIOS {
            println!("{:<14} {}", s.name, s.about);
        }
        return ExitCode::SUCCESS;
    }
    let scenarios: Vec<Scenario> = match &args.scenario {
        None => SCENARIOS.to_vec(),
        Some(name) => match scenario(name) {
            Some(s) => vec![s],
            None => {
                eprintln!("no scenario {name:?}; --list shows them");
                return ExitCode::FAILURE;
            }
        },
    };
    let seeds: Vec<u64> = match args.seed {
        Some(seed) => vec![seed],
        None => (args.first..args.first.saturating_add(args.seeds)).collect(),
    };
    let mut failed = 0;
    for s in &scenarios {
        for &seed in &seeds {
            match run_seed(s, seed, args.repeat.max(1), args.seed.is_some()) {
                Ok(()) => {}
                Err(()) => {
                    failed += 1;
                    if !args.keep_going {
                        return ExitCode::FAILURE;
                    }
                }
            }
        }
    }
    if failed > 0 {
        say(format!("{failed} seed(s) failed"));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Runs one seed `repeat` times; prints its summary (and with `details`, its events and each
/// edge's revisions), and whether repeated runs agreed.
fn run_seed(s: &Scenario, seed: u64, repeat: u32, details: bool) -> Result<(), ()> {
    let mut first: Option<Outcome> = None;
    for _ in 0..repeat {
        let started = Instant::now();
        let result = (s.run)(seed);
        let wall = started.elapsed().as_secs_f64();
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(e) => {
                say(format!("FAILED {e} [{wall:.1} s wall]"));
                return Err(());
            }
        };
        say(format!("{} [{wall:.1} s wall]", outcome.summary()));
        match &first {
            None => {
                if details {
                    for (at, event) in &outcome.events {
                        say(format!("  {:>9.3} s  {event}", at.as_secs_f64()));
                    }
                    for edge in &outcome.edges {
                        say(format!(
                            "  edge {} served revisions {:?}",
                            edge.id, edge.revisions
                        ));
                    }
                }
                first = Some(outcome);
            }
            Some(first) if first.verdict() != outcome.verdict() => {
                say(format!(
                    "  the verdict differs from the first run's: {:?} then {:?}",
                    first.verdict(),
                    outcome.verdict()
                ));
                return Err(());
            }
            Some(first) if first.trace() != outcome.trace() => {
                say("  same verdict, but the trace differs from the first run's".to_string());
            }
            Some(first) if first != &outcome => {
                say("  same trace, but event times differ from the first run's".to_string());
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Prints a line; a closed stdout (`| head`) ends the program quietly.
fn say(line: String) {
    use std::io::Write;
    if writeln!(std::io::stdout(), "{line}").is_err() {
        std::process::exit(0);
    }
}
