//! SIGKILL of the head mid-job and its restart on the same port and storage, on a real
//! two-node cluster: a driver attached to the worker node keeps calling its named actor and
//! running tasks while the head is down; the worker node reconnects to the restarted head by
//! itself and tells it again of its actors, so the name resolves cluster-wide again (from a
//! new driver on the head) to the same actor, which kept its state (not created twice).
//! Jobs running when the head died are followed by the restarted head to their end (or
//! their stop). The head's own detached actors come back from its storage: one another node
//! hosts is the same actor, one the head hosted restarts under `max_restarts`; its other
//! actors end, also on the node hosting them, and its placement groups end with their jobs
//! (their bundles on other nodes are given back). Prints the reconnection time (`fault
//! figures:`) for BENCHMARKS.md.

mod common;

use common::{Tally, where_am_i};
use std::time::Instant;

use common::cluster::cluster;
use mobula::{ActorOptions, Config, Error, SchedulingStrategy};

/// A counter that says where it runs.
#[mobula::actor]
pub struct Keeper {
    n: u64,
}

#[mobula::actor]
impl Keeper {
    pub fn new() -> Self {
        Keeper { n: 0 }
    }

    /// Adds `v`; the new total.
    pub fn add(&mut self, v: u64) -> u64 {
        self.n += v;
        self.n
    }

    /// The host's process id.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    /// The id of the node it runs on.
    pub fn node(&self) -> String {
        mobula::runtime()
            .map(|r| r.node_id().hex())
            .unwrap_or_default()
    }
}

/// The child driver of the head-actors test (a no-op when run on its own): after the head's
/// restart, calls its detached actors by name and looks for the one that was not detached.
#[test]
fn child_driver_of_the_head_actors_test() {
    mobula::worker_entry();
    let Some((rt, _)) = common::child_driver(&[]) else {
        return;
    };
    let kept = rt.get_actor::<Keeper>("kept", None).expect("kept resolves");
    let reborn = rt
        .get_actor::<Keeper>("reborn", None)
        .expect("reborn resolves");
    let doomed = match rt.get_actor::<Keeper>("doomed", None) {
        Err(Error::ActorNotFound { .. }) => "gone".to_string(),
        other => format!("{:?}", other.map(|_| "still there")),
    };
    let k = rt
        .get_timeout(&kept.add(1), Some(common::HANG))
        .expect("kept answers");
    let kp = rt
        .get_timeout(&kept.pid(), Some(common::HANG))
        .expect("kept's pid");
    let r = rt
        .get_timeout(&reborn.add(1), Some(common::HANG))
        .expect("reborn answers");
    println!("\nCHILD_SAW kept={k} kept_pid={kp} reborn={r} doomed={doomed} ");
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// The child driver of the head-restart test (a no-op when run on its own): joins the
/// restarted head, finds the worker node's named actor and adds 10 to it.
#[test]
fn child_driver_of_the_head_restart_test() {
    mobula::worker_entry();
    let (Ok(addr), Ok(root)) = (std::env::var("CHILD_ADDRESS"), std::env::var("CHILD_ROOT")) else {
        return;
    };
    let rt =
        mobula::init_with(Config::default().address(addr).cluster_root(root)).expect("connect");
    let t = rt
        .get_actor::<Tally>("survivor", None)
        .expect("the name resolves after the restart");
    let n = rt.get(&t.add(10)).expect("the actor answers");
    println!("\nCHILD_SAW={n} ");
}

#[test]
fn a_restarted_head_gets_its_nodes_and_their_named_actors_back() {
    mobula::worker_entry();
    let c = cluster();
    let addr = format!("127.0.0.1:{}", c.port);
    let head_pid = c.head_record().pid as i32;
    let worker = c.worker_node_id();
    // This driver joins the worker node, which owns the actor.
    // SAFETY: set before the runtime starts any thread that reads the environment.
    unsafe { std::env::set_var("MOBULA_DRIVER_NODE", &worker) };
    let rt = common::start(Config::default().address(&addr).cluster_root(c.temp.path()));
    // Read at the start only: later tests of this binary (one process under `cargo test`)
    // must not join this cluster's worker node.
    // SAFETY: as above; the other tests of this binary start runtimes only after this one's
    // (`common::start` takes turns).
    unsafe { std::env::remove_var("MOBULA_DRIVER_NODE") };
    assert!(
        rt.node_id().hex().starts_with(&worker),
        "joined the worker node"
    );
    // Pinned here: a busy node's DEFAULT policy may place it on the head, which dies.
    let here = SchedulingStrategy::NodeAffinity {
        node: rt.node_id(),
        soft: false,
    };
    let survivor = Tally::options(
        ActorOptions::new()
            .name("survivor")
            .scheduling_strategy(here),
    )
    .remote(&rt)
    .expect("actor");
    assert_eq!(rt.get(&survivor.add(1)).expect("call"), 1);

    // SAFETY: kill(2) on the head daemon this test started.
    assert_eq!(unsafe { libc::kill(head_pid, libc::SIGKILL) }, 0);
    common::eventually("the head is gone", || !alive(head_pid));
    // While the head is down, this node's actor and tasks go on.
    assert_eq!(
        rt.get(&survivor.add(1))
            .expect("call while the head is down"),
        2
    );
    let here = rt
        .get(&where_am_i::remote(&rt))
        .expect("a task while the head is down");
    assert!(here.starts_with(&worker), "{here}");

    let restarted = Instant::now();
    c.restart_head();
    c.await_status("the worker node back in the restarted head's view", |s| {
        s.split("Dead:")
            .next()
            .is_some_and(|active| active.contains(&worker))
    });
    let rejoined = restarted.elapsed();

    // A new driver on the head finds the actor by name: the same one, with its state.
    // The node tells the head of its actors just after it rejoins: tried until it resolves.
    let seen = common::until_child_says(
        "the name never resolved after the restart",
        || {
            let mut cmd = common::child_test("child_driver_of_the_head_restart_test");
            cmd.env("CHILD_ADDRESS", &addr)
                .env("CHILD_ROOT", c.temp.path())
                .env_remove("MOBULA_DRIVER_NODE");
            cmd
        },
        |text| {
            text.lines()
                .find_map(|l| l.split_once("CHILD_SAW=").map(|(_, n)| n))
                .and_then(|n| n.split_whitespace().next()?.parse::<u64>().ok())
        },
    );
    assert_eq!(seen, 12, "the same actor, its state kept");
    assert_eq!(rt.get(&survivor.add(0)).expect("call"), 12);
    eprintln!(
        "fault figures: head restart rejoined_ms={}",
        rejoined.as_millis()
    );
}

fn job_status(url: &str, sid: &str) -> serde_json::Value {
    let (status, body) = common::http::get(&format!("{url}/api/jobs/{sid}"), &[]);
    assert_eq!(status, 200, "{body}");
    common::http::json(&body)
}

fn submit(url: &str, entrypoint: &str) -> String {
    let body = serde_json::json!({ "entrypoint": entrypoint }).to_string();
    let (status, text) = common::http::post(&format!("{url}/api/jobs/"), &[], &body);
    assert_eq!(status, 200, "{text}");
    common::http::json(&text)["submission_id"]
        .as_str()
        .expect("sid")
        .to_string()
}

#[test]
fn running_jobs_go_on_across_a_head_restart() {
    let c = common::cluster::head_only();
    let url = c.dashboard();
    let go = c.temp.path().join("go");
    let finisher = submit(
        &url,
        &format!(
            "echo started; while [ ! -e {} ]; do sleep 0.1; done; echo finishing; exit 5",
            go.display()
        ),
    );
    let sleeper_pid = c.temp.path().join("sleeper.pid");
    let sleeper = submit(
        &url,
        &format!("echo $$ > {}; sleep 600", sleeper_pid.display()),
    );
    for sid in [&finisher, &sleeper] {
        common::eventually("the job runs", || {
            job_status(&url, sid)["status"] == "RUNNING"
        });
    }
    let head_pid = c.head_record().pid as i32;
    // SAFETY: kill(2) on the head daemon this test started.
    assert_eq!(unsafe { libc::kill(head_pid, libc::SIGKILL) }, 0);
    common::eventually("the head is gone", || !alive(head_pid));
    c.restart_head();
    let url = c.dashboard();
    assert_eq!(
        job_status(&url, &finisher)["status"],
        "RUNNING",
        "still followed"
    );

    // It ends after the restart: its code and its output are its own.
    std::fs::write(&go, b"").expect("go");
    common::eventually("the job ends", || {
        job_status(&url, &finisher)["status"] != "RUNNING"
    });
    let v = job_status(&url, &finisher);
    assert_eq!(v["status"], "FAILED", "{v}");
    assert_eq!(v["driver_exit_code"], 5, "{v}");
    let (_, logs) = common::http::get(&format!("{url}/api/jobs/{finisher}/logs"), &[]);
    let logs = common::http::json(&logs)["logs"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(logs, "started\nfinishing\n");

    // One that outlived the crash can still be stopped.
    let pid: i32 = common::wait_for_file(&sleeper_pid)
        .trim()
        .parse()
        .expect("pid");
    assert!(alive(pid), "the entrypoint outlived the head");
    let (status, body) = common::http::post(&format!("{url}/api/jobs/{sleeper}/stop"), &[], "");
    assert_eq!(status, 200, "{body}");
    common::eventually("the stopped job ends", || {
        job_status(&url, &sleeper)["status"] == "STOPPED"
    });
    common::eventually("the stopped entrypoint is gone", || !alive(pid));
}

/// The other child driver of the head-actors test, attached to the worker node: holds a
/// handle of the head's restartable actor across the head's restart, then calls it until it
/// answers (calls before the head is back may fail, with an error).
#[test]
fn child_worker_driver_of_the_head_actors_test() {
    mobula::worker_entry();
    let Some((rt, vars)) = common::child_driver(&["CHILD_GO"]) else {
        return;
    };
    let go = &vars[0];
    let reborn = rt
        .get_actor::<Keeper>("reborn", None)
        .expect("reborn resolves");
    let before = rt
        .get_timeout(&reborn.add(0), Some(common::HANG))
        .expect("reborn answers");
    println!("\nREADY reborn={before} ");
    common::wait_for_file(std::path::Path::new(go));
    let mut errors = 0;
    let deadline = Instant::now() + common::HANG;
    let after = loop {
        match rt.get_timeout(&reborn.add(1), Some(common::HANG)) {
            Ok(v) => break v,
            Err(e) => {
                assert!(Instant::now() < deadline, "never answered: {e}");
                errors += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    };
    println!("\nWORKER_SAW reborn={after} errors={errors} ");
}

/// Reads `child`'s stdout until a line starts with `prefix`; returns that line.
fn line_of(out: &mut impl std::io::BufRead, prefix: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        let n = out.read_line(&mut line).expect("child output");
        assert!(n > 0, "the child ended before printing {prefix}");
        if line.starts_with(prefix) {
            return line;
        }
    }
}

#[test]
fn the_heads_detached_actors_come_back_from_its_storage() {
    mobula::worker_entry();
    let c = common::cluster::cluster_with(&["--resources", r#"{"gizmo": 1}"#]);
    let addr = format!("127.0.0.1:{}", c.port);
    let rt = common::cluster::connect(&c);
    let head = rt.node_id();
    // The other node's id, from a SPREAD probe.
    let spread = ActorOptions::new().scheduling_strategy(SchedulingStrategy::Spread);
    let probes: Vec<_> = (0..2)
        .map(|_| Keeper::options(spread.clone()).remote(&rt).expect("probe"))
        .collect();
    let worker = rt
        .get_all(&probes.iter().map(|a| a.node()).collect::<Vec<_>>())
        .expect("nodes")
        .into_iter()
        .find(|n| *n != head.hex())
        .expect("the other node");
    let on_worker = SchedulingStrategy::NodeAffinity {
        node: mobula::NodeId::parse(&worker).expect("node id"),
        soft: false,
    };
    let on_head = SchedulingStrategy::NodeAffinity {
        node: head,
        soft: true,
    };
    let opts = |name: &str, s: &SchedulingStrategy| {
        ActorOptions::new()
            .name(name)
            .scheduling_strategy(s.clone())
    };
    let kept = Keeper::options(opts("kept", &on_worker).detached(true))
        .remote(&rt)
        .expect("kept");
    let doomed = Keeper::options(opts("doomed", &on_worker))
        .remote(&rt)
        .expect("doomed");
    let reborn = Keeper::options(opts("reborn", &on_head).detached(true).max_restarts(1))
        .remote(&rt)
        .expect("reborn");
    assert_eq!(rt.get(&kept.add(5)).expect("kept"), 5);
    assert_eq!(rt.get(&reborn.add(3)).expect("reborn"), 3);
    assert_eq!(rt.get(&kept.node()).expect("node"), worker);
    assert_eq!(rt.get(&doomed.node()).expect("node"), worker);
    assert_eq!(rt.get(&reborn.node()).expect("node"), head.hex());
    // A group of this driver's job, its bundle on the worker node.
    common::eventually("the head's scheduler knows the gizmo node", || {
        rt.cluster_resources().expect("resources").get("gizmo") == Some(&1.0)
    });
    let pg = rt
        .placement_group(
            vec![mobula::ResourceSet::new().with("gizmo", 1.0)],
            mobula::PlacementStrategy::Pack,
        )
        .expect("group");
    assert!(pg.wait(Some(common::HANG)).expect("placed"));
    c.await_status("the bundle reserved", |s| s.contains(" 1.0/1.0 gizmo"));
    let kept_pid = rt
        .get_timeout(&kept.pid(), Some(common::HANG))
        .expect("pid");
    let doomed_pid = rt.get(&doomed.pid()).expect("pid") as i32;
    // A detached actor of the head on the worker node that dies there, past its restarts,
    // while the head is down: the restarted head must learn that, not take it back as alive.
    let brittle = Keeper::options(opts("brittle", &on_worker).detached(true))
        .remote(&rt)
        .expect("brittle");
    let brittle_pid = rt
        .get_timeout(&brittle.pid(), Some(common::HANG))
        .expect("pid") as i32;
    // A driver on the worker node holds a handle to the head's actor across the restart.
    let go = c.temp.path().join("go");
    let mut far = common::child_test("child_worker_driver_of_the_head_actors_test")
        .env("CHILD_ADDRESS", &addr)
        .env("CHILD_ROOT", c.temp.path())
        .env("CHILD_GO", &go)
        .env("MOBULA_DRIVER_NODE", &worker)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("worker-node driver");
    let mut far_out = std::io::BufReader::new(far.stdout.take().expect("stdout"));
    let ready = line_of(&mut far_out, "READY");
    assert!(ready.contains("reborn=3 "), "{ready}");

    let head_pid = c.head_record().pid as i32;
    // SAFETY: kill(2) on the head daemon this test started.
    assert_eq!(unsafe { libc::kill(head_pid, libc::SIGKILL) }, 0);
    common::eventually("the head is gone", || !alive(head_pid));
    common::sigkill(brittle_pid as u32);
    common::eventually("brittle's process is gone", || !alive(brittle_pid));
    let restarted = Instant::now();
    c.restart_head();

    let seen = common::until_child_says(
        "the child driver never got through",
        || {
            let mut cmd = common::child_test("child_driver_of_the_head_actors_test");
            cmd.env("CHILD_ADDRESS", &addr)
                .env("CHILD_ROOT", c.temp.path());
            cmd
        },
        |text| {
            text.lines()
                .find(|l| l.starts_with("CHILD_SAW"))
                .map(str::to_string)
        },
    );
    let answered = restarted.elapsed();
    assert!(
        seen.contains(&format!("kept=6 kept_pid={kept_pid} ")),
        "the detached actor the worker node hosts is the same one, its state kept: {seen}"
    );
    assert!(
        seen.contains(" reborn=1 "),
        "the detached actor the head hosted restarted, fresh: {seen}"
    );
    assert!(
        seen.contains(" doomed=gone "),
        "the actor that was not detached ended with its owner: {seen}"
    );
    // The worker node's driver reaches the restarted actor through the same handle.
    std::fs::write(&go, b"go").expect("go");
    let far_saw = line_of(&mut far_out, "WORKER_SAW");
    assert!(far_saw.contains("reborn=2 "), "{far_saw}");
    assert!(far.wait().expect("worker-node driver").success());
    eprintln!(
        "fault figures: head actors answered_ms={} (restart to a new driver's calls answered) {}",
        answered.as_millis(),
        far_saw.trim()
    );
    // The group ended with its job (its driver was attached to the head): its bundle is free.
    c.await_status("the group's bundle given back", |s| {
        s.contains(" 0.0/1.0 gizmo")
    });
    // Its host process ends too, once the worker node declares the old head dead.
    common::eventually("the orphaned actor's process is killed", || {
        !alive(doomed_pid)
    });
    // The head asked the worker node about `brittle` when it took it back: dead for good.
    let url = format!(
        "{}/api/v0/actors?detail=true&filter_keys=actor_id&filter_predicates=%3D&filter_values={}",
        c.dashboard(),
        brittle.id().hex()
    );
    common::eventually("the head lists brittle as dead", || {
        let (status, body) = common::http::get(&url, &[]);
        let rows = common::http::json(&body)["data"]["result"]["result"].clone();
        let rows = rows.as_array().cloned().unwrap_or_default();
        status == 200 && !rows.is_empty() && rows.iter().all(|r| r["state"] == "DEAD")
    });
    // The worker node saw the old head dead (it killed `doomed`) and left `kept` to the
    // restarted head, which took it back from its storage.
    for f in std::fs::read_dir(c.dir().join("logs"))
        .expect("logs")
        .flatten()
    {
        let text = std::fs::read_to_string(f.path()).unwrap_or_default();
        assert!(
            !text.contains("this node owns it now"),
            "a node took over an actor the head owns: {}",
            f.path().display()
        );
    }
}

#[test]
fn a_job_another_node_runs_is_followed_across_a_head_restart() {
    let c = common::cluster::cluster_with(&["--resources", r#"{"gizmo": 1}"#]);
    let url = c.dashboard();
    c.await_status("the gizmo node", |s| s.contains("gizmo"));
    let go = c.temp.path().join("go-remote");
    let body = serde_json::json!({
        "entrypoint": format!(
            "echo before; while [ ! -e {} ]; do sleep 0.1; done; echo after; exit 3",
            go.display()
        ),
        "entrypoint_resources": {"gizmo": 1},
    })
    .to_string();
    let (status, text) = common::http::post(&format!("{url}/api/jobs/"), &[], &body);
    assert_eq!(status, 200, "{text}");
    let sid = common::http::json(&text)["submission_id"]
        .as_str()
        .expect("sid")
        .to_string();
    let logs = |url: &str| {
        let (_, body) = common::http::get(&format!("{url}/api/jobs/{sid}/logs"), &[]);
        common::http::json(&body)["logs"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    common::eventually("the job's first line reaches the head", || {
        logs(&url).contains("before")
    });

    let head_pid = c.head_record().pid as i32;
    // SAFETY: kill(2) on the head daemon this test started.
    assert_eq!(unsafe { libc::kill(head_pid, libc::SIGKILL) }, 0);
    common::eventually("the head is gone", || !alive(head_pid));
    // It goes on, and ends, while the head is down.
    std::fs::write(&go, b"").expect("go");
    c.restart_head();
    let url = c.dashboard();
    common::eventually("the restarted head records the job's end", || {
        job_status(&url, &sid)["status"] != "RUNNING"
    });
    let v = job_status(&url, &sid);
    assert_eq!(v["status"], "FAILED", "{v}");
    assert_eq!(v["driver_exit_code"], 3, "{v}");
    assert_eq!(logs(&url), "before\nafter\n", "the whole output, in order");
}
