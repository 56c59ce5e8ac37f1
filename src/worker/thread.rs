//! Thread workers: OS threads of the driver's process that run tasks pushed by the raylet.
//! Arguments are read from the object table and results sealed into it directly, with no copy
//! of the data; the raylet only hears that the task finished.

use std::sync::Arc;

use bytes::Bytes;

use crate::actors::raylet::RayletMsg;
use crate::ids::WorkerId;
use crate::spec::{TaskArg, TaskSpec};
use crate::store::{Lookup, ObjectTable};
use crate::worker::{TaskOutcome, WorkerCtx, invoke_function, set_ctx};

/// A running thread worker.
#[derive(Debug)]
pub(crate) struct ThreadWorker {
    tx: crossbeam_channel::Sender<(Arc<TaskSpec>, Vec<usize>)>,
}

impl ThreadWorker {
    /// Starts a worker thread.
    pub fn spawn(
        id: WorkerId,
        n: usize,
        table: Arc<ObjectTable>,
        raylet: flume::Sender<RayletMsg>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded::<(Arc<TaskSpec>, Vec<usize>)>(4);
        std::thread::Builder::new()
            .name(format!("mobula-worker-{n}"))
            .spawn(move || {
                set_ctx(Some(WorkerCtx {
                    worker_id: id,
                    notify: raylet.clone(),
                }));
                while let Ok((spec, gpus)) = rx.recv() {
                    crate::worker::set_gpu_ids(gpus);
                    let outcome = run(&table, &spec);
                    crate::worker::set_gpu_ids(Vec::new());
                    let done = RayletMsg::TaskDone {
                        worker: id,
                        task_id: spec.task_id,
                        outcome,
                    };
                    drop(spec);
                    if raylet.send(done).is_err() {
                        break;
                    }
                }
                set_ctx(None);
                tracing::debug!(worker = %id, "thread worker exits");
            })?;
        Ok(Self { tx })
    }

    /// Hands a task to the worker. Fails when the worker is gone.
    pub fn push(&self, spec: Arc<TaskSpec>, gpu_ids: Vec<usize>) -> Result<(), Arc<TaskSpec>> {
        self.tx
            .try_send((spec, gpu_ids))
            .map_err(|e| e.into_inner().0)
    }
}

/// Resolves arguments from the table: a failed dependency fails the task with its error.
pub(crate) fn resolve_args(
    table: &ObjectTable,
    args: &[TaskArg],
) -> Result<Vec<Bytes>, crate::Error> {
    let mut out = Vec::with_capacity(args.len());
    for a in args {
        match a {
            TaskArg::Value(b) => out.push(b.clone()),
            TaskArg::Ref(id) => match table.lookup(id) {
                Lookup::Ready(o) if o.is_error => {
                    return Err(crate::codec::decode::<crate::Error>(&o.data)?);
                }
                Lookup::Ready(o) => out.push(o.data),
                Lookup::Pending | Lookup::Missing => {
                    return Err(crate::Error::ObjectLost {
                        id: id.hex(),
                        reason: "argument not available when the task started".to_string(),
                    });
                }
            },
        }
    }
    Ok(out)
}

/// Whether an argument is a spilled object (resolving the arguments reads its file).
pub(crate) fn any_spilled(table: &ObjectTable, args: &[TaskArg]) -> bool {
    args.iter().any(|a| {
        matches!(a, TaskArg::Ref(id)
            if matches!(table.peek(id), crate::store::Peek::Sealed { spilled: true, .. }))
    })
}

/// [`resolve_args`] for a caller on an actor's thread: when an argument is spilled, its
/// file is read on a blocking thread, not the caller's.
pub(crate) async fn resolve_args_off_thread(
    table: &Arc<ObjectTable>,
    args: &[TaskArg],
) -> Result<Vec<Bytes>, crate::Error> {
    if !any_spilled(table, args) {
        return resolve_args(table, args);
    }
    let (table, args) = (table.clone(), args.to_vec());
    tokio::task::spawn_blocking(move || resolve_args(&table, &args))
        .await
        .unwrap_or_else(|e| {
            Err(crate::Error::runtime(format!(
                "reading arguments failed: {e}"
            )))
        })
}

fn run(table: &ObjectTable, spec: &TaskSpec) -> TaskOutcome {
    let args = match resolve_args(table, &spec.args) {
        Ok(a) => a,
        Err(error) => return TaskOutcome::Failed { error, user: false },
    };
    match invoke_function(spec, args) {
        Ok(enc) => {
            table.seal(spec.return_id, enc.data, enc.nested, false);
            // A worker thread takes its share of the spilling a big result causes: a task
            // making results faster than the spill thread writes them waits here.
            table.relieve();
            TaskOutcome::Sealed
        }
        Err((error, user)) => TaskOutcome::Failed { error, user },
    }
}
