//! The hot messages between nodes and their handlers: tasks sent here to run
//! (`ExecuteRemote`), calls to actors hosted here (`ActorCalls`), and the results of both
//! coming back (`TaskFinished`).
//!
//! They travel on lanes (`net::data`: one encrypted TCP connection per sending node, kept open,
//! its messages in order and unanswered) once the peer's data plane is known from its
//! heartbeats, and as libp2p requests before that or when no lane can be opened. Both ways
//! end in the same handlers here. A lane's messages are handled on the data plane's runtime,
//! not the daemon's event loop; a call batch is queued at its actors before the next message
//! of its lane is read, which keeps the calls in submission order without an answer per
//! batch.

use std::sync::Arc;

use super::actors::{self, Outgoing};
use super::{
    ClusterMsg, Finished, Held, Reporter, Shipping, decode, encode, finish_here, receive_result,
    release_all, start_here,
};
use crate::actors::raylet::{Raylet, RegisterJob, RemoteDone, RemoteValue};
use crate::net::NetHandle;

/// What the hot handlers need of the daemon.
pub(super) struct Hot {
    pub rt: crate::Runtime,
    pub raylet: Option<actix::Addr<Raylet>>,
    pub net: NetHandle,
    pub held: Arc<Held>,
    pub shipping: Arc<Shipping>,
    pub reporter: Arc<Reporter>,
    pub outgoing: Arc<Outgoing>,
    /// Jobs whose launch the raylet was told (it keeps the first): a task of a known job goes
    /// straight to the raylet, without a round trip to it for the registration.
    pub known_jobs: parking_lot::Mutex<std::collections::HashSet<crate::JobId>>,
}

impl Hot {
    /// Sends the result of a task or call `from` sent back to it.
    async fn report(
        &self,
        from: libp2p::PeerId,
        (task_id, attempt): (crate::TaskId, u32),
        return_id: crate::ObjectId,
        answer: ClusterMsg,
    ) {
        let done = Finished {
            task_id,
            return_id,
            attempt,
            answer,
        };
        self.reporter.report(from, done).await;
    }

    /// Runs a task `from` sent; its value goes back in a `TaskFinished`.
    pub fn execute_remote(
        self: &Arc<Self>,
        from: libp2p::PeerId,
        spec: Box<crate::spec::TaskSpec>,
        launch: crate::worker::process::JobLaunch,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            let task = (spec.task_id, spec.attempt);
            let return_id = spec.return_id;
            let started = match me.register(from, spec.job_id, launch).await {
                Ok(()) => {
                    let (rt, raylet, net) = (&me.rt, me.raylet.clone(), &me.net);
                    start_here(rt, raylet, net, from, *spec, &me.held.table).await
                }
                Err(e) => Err(e),
            };
            let local = match started {
                Ok(local) => local,
                Err(e) => {
                    let answer = ClusterMsg::TaskResult(Err(e));
                    return me.report(from, task, return_id, answer).await;
                }
            };
            // The answer goes from the thread that seals the value (no hop back to this one).
            let home = tokio::runtime::Handle::current();
            let table = me.held.table.clone();
            crate::store::when_sealed(&table, return_id, &home, async move {
                let answer = finish_here(&me.rt, return_id, local, &me.held).await;
                me.report(from, task, return_id, answer).await;
            });
        });
    }

    /// Tells the raylet how to start `job`'s workers (its executable fetched from `from` if
    /// this node lacks it), once per job.
    async fn register(
        &self,
        from: libp2p::PeerId,
        job: crate::JobId,
        launch: crate::worker::process::JobLaunch,
    ) -> Result<(), crate::Error> {
        if self.known_jobs.lock().contains(&job) {
            return Ok(());
        }
        let launch = self.shipping.resolve(&self.net, from, launch).await?;
        if let Some(r) = &self.raylet {
            r.send(RegisterJob {
                job_id: job,
                launch,
            })
            .await
            .map_err(crate::Error::runtime)?;
            self.known_jobs.lock().insert(job);
        }
        Ok(())
    }

    /// Queues calls `from` sent at their actors, in order, and returns once they are queued
    /// (`Accepted`, or why not); each result goes back in a `TaskFinished`.
    pub async fn actor_calls(
        self: &Arc<Self>,
        from: libp2p::PeerId,
        calls: Vec<crate::spec::ActorCall>,
    ) -> ClusterMsg {
        let args = actors::prepare_calls(&calls, &self.held.table, &self.net, from);
        let ids: Vec<_> = calls
            .iter()
            .map(|c| ((c.task_id, c.attempt), c.return_id))
            .collect();
        let core = self.rt.core().clone();
        // A full actor queue blocks the submission: then off the runtime's threads. (A batch
        // is of one actor: one forwarder per actor sends them.)
        let now = calls.first().is_some_and(|c| {
            calls.iter().all(|d| d.actor_id == c.actor_id)
                && core.takes_calls_now(&c.actor_id, calls.len())
        });
        let submit = move || {
            for c in calls {
                let _ = core.submit_actor_call(c);
            }
        };
        let submitted = if now {
            submit();
            Ok(())
        } else {
            tokio::task::spawn_blocking(submit).await
        };
        // Each answer goes from the thread that seals the call's value (no hop back here).
        let home = tokio::runtime::Handle::current();
        for ((task, return_id), args) in ids.into_iter().zip(args) {
            let me = self.clone();
            crate::store::when_sealed(&self.held.table, return_id, &home, async move {
                let obj = me.rt.core().get_object_async(return_id).await;
                let answer = super::answer_of(return_id, obj, &me.held);
                release_all(&me.held.table, &args);
                me.report(from, task, return_id, answer).await;
            });
        }
        match submitted {
            Ok(()) => ClusterMsg::Accepted,
            Err(e) => ClusterMsg::TaskResult(Err(crate::Error::runtime(e))),
        }
    }

    /// Takes the results of tasks and calls this node sent `from`.
    pub fn task_finished(self: &Arc<Self>, from: libp2p::PeerId, done: Vec<Finished>) {
        for Finished {
            task_id,
            return_id,
            attempt,
            answer,
        } in done
        {
            let me = self.clone();
            tokio::spawn(async move {
                // A task's large value stays there too (the raylet records the copy).
                let call = me.outgoing.take(&return_id);
                let keep = call.is_none() && me.raylet.is_some();
                let (result, node_lost, refs, kept) =
                    receive_result(&me.net, from, &me.held.table, return_id, answer, keep).await;
                if let Some(q) = call {
                    actors::seal_forwarded(&me.held.table, q, result);
                } else if let Some(r) = &me.raylet {
                    // A value is sealed here, on this thread (its readers wake from here);
                    // the raylet, told after, does the task's bookkeeping. A failure, or a
                    // lost node, is the raylet's to retry or seal.
                    let result = match result {
                        Ok(v) if !node_lost => {
                            if let Some(n) = me.rt.core().node() {
                                n.history.ended(task_id, attempt, Ok(()));
                            }
                            let took = me.held.table.seal(return_id, v.data, v.nested, false);
                            Ok(RemoteValue::Sealed(took))
                        }
                        Ok(v) => Ok(RemoteValue::Value(v)),
                        Err(e) => Err(e),
                    };
                    let sealed_here = matches!(result, Ok(RemoteValue::Sealed(_)));
                    r.do_send(RemoteDone {
                        task_id,
                        result,
                        node_lost,
                        kept,
                    });
                    if !refs.is_empty() && !sealed_here {
                        // Sealing counts the value's references; ours can go after.
                        crate::store::sealed(&me.held.table, return_id).await;
                    }
                }
                release_all(&me.held.table, &refs);
            });
        }
    }

    /// Where the data plane hands lane messages: the hot messages are handled, anything
    /// else (or garbage: the peer holds the secret, but may be of another version) is logged
    /// and dropped.
    pub fn sink(self: Arc<Self>) -> crate::net::data::LaneSink {
        Arc::new(move |from, bytes| {
            let me = self.clone();
            Box::pin(async move {
                me.net.heard_from(from);
                match decode(&bytes) {
                    Ok(ClusterMsg::ExecuteRemote { spec, launch }) => {
                        me.execute_remote(from, spec, launch)
                    }
                    Ok(ClusterMsg::ActorCalls { calls }) => {
                        if let ClusterMsg::TaskResult(Err(e)) = me.actor_calls(from, calls).await {
                            tracing::warn!(peer = %from, error = %e, "could not queue actor calls from a lane");
                        }
                    }
                    Ok(ClusterMsg::TaskFinished(done)) => me.task_finished(from, done),
                    Ok(other) => {
                        tracing::warn!(peer = %from, msg = ?other, "unexpected message on a lane")
                    }
                    Err(e) => {
                        tracing::warn!(peer = %from, error = %e, "malformed lane message dropped")
                    }
                }
            })
        })
    }
}

/// Whether `msg` is one of the messages a lane's sink takes.
fn is_hot(msg: &ClusterMsg) -> bool {
    matches!(
        msg,
        ClusterMsg::ExecuteRemote { .. }
            | ClusterMsg::ActorCalls { .. }
            | ClusterMsg::TaskFinished(_)
    )
}

/// Sends a message to `peer`: a hot one on its lane when there is one, anything else (or
/// with no lane) as a request; `Ok` with the answer of a request, `Ok(None)` when it went
/// on a lane.
pub(super) async fn send(
    net: &NetHandle,
    peer: libp2p::PeerId,
    msg: &ClusterMsg,
) -> Result<Option<ClusterMsg>, crate::Error> {
    let bytes = encode(msg);
    let sent = if is_hot(msg) {
        net.tell(peer, bytes).await
    } else {
        Err(bytes)
    };
    match sent {
        Ok(()) => Ok(None),
        Err(bytes) => {
            let answer = net
                .request(peer, bytes)
                .await
                .map_err(crate::Error::runtime)?;
            decode(&answer).map(Some).map_err(crate::Error::runtime)
        }
    }
}
