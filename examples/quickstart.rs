//! The README's first command: a few tasks, an actor, put/get, on the embedded local cluster.
//!
//! `cargo run --release --example quickstart`

use std::time::Instant;

#[mobula::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[mobula::remote]
fn sum(values: Vec<u64>) -> u64 {
    values.iter().sum()
}

#[mobula::actor]
struct Counter {
    count: u64,
}

#[mobula::actor]
impl Counter {
    pub fn new(start: u64) -> Self {
        Counter { count: start }
    }

    pub fn incr(&mut self, by: u64) -> u64 {
        self.count += by;
        self.count
    }

    pub fn get(&self) -> u64 {
        self.count
    }
}

#[mobula::main]
fn main() -> mobula::Result<()> {
    let start = Instant::now();
    let rt = mobula::init()?;
    println!(
        "mobula runtime up: {} CPUs",
        rt.cluster_resources()?.get("CPU").copied().unwrap_or(0.0)
    );

    // Tasks run in parallel; their results come back as typed ObjectRefs.
    let squares: Vec<_> = (1..=10).map(|i| square::remote(&rt, i)).collect();
    println!("squares of 1..=10: {:?}", rt.get_all(&squares)?);

    // An ObjectRef is a valid argument: `total` runs once all squares exist.
    let values = rt.put(&rt.get_all(&squares)?)?;
    let total = sum::remote(&rt, &values);
    println!("sum of squares: {}", rt.get(&total)?);

    // An actor keeps state between calls; calls from one caller run in order.
    let counter = Counter::remote(&rt, 100)?;
    let increments: Vec<_> = (1..=5).map(|i| counter.incr(i)).collect();
    println!(
        "counter after each increment: {:?}",
        rt.get_all(&increments)?
    );
    println!("counter value: {}", rt.get(&counter.get())?);

    // put / get of a plain value.
    let greeting = rt.put(&"hello from the object store".to_string())?;
    println!("{}", rt.get(&greeting)?);

    mobula::shutdown();
    println!("done in {:.1} ms", start.elapsed().as_secs_f64() * 1e3);
    Ok(())
}
