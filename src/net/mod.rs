//! Networking between nodes: one libp2p `Swarm` per node (TCP, a private-network pre-shared
//! key so that only holders of the cluster secret can connect, noise encryption, yamux),
//! driven on a thread of its own and bridged to the rest of the node by channels.
//!
//! Gossipsub carries broadcast messages (membership, heartbeats, the resource view);
//! request/response carries direct messages. Payloads are opaque bytes here: the layers above
//! encode them with MessagePack. A peer that sends an oversized or truncated message has that
//! stream dropped and the event logged; the node keeps serving.
//!
//! With `NetConfig::mdns` the swarm also announces itself on the LAN by multicast DNS and
//! reports the peers it hears of (`NetEvent::Discovered`); without it the mDNS behaviour is
//! absent (`Toggle`) and nothing is sent or listened for on UDP 5353.

pub mod data;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::core::transport::Transport as _;
use libp2p::core::upgrade::Version;
use libp2p::futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity};
use libp2p::identity::Keypair;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, mdns, noise, tcp, yamux};
use tokio::sync::{mpsc, oneshot};

/// Largest request or response accepted (64 MiB): larger payloads must be chunked.
pub const MAX_MESSAGE: usize = 64 << 20;

const RPC_PROTOCOL: &str = "/mobula/rpc/1";
const TOPIC: &str = "mobula/cluster/1";

/// Errors of the network layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NetError {
    /// The swarm could not be built or could not listen.
    #[error("network setup failed: {0}")]
    Setup(String),
    /// The swarm thread is gone.
    #[error("the network thread has stopped")]
    Stopped,
    /// A request failed (no connection, timeout, refused).
    #[error("request to {peer} failed: {reason}")]
    Request {
        /// The peer asked.
        peer: PeerId,
        /// What happened.
        reason: String,
    },
    /// A broadcast failed (for example: no peer subscribed yet).
    #[error("publish failed: {0}")]
    Publish(String),
}

/// Settings of one node's swarm.
#[derive(Clone)]
pub struct NetConfig {
    /// The node's identity (a new one when `None`).
    pub keypair: Option<Keypair>,
    /// Where to listen, e.g. `/ip4/127.0.0.1/tcp/6379`.
    pub listen: Option<Multiaddr>,
    /// The cluster secret: peers without the same 32 bytes cannot connect.
    pub secret: [u8; 32],
    /// Addresses to dial at start (the head).
    pub dial: Vec<Multiaddr>,
    /// How long a request may take.
    pub request_timeout: Duration,
    /// Announce this node and discover others on the LAN by mDNS (needs multicast).
    pub mdns: bool,
}

impl std::fmt::Debug for NetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetConfig")
            .field("listen", &self.listen)
            .field("dial", &self.dial)
            .field("mdns", &self.mdns)
            .finish_non_exhaustive()
    }
}

/// What the swarm reports.
#[derive(Debug)]
pub enum NetEvent {
    /// Listening on an address.
    Listening(Multiaddr),
    /// A connection to a peer is up.
    Connected(PeerId),
    /// The last connection to a peer closed.
    Disconnected(PeerId),
    /// A peer subscribed to the cluster topic (broadcasts now reach it).
    Subscribed(PeerId),
    /// mDNS heard of a peer at an address (only with `NetConfig::mdns`). Requests to it can
    /// dial that address; nothing is dialled by the discovery itself. A peer of another
    /// cluster shows up here too: connecting to it fails the pre-shared-key handshake.
    Discovered(PeerId, Multiaddr),
    /// A broadcast arrived.
    Gossip {
        /// Who published it.
        from: PeerId,
        /// The payload.
        data: Vec<u8>,
    },
    /// A direct request arrived; send the response on `reply`.
    Request {
        /// Who asked.
        from: PeerId,
        /// The payload.
        data: Vec<u8>,
        /// Where the answer goes (dropping it fails the peer's request).
        reply: oneshot::Sender<Vec<u8>>,
    },
}

enum Cmd {
    Request {
        peer: PeerId,
        data: Vec<u8>,
        done: oneshot::Sender<Result<Vec<u8>, NetError>>,
    },
    Publish {
        data: Vec<u8>,
        done: oneshot::Sender<Result<(), NetError>>,
    },
    Dial(Multiaddr),
    AddAddress(PeerId, Multiaddr),
    Shutdown,
}

/// A handle to a running swarm.
#[derive(Clone, Debug)]
pub struct NetHandle {
    peer_id: PeerId,
    cmd: mpsc::Sender<Cmd>,
    heard: Heard,
    limits: Limits,
    /// The bulk data plane, once the daemon started it.
    data: std::sync::Arc<std::sync::OnceLock<std::sync::Arc<data::DataPlane>>>,
}

/// Requests to one peer in flight at once, at most: yamux refuses more outbound streams than
/// its limit, so a burst waits here instead of failing.
const REQUESTS_PER_PEER: usize = 64;

type Limits =
    std::sync::Arc<parking_lot::Mutex<HashMap<PeerId, std::sync::Arc<tokio::sync::Semaphore>>>>;

/// When each peer was last heard from (any message: gossip, request or response).
type Heard = std::sync::Arc<parking_lot::Mutex<HashMap<PeerId, std::time::Instant>>>;

impl NetHandle {
    /// Attaches the data plane that object transfers use.
    pub fn set_data(&self, plane: std::sync::Arc<data::DataPlane>) {
        let _ = self.data.set(plane);
    }

    /// The data plane and where `peer`'s listens, when both are known.
    pub fn data_to(
        &self,
        peer: &PeerId,
    ) -> Option<(std::sync::Arc<data::DataPlane>, std::net::SocketAddr)> {
        let plane = self.data.get()?;
        Some((plane.clone(), plane.addr_of(peer)?))
    }

    /// Sends a one-way message to `peer` over its lane on the data plane (in order with the
    /// others sent that way); gives the message back when no lane to `peer` can be had, for
    /// the caller to send as a request instead.
    pub async fn tell(&self, peer: PeerId, data: Vec<u8>) -> Result<(), Vec<u8>> {
        match self.data.get() {
            Some(plane) => plane.tell(peer, data).await,
            None => Err(data),
        }
    }

    /// Counts a message that arrived from `peer` outside the swarm (on a lane) as hearing
    /// from it.
    pub fn heard_from(&self, peer: PeerId) {
        self.heard.lock().insert(peer, std::time::Instant::now());
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// When `peer` last sent anything (a broadcast, a request or a response).
    pub fn last_heard(&self, peer: &PeerId) -> Option<std::time::Instant> {
        self.heard.lock().get(peer).copied()
    }

    /// Sends a request and waits for the response.
    pub async fn request(&self, peer: PeerId, data: Vec<u8>) -> Result<Vec<u8>, NetError> {
        let limit = self
            .limits
            .lock()
            .entry(peer)
            .or_insert_with(|| std::sync::Arc::new(tokio::sync::Semaphore::new(REQUESTS_PER_PEER)))
            .clone();
        let _permit = limit.acquire_owned().await.map_err(|_| NetError::Stopped)?;
        let (done, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Request { peer, data, done })
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Broadcasts to every subscribed peer.
    pub async fn publish(&self, data: Vec<u8>) -> Result<(), NetError> {
        let (done, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Publish { data, done })
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Dials an address.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.cmd
            .send(Cmd::Dial(addr))
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Tells the swarm where a peer listens (requests to it dial there when needed).
    pub async fn add_address(&self, peer: PeerId, addr: Multiaddr) -> Result<(), NetError> {
        self.cmd
            .send(Cmd::AddAddress(peer, addr))
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Stops the swarm.
    pub async fn shutdown(&self) {
        let _ = self.cmd.send(Cmd::Shutdown).await;
    }
}

/// Length-prefixed byte messages for request/response.
#[derive(Clone, Default)]
struct BytesCodec;

async fn read_msg<T: libp2p::futures::AsyncRead + Unpin + Send>(
    io: &mut T,
) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("message of {n} bytes is over the {MAX_MESSAGE} byte limit"),
        ));
    }
    let mut buf = vec![0u8; n];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_msg<T: libp2p::futures::AsyncWrite + Unpin + Send>(
    io: &mut T,
    data: Vec<u8>,
) -> std::io::Result<()> {
    if data.len() > MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("message of {} bytes is over the limit", data.len()),
        ));
    }
    io.write_all(&(data.len() as u32).to_be_bytes()).await?;
    io.write_all(&data).await?;
    io.close().await
}

impl request_response::Codec for BytesCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: libp2p::futures::AsyncRead + Unpin + Send,
    {
        read_msg(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: libp2p::futures::AsyncRead + Unpin + Send,
    {
        read_msg(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: libp2p::futures::AsyncWrite + Unpin + Send,
    {
        write_msg(io, req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: libp2p::futures::AsyncWrite + Unpin + Send,
    {
        write_msg(io, res).await
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    rpc: request_response::Behaviour<BytesCodec>,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

/// mDNS settings: ask again every 5 s once probing is over (libp2p's default is 5 minutes,
/// too slow for a node waiting to find its head), and let silent records go after a minute.
fn mdns_config() -> mdns::Config {
    mdns::Config {
        ttl: Duration::from_secs(60),
        query_interval: Duration::from_secs(5),
        enable_ipv6: false,
    }
}

fn build(cfg: &NetConfig) -> Result<Swarm<Behaviour>, NetError> {
    let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
    let keypair = cfg
        .keypair
        .clone()
        .unwrap_or_else(Keypair::generate_ed25519);
    let psk = PreSharedKey::new(cfg.secret);
    let timeout = cfg.request_timeout;
    let mdns_on = cfg.mdns;
    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| {
            let noise = noise::Config::new(key)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                    .upgrade(Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .timeout(Duration::from_secs(20)),
            )
        })
        .map_err(|e| setup(&e))?
        .with_behaviour(|key| {
            let gcfg = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(500))
                .validation_mode(gossipsub::ValidationMode::Strict)
                .max_transmit_size(1 << 20)
                .build()
                .map_err(|e| NetError::Setup(e.to_string()))?;
            let gossipsub =
                gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gcfg)
                    .map_err(|e| NetError::Setup(e.to_string()))?;
            let rpc = request_response::Behaviour::with_codec(
                BytesCodec,
                [(StreamProtocol::new(RPC_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(timeout),
            );
            let mdns = if mdns_on {
                let m = mdns::tokio::Behaviour::new(mdns_config(), key.public().to_peer_id())
                    .map_err(|e| NetError::Setup(format!("cannot start mdns: {e}")))?;
                Some(m)
            } else {
                None
            };
            Ok(Behaviour {
                gossipsub,
                rpc,
                mdns: Toggle::from(mdns),
            })
        })
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    Ok(swarm)
}

/// Starts a swarm on its own thread. Returns its handle, the stream of its events and the
/// address it listens on (when `listen` was given).
pub fn start(
    cfg: NetConfig,
) -> Result<(NetHandle, mpsc::Receiver<NetEvent>, Option<Multiaddr>), NetError> {
    let (cmd_tx, cmd_rx) = mpsc::channel::<Cmd>(4096);
    let (ev_tx, ev_rx) = mpsc::channel::<NetEvent>(4096);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let heard: Heard = Default::default();
    let heard2 = heard.clone();
    std::thread::Builder::new()
        .name("mobula-net".to_string())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(NetError::Setup(e.to_string())));
                    return;
                }
            };
            rt.block_on(async move {
                let mut swarm = match build(&cfg) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let topic = IdentTopic::new(TOPIC);
                if let Err(e) = swarm.behaviour_mut().gossipsub.subscribe(&topic) {
                    let _ = ready_tx.send(Err(NetError::Setup(e.to_string())));
                    return;
                }
                let mut listening = None;
                if let Some(addr) = &cfg.listen {
                    if let Err(e) = port_free(addr) {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                    if let Err(e) = swarm.listen_on(addr.clone()) {
                        let _ = ready_tx.send(Err(NetError::Setup(format!(
                            "cannot listen on {addr}: {e:?}"
                        ))));
                        return;
                    }
                    // Wait for the bound address (or the bind error).
                    loop {
                        match swarm.select_next_some().await {
                            SwarmEvent::NewListenAddr { address, .. } => {
                                listening = Some(address);
                                break;
                            }
                            SwarmEvent::ListenerClosed { reason, .. } => {
                                let _ = ready_tx.send(Err(NetError::Setup(format!(
                                    "cannot listen on {addr}: {reason:?}"
                                ))));
                                return;
                            }
                            SwarmEvent::ListenerError { error, .. } => {
                                let _ = ready_tx.send(Err(NetError::Setup(format!(
                                    "cannot listen on {addr}: {error:?}"
                                ))));
                                return;
                            }
                            _ => {}
                        }
                    }
                }
                for d in &cfg.dial {
                    if let Err(e) = swarm.dial(d.clone()) {
                        tracing::warn!(addr = %d, error = %e, "dial failed");
                    }
                }
                let _ = ready_tx.send(Ok((*swarm.local_peer_id(), listening)));
                run(swarm, topic, cmd_rx, ev_tx, heard2).await;
            });
        })
        .map_err(|e| NetError::Setup(e.to_string()))?;
    let (peer_id, addr) = ready_rx.recv().map_err(|_| NetError::Stopped)??;
    Ok((
        NetHandle {
            peer_id,
            cmd: cmd_tx,
            heard,
            limits: Default::default(),
            data: Default::default(),
        },
        ev_rx,
        addr,
    ))
}

type Replying = std::pin::Pin<
    Box<dyn std::future::Future<Output = (ResponseChannel<Vec<u8>>, Option<Vec<u8>>)> + Send>,
>;

async fn run(
    mut swarm: Swarm<Behaviour>,
    topic: IdentTopic,
    mut cmds: mpsc::Receiver<Cmd>,
    events: mpsc::Sender<NetEvent>,
    heard: Heard,
) {
    let hear = |p: PeerId| {
        heard.lock().insert(p, std::time::Instant::now());
    };
    let mut pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, NetError>>> =
        HashMap::new();
    let mut replies: FuturesUnordered<Replying> = FuturesUnordered::new();
    // Peers heard of by mDNS: failing to reach one is expected (another cluster's secret,
    // another program altogether), so it is logged at debug only.
    let mut discovered: HashSet<PeerId> = HashSet::new();
    // Events go out with `try_send`: a stalled consumer loses events (counted) rather than
    // stalling the swarm, which must keep being polled.
    let mut dropped: u64 = 0;
    let emit = |ev: NetEvent, dropped: &mut u64| {
        if events.try_send(ev).is_err() {
            *dropped += 1;
            if (*dropped).is_power_of_two() {
                tracing::warn!(
                    dropped = *dropped,
                    "network events dropped: the node is not keeping up"
                );
            }
        }
    };
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                None | Some(Cmd::Shutdown) => break,
                Some(Cmd::Request { peer, data, done }) => {
                    let id = swarm.behaviour_mut().rpc.send_request(&peer, data);
                    pending.insert(id, done);
                }
                Some(Cmd::Publish { data, done }) => {
                    let r = swarm
                        .behaviour_mut()
                        .gossipsub
                        .publish(topic.clone(), data)
                        .map(|_| ())
                        .map_err(|e| NetError::Publish(e.to_string()));
                    let _ = done.send(r);
                }
                Some(Cmd::AddAddress(peer, addr)) => {
                    swarm.add_peer_address(peer, addr);
                }
                Some(Cmd::Dial(addr)) => {
                    if let Err(e) = swarm.dial(addr.clone()) {
                        tracing::warn!(addr = %addr, error = %e, "dial failed");
                    }
                }
            },
            Some((channel, answer)) = replies.next(), if !replies.is_empty() => {
                match answer {
                    Some(data) => {
                        if swarm.behaviour_mut().rpc.send_response(channel, data).is_err() {
                            tracing::debug!("response dropped: the requester went away");
                        }
                    }
                    None => drop(channel),
                }
            }
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::NewListenAddr { address, .. } => emit(NetEvent::Listening(address), &mut dropped),
                SwarmEvent::ConnectionEstablished { peer_id, num_established, .. }
                    if num_established.get() == 1 =>
                {
                    emit(NetEvent::Connected(peer_id), &mut dropped);
                }
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                    emit(NetEvent::Disconnected(peer_id), &mut dropped);
                }
                SwarmEvent::IncomingConnectionError { error, send_back_addr, .. } => {
                    tracing::info!(from = %send_back_addr, error = %error, "refused an incoming connection");
                }
                SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                    if peer_id.is_some_and(|p| discovered.contains(&p)) {
                        tracing::debug!(peer = ?peer_id, error = %error, "could not connect to a peer found by mdns (another cluster?)");
                    } else {
                        tracing::info!(peer = ?peer_id, error = %error, "outgoing connection failed");
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Mdns(m)) => match m {
                    mdns::Event::Discovered(found) => {
                        for (peer, addr) in found {
                            tracing::debug!(peer = %peer, addr = %addr, "mdns: discovered");
                            discovered.insert(peer);
                            emit(NetEvent::Discovered(peer, addr), &mut dropped);
                        }
                    }
                    mdns::Event::Expired(gone) => {
                        for (peer, addr) in gone {
                            tracing::debug!(peer = %peer, addr = %addr, "mdns: expired");
                        }
                    }
                },
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(g)) => match g {
                    gossipsub::Event::Message { propagation_source, message, .. } => {
                        hear(propagation_source);
                        if let Some(from) = message.source {
                            hear(from);
                            emit(NetEvent::Gossip { from, data: message.data }, &mut dropped);
                        }
                    }
                    gossipsub::Event::Subscribed { peer_id, .. } => emit(NetEvent::Subscribed(peer_id), &mut dropped),
                    _ => {}
                },
                SwarmEvent::Behaviour(BehaviourEvent::Rpc(r)) => match r {
                    request_response::Event::Message { peer, message, .. } => {
                        hear(peer);
                        match message {
                        request_response::Message::Request { request, channel, .. } => {
                            let (tx, rx) = oneshot::channel();
                            emit(NetEvent::Request { from: peer, data: request, reply: tx }, &mut dropped);
                            replies.push(Box::pin(async move { (channel, rx.await.ok()) }));
                        }
                        request_response::Message::Response { request_id, response } => {
                            if let Some(done) = pending.remove(&request_id) {
                                let _ = done.send(Ok(response));
                            }
                        }
                        }
                    }
                    request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                        if let Some(done) = pending.remove(&request_id) {
                            let _ = done.send(Err(NetError::Request { peer, reason: error.to_string() }));
                        }
                    }
                    request_response::Event::InboundFailure { peer, error, .. } => {
                        tracing::warn!(peer = %peer, error = %error, "bad inbound request dropped");
                    }
                    request_response::Event::ResponseSent { .. } => {}
                },
                _ => {}
            },
        }
    }
}

/// Fails loudly when a fixed TCP port of `addr` is taken (libp2p's listener reuses
/// addresses, so two nodes could otherwise share a port without noticing).
fn port_free(addr: &Multiaddr) -> Result<(), NetError> {
    use libp2p::multiaddr::Protocol;
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    match (ip, port) {
        (Some(ip), Some(port)) if port != 0 => std::net::TcpListener::bind((ip, port))
            .map(drop)
            .map_err(|e| {
                NetError::Setup(format!(
                    "cannot listen on {addr}: port {port} is taken ({e})"
                ))
            }),
        _ => Ok(()),
    }
}

/// A new random cluster secret.
pub fn new_secret() -> [u8; 32] {
    let mut s = [0u8; 32];
    for chunk in s.chunks_mut(16) {
        chunk.copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(secret: [u8; 32], dial: Vec<Multiaddr>) -> NetConfig {
        NetConfig {
            keypair: None,
            listen: Some("/ip4/127.0.0.1/tcp/0".parse().expect("addr")),
            secret,
            dial,
            request_timeout: Duration::from_secs(30),
            mdns: false,
        }
    }

    async fn next_matching<F: Fn(&NetEvent) -> bool>(
        rx: &mut mpsc::Receiver<NetEvent>,
        f: F,
    ) -> NetEvent {
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .expect("event in time")
                .expect("event");
            if f(&ev) {
                return ev;
            }
        }
    }

    #[tokio::test]
    async fn peers_with_the_secret_talk_and_others_are_refused() {
        let secret = new_secret();
        let (a, mut a_ev, a_addr) = start(cfg(secret, vec![])).expect("a");
        let a_addr = a_addr.expect("listening");
        let (b, mut b_ev, _) = start(cfg(secret, vec![a_addr.clone()])).expect("b");

        next_matching(
            &mut b_ev,
            |e| matches!(e, NetEvent::Connected(p) if *p == a.peer_id()),
        )
        .await;
        next_matching(
            &mut a_ev,
            |e| matches!(e, NetEvent::Subscribed(p) if *p == b.peer_id()),
        )
        .await;

        // b asks a; a answers.
        let asker = b.clone();
        let a_id = a.peer_id();
        let req = tokio::spawn(async move { asker.request(a_id, b"ping".to_vec()).await });
        match next_matching(&mut a_ev, |e| matches!(e, NetEvent::Request { .. })).await {
            NetEvent::Request { from, data, reply } => {
                assert_eq!(from, b.peer_id());
                assert_eq!(data, b"ping");
                reply.send(b"pong".to_vec()).expect("reply");
            }
            _ => unreachable!(),
        }
        assert_eq!(req.await.expect("join").expect("response"), b"pong");

        // Gossip from a reaches b (b's subscription is known to a).
        a.publish(b"hello".to_vec()).await.expect("publish");
        match next_matching(&mut b_ev, |e| matches!(e, NetEvent::Gossip { .. })).await {
            NetEvent::Gossip { from, data } => {
                assert_eq!(from, a.peer_id());
                assert_eq!(data, b"hello");
            }
            _ => unreachable!(),
        }

        // A node with another secret cannot reach a.
        let (c, _c_ev, _) = start(cfg(new_secret(), vec![a_addr])).expect("c");
        let e = c
            .request(a.peer_id(), b"let me in".to_vec())
            .await
            .expect_err("refused");
        assert!(matches!(e, NetError::Request { .. }), "{e}");
        for h in [a, b, c] {
            h.shutdown().await;
        }
    }

    #[test]
    fn a_taken_port_is_a_clear_error() {
        let secret = new_secret();
        let (a, _ev, addr) = start(cfg(secret, vec![])).expect("a");
        let mut again = cfg(secret, vec![]);
        again.listen = addr.clone();
        let e = start(again).expect_err("port taken");
        assert!(e.to_string().contains("cannot listen"), "{e}");
        drop(a);
    }
}
