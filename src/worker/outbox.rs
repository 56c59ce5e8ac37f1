//! The outgoing frames of one worker or driver connection of the node daemon.
//!
//! The thread that sends a frame writes it to the socket itself when nothing is queued before
//! it (a non-blocking write: the raylet dispatching a task, a data-plane thread answering a
//! driver's `get`); only what the socket does not take at once is queued, for the
//! connection's writer task to finish. This saves each frame a hand-off to the connection's
//! arbiter. Frames leave in the order they were sent. The queue is bounded: `try_send` fails
//! and `send_async` waits while `cap` frames are queued.

use std::collections::VecDeque;
use std::io::ErrorKind;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::Notify;

/// Why a frame was not sent (it is given back).
#[derive(Debug, thiserror::Error)]
pub(crate) enum OutboxError {
    #[error("the connection's outgoing queue is full")]
    Full(Bytes),
    #[error("the connection is closed")]
    Closed(Bytes),
}

#[derive(Default)]
struct State {
    /// Frames (the first possibly part-written) waiting for the writer task.
    queue: VecDeque<Bytes>,
    closed: bool,
}

/// One connection's outgoing frames.
pub(crate) struct Outbox {
    sock: OwnedWriteHalf,
    state: Mutex<State>,
    /// Something was queued (or the box closed): for the writer task.
    queued: Notify,
    /// A queued frame left: for senders waiting for room.
    room: Notify,
    cap: usize,
}

impl Outbox {
    /// An outbox writing to `sock`, at most `cap` frames queued. `run` must be spawned for it.
    pub fn new(sock: OwnedWriteHalf, cap: usize) -> Self {
        Self {
            sock,
            state: Mutex::default(),
            queued: Notify::new(),
            room: Notify::new(),
            cap,
        }
    }

    /// Sends `frame` without waiting: written now, as far as the socket takes it, when
    /// nothing is queued before it; else queued.
    pub fn try_send(&self, frame: Bytes) -> Result<(), OutboxError> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(OutboxError::Closed(frame));
        }
        if !st.queue.is_empty() {
            if st.queue.len() >= self.cap {
                return Err(OutboxError::Full(frame));
            }
            st.queue.push_back(frame);
            self.queued.notify_one();
            return Ok(());
        }
        let mut done = 0;
        while done < frame.len() {
            match self.sock.try_write(&frame[done..]) {
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "connection write failed");
                    st.closed = true;
                    st.queue.clear();
                    self.queued.notify_one();
                    return Err(OutboxError::Closed(frame));
                }
            }
        }
        if done < frame.len() {
            st.queue.push_back(frame.slice(done..));
            self.queued.notify_one();
        }
        Ok(())
    }

    /// Sends `frame`, waiting while the queue is full.
    pub async fn send_async(&self, mut frame: Bytes) -> Result<(), OutboxError> {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_send(frame) {
                Err(OutboxError::Full(f)) => frame = f,
                other => return other,
            }
            room.await;
        }
    }

    /// No more frames: the writer task ends (what is queued is dropped).
    pub fn close(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        st.queue.clear();
        self.queued.notify_one();
        self.room.notify_waiters();
    }

    /// The writer task: writes the queued frames until the box closes or a write fails.
    pub async fn run(self: std::sync::Arc<Self>) {
        loop {
            self.queued.notified().await;
            loop {
                // The first frame stays queued while it is written, so that senders queue
                // behind it instead of writing.
                let front = {
                    let st = self.state.lock();
                    if st.closed {
                        return;
                    }
                    st.queue.front().cloned()
                };
                let Some(frame) = front else { break };
                let written = match self.write_some(&frame).await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!(error = %e, "connection write failed");
                        self.close();
                        return;
                    }
                };
                let mut st = self.state.lock();
                if st.closed {
                    return;
                }
                if written == frame.len() {
                    st.queue.pop_front();
                    drop(st);
                    self.room.notify_waiters();
                } else if let Some(f) = st.queue.front_mut() {
                    *f = frame.slice(written..);
                }
            }
        }
    }

    /// Writes what the socket takes of `buf` once it is writable.
    async fn write_some(&self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            self.sock.writable().await?;
            match self.sock.try_write(buf) {
                Ok(n) => return Ok(n),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Frames sent from several threads, far more than the socket buffers, arrive whole and,
    /// per sender, in order; a full queue refuses, `send_async` waits for room.
    #[test]
    fn frames_arrive_whole_and_in_order_from_any_thread() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (a, mut b) = tokio::net::UnixStream::pair().expect("pair");
            let (_r, w) = a.into_split();
            let out = std::sync::Arc::new(Outbox::new(w, 8));
            tokio::spawn(out.clone().run());
            const N: u32 = 2000;
            let frame = |t: u32, i: u32| {
                let mut v = vec![0u8; 4096];
                v[..4].copy_from_slice(&t.to_le_bytes());
                v[4..8].copy_from_slice(&i.to_le_bytes());
                Bytes::from(v)
            };
            let senders: Vec<_> = (0..2u32)
                .map(|t| {
                    let out = out.clone();
                    std::thread::spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .expect("runtime");
                        let mut waited = 0;
                        for i in 0..N {
                            match out.try_send(frame(t, i)) {
                                Ok(()) => {}
                                Err(OutboxError::Full(back)) => {
                                    waited += 1;
                                    rt.block_on(out.send_async(back)).expect("send");
                                }
                                Err(OutboxError::Closed(_)) => panic!("closed early"),
                            }
                        }
                        waited
                    })
                })
                .collect();
            let mut next = [0u32; 2];
            let mut buf = vec![0u8; 4096];
            for _ in 0..2 * N {
                b.read_exact(&mut buf).await.expect("read");
                let t = u32::from_le_bytes(buf[..4].try_into().expect("4")) as usize;
                let i = u32::from_le_bytes(buf[4..8].try_into().expect("4"));
                assert_eq!(i, next[t], "sender {t} out of order");
                assert!(buf[8..].iter().all(|&x| x == 0), "a frame was torn");
                next[t] += 1;
            }
            let waited: u32 = senders.into_iter().map(|s| s.join().expect("sender")).sum();
            assert!(waited > 0, "8 frames of 4 KiB never filled the queue");
            out.close();
            assert!(matches!(
                out.try_send(Bytes::from_static(b"x")),
                Err(OutboxError::Closed(_))
            ));
        });
    }
}
