//! Ray's "parallel fibonacci" tutorial: the same CPU-bound function run K times one after the
//! other on the driver, then K times as remote tasks in parallel (K = the cluster's CPUs).
//!
//! `cargo run --release --example fibonacci`

use std::time::{Duration, Instant};

/// Length of each sequence.
const SEQUENCE_SIZE: usize = 4_000_000;
/// The values are kept modulo this prime so they fit in a `u64`.
const MODULUS: u64 = 1_000_000_007;

/// Builds the fibonacci sequence of `sequence_size` terms (mod [`MODULUS`]) the way the
/// tutorial does, one term at a time in a growing list, and returns its length and last term.
fn fibonacci_local(sequence_size: usize) -> (usize, u64) {
    let mut fibonacci: Vec<u64> = Vec::new();
    for i in 0..sequence_size {
        if i < 2 {
            fibonacci.push(i as u64);
            continue;
        }
        fibonacci.push((fibonacci[i - 1] + fibonacci[i - 2]) % MODULUS);
    }
    (fibonacci.len(), fibonacci.last().copied().unwrap_or(0))
}

/// The same function as a task.
#[mobula::remote]
fn fibonacci_distributed(sequence_size: usize) -> (usize, u64) {
    fibonacci_local(sequence_size)
}

fn run_local(sequence_size: usize, runs: usize) -> (Vec<(usize, u64)>, Duration) {
    let start = Instant::now();
    let results = (0..runs).map(|_| fibonacci_local(sequence_size)).collect();
    (results, start.elapsed())
}

fn run_remote(
    rt: &mobula::Runtime,
    sequence_size: usize,
    runs: usize,
) -> mobula::Result<(Vec<(usize, u64)>, Duration)> {
    let start = Instant::now();
    let refs: Vec<_> = (0..runs)
        .map(|_| fibonacci_distributed::remote(rt, sequence_size))
        .collect();
    let results = rt.get_all(&refs)?;
    Ok((results, start.elapsed()))
}

#[mobula::main]
fn main() -> mobula::Result<()> {
    let rt = mobula::init()?;
    let cpus = rt.cluster_resources()?.get("CPU").copied().unwrap_or(1.0);
    let runs = (cpus as usize).max(1);
    println!("{runs} runs of fibonacci({SEQUENCE_SIZE}) (one per CPU)");

    let (local, local_time) = run_local(SEQUENCE_SIZE, runs);
    println!(
        "local:  {:>8.1} ms  (length {}, last term mod 1e9+7 = {})",
        local_time.as_secs_f64() * 1e3,
        local[0].0,
        local[0].1
    );

    let (remote, remote_time) = run_remote(&rt, SEQUENCE_SIZE, runs)?;
    println!(
        "remote: {:>8.1} ms  (length {}, last term mod 1e9+7 = {})",
        remote_time.as_secs_f64() * 1e3,
        remote[0].0,
        remote[0].1
    );

    assert_eq!(local, remote, "remote runs must compute the same sequences");
    println!(
        "speedup: {:.2}x on {runs} CPUs",
        local_time.as_secs_f64() / remote_time.as_secs_f64()
    );

    mobula::shutdown();
    Ok(())
}
