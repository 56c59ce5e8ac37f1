//! The bulk data plane: object values move between nodes over direct TCP connections beside
//! the libp2p swarm, whose one-substream-per-request yamux flow control caps a transfer at tens
//! of MB/s. Each daemon listens on a TCP port of its own (advertised in its heartbeats);
//! connections are pooled per peer address and carry one request at a time.
//!
//! Security: a connection starts with a mutual challenge-response over the cluster secret
//! (HMAC-SHA256 of both sides' fresh 32-byte nonces, with a role label so neither answer can be
//! reflected); a peer without the secret is dropped before it can ask anything. Both directions
//! are then encrypted and authenticated with AES-256-GCM (ring) under keys derived by HKDF-SHA256
//! from the secret and the two nonces (a fresh pair per connection), with a frame counter as
//! the nonce, so frames cannot be replayed, reordered or moved between connections.
//!
//! Wire: the client sends `MAGIC` and its nonce; the server answers its nonce and its MAC; the
//! client sends its MAC. Then every message is a frame: a 4-byte big-endian ciphertext length
//! (at most `FRAME` + 16), then the ciphertext and its tag. A request is one frame holding a
//! MessagePack `Request`; the answer is a `Header` frame, then the value in frames of at most
//! `FRAME` bytes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::ids::ObjectId;

/// Errors of the data plane.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The socket failed.
    #[error("data connection: {0}")]
    Io(#[from] std::io::Error),
    /// The peer does not hold the cluster secret, or tampered with a frame.
    #[error("data connection refused: {0}")]
    Auth(&'static str),
    /// A frame or message was malformed.
    #[error("malformed data frame: {0}")]
    Malformed(String),
    /// The peer took too long.
    #[error("data connection timed out")]
    Timeout,
}

type Res<T> = Result<T, DataError>;

const MAGIC: &[u8; 13] = b"MOBULA-DATA-1";
/// Plaintext bytes per frame.
const FRAME: usize = 1 << 20;
const TAG: usize = 16;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one frame may take to arrive once a transfer runs.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection that asks nothing for this long is closed (a lane is exempt: it is quiet
/// while its peer has nothing to say). Pooled connections closed this way are replaced by
/// their client on next use.
const SERVE_IDLE: Duration = if cfg!(test) {
    Duration::from_secs(1)
} else {
    Duration::from_secs(600)
};
/// Idle connections kept per peer.
const POOLED: usize = 4;

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// The whole value of an object.
    Get(ObjectId),
    /// The connection becomes a lane: one-way messages from the peer with this libp2p peer
    /// id (its bytes) follow, until it closes.
    Lane(#[serde(with = "serde_bytes")] Vec<u8>),
}

#[derive(Debug, Serialize, Deserialize)]
enum Header {
    /// The value follows: this many bytes.
    Value(u64),
    /// Not here.
    Missing,
}

/// Gives the value of an object this node holds (called on a blocking thread).
pub type Provider = Arc<dyn Fn(&ObjectId) -> Option<Bytes> + Send + Sync>;

/// Takes the messages that arrive on lanes, in the order each peer sent them: the next
/// message of a lane is read once the future of the one before has finished (called on the
/// data plane's runtime; it must not block).
pub type LaneSink =
    Arc<dyn Fn(libp2p::PeerId, Vec<u8>) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// An outgoing lane: its connection (opened on first use) and a reused frame buffer, written
/// by one sender at a time; `broken` until when it is not tried after failing.
struct Lane {
    addr: SocketAddr,
    conn: tokio::sync::Mutex<(Option<Conn>, Vec<u8>)>,
    broken: parking_lot::Mutex<Option<std::time::Instant>>,
}

/// The largest lane message (as libp2p's request limit).
pub const MAX_LANE_MESSAGE: usize = 64 << 20;
/// How often a message is tried on a lane (a broken connection is dialled again) before it is
/// given back to go as a request.
const LANE_RETRIES: u32 = 3;
/// How long a lane that failed is left alone (its messages go as requests meanwhile).
const LANE_REST: Duration = Duration::from_secs(5);
/// The first byte of a lane frame: more frames of the message follow, or this is its last.
const MORE: u8 = 0;
const LAST: u8 = 1;

fn mac(secret: &[u8; 32], role: &[u8], nc: &[u8; 32], ns: &[u8; 32]) -> Res<Hmac<Sha256>> {
    let mut m = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(secret)
        .map_err(|_| DataError::Auth("bad secret length"))?;
    m.update(role);
    m.update(nc);
    m.update(ns);
    Ok(m)
}

fn keys(secret: &[u8; 32], nc: &[u8; 32], ns: &[u8; 32]) -> Res<([u8; 32], [u8; 32])> {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(nc);
    salt[32..].copy_from_slice(ns);
    let hk = hkdf::Hkdf::<Sha256>::new(Some(&salt), secret);
    let (mut c2s, mut s2c) = ([0u8; 32], [0u8; 32]);
    hk.expand(b"mobula data c2s", &mut c2s)
        .map_err(|_| DataError::Auth("key derivation"))?;
    hk.expand(b"mobula data s2c", &mut s2c)
        .map_err(|_| DataError::Auth("key derivation"))?;
    Ok((c2s, s2c))
}

/// One direction of an encrypted connection: AES-256-GCM (hardware-accelerated where the CPU
/// has AES-NI), a frame counter as the nonce.
struct Sealer {
    key: LessSafeKey,
    counter: u64,
}

impl Sealer {
    fn new(key: &[u8; 32]) -> Res<Self> {
        let key = UnboundKey::new(&AES_256_GCM, key).map_err(|_| DataError::Auth("bad key"))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            counter: 0,
        })
    }

    fn nonce(&mut self) -> Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.counter.to_be_bytes());
        self.counter += 1;
        Nonce::assume_unique_for_key(n)
    }
}

/// An authenticated, encrypted connection.
struct Conn {
    stream: TcpStream,
    send: Sealer,
    recv: Sealer,
    /// Reused buffer for outgoing frames.
    out: Vec<u8>,
}

impl Conn {
    async fn write_frame(&mut self, plain: &[u8]) -> Res<()> {
        self.out.clear();
        self.out
            .extend_from_slice(&((plain.len() + TAG) as u32).to_be_bytes());
        self.out.extend_from_slice(plain);
        let nonce = self.send.nonce();
        let tag = self
            .send
            .key
            .seal_in_place_separate_tag(nonce, Aad::empty(), &mut self.out[4..])
            .map_err(|_| DataError::Auth("encryption failed"))?;
        self.out.extend_from_slice(tag.as_ref());
        self.stream.write_all(&self.out).await?;
        Ok(())
    }

    /// Reads one frame of at most `buf.len() - TAG` plaintext bytes into the start of `buf`,
    /// decrypted in place; returns its plaintext length (the `TAG` bytes after it are spoilt).
    async fn read_frame_at(&mut self, buf: &mut [u8]) -> Res<usize> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).await?;
        let n = u32::from_be_bytes(len) as usize;
        if !(TAG..=buf.len()).contains(&n) {
            return Err(DataError::Malformed(format!("frame of {n} bytes")));
        }
        self.stream.read_exact(&mut buf[..n]).await?;
        let nonce = self.recv.nonce();
        self.recv
            .key
            .open_in_place(nonce, Aad::empty(), &mut buf[..n])
            .map_err(|_| DataError::Auth("a frame failed authentication"))?;
        Ok(n - TAG)
    }

    /// Reads one frame, decrypted, onto the end of `into`; returns its plaintext length.
    async fn read_frame_into(&mut self, into: &mut Vec<u8>, max: usize) -> Res<usize> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).await?;
        let n = u32::from_be_bytes(len) as usize;
        if !(TAG..=max + TAG).contains(&n) {
            return Err(DataError::Malformed(format!("frame of {n} bytes")));
        }
        let start = into.len();
        into.resize(start + n, 0);
        self.stream.read_exact(&mut into[start..]).await?;
        let plain = n - TAG;
        let nonce = self.recv.nonce();
        self.recv
            .key
            .open_in_place(nonce, Aad::empty(), &mut into[start..])
            .map_err(|_| DataError::Auth("a frame failed authentication"))?;
        into.truncate(start + plain);
        Ok(plain)
    }

    async fn read_message<T: for<'de> Deserialize<'de>>(&mut self) -> Res<T> {
        let mut buf = Vec::new();
        self.read_frame_into(&mut buf, 4096).await?;
        rmp_serde::from_slice(&buf).map_err(|e| DataError::Malformed(e.to_string()))
    }

    async fn write_message<T: Serialize>(&mut self, m: &T) -> Res<()> {
        let b = rmp_serde::to_vec(m).map_err(|e| DataError::Malformed(e.to_string()))?;
        self.write_frame(&b).await
    }
}

async fn timed<T>(d: Duration, f: impl std::future::Future<Output = Res<T>>) -> Res<T> {
    tokio::time::timeout(d, f)
        .await
        .map_err(|_| DataError::Timeout)?
}

async fn client_handshake(mut stream: TcpStream, secret: &[u8; 32]) -> Res<Conn> {
    stream.set_nodelay(true)?;
    let nc: [u8; 32] = rand::random();
    let mut hello = Vec::with_capacity(45);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&nc);
    stream.write_all(&hello).await?;
    let mut answer = [0u8; 64];
    stream.read_exact(&mut answer).await?;
    let mut ns = [0u8; 32];
    ns.copy_from_slice(&answer[..32]);
    mac(secret, b"server", &nc, &ns)?
        .verify_slice(&answer[32..])
        .map_err(|_| DataError::Auth("the node does not hold the cluster secret"))?;
    let mine = mac(secret, b"client", &nc, &ns)?.finalize().into_bytes();
    stream.write_all(&mine).await?;
    let (c2s, s2c) = keys(secret, &nc, &ns)?;
    Ok(Conn {
        stream,
        send: Sealer::new(&c2s)?,
        recv: Sealer::new(&s2c)?,
        out: Vec::new(),
    })
}

async fn server_handshake(mut stream: TcpStream, secret: &[u8; 32]) -> Res<Conn> {
    stream.set_nodelay(true)?;
    let mut hello = [0u8; 45];
    stream.read_exact(&mut hello).await?;
    if &hello[..13] != MAGIC {
        return Err(DataError::Auth("not a mobula data connection"));
    }
    let mut nc = [0u8; 32];
    nc.copy_from_slice(&hello[13..]);
    let ns: [u8; 32] = rand::random();
    let theirs = mac(secret, b"server", &nc, &ns)?.finalize().into_bytes();
    let mut answer = Vec::with_capacity(64);
    answer.extend_from_slice(&ns);
    answer.extend_from_slice(&theirs);
    stream.write_all(&answer).await?;
    let mut proof = [0u8; 32];
    stream.read_exact(&mut proof).await?;
    mac(secret, b"client", &nc, &ns)?
        .verify_slice(&proof)
        .map_err(|_| DataError::Auth("the peer does not hold the cluster secret"))?;
    let (c2s, s2c) = keys(secret, &nc, &ns)?;
    Ok(Conn {
        stream,
        send: Sealer::new(&s2c)?,
        recv: Sealer::new(&c2s)?,
        out: Vec::new(),
    })
}

/// The provider's value of `id`, asked on a blocking thread: it may read a spilled value
/// back from disk.
async fn value_of(provider: &Provider, id: ObjectId) -> Res<Option<Bytes>> {
    let p = provider.clone();
    Ok(tokio::task::spawn_blocking(move || p(&id))
        .await
        .map_err(std::io::Error::other)?)
}

/// Serves one connection until the peer closes it or misbehaves.
async fn serve_conn(
    stream: TcpStream,
    secret: [u8; 32],
    provider: Provider,
    sink: Arc<std::sync::OnceLock<LaneSink>>,
) -> Res<()> {
    let mut conn = timed(HANDSHAKE_TIMEOUT, server_handshake(stream, &secret)).await?;
    loop {
        let next = tokio::time::timeout(SERVE_IDLE, conn.read_message()).await;
        let Ok(next) = next else {
            tracing::debug!("an idle data connection closed");
            return Ok(());
        };
        let req: Request = match next {
            Ok(r) => r,
            Err(DataError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        match req {
            Request::Get(id) => match value_of(&provider, id).await? {
                None => conn.write_message(&Header::Missing).await?,
                Some(data) => {
                    conn.write_message(&Header::Value(data.len() as u64))
                        .await?;
                    for part in data.chunks(FRAME) {
                        conn.write_frame(part).await?;
                    }
                }
            },
            Request::Lane(from) => {
                let from = libp2p::PeerId::from_bytes(&from)
                    .map_err(|e| DataError::Malformed(format!("bad peer id on a lane: {e}")))?;
                return serve_lane(conn, from, sink).await;
            }
        }
    }
}

/// Reads one lane message (frames whose first byte says whether more follow).
async fn read_lane_message(conn: &mut Conn) -> Res<Vec<u8>> {
    let mut msg = Vec::new();
    loop {
        let start = msg.len();
        conn.read_frame_into(&mut msg, FRAME + 1).await?;
        let Some(&flag) = msg.get(start) else {
            return Err(DataError::Malformed("an empty lane frame".to_string()));
        };
        msg.remove(start);
        if msg.len() > MAX_LANE_MESSAGE {
            return Err(DataError::Malformed(format!(
                "a lane message over {MAX_LANE_MESSAGE} bytes"
            )));
        }
        match flag {
            LAST => return Ok(msg),
            MORE => {}
            f => return Err(DataError::Malformed(format!("lane frame flag {f}"))),
        }
    }
}

/// Hands the messages of one lane to the sink, one after the other, until the peer closes.
async fn serve_lane(
    mut conn: Conn,
    from: libp2p::PeerId,
    sink: Arc<std::sync::OnceLock<LaneSink>>,
) -> Res<()> {
    tracing::debug!(peer = %from, "lane opened");
    loop {
        let msg = match read_lane_message(&mut conn).await {
            Ok(m) => m,
            Err(DataError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                tracing::debug!(peer = %from, "lane closed");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        match sink.get() {
            Some(sink) => sink(from, msg).await,
            None => {
                tracing::warn!(peer = %from, "a lane message arrived before this node could take it: dropped")
            }
        }
    }
}

/// This node's end of the data plane: its listener and a pool of connections to others.
pub struct DataPlane {
    secret: [u8; 32],
    /// Where each peer's data plane listens (from its heartbeats).
    addrs: parking_lot::Mutex<HashMap<libp2p::PeerId, SocketAddr>>,
    idle: parking_lot::Mutex<HashMap<SocketAddr, Vec<Conn>>>,
    /// The runtime transfers run on (off the daemon's event loop: encryption is CPU work).
    rt: tokio::runtime::Handle,
    /// Where lane messages from peers go.
    sink: Arc<std::sync::OnceLock<LaneSink>>,
    /// This node's libp2p peer id (said when a lane opens).
    me: Vec<u8>,
    /// The queue of each peer's outgoing lane.
    lanes: parking_lot::Mutex<HashMap<libp2p::PeerId, Arc<Lane>>>,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("peers", &self.addrs.lock().len())
            .finish_non_exhaustive()
    }
}

impl DataPlane {
    /// Listens on `bind` (port 0: any) and serves `provider`'s objects to peers holding
    /// `secret`, on a runtime of its own; returns the plane and the bound address.
    pub fn start(
        bind: SocketAddr,
        secret: [u8; 32],
        provider: Provider,
        me: libp2p::PeerId,
    ) -> Res<(Arc<Self>, SocketAddr)> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mobula-data")
            .enable_all()
            .build()?;
        let listener = rt.block_on(TcpListener::bind(bind))?;
        let local = listener.local_addr()?;
        tracing::info!(addr = %local, "data plane listening");
        let handle = rt.handle().clone();
        let sink: Arc<std::sync::OnceLock<LaneSink>> = Default::default();
        let sink2 = sink.clone();
        std::thread::Builder::new()
            .name("mobula-data-accept".to_string())
            .spawn(move || {
                rt.block_on(async move {
                    loop {
                        let (stream, from) = match listener.accept().await {
                            Ok(x) => x,
                            Err(e) => {
                                tracing::warn!(error = %e, "data plane accept failed");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        };
                        let (provider, sink) = (provider.clone(), sink2.clone());
                        tokio::spawn(async move {
                            if let Err(e) = serve_conn(stream, secret, provider, sink).await {
                                tracing::warn!(peer = %from, error = %e, "data connection dropped");
                            }
                        });
                    }
                })
            })?;
        Ok((
            Arc::new(Self {
                secret,
                addrs: Default::default(),
                idle: Default::default(),
                rt: handle,
                sink,
                me: me.to_bytes(),
                lanes: Default::default(),
            }),
            local,
        ))
    }

    /// Sets where lane messages from peers go (once; messages before it are dropped).
    pub fn set_sink(&self, sink: LaneSink) {
        let _ = self.sink.set(sink);
    }

    /// Sends a one-way message to `peer` on its lane (a connection of this plane kept open for
    /// messages to it, opened on first use), written by the caller; messages one sender sends
    /// to a peer arrive in the order sent. Returns once the message is written. `Err` gives
    /// the message back, for the caller to send another way, when `peer`'s data plane is not
    /// known, or the lane failed `LANE_RETRIES` times (dialled again each time) or within the
    /// last `LANE_REST`.
    pub async fn tell(self: &Arc<Self>, peer: libp2p::PeerId, msg: Vec<u8>) -> Result<(), Vec<u8>> {
        if msg.len() > MAX_LANE_MESSAGE {
            return Err(msg);
        }
        let lane = {
            let mut lanes = self.lanes.lock();
            match lanes.get(&peer) {
                Some(l) => l.clone(),
                None => {
                    let Some(addr) = self.addr_of(&peer) else {
                        return Err(msg);
                    };
                    let l = Arc::new(Lane {
                        addr,
                        conn: Default::default(),
                        broken: Default::default(),
                    });
                    lanes.insert(peer, l.clone());
                    l
                }
            }
        };
        if lane.broken.lock().is_some_and(|t| t.elapsed() < LANE_REST) {
            return Err(msg);
        }
        let mut held = lane.conn.lock().await;
        let (conn, part) = &mut *held;
        for attempt in 1..=LANE_RETRIES {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match self.lane_connect(lane.addr).await {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        tracing::warn!(peer = %peer, addr = %lane.addr, error = %e, attempt, "could not open a lane");
                        continue;
                    }
                },
            };
            match timed(FRAME_TIMEOUT, Self::write_lane_message(c, &msg, part)).await {
                Ok(()) => {
                    *lane.broken.lock() = None;
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(peer = %peer, addr = %lane.addr, error = %e, attempt, "a lane broke: opening it again");
                    *conn = None;
                }
            }
        }
        *lane.broken.lock() = Some(std::time::Instant::now());
        Err(msg)
    }

    /// A new, authenticated connection to `addr`.
    async fn connect(&self, addr: SocketAddr) -> Res<Conn> {
        let stream = timed(HANDSHAKE_TIMEOUT, async {
            Ok(TcpStream::connect(addr).await?)
        })
        .await?;
        timed(HANDSHAKE_TIMEOUT, client_handshake(stream, &self.secret)).await
    }

    async fn lane_connect(&self, addr: SocketAddr) -> Res<Conn> {
        let mut conn = self.connect(addr).await?;
        conn.write_message(&Request::Lane(self.me.clone())).await?;
        Ok(conn)
    }

    /// Writes one message as lane frames.
    async fn write_lane_message(conn: &mut Conn, msg: &[u8], part: &mut Vec<u8>) -> Res<()> {
        let mut chunks = msg.chunks(FRAME).peekable();
        if chunks.peek().is_none() {
            return conn.write_frame(&[LAST]).await;
        }
        while let Some(c) = chunks.next() {
            part.clear();
            part.push(if chunks.peek().is_some() { MORE } else { LAST });
            part.extend_from_slice(c);
            conn.write_frame(part).await?;
        }
        Ok(())
    }

    /// Learns where `peer`'s data plane listens.
    pub fn set_addr(&self, peer: libp2p::PeerId, addr: SocketAddr) {
        self.addrs.lock().insert(peer, addr);
    }

    /// Where `peer`'s data plane listens, if known.
    pub fn addr_of(&self, peer: &libp2p::PeerId) -> Option<SocketAddr> {
        self.addrs.lock().get(peer).copied()
    }

    /// The value of object `id` from the node at `addr` (`None`: it does not hold it).
    pub async fn fetch(self: &Arc<Self>, addr: SocketAddr, id: ObjectId) -> Res<Option<Bytes>> {
        let me = self.clone();
        self.rt
            .spawn(async move { me.fetch_here(addr, id).await })
            .await
            .map_err(|e| DataError::Malformed(format!("transfer task failed: {e}")))?
    }

    async fn fetch_here(&self, addr: SocketAddr, id: ObjectId) -> Res<Option<Bytes>> {
        let pooled = self.idle.lock().get_mut(&addr).and_then(Vec::pop);
        if let Some(conn) = pooled {
            match self.fetch_on(addr, conn, id).await {
                // A pooled connection can have gone stale (its peer restarted, or closed it
                // while idle): a request it fails before any of the value arrived is tried
                // again on a fresh connection.
                Err(Attempt::Unanswered(e)) => {
                    tracing::debug!(addr = %addr, error = %e, "a pooled data connection failed: reconnecting");
                }
                Err(Attempt::Failed(e)) => return Err(e),
                Ok(v) => return Ok(v),
            }
        }
        let conn = self.connect(addr).await?;
        self.fetch_on(addr, conn, id)
            .await
            .map_err(Attempt::into_error)
    }

    /// One request on one connection.
    async fn fetch_on(
        &self,
        addr: SocketAddr,
        mut conn: Conn,
        id: ObjectId,
    ) -> Result<Option<Bytes>, Attempt> {
        conn.write_message(&Request::Get(id))
            .await
            .map_err(Attempt::Unanswered)?;
        let header: Header = timed(FRAME_TIMEOUT, conn.read_message())
            .await
            .map_err(Attempt::Unanswered)?;
        let size = match header {
            Header::Missing => {
                self.give_back(addr, conn);
                return Ok(None);
            }
            Header::Value(n) => n as usize,
        };
        // A large value lands in shared memory, which a driver or worker process of this node
        // then maps as it is (`worker::shm`).
        if let Some(mut landing) = crate::worker::shm::Landing::new(size) {
            let mut part = Vec::new();
            let mut at = 0;
            while at < size {
                let want = (size - at).min(FRAME);
                let dst = landing.bytes_mut();
                // Decrypted where it lands, while the frame's tag fits before the end; the
                // last frame goes through `part`.
                let got = if at + want + TAG <= size {
                    timed(
                        FRAME_TIMEOUT,
                        conn.read_frame_at(&mut dst[at..at + want + TAG]),
                    )
                    .await
                } else {
                    part.resize(want + TAG, 0);
                    timed(FRAME_TIMEOUT, conn.read_frame_at(&mut part))
                        .await
                        .inspect(|&got| dst[at..at + got].copy_from_slice(&part[..got]))
                }
                .map_err(Attempt::Failed)?;
                if got == 0 {
                    return Err(Attempt::Failed(DataError::Malformed(
                        "an empty frame".to_string(),
                    )));
                }
                at += got;
                landing.filled(at);
            }
            self.give_back(addr, conn);
            return Ok(Some(landing.finish()));
        }
        // The size is the peer's word: reserve at most one frame ahead, grow as frames arrive.
        let mut out = Vec::with_capacity(size.min(FRAME) + TAG);
        while out.len() < size {
            let want = (size - out.len()).min(FRAME);
            let got = timed(FRAME_TIMEOUT, conn.read_frame_into(&mut out, want))
                .await
                .map_err(Attempt::Failed)?;
            if got == 0 && want > 0 {
                return Err(Attempt::Failed(DataError::Malformed(
                    "an empty frame".to_string(),
                )));
            }
        }
        self.give_back(addr, conn);
        Ok(Some(Bytes::from(out)))
    }

    fn give_back(&self, addr: SocketAddr, conn: Conn) {
        let mut idle = self.idle.lock();
        let v = idle.entry(addr).or_default();
        if v.len() < POOLED {
            v.push(conn);
        }
    }
}

/// How a request on one connection failed: before the peer answered (worth one more try on
/// a fresh connection), or midway.
enum Attempt {
    Unanswered(DataError),
    Failed(DataError),
}

impl Attempt {
    fn into_error(self) -> DataError {
        match self {
            Attempt::Unanswered(e) | Attempt::Failed(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data plane on a free local port, with a peer id of its own.
    fn plane(secret: [u8; 32], provider: Provider) -> (Arc<DataPlane>, SocketAddr) {
        DataPlane::start(
            "127.0.0.1:0".parse().expect("addr"),
            secret,
            provider,
            libp2p::PeerId::random(),
        )
        .expect("start")
    }

    /// `cargo test --release --lib throughput_probe -- --ignored --nocapture`
    #[test]
    #[ignore = "a throughput probe, not a check"]
    fn throughput_probe() {
        let big: Bytes = vec![5u8; 256 << 20].into();
        let id = ObjectId::new();
        let served = big.clone();
        let p: Provider = Arc::new(move |_: &ObjectId| Some(served.clone()));
        let (plane, addr) = plane([1u8; 32], p);
        let rt = tokio::runtime::Runtime::new().expect("rt");
        for _ in 0..4 {
            let t = std::time::Instant::now();
            let got = rt.block_on(plane.fetch(addr, id)).expect("fetch");
            let s = t.elapsed().as_secs_f64();
            eprintln!(
                "256 MiB in {s:.3} s = {:.2} GB/s",
                big.len() as f64 / 1e9 / s
            );
            assert_eq!(got.map(|b| b.len()), Some(big.len()));
        }
    }

    #[test]
    fn objects_cross_and_strangers_are_refused() {
        let secret = [7u8; 32];
        let big: Bytes = (0..(3 * FRAME + 123)).map(|i| (i % 251) as u8).collect();
        let id = ObjectId::new();
        let map: HashMap<ObjectId, Bytes> = [(id, big.clone())].into_iter().collect();
        let p: Provider = Arc::new(move |i: &ObjectId| map.get(i).cloned());
        let (server, addr) = plane(secret, p);
        let rt = tokio::runtime::Runtime::new().expect("rt");
        // Twice: the second request reuses the pooled connection.
        for _ in 0..2 {
            let got = rt.block_on(server.fetch(addr, id)).expect("fetch");
            assert_eq!(got.as_deref(), Some(&big[..]));
        }
        let missing = rt
            .block_on(server.fetch(addr, ObjectId::new()))
            .expect("fetch");
        assert!(missing.is_none());

        // A client with another secret is refused at the handshake.
        let nothing: Provider = Arc::new(|_: &ObjectId| None);
        let (stranger, _) = plane([8u8; 32], nothing);
        match rt.block_on(stranger.fetch(addr, id)) {
            Err(DataError::Auth(_)) | Err(DataError::Io(_)) => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Garbage is dropped, and the server keeps serving.
        rt.block_on(async {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let _ = s.write_all(&[0xff; 100]).await;
        });
        let got = rt
            .block_on(server.fetch(addr, id))
            .expect("fetch after garbage");
        assert_eq!(got.map(|b| b.len()), Some(big.len()));
    }

    type Arrivals = flume::Receiver<(libp2p::PeerId, Vec<u8>)>;

    /// A plane whose lane sink sends what arrives on the returned channel.
    fn lane_end(secret: [u8; 32]) -> (Arc<DataPlane>, SocketAddr, Arrivals) {
        let nothing: Provider = Arc::new(|_: &ObjectId| None);
        let (plane, addr) = plane(secret, nothing);
        let (tx, rx) = flume::unbounded();
        plane.set_sink(Arc::new(move |from, msg| {
            let tx = tx.clone();
            Box::pin(async move {
                let _ = tx.send_async((from, msg)).await;
            })
        }));
        (plane, addr, rx)
    }

    #[test]
    fn lane_messages_arrive_whole_and_in_order() {
        let secret = [5u8; 32];
        let (receiver, addr, got) = lane_end(secret);
        let (sender, _, _) = lane_end(secret);
        let to = libp2p::PeerId::random();
        let rt = tokio::runtime::Runtime::new().expect("rt");
        // Unknown peer: the message comes back.
        assert_eq!(rt.block_on(sender.tell(to, vec![1, 2])), Err(vec![1, 2]));
        sender.set_addr(to, addr);
        // Small, empty and multi-frame (3 MiB + 5) messages, interleaved.
        let big: Vec<u8> = (0..(3 << 20) + 5).map(|i| (i % 251) as u8).collect();
        let mut sent = Vec::new();
        for i in 0..200u32 {
            let m = match i % 50 {
                7 => big.clone(),
                8 => Vec::new(),
                _ => i.to_be_bytes().to_vec(),
            };
            sent.push(m.clone());
            rt.block_on(sender.tell(to, m)).expect("queued");
        }
        for want in sent {
            let (from, m) = got
                .recv_timeout(Duration::from_secs(60))
                .expect("a lane message");
            assert_eq!(from.to_bytes(), sender.me);
            assert_eq!(m.len(), want.len());
            assert!(m == want, "a lane message changed on the way");
        }
        drop(receiver);
    }

    #[test]
    fn a_lane_to_a_stranger_carries_nothing() {
        let (_theirs, addr, got) = lane_end([6u8; 32]);
        let (sender, _, _) = lane_end([7u8; 32]);
        let to = libp2p::PeerId::random();
        sender.set_addr(to, addr);
        let rt = tokio::runtime::Runtime::new().expect("rt");
        // Given back after the retries, and at once while the lane rests.
        assert_eq!(
            rt.block_on(sender.tell(to, b"hello".to_vec())),
            Err(b"hello".to_vec())
        );
        let t = std::time::Instant::now();
        assert!(rt.block_on(sender.tell(to, b"again".to_vec())).is_err());
        assert!(t.elapsed() < LANE_REST);
        assert!(
            got.try_recv().is_err(),
            "a stranger's lane delivered a message"
        );
    }

    #[test]
    fn idle_connections_are_closed_and_lanes_are_not() {
        let secret = [4u8; 32];
        let (_server, addr, got) = lane_end(secret);
        let rt = tokio::runtime::Runtime::new().expect("rt");
        rt.block_on(async {
            // A connection that asks nothing is closed by the server.
            let stream = TcpStream::connect(addr).await.expect("connect");
            let mut conn = client_handshake(stream, &secret).await.expect("handshake");
            let mut b = [0u8; 1];
            let r = tokio::time::timeout(Duration::from_secs(60), conn.stream.read(&mut b))
                .await
                .expect("the idle connection stayed open");
            assert!(matches!(r, Ok(0) | Err(_)), "got {r:?}");
            // A lane outlives the idle time: a message after it still arrives on it.
            let stream = TcpStream::connect(addr).await.expect("connect");
            let mut lane = client_handshake(stream, &secret).await.expect("handshake");
            let me = libp2p::PeerId::random();
            lane.write_message(&Request::Lane(me.to_bytes()))
                .await
                .expect("lane");
            DataPlane::write_lane_message(&mut lane, b"one", &mut Vec::new())
                .await
                .expect("write");
            let (_, m) = got.recv_async().await.expect("first");
            assert_eq!(m, b"one");
            tokio::time::sleep(SERVE_IDLE * 2).await;
            DataPlane::write_lane_message(&mut lane, b"two", &mut Vec::new())
                .await
                .expect("write after the idle time");
            let (_, m) = tokio::time::timeout(Duration::from_secs(60), got.recv_async())
                .await
                .expect("the lane was closed")
                .expect("second");
            assert_eq!(m, b"two");
        });
    }

    #[test]
    fn a_stale_pooled_connection_is_replaced() {
        let secret = [9u8; 32];
        let rt = tokio::runtime::Runtime::new().expect("rt");
        // A server that answers one request per connection, then closes it.
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let Ok(mut conn) = server_handshake(stream, &secret).await else {
                    continue;
                };
                if conn.read_message::<Request>().await.is_ok() {
                    let _ = conn.write_message(&Header::Missing).await;
                }
            }
        });
        let nothing: Provider = Arc::new(|_: &ObjectId| None);
        let (client, _) = plane(secret, nothing);
        for round in 0..3 {
            let got = rt.block_on(client.fetch(addr, ObjectId::new()));
            assert!(
                matches!(got, Ok(None)),
                "request {round} on a closed pooled connection: {got:?}"
            );
        }
    }

    mod fuzz {
        //! Property tests: garbage before or after the handshake, truncated and oversized frames
        //! end the connection with an error (or a clean close), never a panic or a hang.
        use super::*;
        use proptest::prelude::*;

        const SECRET: [u8; 32] = [3u8; 32];

        /// Serves one connection on which `client` writes, then closes its sending half;
        /// returns how the server side ended.
        fn serve_one<F, Fut>(client: F) -> Res<()>
        where
            F: FnOnce(TcpStream) -> Fut + Send + 'static,
            Fut: std::future::Future<Output = ()> + Send + 'static,
        {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let addr = listener.local_addr().expect("addr");
                let c = tokio::spawn(async move {
                    let stream = TcpStream::connect(addr).await.expect("connect");
                    client(stream).await;
                });
                let (stream, _) = listener.accept().await.expect("accept");
                let nothing: Provider = Arc::new(|_: &ObjectId| None);
                let out = tokio::time::timeout(
                    Duration::from_secs(60),
                    serve_conn(stream, SECRET, nothing, Default::default()),
                )
                .await
                .expect("the server hung on bad input");
                let _ = c.await;
                out
            })
        }

        async fn send_raw(mut s: TcpStream, bytes: Vec<u8>) {
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
        }

        /// Completes a real handshake, then writes `bytes` raw on the connection.
        async fn send_after_handshake(s: TcpStream, bytes: Vec<u8>) {
            let Ok(conn) = client_handshake(s, &SECRET).await else {
                return;
            };
            send_raw(conn.stream, bytes).await;
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            #[test]
            fn garbage_before_the_handshake_is_refused(
                data in proptest::collection::vec(any::<u8>(), 0..256),
            ) {
                prop_assert!(serve_one(move |s| send_raw(s, data)).is_err());
            }

            #[test]
            fn garbage_frames_after_the_handshake_never_panic(
                data in proptest::collection::vec(any::<u8>(), 0..512),
            ) {
                let out = serve_one(move |s| send_after_handshake(s, data));
                prop_assert!(
                    !matches!(out, Err(DataError::Timeout)),
                    "unexpected {out:?}"
                );
            }

            #[test]
            fn oversized_length_prefixes_are_errors(
                n in (4096u32 + TAG as u32 + 1)..=u32::MAX,
                tail in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let mut data = n.to_be_bytes().to_vec();
                data.extend_from_slice(&tail);
                let out = serve_one(move |s| send_after_handshake(s, data));
                prop_assert!(matches!(out, Err(DataError::Malformed(_))), "got {out:?}");
            }

            #[test]
            fn bad_lane_frames_end_the_lane(
                flag in 2u8..=255,
                body in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let out = serve_one(move |s| async move {
                    let Ok(mut conn) = client_handshake(s, &SECRET).await else {
                        return;
                    };
                    let me = libp2p::PeerId::random().to_bytes();
                    if conn.write_message(&Request::Lane(me)).await.is_err() {
                        return;
                    }
                    let mut frame = vec![flag];
                    frame.extend_from_slice(&body);
                    let _ = conn.write_frame(&frame).await;
                    let _ = conn.write_frame(&[]).await;
                    let _ = conn.stream.shutdown().await;
                });
                prop_assert!(matches!(out, Err(DataError::Malformed(_))), "got {out:?}");
            }

            #[test]
            fn a_lane_from_a_bad_peer_id_is_refused(
                id in proptest::collection::vec(any::<u8>(), 0..8),
            ) {
                let out = serve_one(move |s| async move {
                    let Ok(mut conn) = client_handshake(s, &SECRET).await else {
                        return;
                    };
                    // A sha-256 multihash cut short.
                    let mut bad = vec![0x12, 0x20];
                    bad.extend_from_slice(&id);
                    let _ = conn.write_message(&Request::Lane(bad)).await;
                    let _ = conn.stream.shutdown().await;
                });
                prop_assert!(matches!(out, Err(DataError::Malformed(_))), "got {out:?}");
            }

            #[test]
            fn tampered_frames_fail_authentication(at in 0usize..64, flip in 1u8..=255) {
                let out = serve_one(move |s| async move {
                    let Ok(mut conn) = client_handshake(s, &SECRET).await else {
                        return;
                    };
                    let b = rmp_serde::to_vec(&Request::Get(ObjectId::new())).expect("encode");
                    conn.out.clear();
                    let _ = conn.write_frame(&b).await;
                    // Re-send the same frame with one byte flipped: its counter is spent, and
                    // the flip breaks its tag.
                    let mut frame = conn.out.clone();
                    let i = 4 + at % (frame.len() - 4);
                    frame[i] ^= flip;
                    send_raw(conn.stream, frame).await;
                });
                prop_assert!(matches!(out, Err(DataError::Auth(_))), "got {out:?}");
            }
        }
    }
}
