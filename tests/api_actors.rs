//! Actors: ordering, named actors and namespaces, handles passed around, kill, constructor and
//! method failures, async concurrency, restarts and their exhaustion, held resources.

mod common;

use std::time::Duration;

use common::{Gate, HANG, start, threads};
use mobula::{ActorHandle, ActorOptions, Error, TaskOptions};

#[mobula::actor]
pub struct Counter {
    count: u64,
}

#[mobula::actor]
impl Counter {
    pub fn new(start: u64) -> Self {
        Counter { count: start }
    }

    pub fn from_text(text: String) -> Result<Self, String> {
        text.parse()
            .map(|count| Counter { count })
            .map_err(|e| format!("not a number: {e}"))
    }

    pub fn incr(&mut self, by: u64) -> u64 {
        self.count += by;
        self.count
    }

    pub fn get(&self) -> u64 {
        self.count
    }

    pub fn explode(&mut self) -> u64 {
        panic!("explode called at {}", self.count)
    }
}

#[mobula::actor]
pub struct Fragile;

#[mobula::actor]
impl Fragile {
    pub fn new() -> Self {
        panic!("constructor refuses")
    }

    pub fn ping(&self) -> u8 {
        1
    }
}

#[mobula::remote]
fn bump_via_task(c: ActorHandle<Counter>, times: u64) -> mobula::Result<u64> {
    let rt = mobula::runtime()?;
    let refs: Vec<_> = (0..times).map(|_| c.incr(1)).collect();
    Ok(*rt.get_all(&refs)?.last().unwrap_or(&0))
}

#[mobula::actor]
pub struct Forwarder {
    target: ActorHandle<Counter>,
}

#[mobula::actor]
impl Forwarder {
    pub fn new(target: ActorHandle<Counter>) -> Self {
        Forwarder { target }
    }

    pub fn forward(&self, by: u64) -> mobula::Result<u64> {
        mobula::runtime()?.get(&self.target.incr(by))
    }
}

#[mobula::actor]
pub struct Sleeper;

#[mobula::actor]
impl Sleeper {
    pub fn new() -> Self {
        Sleeper
    }

    /// Waits for the gate, then answers (an async method: others may run meanwhile).
    pub async fn wait_for(&self, gate: ActorHandle<Gate>) -> mobula::Result<u32> {
        mobula::runtime()?.get_async(&gate.wait_open()).await?;
        Ok(1)
    }

    pub async fn quick(&self) -> u32 {
        2
    }
}

#[mobula::remote]
fn one() -> u32 {
    1
}

#[test]
fn calls_from_one_caller_run_in_submission_order() {
    let rt = start(threads(2.0));
    let c = Counter::remote(&rt, 0).expect("create");
    let refs: Vec<_> = (0..500).map(|_| c.incr(1)).collect();
    assert_eq!(
        rt.get_all(&refs).expect("calls"),
        (1..=500).collect::<Vec<_>>()
    );
    assert_eq!(rt.get(&c.get()).expect("get"), 500);
    // Another constructor, fallible.
    let d = Counter::remote_from_text(&rt, "41".to_string()).expect("create");
    assert_eq!(rt.get(&d.incr(1)).expect("incr"), 42);
    let bad = Counter::remote_from_text(&rt, "x".to_string()).expect("create is async");
    assert!(
        matches!(rt.get_timeout(&bad.get(), Some(HANG)), Err(Error::ActorDied { reason, .. }) if reason.contains("not a number"))
    );
}

#[test]
fn named_actors_resolve_in_their_namespace() {
    let rt = start(threads(2.0));
    let c = Counter::options(ActorOptions::new().name("counter"))
        .remote(&rt, 10)
        .expect("create");
    rt.get(&c.incr(1)).expect("incr");
    let found = rt.get_actor::<Counter>("counter", None).expect("found");
    assert_eq!(rt.get(&found.get()).expect("get"), 11);
    assert_eq!(found.id(), c.id());

    let e = Counter::options(ActorOptions::new().name("counter"))
        .remote(&rt, 0)
        .expect_err("taken");
    assert_eq!(
        e,
        Error::NameTaken {
            name: "counter".to_string(),
            namespace: "default".to_string()
        }
    );
    // Same name, other namespace: a different actor.
    let other = Counter::options(ActorOptions::new().name("counter").namespace("ns2"))
        .remote(&rt, 100)
        .expect("create");
    let found2 = rt
        .get_actor::<Counter>("counter", Some("ns2"))
        .expect("found");
    assert_eq!(found2.id(), other.id());
    assert!(matches!(
        rt.get_actor::<Counter>("nobody", None),
        Err(Error::ActorNotFound { .. })
    ));
    // get_if_exists returns the existing actor.
    let again = Counter::options(ActorOptions::new().name("counter").get_if_exists(true))
        .remote(&rt, 0)
        .expect("existing");
    assert_eq!(again.id(), c.id());
    // A wrong type is refused.
    assert!(rt.get_actor::<Fragile>("counter", None).is_err());
}

#[test]
fn handles_pass_to_tasks_and_other_actors() {
    let rt = start(threads(2.0));
    let c = Counter::remote(&rt, 0).expect("create");
    let t = bump_via_task::remote(&rt, c.clone(), 10);
    assert_eq!(rt.get_timeout(&t, Some(HANG)).expect("task"), 10);
    let f = Forwarder::remote(&rt, c.clone()).expect("create");
    assert_eq!(
        rt.get_timeout(&f.forward(5), Some(HANG)).expect("forward"),
        15
    );
    assert_eq!(rt.get(&c.get()).expect("get"), 15);
}

#[test]
fn kill_ends_an_actor_for_good() {
    let rt = start(threads(2.0));
    let c = Counter::options(ActorOptions::new().name("doomed").max_restarts(3))
        .remote(&rt, 0)
        .expect("create");
    rt.get(&c.incr(1)).expect("alive");
    rt.kill(&c).expect("kill");
    match rt.get_timeout(&c.incr(1), Some(HANG)) {
        Err(Error::ActorDied { actor, reason }) => {
            assert!(actor.starts_with("Counter("), "{actor}");
            assert!(reason.contains("kill"), "{reason}");
        }
        other => panic!("expected actor died, got {other:?}"),
    }
    assert!(matches!(
        rt.get_actor::<Counter>("doomed", None),
        Err(Error::ActorNotFound { .. })
    ));
    // The name is free again.
    Counter::options(ActorOptions::new().name("doomed"))
        .remote(&rt, 0)
        .expect("name reused");
}

#[test]
fn constructor_and_method_panics() {
    let rt = start(threads(2.0));
    let f = Fragile::remote(&rt).expect("create is async");
    match rt.get_timeout(&f.ping(), Some(HANG)) {
        Err(Error::ActorDied { reason, .. }) => {
            assert!(reason.contains("constructor refuses"), "{reason}")
        }
        other => panic!("expected actor died, got {other:?}"),
    }
    let c = Counter::remote(&rt, 7).expect("create");
    match rt.get(&c.explode()) {
        Err(Error::TaskPanicked { task, message }) => {
            assert_eq!(task, "Counter.explode");
            assert_eq!(message, "explode called at 7");
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    // The actor survives its method's panic with its state.
    assert_eq!(rt.get(&c.incr(1)).expect("still alive"), 8);
}

#[test]
fn async_actors_interleave_calls() {
    let rt = start(threads(2.0));
    let gate = Gate::remote(&rt).expect("gate");
    let s = Sleeper::remote(&rt).expect("create");
    let waiting = s.wait_for(gate.clone());
    // If calls ran one at a time, `quick` would wait behind `wait_for` forever.
    assert_eq!(rt.get_timeout(&s.quick(), Some(HANG)).expect("quick"), 2);
    let (ready, _) = rt
        .wait(std::slice::from_ref(&waiting), 1, Some(Duration::ZERO))
        .expect("wait");
    assert!(ready.is_empty());
    rt.get(&gate.open()).expect("open");
    assert_eq!(rt.get_timeout(&waiting, Some(HANG)).expect("released"), 1);
    // max_concurrency 1 makes an async actor sequential: the same pattern blocks `quick`.
    let gate2 = Gate::remote(&rt).expect("gate");
    let seq = Sleeper::options(ActorOptions::new().max_concurrency(1))
        .remote(&rt)
        .expect("create");
    let first = seq.wait_for(gate2.clone());
    let second = seq.quick();
    let (ready, _) = rt
        .wait(
            std::slice::from_ref(&second),
            1,
            Some(Duration::from_millis(200)),
        )
        .expect("wait");
    assert!(
        ready.is_empty(),
        "with max_concurrency 1 the second call waits"
    );
    rt.get(&gate2.open()).expect("open");
    assert_eq!(rt.get_timeout(&first, Some(HANG)).expect("first"), 1);
    assert_eq!(rt.get_timeout(&second, Some(HANG)).expect("second"), 2);
}

#[test]
fn restarts_rerun_the_constructor_until_exhausted() {
    let rt = start(threads(2.0));
    let c = Counter::options(ActorOptions::new().max_restarts(1))
        .remote(&rt, 5)
        .expect("create");
    assert_eq!(rt.get(&c.incr(10)).expect("incr"), 15);
    rt.kill_restartable(&c).expect("kill");
    // The restarted actor has its constructor's state again.
    assert_eq!(rt.get_timeout(&c.get(), Some(HANG)).expect("restarted"), 5);
    rt.kill_restartable(&c).expect("kill");
    assert!(matches!(
        rt.get_timeout(&c.get(), Some(HANG)),
        Err(Error::ActorDied { .. })
    ));
}

#[test]
fn actors_hold_their_resources_while_alive() {
    let rt = start(threads(2.0));
    let a = Counter::options(ActorOptions::new().num_cpus(1.0))
        .remote(&rt, 0)
        .expect("a");
    let b = Counter::options(ActorOptions::new().num_cpus(1.0))
        .remote(&rt, 0)
        .expect("b");
    rt.get(&a.get()).expect("a alive");
    rt.get(&b.get()).expect("b alive");
    let task = one::options(TaskOptions::new().num_cpus(1.0)).remote(&rt);
    let (ready, _) = rt
        .wait(
            std::slice::from_ref(&task),
            1,
            Some(Duration::from_millis(200)),
        )
        .expect("wait");
    assert!(ready.is_empty(), "both CPUs are held by actors");
    rt.kill(&a).expect("kill");
    assert_eq!(
        rt.get_timeout(&task, Some(HANG))
            .expect("runs once a CPU is free"),
        1
    );
    // Default actors hold no CPU once created: many fit on 2 CPUs.
    let many: Vec<_> = (0..20)
        .map(|i| Counter::remote(&rt, i).expect("create"))
        .collect();
    let vals: Vec<_> = many.iter().map(|c| c.get()).collect();
    assert_eq!(
        rt.get_all(&vals).expect("all alive"),
        (0..20).collect::<Vec<_>>()
    );
}

#[test]
fn killing_an_async_actor_fails_its_running_calls() {
    let rt = start(threads(2.0));
    let gate = Gate::remote(&rt).expect("gate");
    let s = Sleeper::remote(&rt).expect("create");
    let waiting = s.wait_for(gate.clone());
    assert_eq!(rt.get_timeout(&s.quick(), Some(HANG)).expect("up"), 2);
    rt.kill(&s).expect("kill");
    assert!(matches!(
        rt.get_timeout(&waiting, Some(HANG)),
        Err(Error::ActorDied { .. })
    ));
}

#[test]
fn killing_an_actor_that_has_not_started_ends_it() {
    let rt = start(threads(2.0));
    let gate = Gate::remote(&rt).expect("gate");
    // The constructor's argument comes from a task held back by the gate.
    let start_value = common::gated::remote(&rt, gate.clone(), 5);
    let c = Counter::remote(&rt, start_value).expect("create is async");
    let call = c.get();
    rt.kill_restartable(&c).expect("kill");
    assert!(matches!(
        rt.get_timeout(&call, Some(HANG)),
        Err(Error::ActorDied { .. })
    ));
    rt.get(&gate.open()).expect("open");
}
