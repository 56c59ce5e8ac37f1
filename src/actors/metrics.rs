//! Per-node metrics: the counters and the scheduling-latency histogram the raylet keeps
//! (`RayletMetrics`, plain fields updated on its own thread), and `NodeMetrics`, the snapshot
//! every node's heartbeat carries to the head, where `/metrics` (`crate::web::metrics`) shows
//! them for the whole cluster.
//!
//! Counting, per node, as its raylet sees tasks: `submitted` (entered this raylet, from a
//! driver or worker here or placed here by another node), `spilled` (handed to another node,
//! which counts it as submitted there), `finished` (ran on a worker here to a value), `failed`
//! (ended in an error here; an error relayed back from the node that ran a spilled task is
//! counted there, not again here). So over the cluster `submitted = spilled + finished +
//! failed + in flight`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Counts by state or status name.
pub type Counts = BTreeMap<String, u64>;

/// Upper bounds (seconds) of the scheduling-latency buckets: 100 µs … 10 s.
pub const LATENCY_BOUNDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A histogram over `LATENCY_BOUNDS`: per-bucket (not cumulative) counts, the last one for
/// observations above every bound (`+Inf`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Observations per bucket; `LATENCY_BOUNDS.len() + 1` entries.
    pub counts: Vec<u64>,
    /// Sum of the observations (seconds).
    pub sum: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; LATENCY_BOUNDS.len() + 1],
            sum: 0.0,
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BOUNDS.partition_point(|b| *b < s);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += s;
    }

    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// The counters a raylet updates as tasks move (one `u64` add each).
#[derive(Debug, Clone, Default)]
pub(crate) struct RayletMetrics {
    pub submitted: u64,
    pub spilled: u64,
    pub finished: u64,
    pub failed: u64,
    /// Worker processes the memory monitor killed (one per task attempt).
    pub oom_killed: u64,
    /// Submission to dispatch to a worker of this node.
    pub sched_latency: Histogram,
}

/// One node's numbers, as its heartbeat carries them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeMetrics {
    /// Tasks submitted to this node's raylet.
    pub tasks_submitted: u64,
    /// Tasks handed to another node.
    pub tasks_spilled: u64,
    /// Tasks that ran here to a value.
    pub tasks_finished: u64,
    /// Tasks that ended in an error here.
    pub tasks_failed: u64,
    /// Tasks running on a worker here now.
    pub tasks_running: u64,
    /// Tasks waiting here for resources now.
    pub tasks_queued: u64,
    /// Tasks waiting here for their arguments now.
    pub tasks_waiting_args: u64,
    /// Task attempts the memory monitor killed here.
    #[serde(default)]
    pub tasks_oom_killed: u64,
    /// Actors this node owns, by state (Ray's names: `ALIVE`, `DEAD`, …).
    pub actors: Counts,
    /// Jobs in this node's GCS job table, by status.
    pub jobs: Counts,
    /// Objects in this node's object table (pending or sealed).
    pub objects: u64,
    /// Bytes of sealed objects in this node's store.
    pub store_used_bytes: u64,
    /// The store's memory limit.
    pub store_limit_bytes: u64,
    /// Bytes of the node's objects now spilled to disk; `None` for a store that does not
    /// spill (`/metrics` omits the family while no node reports it).
    pub store_spilled_bytes: Option<u64>,
    /// Objects the store has written to disk so far (reported with `store_spilled_bytes`).
    #[serde(default)]
    pub store_spilled_objects: u64,
    /// Spilled objects read back into memory so far.
    #[serde(default)]
    pub store_restored_objects: u64,
    /// Scheduling latency of tasks dispatched here.
    pub sched_latency: Histogram,
}

/// Fills the object-store part of a snapshot from the node's table.
pub(crate) fn store_metrics(m: &mut NodeMetrics, table: &crate::store::ObjectTable) {
    let s = table.stats();
    m.objects = s.objects;
    m.store_used_bytes = s.used_bytes;
    m.store_limit_bytes = s.limit_bytes;
    m.store_spilled_bytes = s.spilling.then_some(s.spilled_bytes);
    m.store_spilled_objects = s.spilled_objects;
    m.store_restored_objects = s.restored_objects;
}

/// This node's snapshot: the raylet's numbers and the GCS's actors and jobs. A part whose
/// actor does not answer stays empty (the node is shutting down).
pub(crate) async fn snapshot(rt: &crate::Runtime) -> NodeMetrics {
    let Some(node) = rt.core().node() else {
        return NodeMetrics::default();
    };
    let (raylet, gcs) = (node.raylet.clone(), node.gcs.clone());
    let mut m = raylet
        .send(crate::actors::raylet::GetMetrics)
        .await
        .unwrap_or_default();
    if let Ok((actors, jobs)) = gcs.send(crate::actors::gcs::CountStates).await {
        m.actors = actors;
        m.jobs = jobs;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(11));
        assert_eq!(h.counts[0], 2, "{:?}", h.counts);
        assert_eq!(h.counts[5], 1, "{:?}", h.counts);
        assert_eq!(h.counts[LATENCY_BOUNDS.len()], 1, "{:?}", h.counts);
        assert_eq!(h.count(), 4);
        assert!((h.sum - 11.00315).abs() < 1e-9);
    }
}
