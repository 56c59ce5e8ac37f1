//! The worker-process protocol: length-prefixed MessagePack frames over a Unix socket between a
//! raylet and each of its worker processes.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of a MessagePack-encoded
//! [`ToWorker`] or [`FromWorker`]. A frame over [`MAX_FRAME`] or one that does not decode is a
//! protocol error: the receiving side logs it and drops the connection.

use std::collections::HashMap;
use std::io::{Read, Write};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::core::ActorLookup;
use crate::error::Error;
use crate::ids::{ActorId, JobId, NodeId, ObjectId, PlacementGroupId, TaskId, WorkerId};
use crate::sched::{PlacementStrategy, ResourceSet};
use crate::spec::{ActorCall, ActorSpec, TaskSpec};

/// Largest frame accepted (1 GiB).
pub const MAX_FRAME: usize = 1 << 30;
/// The largest first frame of a connection (`Hello` / `DriverHello`: a driver's command line
/// is at most a few MiB).
pub const MAX_HELLO: usize = 8 << 20;

/// Errors of the frame layer.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The socket failed.
    #[error("worker socket i/o failed: {0}")]
    Io(#[from] std::io::Error),
    /// A frame announced more than [`MAX_FRAME`] bytes.
    #[error("frame of {0} bytes is over the {MAX_FRAME} byte limit")]
    TooLarge(usize),
    /// A frame did not decode.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A frame did not encode.
    #[error("frame does not encode: {0}")]
    Encode(String),
}

/// A value produced by user code, as it travels back to the raylet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireValue {
    /// Encoded value (large ones through shared memory, in worker frames).
    #[serde(with = "crate::worker::shm")]
    pub data: Bytes,
    /// Nested references.
    pub nested: Vec<ObjectId>,
}

/// Raylet to worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// Run a task; arguments are resolved.
    Execute {
        /// The task.
        spec: TaskSpec,
        /// Its argument values.
        #[serde(with = "crate::worker::shm::vec")]
        args: Vec<Bytes>,
        /// GPU instances assigned to it.
        gpu_ids: Vec<usize>,
    },
    /// Become the host of this actor.
    CreateActor {
        /// The actor.
        spec: ActorSpec,
        /// Constructor argument values.
        #[serde(with = "crate::worker::shm::vec")]
        args: Vec<Bytes>,
    },
    /// Run a method call on the hosted actor.
    Call {
        /// The call.
        call: ActorCall,
        /// Its argument values.
        #[serde(with = "crate::worker::shm::vec")]
        args: Vec<Bytes>,
    },
    /// First frame to a driver: the node it is connected to.
    Welcome {
        /// The node.
        node_id: NodeId,
    },
    /// The answer to a request.
    Reply {
        /// The request's number.
        req: u64,
        /// The answer.
        body: Reply,
    },
}

/// Worker to raylet.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromWorker {
    /// First frame: who is connecting.
    Hello {
        /// The id the raylet gave this worker.
        worker_id: WorkerId,
        /// The process id.
        pid: u32,
    },
    /// First frame of a driver (a program using a node daemon): who it is and how to start
    /// its worker processes.
    DriverHello {
        /// The driver's job.
        job_id: JobId,
        /// Its executable.
        exe: std::path::PathBuf,
        /// The arguments that bring a copy of it to `init()`.
        args: Vec<String>,
        /// Its namespace.
        namespace: String,
        /// Discard its workers' stdout.
        quiet: bool,
        /// Content hash and size of the executable.
        exe_hash: Option<(String, u64)>,
        /// Its process id.
        pid: u32,
        /// The Jobs API submission that started it (`MOBULA_SUBMISSION_ID`).
        #[serde(default)]
        submission_id: Option<String>,
    },
    /// A task ended.
    TaskDone {
        /// The task.
        task_id: TaskId,
        /// Where its value goes.
        return_id: ObjectId,
        /// The value, or the error and whether it came from user code.
        result: Result<WireValue, (Error, bool)>,
    },
    /// The hosted actor's constructor ran.
    ActorReady {
        /// Ok, or why construction failed.
        result: Result<(), Error>,
    },
    /// A method call ended.
    CallDone {
        /// The call.
        task_id: TaskId,
        /// Where its value goes.
        return_id: ObjectId,
        /// The value or the error.
        result: Result<WireValue, Error>,
    },
    /// A request that expects a [`Reply`].
    Request {
        /// Number to match the reply.
        req: u64,
        /// What is asked.
        body: Request,
    },
    /// Submit a task (one-way: a failure seals the task's return object with the error).
    SubmitTask(TaskSpec),
    /// Call an actor (one-way, like `SubmitTask`).
    SubmitCall(ActorCall),
    /// The worker took references to these objects.
    IncRef(Vec<ObjectId>),
    /// The worker dropped references to these objects.
    DecRef(Vec<ObjectId>),
}

/// What a worker asks of its raylet (the client API, remoted).
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Store an object under `id` (chosen by the worker).
    Put {
        /// The new object's id.
        id: ObjectId,
        /// Its value.
        value: WireValue,
    },
    /// Store an error as the value of a new object `id`.
    PutError {
        /// The new object's id.
        id: ObjectId,
        /// The error.
        error: Error,
    },
    /// Fetch objects, waiting up to `timeout_ms`.
    Get {
        /// The objects.
        ids: Vec<ObjectId>,
        /// Time limit.
        timeout_ms: Option<u64>,
    },
    /// Which of these objects are ready.
    Wait {
        /// The objects.
        ids: Vec<ObjectId>,
        /// How many to wait for.
        num: usize,
        /// Time limit.
        timeout_ms: Option<u64>,
    },
    /// Cancel the task producing `id`.
    Cancel {
        /// Its return object.
        id: ObjectId,
        /// Kill the worker too.
        force: bool,
    },
    /// Create an actor.
    CreateActor(Box<ActorSpec>),
    /// Kill an actor.
    KillActor {
        /// The actor.
        id: ActorId,
        /// Do not restart it.
        no_restart: bool,
    },
    /// Look up a named actor.
    GetNamedActor {
        /// Name.
        name: String,
        /// Namespace.
        namespace: String,
    },
    /// Reserve a placement group.
    CreatePg {
        /// Its id.
        id: PlacementGroupId,
        /// Its name.
        name: Option<String>,
        /// Bundles.
        bundles: Vec<ResourceSet>,
        /// Strategy.
        strategy: PlacementStrategy,
        /// The job creating it (the group ends with the job).
        job_id: crate::ids::JobId,
    },
    /// Wait for a placement group.
    WaitPg {
        /// Its id.
        id: PlacementGroupId,
        /// Time limit.
        timeout_ms: Option<u64>,
    },
    /// Remove a placement group.
    RemovePg(PlacementGroupId),
    /// Write a KV entry.
    KvPut {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Replace an existing value.
        overwrite: bool,
    },
    /// Read a KV entry.
    KvGet {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
    },
    /// Delete a KV entry.
    KvDel {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
    },
    /// Resource totals (`available == false`) or what is free.
    Resources {
        /// Free resources instead of totals.
        available: bool,
    },
}

/// A raylet's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// Done, or failed.
    Unit(Result<(), Error>),
    /// Objects: (data, is_error) in request order.
    Objects(#[serde(with = "crate::worker::shm::objects")] Result<Vec<(Bytes, bool)>, Error>),
    /// Readiness flags.
    Ready(Result<Vec<bool>, Error>),
    /// A named actor.
    Actor(Result<ActorLookup, Error>),
    /// A yes/no answer.
    Bool(Result<bool, Error>),
    /// A KV value.
    Value(Result<Option<Vec<u8>>, Error>),
    /// Resources.
    Resources(Result<HashMap<String, f64>, Error>),
}

/// Static facts a worker process learns from its environment.
#[derive(Debug, Clone)]
pub struct WorkerEnv {
    /// Socket path of the raylet.
    pub socket: std::path::PathBuf,
    /// The id the raylet gave this worker.
    pub worker_id: WorkerId,
    /// The job.
    pub job_id: JobId,
    /// The node.
    pub node_id: NodeId,
    /// Namespace of the job.
    pub namespace: String,
}

/// Encodes a message as one frame (length prefix included).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtoError> {
    // The body is written after room for its length: one pass over large values.
    let mut out = vec![0u8; 4];
    let _shm = crate::worker::shm::Scope::enter();
    rmp_serde::encode::write(&mut out, msg).map_err(|e| ProtoError::Encode(e.to_string()))?;
    let body = out.len() - 4;
    if body > MAX_FRAME {
        return Err(ProtoError::TooLarge(body));
    }
    out[..4].copy_from_slice(&(body as u32).to_be_bytes());
    Ok(out)
}

/// Decodes one frame body.
pub fn decode_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ProtoError> {
    let _shm = crate::worker::shm::Scope::enter();
    rmp_serde::from_slice(body).map_err(|e| ProtoError::Malformed(e.to_string()))
}

/// Reads one frame from a blocking reader. `Ok(None)` at a clean end of stream.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Option<Vec<u8>>, ProtoError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(ProtoError::TooLarge(n));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)?;
    Ok(Some(body))
}

/// Writes one frame to a blocking writer.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), ProtoError> {
    let f = encode_frame(msg)?;
    w.write_all(&f)?;
    w.flush()?;
    Ok(())
}

/// The codec of the raylet's (async) side.
pub fn codec() -> tokio_util::codec::LengthDelimitedCodec {
    tokio_util::codec::LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let msg = FromWorker::DecRef(vec![ObjectId::new(), ObjectId::new()]);
        let f = encode_frame(&msg).expect("encode");
        let mut cur = std::io::Cursor::new(f);
        let body = read_frame(&mut cur).expect("read").expect("one frame");
        match decode_body::<FromWorker>(&body).expect("decode") {
            FromWorker::DecRef(v) => assert_eq!(v.len(), 2),
            other => panic!("unexpected {other:?}"),
        }
        assert!(read_frame(&mut cur).expect("eof").is_none());
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors() {
        let mut big = std::io::Cursor::new(((MAX_FRAME as u32) + 1).to_be_bytes().to_vec());
        assert!(matches!(read_frame(&mut big), Err(ProtoError::TooLarge(_))));
        assert!(matches!(
            decode_body::<FromWorker>(&[0xc1, 0x00, 0x13]),
            Err(ProtoError::Malformed(_))
        ));
        let mut truncated = std::io::Cursor::new(vec![0, 0, 0, 10, 1, 2]);
        assert!(matches!(read_frame(&mut truncated), Err(ProtoError::Io(_))));
    }

    mod fuzz {
        //! Property tests: whatever bytes a peer sends, the decoders return an error, never panic.
        use super::*;
        use proptest::prelude::*;
        use tokio_util::codec::Decoder;

        fn valid_frame() -> Vec<u8> {
            encode_frame(&FromWorker::Hello {
                worker_id: WorkerId::new(),
                pid: 42,
            })
            .expect("encode")
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
                let mut cur = std::io::Cursor::new(data.clone());
                while let Ok(Some(body)) = read_frame(&mut cur) {
                    let _ = decode_body::<FromWorker>(&body);
                    let _ = decode_body::<ToWorker>(&body);
                }
                let _ = decode_body::<FromWorker>(&data);
                let _ = decode_body::<ToWorker>(&data);
                let mut buf = bytes::BytesMut::from(&data[..]);
                let mut codec = codec();
                while let Ok(Some(body)) = codec.decode(&mut buf) {
                    let _ = decode_body::<FromWorker>(&body);
                }
            }

            #[test]
            fn truncated_frames_are_errors(cut in 0usize..64) {
                let f = valid_frame();
                let cut = cut % f.len();
                let mut cur = std::io::Cursor::new(f[..cut].to_vec());
                match read_frame(&mut cur) {
                    Ok(None) => prop_assert!(cut < 4),
                    Ok(Some(_)) => prop_assert!(false, "a truncated frame was read whole"),
                    Err(_) => {}
                }
                prop_assert!(decode_body::<FromWorker>(&f[4..cut.max(4)]).is_err());
            }

            #[test]
            fn oversized_length_prefixes_are_errors(n in (MAX_FRAME as u32 + 1)..=u32::MAX,
                                                    tail in proptest::collection::vec(any::<u8>(), 0..64)) {
                let mut data = n.to_be_bytes().to_vec();
                data.extend_from_slice(&tail);
                let mut cur = std::io::Cursor::new(data.clone());
                prop_assert!(matches!(read_frame(&mut cur), Err(ProtoError::TooLarge(_))));
                let mut buf = bytes::BytesMut::from(&data[..]);
                prop_assert!(codec().decode(&mut buf).is_err());
            }
        }
    }
}
