//! Scheduling policy: the pure, synchronous decision code that the raylet and the GCS call to
//! decide where work runs.
//!
//! This module owns three things and nothing else (no I/O, no async, no actors):
//!
//! * [`resources`]: exact fixed-point resource quantities ([`Amount`]), resource sets, one
//!   node's accounting ([`NodeResources`]) including per-GPU instances and the Ray-style
//!   placement-group bundle resources (`CPU_group_0_<pg>`, `CPU_group_<pg>`, `bundle_group_...`).
//! * [`policy`]: the task/actor placement policies ([`SchedulingStrategy`]) over a
//!   [`ClusterView`] of many nodes: Ray's hybrid DEFAULT policy, SPREAD, node affinity and
//!   placement-group pinning, returning a [`Decision`].
//! * [`placement`]: placing and atomically reserving placement-group bundles
//!   ([`PlacementStrategy`]: PACK, SPREAD, STRICT_PACK, STRICT_SPREAD).
//!
//! Everything the rest of the runtime needs is re-exported here; [`SchedError`] is the one error
//! type at the module boundary.

pub mod placement;
pub mod policy;
pub mod resources;

pub use placement::*;
pub use policy::*;
pub use resources::*;

use crate::ids::{NodeId, PlacementGroupId};

/// Everything that can go wrong when scheduling a task or a placement group.
///
/// The `Infeasible*`, `Bundle*Reserved`, `BundleTooSmall`, `StrictSpreadTooFewNodes` and
/// `BundlesDoNotFit` variants mean "can never be satisfied by the current cluster"; the others
/// describe a misuse or a transient condition at the node level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum SchedError {
    /// One resource is asked for in a larger amount than any node has in total.
    #[error("infeasible: asks for {asked} {resource}, no node has more than {max}")]
    Infeasible {
        /// The resource name, e.g. `GPU`.
        resource: String,
        /// The amount the request asks for.
        asked: Amount,
        /// The largest total any considered node has.
        max: Amount,
    },
    /// Each resource exists in the asked amount somewhere, but no single node could ever hold
    /// all of them together (or the GPU amount cannot be carved out of its GPU instances).
    #[error("infeasible: no single node could ever hold {request} at once")]
    InfeasibleCombination {
        /// The request (after normalization).
        request: ResourceSet,
    },
    /// There is no alive, non-draining node to run anything on.
    #[error("infeasible: the cluster has no alive node")]
    NoAliveNodes,
    /// A hard node-affinity target could never hold one of the asked resources.
    #[error("infeasible: asks for {asked} {resource}, node {node} has {max}")]
    InfeasibleOnNode {
        /// The affinity target.
        node: NodeId,
        /// The resource name.
        resource: String,
        /// The amount asked.
        asked: Amount,
        /// The node's total of that resource.
        max: Amount,
    },
    /// A hard node-affinity target has every resource, but could never hold them together.
    #[error("infeasible: node {node} could never hold {request} at once")]
    NodeCannotHold {
        /// The affinity target.
        node: NodeId,
        /// The request (after normalization).
        request: ResourceSet,
    },
    /// The node is not (or no longer) in the cluster view.
    #[error("node {0} is not in the cluster")]
    UnknownNode(NodeId),
    /// The node is known but dead.
    #[error("node {0} is dead")]
    DeadNode(NodeId),
    /// The node is draining and takes no new work.
    #[error("node {0} is draining and takes no new work")]
    NodeDraining(NodeId),
    /// No alive node holds the placement-group bundle the task is pinned to.
    #[error("placement group {pg} has {} reserved on no alive node", bundle_label(.index))]
    BundleNotReserved {
        /// The placement group.
        pg: PlacementGroupId,
        /// The bundle index (`None`: any bundle).
        index: Option<usize>,
    },
    /// The task asks for more of a resource than its placement-group bundle holds.
    #[error(
        "infeasible: asks for {asked} {resource}, {} of placement group {pg} holds at most {max}",
        bundle_label(.index)
    )]
    BundleTooSmall {
        /// The placement group.
        pg: PlacementGroupId,
        /// The bundle index (`None`: any bundle).
        index: Option<usize>,
        /// The original resource name, e.g. `CPU`.
        resource: String,
        /// The amount asked.
        asked: Amount,
        /// The most any node's share of the bundle(s) holds.
        max: Amount,
    },
    /// A bundle does not fit in the node's available resources right now.
    #[error("placement group {pg} bundle {index} does not fit now: asks for {bundle}")]
    BundleUnavailable {
        /// The placement group.
        pg: PlacementGroupId,
        /// The bundle index.
        index: usize,
        /// The bundle's resources.
        bundle: ResourceSet,
    },
    /// The same bundle was already committed on this node with other resources.
    #[error("placement group {pg} bundle {index} is already committed with different resources")]
    BundleConflict {
        /// The placement group.
        pg: PlacementGroupId,
        /// The bundle index.
        index: usize,
    },
    /// The bundle is already reserved somewhere in the cluster.
    #[error("placement group {pg} bundle {index} is already reserved on node {node}")]
    BundleExists {
        /// The placement group.
        pg: PlacementGroupId,
        /// The bundle index.
        index: usize,
        /// Where it is reserved.
        node: NodeId,
    },
    /// The node holds no such bundle.
    #[error("placement group {pg} has no bundle {index} on this node")]
    UnknownBundle {
        /// The placement group.
        pg: PlacementGroupId,
        /// The bundle index.
        index: usize,
    },
    /// The bundle list itself is malformed (empty list, empty bundle, negative amount, ...).
    #[error("invalid placement group: {0}")]
    InvalidBundles(String),
    /// STRICT_SPREAD with more bundles than alive nodes.
    #[error(
        "infeasible: strict spread needs {bundles} distinct nodes, the cluster has {nodes} alive"
    )]
    StrictSpreadTooFewNodes {
        /// Number of bundles.
        bundles: usize,
        /// Number of alive, non-draining candidate nodes.
        nodes: usize,
    },
    /// Every bundle fits some node, but the set can never be placed with the strategy.
    #[error(
        "infeasible: {bundles} bundles can never be placed {strategy} on the {nodes} alive nodes"
    )]
    BundlesDoNotFit {
        /// The strategy.
        strategy: PlacementStrategy,
        /// Number of bundles.
        bundles: usize,
        /// Number of alive, non-draining candidate nodes.
        nodes: usize,
    },
}

fn bundle_label(index: &Option<usize>) -> String {
    match index {
        Some(i) => format!("bundle {i}"),
        None => "any bundle".to_string(),
    }
}

/// Resources that queued work waits for (the pending demands of `mobula status`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Demand {
    /// The resources one task or actor asks for.
    pub shape: std::collections::HashMap<String, f64>,
    /// How many wait for it.
    pub count: usize,
    /// No node could ever hold it (it fails after the infeasible timeout).
    pub infeasible: bool,
}

impl Demand {
    /// Adds `count` requests of `shape` to `demands`, merged with its like.
    pub fn add_to(
        demands: &mut Vec<Demand>,
        shape: &std::collections::HashMap<String, f64>,
        count: usize,
        infeasible: bool,
    ) {
        match demands
            .iter_mut()
            .find(|d| d.shape == *shape && d.infeasible == infeasible)
        {
            Some(d) => d.count += count,
            None => demands.push(Demand {
                shape: shape.clone(),
                count,
                infeasible,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_lowercase_and_informative() {
        let e = SchedError::Infeasible {
            resource: GPU.to_string(),
            asked: Amount::from_f64(4.0),
            max: Amount::ZERO,
        };
        assert_eq!(
            e.to_string(),
            "infeasible: asks for 4 GPU, no node has more than 0"
        );
        let pg = PlacementGroupId::new();
        let e = SchedError::BundleNotReserved { pg, index: None };
        assert_eq!(
            e.to_string(),
            format!("placement group {pg} has any bundle reserved on no alive node")
        );
        let e = SchedError::BundleTooSmall {
            pg,
            index: Some(1),
            resource: CPU.to_string(),
            asked: Amount::from_f64(2.0),
            max: Amount::from_f64(0.5),
        };
        assert!(
            e.to_string()
                .starts_with("infeasible: asks for 2 CPU, bundle 1 of")
        );
        let e = SchedError::BundlesDoNotFit {
            strategy: PlacementStrategy::StrictPack,
            bundles: 3,
            nodes: 2,
        };
        assert_eq!(
            e.to_string(),
            "infeasible: 3 bundles can never be placed STRICT_PACK on the 2 alive nodes"
        );
        let all = [
            SchedError::NoAliveNodes.to_string(),
            SchedError::InvalidBundles("no bundles".into()).to_string(),
            SchedError::StrictSpreadTooFewNodes {
                bundles: 3,
                nodes: 1,
            }
            .to_string(),
        ];
        for m in all {
            assert!(m.starts_with(|c: char| c.is_lowercase()), "{m}");
        }
    }

    #[test]
    fn errors_cross_the_wire() {
        let e = SchedError::InfeasibleCombination {
            request: ResourceSet::new().with(CPU, 4.0).with(GPU, 0.5),
        };
        let bytes = rmp_serde::to_vec(&e).expect("encode");
        let back: SchedError = rmp_serde::from_slice(&bytes).expect("decode");
        assert_eq!(back, e);
        assert_eq!(
            e.to_string(),
            "infeasible: no single node could ever hold {CPU: 4, GPU: 0.5} at once"
        );
        let p = PlaceError::Infeasible(SchedError::DeadNode(NodeId::new()));
        let bytes = rmp_serde::to_vec(&p).expect("encode");
        let back: PlaceError = rmp_serde::from_slice(&bytes).expect("decode");
        assert_eq!(back, p);
    }
}
