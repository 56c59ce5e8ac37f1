//! Task graphs built from ObjectRefs: a DAG (load -> two transforms in parallel -> combine ->
//! a final task that receives a list of refs nested in its argument) and a chain of tasks each
//! taking the previous one's result. Every result is checked against a local computation.
//!
//! `cargo run --release --example dependencies`

use std::time::Instant;

const N: u64 = 100_000;
const CHAIN_LENGTH: u64 = 20;
const MODULUS: u64 = 1_000_000_007;

/// The source of the DAG: the numbers 1..=n.
#[mobula::remote]
fn load(n: u64) -> Vec<u64> {
    (1..=n).collect()
}

/// Sum of squares, mod 1e9+7.
#[mobula::remote]
fn sum_of_squares(data: Vec<u64>) -> u64 {
    data.iter()
        .fold(0, |acc, &x| (acc + x * x % MODULUS) % MODULUS)
}

/// Sum of the multiples of 3.
#[mobula::remote]
fn sum_of_multiples_of_3(data: Vec<u64>) -> u64 {
    data.iter().filter(|&&x| x.is_multiple_of(3)).sum()
}

/// Joins the two branches.
#[mobula::remote]
fn combine(a: u64, b: u64) -> u64 {
    (a + b) % MODULUS
}

/// Receives refs nested in its argument: they are not resolved before the task starts (unlike
/// top-level ref arguments), so the task fetches them itself.
#[mobula::remote]
fn report(label: String, parts: Vec<mobula::ObjectRef<u64>>) -> Result<String, mobula::Error> {
    let rt = mobula::runtime()?;
    let values = rt.get_all(&parts)?;
    let total = values.iter().fold(0, |acc, v| (acc + v) % MODULUS);
    Ok(format!("{label}: parts {values:?}, total {total}"))
}

/// One link of the chain.
#[mobula::remote]
fn step(previous: u64, k: u64) -> u64 {
    (previous * 31 + k * k) % MODULUS
}

#[mobula::main]
fn main() -> mobula::Result<()> {
    let start = Instant::now();
    let rt = mobula::init()?;

    // The DAG. Nothing blocks until the first `get`: each task starts when its inputs exist.
    let data = load::remote(&rt, N);
    let squares = sum_of_squares::remote(&rt, &data);
    let multiples = sum_of_multiples_of_3::remote(&rt, &data);
    let combined = combine::remote(&rt, &squares, &multiples);
    let summary = report::remote(
        &rt,
        "dag".to_string(),
        vec![squares.clone(), multiples.clone(), combined.clone()],
    );

    // The same computation locally.
    let local_data: Vec<u64> = (1..=N).collect();
    let local_squares = local_data
        .iter()
        .fold(0, |acc, &x| (acc + x * x % MODULUS) % MODULUS);
    let local_multiples: u64 = local_data.iter().filter(|&&x| x.is_multiple_of(3)).sum();
    let local_combined = (local_squares + local_multiples) % MODULUS;

    let (sq, mu, co) = (rt.get(&squares)?, rt.get(&multiples)?, rt.get(&combined)?);
    println!("load({N}) -> sum_of_squares = {sq}, sum_of_multiples_of_3 = {mu}");
    println!("combine -> {co}");
    assert_eq!(
        (sq, mu, co),
        (local_squares, local_multiples, local_combined)
    );
    let summary = rt.get(&summary)?;
    println!("report -> {summary}");
    let local_total = (local_squares + local_multiples + local_combined) % MODULUS;
    assert_eq!(
        summary,
        format!(
            "dag: parts {:?}, total {local_total}",
            vec![local_squares, local_multiples, local_combined]
        )
    );

    // The chain: each link depends on the previous one.
    let mut link = rt.put(&1u64)?;
    for k in 1..=CHAIN_LENGTH {
        link = step::remote(&rt, &link, k);
    }
    let chain_result = rt.get(&link)?;
    let local_chain = (1..=CHAIN_LENGTH).fold(1u64, |prev, k| (prev * 31 + k * k) % MODULUS);
    println!("chain of {CHAIN_LENGTH} steps -> {chain_result}");
    assert_eq!(chain_result, local_chain);

    // Refs from both graphs can meet in one more task.
    let last = combine::remote(&rt, &link, &combined);
    let last_value = rt.get(&last)?;
    println!("combine(chain, dag) -> {last_value}");
    assert_eq!(last_value, (local_chain + local_combined) % MODULUS);

    mobula::shutdown();
    println!(
        "all results match the local computation ({:.1} ms)",
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
