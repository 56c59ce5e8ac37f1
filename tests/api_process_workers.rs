//! The same API with worker processes: tasks, nested submissions from a worker, errors and
//! panics, actors (sync and async), refs passed between processes, cancel with force.

mod common;

use std::time::Duration;

use common::{Gate, HANG, gated, processes, start};
use mobula::{ActorOptions, Error, ObjectRef, TaskOptions};

#[mobula::remote]
fn whoami() -> u32 {
    std::process::id()
}

#[mobula::remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[mobula::remote]
fn fan_out(n: u64) -> mobula::Result<u64> {
    let rt = mobula::runtime()?;
    let kids: Vec<_> = (0..n).map(|i| add::remote(&rt, i, 1)).collect();
    let stored = rt.put(&rt.get_all(&kids)?)?;
    let sum = rt.get(&stored)?.iter().sum();
    Ok(sum)
}

#[mobula::remote]
fn make_ref(v: u64) -> mobula::Result<ObjectRef<u64>> {
    mobula::runtime()?.put(&v)
}

#[mobula::remote]
fn read_ref(r: Vec<ObjectRef<u64>>) -> mobula::Result<u64> {
    Ok(mobula::runtime()?.get_all(&r)?.iter().sum())
}

#[mobula::remote]
fn fails() -> Result<u64, String> {
    Err("worker says no".to_string())
}

#[mobula::remote]
fn panics() -> u64 {
    std::panic::resume_unwind(Box::new("worker panic".to_string()))
}

#[mobula::actor]
pub struct Acc {
    total: u64,
}

#[mobula::actor]
impl Acc {
    pub fn new() -> Self {
        Acc { total: 0 }
    }

    pub fn add(&mut self, v: u64) -> u64 {
        self.total += v;
        self.total
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    pub async fn add_later(&mut self, v: u64) -> u64 {
        tokio::task::yield_now().await;
        self.total += v;
        self.total
    }
}

#[test]
fn tasks_run_in_other_processes() {
    let rt = start(processes(2.0));
    let pids: Vec<u32> = rt
        .get_all(&(0..8).map(|_| whoami::remote(&rt)).collect::<Vec<_>>())
        .expect("pids");
    assert!(pids.iter().all(|p| *p != std::process::id()), "{pids:?}");
    let chain = add::remote(&rt, add::remote(&rt, 1, 2), 3);
    assert_eq!(rt.get_timeout(&chain, Some(HANG)).expect("chain"), 6);
}

#[test]
fn workers_submit_put_and_get() {
    let rt = start(processes(2.0));
    // Each parent blocks in get on its children: the CPUs of blocked workers are lent out.
    let parents: Vec<_> = (0..4).map(|_| fan_out::remote(&rt, 10)).collect();
    for p in &parents {
        assert_eq!(rt.get_timeout(p, Some(HANG)).expect("fan out"), 55);
    }
    // A ref made in one worker, returned nested, read by another.
    let made: Vec<ObjectRef<u64>> = (1..=3)
        .map(|i| {
            rt.get_timeout(&make_ref::remote(&rt, i), Some(HANG))
                .expect("ref")
        })
        .collect();
    assert_eq!(rt.get_all(&made).expect("driver reads"), vec![1, 2, 3]);
    assert_eq!(
        rt.get_timeout(&read_ref::remote(&rt, made), Some(HANG))
            .expect("worker reads"),
        6
    );
}

#[test]
fn errors_and_panics_in_workers_are_task_errors() {
    let rt = start(processes(1.0));
    assert!(matches!(rt.get_timeout(&fails::remote(&rt), Some(HANG)),
        Err(Error::TaskFailed { message, .. }) if message == "worker says no"));
    assert!(matches!(rt.get_timeout(&panics::remote(&rt), Some(HANG)),
        Err(Error::TaskPanicked { message, .. }) if message == "worker panic"));
    assert_eq!(
        rt.get_timeout(&add::remote(&rt, 2, 2), Some(HANG))
            .expect("still serving"),
        4
    );
}

#[test]
fn actors_live_in_their_own_process() {
    let rt = start(processes(2.0));
    let a = Acc::remote(&rt).expect("create");
    let refs: Vec<_> = (1..=100).map(|i| a.add(i)).collect();
    assert_eq!(
        *rt.get_all(&refs).expect("adds").last().expect("last"),
        5050
    );
    let pid = rt.get_timeout(&a.pid(), Some(HANG)).expect("pid");
    assert_ne!(pid, std::process::id());
    assert_eq!(
        rt.get_timeout(&a.add_later(1), Some(HANG)).expect("async"),
        5051
    );
    // Named lookup works across processes too.
    let named = Acc::options(ActorOptions::new().name("acc"))
        .remote(&rt)
        .expect("named");
    rt.get_timeout(&named.add(7), Some(HANG)).expect("add");
    let found = rt.get_actor::<Acc>("acc", None).expect("found");
    assert_eq!(
        rt.get_timeout(&found.add(0), Some(HANG))
            .expect("same actor"),
        7
    );
}

#[test]
fn force_cancel_kills_the_worker_and_is_not_retried() {
    let rt = start(processes(1.0));
    let gate = Gate::remote(&rt).expect("gate");
    let held = gated::options(TaskOptions::new().max_retries(3)).remote(&rt, gate.clone(), 1);
    // Wait until it is running (the gate's waiter count is not observable: use wait).
    let (ready, _) = rt
        .wait(
            std::slice::from_ref(&held),
            1,
            Some(Duration::from_millis(300)),
        )
        .expect("wait");
    assert!(ready.is_empty());
    rt.cancel_force(&held).expect("cancel");
    assert!(matches!(
        rt.get_timeout(&held, Some(HANG)),
        Err(Error::Cancelled { .. })
    ));
    rt.get(&gate.open()).expect("open");
    assert_eq!(
        rt.get_timeout(&add::remote(&rt, 1, 1), Some(HANG))
            .expect("a new worker runs"),
        2
    );
}
