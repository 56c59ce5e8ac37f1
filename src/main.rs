//! The `mobula` command line.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "mobula",
    version,
    about = "A Ray-style distributed computing framework for Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Thread,
    Process,
    Both,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the workloads of `ray microbenchmark`, printed in Ray's format.
    Microbenchmark {
        /// Only benchmarks whose name contains this (repeatable).
        #[arg(long = "filter")]
        filters: Vec<String>,
        /// Worker mode(s) to measure.
        #[arg(long, value_enum, default_value = "both")]
        mode: Mode,
        /// Seconds of each timed round (Ray: 2).
        #[arg(long, default_value_t = 2.0)]
        round_secs: f64,
        /// Timed rounds (Ray: 4).
        #[arg(long, default_value_t = 4)]
        rounds: usize,
        /// Warm-up seconds (Ray: 1).
        #[arg(long, default_value_t = 1.0)]
        warmup_secs: f64,
    },
}

fn main() -> ExitCode {
    mobula::worker_entry();
    let cli = Cli::parse();
    match cli.command {
        Command::Microbenchmark {
            filters,
            mode,
            round_secs,
            rounds,
            warmup_secs,
        } => {
            let cfg = mobula::bench::BenchConfig {
                warmup: Duration::from_secs_f64(warmup_secs),
                round: Duration::from_secs_f64(round_secs),
                rounds,
                filters,
                modes: match mode {
                    Mode::Thread => vec![mobula::WorkerMode::Thread],
                    Mode::Process => vec![mobula::WorkerMode::Process],
                    Mode::Both => vec![mobula::WorkerMode::Thread, mobula::WorkerMode::Process],
                },
            };
            let res = mobula::bench::run(&cfg, &mut |r| println!("{r}"));
            match res {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mobula microbenchmark: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
