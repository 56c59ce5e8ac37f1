//! `mobula start --mdns` against real daemons of this machine: a head that announces itself
//! and a node without `--address` that finds it, registers and shows in `mobula status`,
//! and finds it again after the head is SIGKILLed and started again.
//!
//! libp2p's mDNS ignores loopback, so this needs multicast on a non-loopback interface (the
//! two daemons hear each other through the kernel's multicast loop). Where a multicast probe on
//! that interface fails (no such interface, multicast filtered), or mDNS cannot open its
//! socket, the test passes with a note instead. It never waits more than about a minute.

use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mobula");

fn mobula(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("MOBULA_LOG")
        .output()
        .expect("run mobula")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The address of the interface that routes to the outside (sends nothing), if not loopback.
fn lan_ip() -> Option<Ipv4Addr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("10.255.255.255:9").ok()?;
    match s.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

/// Whether a datagram sent to a multicast group from `ip` comes back to a member on this
/// machine within a second.
fn multicast_loops(ip: Ipv4Addr) -> bool {
    let group = Ipv4Addr::new(239, 255, 77, 77);
    let probe = || -> std::io::Result<bool> {
        let rx = UdpSocket::bind("0.0.0.0:0")?;
        rx.join_multicast_v4(&group, &ip)?;
        rx.set_read_timeout(Some(Duration::from_secs(1)))?;
        let port = rx.local_addr()?.port();
        let tx = UdpSocket::bind((ip, 0))?;
        tx.set_multicast_loop_v4(true)?;
        tx.send_to(b"mobula-mdns-probe", (group, port))?;
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            match rx.recv_from(&mut buf) {
                Ok((n, _)) if &buf[..n] == b"mobula-mdns-probe" => return Ok(true),
                Ok(_) => {}
                Err(_) => return Ok(false),
            }
        }
        Ok(false)
    };
    probe().unwrap_or(false)
}

/// Stops the daemons of the cluster when dropped (also when the test fails).
struct Stop<'a> {
    dir: &'a Path,
    port: u16,
}

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        let _ = mobula(&[
            "stop",
            "--temp-dir",
            self.dir.to_str().unwrap_or_default(),
            "--port",
            &self.port.to_string(),
            "--grace-period",
            "5",
        ]);
    }
}

fn active_nodes(status: &str) -> usize {
    let active = status.split("Active:").nth(1).unwrap_or_default();
    let active = active.split("Dead:").next().unwrap_or_default();
    active.matches("node_").count()
}

fn logs(dir: &Path) -> String {
    let mut out = String::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            out += &format!("--- {}\n", e.path().display());
            out += &std::fs::read_to_string(e.path()).unwrap_or_default();
        }
    }
    out
}

#[test]
fn a_node_without_an_address_finds_the_head_by_mdns() {
    let Some(ip) = lan_ip() else {
        eprintln!("note: no non-loopback IPv4 interface: mDNS cannot be tried here (skipped)");
        return;
    };
    if !multicast_loops(ip) {
        eprintln!("note: multicast on {ip} does not loop back here: mDNS skipped");
        return;
    }
    let temp = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let (dir, p, bind) = (
        temp.path().to_str().expect("utf-8 path"),
        port.to_string(),
        ip.to_string(),
    );
    let _stop = Stop {
        dir: temp.path(),
        port,
    };
    let common = [
        "--port",
        &p,
        "--temp-dir",
        dir,
        "--bind",
        &bind,
        "--num-cpus",
        "1",
        "--mdns",
    ];
    let o = mobula(
        &[
            &["start", "--head", "--dashboard-port", "0"][..],
            &common[..],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = mobula(&[&["start"][..], &common[..]].concat());
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("over mDNS"), "{}", text(&o));

    let log_dir = temp.path().join(format!("cluster-{port}")).join("logs");
    let started = Instant::now();
    loop {
        let o = mobula(&["status", "--temp-dir", dir, "--port", &p]);
        if o.status.success() && active_nodes(&text(&o)) == 2 {
            break;
        }
        let waited = started.elapsed();
        if waited > Duration::from_secs(5) {
            // Another program holds UDP 5353 without sharing it.
            let l = logs(&log_dir);
            if l.contains("failed to create `InterfaceState`") {
                eprintln!("note: mDNS could not open its socket (UDP 5353) here: skipped\n{l}");
                return;
            }
        }
        if waited > Duration::from_secs(30) {
            let l = logs(&log_dir);
            panic!("the node did not join by mDNS in 30 s:\n{}\n{l}", text(&o));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let l = logs(&log_dir);
    assert!(l.contains("head found by mdns"), "{l}");

    // SIGKILL the head and start it again: the node finds the restarted head (a new identity)
    // by mDNS again and registers with it.
    let record = std::fs::read_to_string(temp.path().join(format!("cluster-{port}/head.json")))
        .expect("head record");
    let head_pid = serde_json::from_str::<serde_json::Value>(&record).expect("json")["pid"]
        .as_i64()
        .expect("pid") as i32;
    // SAFETY: kill(2) on the head daemon this test started.
    assert_eq!(unsafe { libc::kill(head_pid, libc::SIGKILL) }, 0);
    let gone = Instant::now();
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    while unsafe { libc::kill(head_pid, 0) } == 0 {
        assert!(
            gone.elapsed() < Duration::from_secs(30),
            "the head never died"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = mobula(
        &[
            &["start", "--head", "--dashboard-port", "0"][..],
            &common[..],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let started = Instant::now();
    loop {
        let o = mobula(&["status", "--temp-dir", dir, "--port", &p]);
        let l = logs(&log_dir);
        if o.status.success()
            && active_nodes(&text(&o)) == 2
            && l.contains("joined the restarted head (found by mdns)")
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            panic!(
                "the node did not find the restarted head by mDNS in 60 s:\n{}\n{l}",
                text(&o)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
