//! Tasks: values, dependencies (top-level and nested), async tasks, errors and their
//! propagation, retries, infeasible requests, wait / timeout / cancel, nested parallelism.

mod common;

use std::time::Duration;

use common::{Gate, HANG, gated, start, threads};
use mobula::{Error, ObjectRef, TaskOptions};

#[mobula::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[mobula::remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[mobula::remote]
fn delayed(v: u64, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    v
}

/// Sums the refs nested in its argument; fails unless all were ready before it started.
#[mobula::remote]
fn sum_nested(refs: Vec<ObjectRef<u64>>) -> mobula::Result<u64> {
    let rt = mobula::runtime()?;
    let (ready, _) = rt.wait(&refs, refs.len(), Some(Duration::ZERO))?;
    if ready.len() != refs.len() {
        return Err(Error::Runtime(format!(
            "only {} of {} nested refs were ready when the task started",
            ready.len(),
            refs.len()
        )));
    }
    Ok(rt.get_all(&refs)?.iter().sum())
}

#[mobula::remote]
async fn async_double(x: u64) -> u64 {
    tokio::task::yield_now().await;
    x * 2
}

#[mobula::remote]
fn fails(why: String) -> Result<u64, String> {
    Err(why)
}

#[mobula::remote]
fn panics(msg: String) -> u64 {
    std::panic::resume_unwind(Box::new(msg))
}

/// Fails until it has been attempted `succeed_on` times (counted in a file).
#[mobula::remote]
fn flaky(counter: String, succeed_on: u32) -> Result<u32, String> {
    let n = std::fs::read_to_string(&counter)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0)
        + 1;
    std::fs::write(&counter, n.to_string()).map_err(|e| e.to_string())?;
    if n < succeed_on {
        Err(format!("attempt {n} failed"))
    } else {
        Ok(n)
    }
}

/// Fans out `width` children per level, `depth` levels deep, and gets them (blocking).
#[mobula::remote]
fn tree(depth: u32, width: u32) -> mobula::Result<u64> {
    if depth == 0 {
        return Ok(1);
    }
    let rt = mobula::runtime()?;
    let kids: Vec<_> = (0..width)
        .map(|_| tree::remote(&rt, depth - 1, width))
        .collect();
    Ok(rt.get_all(&kids)?.iter().sum())
}

#[test]
fn tasks_run_and_return_typed_values() {
    let rt = start(threads(2.0));
    let refs: Vec<_> = (0..200).map(|i| square::remote(&rt, i)).collect();
    let got = rt.get_all(&refs).expect("results");
    assert_eq!(got, (0..200).map(|i| i * i).collect::<Vec<_>>());
    // The function stays callable locally.
    assert_eq!(square(7), 49);
}

#[test]
fn object_refs_as_arguments_form_chains() {
    let rt = start(threads(2.0));
    let mut acc = add::remote(&rt, 0, 1);
    for i in 2..=50 {
        acc = add::remote(&rt, &acc, i);
    }
    assert_eq!(rt.get(&acc).expect("sum"), (1..=50).sum::<u64>());
    let a = rt.put(&40u64).expect("put");
    assert_eq!(rt.get(&add::remote(&rt, a, 2)).expect("sum"), 42);
}

#[test]
fn nested_refs_are_dependencies() {
    let rt = start(threads(2.0));
    let inner: Vec<_> = (1..=4).map(|i| delayed::remote(&rt, i, 100)).collect();
    let total = sum_nested::remote(&rt, inner);
    assert_eq!(rt.get_timeout(&total, Some(HANG)).expect("sum"), 10);
}

#[test]
fn async_tasks_run() {
    let rt = start(threads(2.0));
    let refs: Vec<_> = (0..10).map(|i| async_double::remote(&rt, i)).collect();
    assert_eq!(
        rt.get_all(&refs).expect("results"),
        (0..10).map(|i| i * 2).collect::<Vec<_>>()
    );
}

#[test]
fn errors_name_the_task_and_propagate() {
    let rt = start(threads(2.0));
    let e = rt
        .get(&fails::remote(&rt, "bad input".to_string()))
        .expect_err("fails");
    assert_eq!(
        e,
        Error::TaskFailed {
            task: "fails".to_string(),
            message: "bad input".to_string()
        }
    );
    assert!(e.to_string().contains("fails") && e.to_string().contains("bad input"));
    let p = rt
        .get(&panics::remote(&rt, "boom".to_string()))
        .expect_err("panics");
    assert_eq!(
        p,
        Error::TaskPanicked {
            task: "panics".to_string(),
            message: "boom".to_string()
        }
    );
    // A dependent task fails with its input's error instead of running.
    let downstream = add::remote(&rt, fails::remote(&rt, "upstream".to_string()), 1);
    assert!(
        matches!(rt.get(&downstream), Err(Error::TaskFailed { message, .. }) if message == "upstream")
    );
    // The runtime is fine after all that.
    assert_eq!(rt.get(&square::remote(&rt, 3)).expect("still works"), 9);
    // A task with a custom name reports it.
    let named = fails::options(TaskOptions::new().name("custom-name")).remote(&rt, "x".to_string());
    assert!(matches!(rt.get(&named), Err(Error::TaskFailed { task, .. }) if task == "custom-name"));
}

#[test]
fn user_errors_are_retried_only_with_retry_exceptions() {
    let rt = start(threads(2.0));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |n: &str| dir.path().join(n).to_string_lossy().to_string();

    let r = flaky::options(TaskOptions::new().max_retries(5).retry_exceptions(true)).remote(
        &rt,
        path("a"),
        3,
    );
    assert_eq!(rt.get(&r).expect("succeeds on the third attempt"), 3);

    let r = flaky::options(TaskOptions::new().max_retries(5)).remote(&rt, path("b"), 3);
    assert!(
        matches!(rt.get(&r), Err(Error::TaskFailed { message, .. }) if message == "attempt 1 failed")
    );

    let r = flaky::options(TaskOptions::new().max_retries(1).retry_exceptions(true)).remote(
        &rt,
        path("c"),
        3,
    );
    assert!(
        matches!(rt.get(&r), Err(Error::TaskFailed { message, .. }) if message == "attempt 2 failed")
    );
}

#[test]
fn infeasible_requests_fail_with_what_was_asked_and_what_exists() {
    let rt = start(threads(2.0).resource("slot", 2.0));
    let gpu = square::options(TaskOptions::new().num_gpus(1.0)).remote(&rt, 1);
    match rt.get(&gpu) {
        Err(Error::Infeasible {
            resource,
            asked,
            available,
            what,
        }) => {
            assert_eq!((resource.as_str(), asked, available), ("GPU", 1.0, 0.0));
            assert_eq!(what, "square");
        }
        other => panic!("expected infeasible, got {other:?}"),
    }
    let cpus = square::options(TaskOptions::new().num_cpus(3.0)).remote(&rt, 1);
    assert!(
        matches!(rt.get(&cpus), Err(Error::Infeasible { resource, asked, available, .. })
        if resource == "CPU" && asked == 3.0 && available == 2.0)
    );
    let custom = square::options(TaskOptions::new().resource("slot", 2.5)).remote(&rt, 1);
    let e = rt.get(&custom).expect_err("infeasible");
    assert!(e.to_string().contains("slot"), "{e}");
    // Feasible custom and fractional requests run.
    let ok = square::options(TaskOptions::new().resource("slot", 1.5).num_cpus(0.5)).remote(&rt, 4);
    assert_eq!(rt.get(&ok).expect("runs"), 16);
}

#[test]
fn wait_timeout_and_get_timeout() {
    let rt = start(threads(2.0));
    let gate = Gate::remote(&rt).expect("gate");
    let quick: Vec<_> = (0..3).map(|i| square::remote(&rt, i)).collect();
    let held = gated::remote(&rt, gate.clone(), 99);
    let mut all: Vec<ObjectRef<u64>> = quick.clone();
    all.push(held.clone());

    let (ready, rest) = rt.wait(&all, 3, Some(HANG)).expect("wait");
    assert_eq!(ready.len(), 3);
    assert_eq!(rest, vec![held.clone()]);

    let (ready, rest) = rt
        .wait(&all, 4, Some(Duration::from_millis(100)))
        .expect("wait");
    assert_eq!(
        (ready.len(), rest.len()),
        (3, 1),
        "the held task cannot be ready"
    );

    let e = rt
        .get_timeout(&held, Some(Duration::from_millis(50)))
        .expect_err("times out");
    assert_eq!(e, Error::Timeout(Duration::from_millis(50)));

    rt.get(&gate.open()).expect("open");
    assert_eq!(rt.get_timeout(&held, Some(HANG)).expect("released"), 99);
    let (ready, rest) = rt.wait(&all, 4, None).expect("wait");
    assert_eq!((ready.len(), rest.len()), (4, 0));
}

#[test]
fn cancel_queued_and_running_tasks() {
    let rt = start(threads(1.0));
    let gate = Gate::remote(&rt).expect("gate");
    let running = gated::remote(&rt, gate.clone(), 1);
    let queued = square::remote(&rt, 5);
    rt.cancel(&queued).expect("cancel");
    assert!(
        matches!(rt.get_timeout(&queued, Some(HANG)), Err(Error::Cancelled { task }) if task == "square")
    );
    rt.cancel(&running).expect("cancel");
    assert!(matches!(
        rt.get_timeout(&running, Some(HANG)),
        Err(Error::Cancelled { .. })
    ));
    rt.get(&gate.open()).expect("open");
    // The CPU comes back: later tasks run.
    assert_eq!(
        rt.get_timeout(&square::remote(&rt, 6), Some(HANG))
            .expect("runs"),
        36
    );
}

#[test]
fn nested_parallelism_does_not_deadlock_a_saturated_pool() {
    // 2 CPUs, and every level of the tree blocks in `get` on its children: without lending
    // the CPU of a blocked worker back, the first level would hold both CPUs forever.
    let rt = start(threads(2.0));
    let roots: Vec<_> = (0..4).map(|_| tree::remote(&rt, 3, 3)).collect();
    for r in &roots {
        assert_eq!(rt.get_timeout(r, Some(HANG)).expect("tree"), 27);
    }
}

#[test]
fn resources_limit_concurrency() {
    // One "slot": two tasks that each need it cannot overlap.
    let rt = start(threads(2.0).resource("slot", 1.0));
    let gate = Gate::remote(&rt).expect("gate");
    let first =
        gated::options(TaskOptions::new().resource("slot", 1.0)).remote(&rt, gate.clone(), 1);
    let second = square::options(TaskOptions::new().resource("slot", 1.0)).remote(&rt, 3);
    let (ready, _) = rt
        .wait(
            std::slice::from_ref(&second),
            1,
            Some(Duration::from_millis(200)),
        )
        .expect("wait");
    assert!(ready.is_empty(), "the second task waits for the slot");
    rt.get(&gate.open()).expect("open");
    assert_eq!(rt.get_timeout(&first, Some(HANG)).expect("first"), 1);
    assert_eq!(rt.get_timeout(&second, Some(HANG)).expect("second"), 9);
}

#[test]
fn shutdown_then_init_again() {
    let _turn = common::exclusive();
    let rt = mobula::init_with(threads(1.0)).expect("first runtime");
    assert_eq!(rt.get(&square::remote(&rt, 2)).expect("first runtime"), 4);
    assert!(matches!(mobula::init(), Err(Error::AlreadyInitialized)));
    mobula::shutdown();
    assert!(!mobula::is_initialized());
    assert!(matches!(mobula::runtime(), Err(Error::NotInitialized)));
    let rt = mobula::init_with(threads(1.0)).expect("second runtime");
    assert_eq!(rt.get(&square::remote(&rt, 3)).expect("second runtime"), 9);
    mobula::shutdown();
}

#[mobula::remote]
fn my_gpus(gate: mobula::ActorHandle<Gate>) -> mobula::Result<Vec<usize>> {
    let ids = mobula::gpu_ids();
    mobula::runtime()?.get(&gate.wait_open())?;
    Ok(ids)
}

#[test]
fn gpu_tasks_get_distinct_instance_ids() {
    let rt = start(threads(4.0).num_gpus(2.0));
    let gate = Gate::remote(&rt).expect("gate");
    let a = my_gpus::options(TaskOptions::new().num_gpus(1.0)).remote(&rt, gate.clone());
    let b = my_gpus::options(TaskOptions::new().num_gpus(1.0)).remote(&rt, gate.clone());
    let c = my_gpus::options(TaskOptions::new().num_gpus(0.5)).remote(&rt, gate.clone());
    let (ready, _) = rt
        .wait(
            std::slice::from_ref(&c),
            1,
            Some(Duration::from_millis(200)),
        )
        .expect("wait");
    assert!(
        ready.is_empty(),
        "both GPUs are taken by the first two tasks"
    );
    rt.get(&gate.open()).expect("open");
    let mut ids = rt.get(&a).expect("a");
    ids.extend(rt.get(&b).expect("b"));
    ids.sort_unstable();
    assert_eq!(ids, vec![0, 1]);
    assert_eq!(rt.get(&c).expect("c").len(), 1);
    assert!(mobula::gpu_ids().is_empty(), "the driver runs no task");
}

/// A value that refuses to be encoded.
struct Unencodable;

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _s: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this value cannot be encoded"))
    }
}

#[test]
fn serialization_lost_objects_and_unknown_functions_are_errors() {
    let rt = start(threads(1.0));
    let e = rt.put(&Unencodable).expect_err("no encoding");
    assert!(
        matches!(&e, Error::Serialization(m) if m.contains("cannot be encoded")),
        "{e}"
    );
    // A reference to an object that never existed here.
    let bytes = rmp_serde::to_vec(&mobula::ObjectId::new()).expect("encode id");
    let stray: ObjectRef<u64> = rmp_serde::from_slice(&bytes).expect("decode ref");
    assert!(matches!(rt.get(&stray), Err(Error::ObjectLost { .. })));
    // A function id no binary registered.
    let r: ObjectRef<u64> = mobula::__private::submit_task(
        &rt,
        "no::such::function",
        "ghost",
        &TaskOptions::default(),
        Vec::new(),
    );
    assert!(matches!(rt.get(&r), Err(Error::NotRegistered(id)) if id == "no::such::function"));
}
