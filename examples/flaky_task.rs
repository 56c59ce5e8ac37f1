//! Ray's fault-tolerance tutorial for application errors: a task that fails about half the
//! time (by returning an `Err` or by panicking). With `max_retries` and `retry_exceptions`
//! mobula reruns it until it succeeds; without retries the failures reach the caller as
//! `mobula::Error`s.
//!
//! `cargo run --release --example flaky_task`

use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

const NUM_TASKS: u32 = 20;

/// A fresh random number in [0, 1), without any shared state: the time in nanoseconds hashed
/// with std's randomly keyed `RandomState` (new keys for every call) and the task's index.
fn random_unit(index: u32) -> f64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(nanos);
    h.write_u32(index);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Succeeds with probability 1/2; otherwise returns an error (1/4) or panics (1/4).
#[mobula::remote]
fn flaky(index: u32) -> Result<u32, String> {
    // A little work, so the tasks overlap.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let draw = random_unit(index);
    if draw < 0.25 {
        return Err(format!("task {index}: unlucky draw {draw:.3}"));
    }
    if draw < 0.5 {
        // A panic. `panic!` behaves the same, but its hook prints a message (and, with
        // RUST_BACKTRACE set, a backtrace) on every attempt; `resume_unwind` unwinds quietly.
        std::panic::resume_unwind(Box::new(format!(
            "task {index}: very unlucky draw {draw:.3}"
        )));
    }
    Ok(index * index)
}

#[mobula::main]
fn main() -> mobula::Result<()> {
    let rt = mobula::init()?;

    // With retries: an error or a panic reruns the task, up to 10 times.
    let retrying = mobula::TaskOptions::new()
        .max_retries(10)
        .retry_exceptions(true);
    let refs: Vec<_> = (0..NUM_TASKS)
        .map(|i| flaky::options(retrying.clone()).remote(&rt, i))
        .collect();
    let mut succeeded = 0;
    for (i, r) in refs.iter().enumerate() {
        match rt.get(r) {
            Ok(v) => {
                assert_eq!(v, (i * i) as u32);
                succeeded += 1;
            }
            // 11 failures in a row: chance 1/2048 per task.
            Err(e) => println!("  (still failed after 10 retries: {e})"),
        }
    }
    println!("with max_retries(10).retry_exceptions(true): {succeeded}/{NUM_TASKS} succeeded");

    // Without retries of user errors (the default), about half of them fail.
    let refs: Vec<_> = (0..NUM_TASKS).map(|i| flaky::remote(&rt, i)).collect();
    let mut failures = Vec::new();
    for r in &refs {
        if let Err(e) = rt.get(r) {
            failures.push(e);
        }
    }
    println!(
        "without retries: {}/{NUM_TASKS} succeeded, {} failed:",
        NUM_TASKS as usize - failures.len(),
        failures.len()
    );
    for e in &failures {
        assert!(matches!(
            e,
            mobula::Error::TaskFailed { .. } | mobula::Error::TaskPanicked { .. }
        ));
        println!("  {e}");
    }

    // `get_all` stops at the first failure.
    if let Err(e) = rt.get_all(&refs) {
        println!("get_all of those: {e}");
    }

    mobula::shutdown();
    Ok(())
}
