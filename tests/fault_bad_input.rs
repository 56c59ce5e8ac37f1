//! Bad input from the network: a real node daemon gets garbage and oversized frames on its
//! raylet Unix socket and on its data-plane port; each bad connection is dropped with a log
//! line, and the node still serves a real driver afterwards.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::HANG;
use mobula::Config;

#[mobula::remote]
fn sq(x: u64) -> u64 {
    x * x
}

/// `s` without its ANSI colour sequences (`ESC [ ... m`).
fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Every log line the cluster's daemons wrote so far.
fn logs(c: &common::cluster::Cluster) -> String {
    let mut text = String::new();
    if let Ok(rd) = std::fs::read_dir(c.dir().join("logs")) {
        for e in rd.filter_map(|e| e.ok()) {
            text.push_str(&plain(
                &std::fs::read_to_string(e.path()).unwrap_or_default(),
            ));
        }
    }
    text
}

/// Polls the logs until a line holds `what`; returns that line.
fn await_log(c: &common::cluster::Cluster, what: &str) -> String {
    let deadline = Instant::now() + HANG;
    loop {
        if let Some(l) = logs(c).lines().find(|l| l.contains(what)) {
            return l.to_string();
        }
        assert!(Instant::now() < deadline, "no log line says {what:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The raylet socket of the cluster's one node.
fn raylet_socket(c: &common::cluster::Cluster) -> PathBuf {
    let nodes = c.dir().join("nodes");
    let file = std::fs::read_dir(&nodes)
        .expect("nodes dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "socket"))
        .expect("a socket file");
    PathBuf::from(std::fs::read_to_string(file).expect("socket file").trim())
}

/// Reads until the peer closes the connection (the daemon dropped it).
fn assert_dropped(mut s: impl Read, what: &str) {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("{what}: the daemon did not drop the connection: {e}"),
        }
    }
}

#[test]
fn a_node_drops_bad_connections_and_keeps_serving() {
    mobula::worker_entry();
    let h = common::cluster::head_only();

    // The raylet socket: a frame that is not a hello, a first frame of 512 MiB (under the
    // protocol's limit, over a hello's: dropped at once, without the node waiting for, or
    // reserving, the rest), and a length prefix over every limit.
    let sock = raylet_socket(&h);
    let cases: [(&[u8], &str, bool); 3] = [
        (
            b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1",
            "malformed hello",
            false,
        ),
        // First, so that its line is new when awaited (without the hello limit the node
        // would wait 30 s for the rest, then log "closed before its hello").
        (b"\x20\x00\x00\x00\x00\x01\x02", "bad first frame", false),
        (b"\xff\xff\xff\xff\x00\x01\x02", "bad first frame", true),
    ];
    for (bytes, line, end) in cases {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).expect("connect raylet");
        s.set_read_timeout(Some(HANG)).expect("timeout");
        s.write_all(bytes).expect("write garbage");
        if end {
            // The oversized frame can never complete: end it.
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        }
        assert_dropped(&s, line);
        await_log(&h, line);
    }

    // The data plane: garbage instead of a handshake, and a huge length prefix.
    let listening = await_log(&h, "data plane listening");
    let addr = listening
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .expect("the data plane's address in its log line")
        .to_string();
    for bytes in [
        vec![0xffu8; 100],
        [&u32::MAX.to_be_bytes()[..], &[0u8; 60]].concat(),
    ] {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect data plane");
        s.set_read_timeout(Some(HANG)).expect("timeout");
        s.write_all(&bytes).expect("write garbage");
        assert_dropped(&s, "data plane");
    }
    let deadline = Instant::now() + HANG;
    while logs(&h).matches("data connection dropped").count() < 2 {
        assert!(Instant::now() < deadline, "the drops were not logged");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The node still serves a real driver.
    let rt = common::start(
        Config::default()
            .address(format!("127.0.0.1:{}", h.port))
            .cluster_root(h.temp.path()),
    );
    let r = sq::remote(&rt, 7);
    assert_eq!(rt.get_timeout(&r, Some(HANG)).expect("task"), 49);
}
