//! Task and actor placement: which node should run one request.
//!
//! This file owns the cluster-wide resource view ([`ClusterView`], [`NodeView`]), the
//! strategies a task or actor can ask for ([`SchedulingStrategy`]), the tunables
//! ([`PolicyConfig`]) and the [`Scheduler`] that turns a request into a [`Decision`].
//!
//! * DEFAULT is Ray's hybrid policy: the locality-preferred node if it fits; else the local node
//!   if it fits and stays below `spread_threshold` after placing; else a uniformly random pick
//!   among the top k nodes that fit, ranked by (above the threshold?, utilization after
//!   placing, node id). Requests that ask for no GPU first try nodes without GPUs
//!   (`avoid_gpu_nodes`), the local node included; only the preferred node bypasses that rule,
//!   since the caller named it for its data.
//! * SPREAD is round-robin, in node-id order, over the nodes that fit now.
//! * NodeAffinity pins to one node (hard: `Wait` while it is busy, `Infeasible` if it is
//!   unknown, dead, draining or too small) or prefers it (soft: used if it fits now, else
//!   DEFAULT).
//! * PlacementGroup translates the request into the group's resources
//!   ([`bundle_request`]) and runs the hybrid policy over the nodes holding the bundle(s).
//!
//! Dead nodes are never picked. Draining nodes take no new work, except tasks pinned to a
//! placement-group bundle already reserved there. Picking does not allocate: the caller
//! allocates on the chosen node (and may find it raced away, then asks again).

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::SchedError;
use super::resources::{
    BUNDLE, NodeResources, ResourceSet, bundle_request, group_resource_name, is_gpu_resource,
};
use crate::ids::{NodeId, PlacementGroupId};

/// Where a task or actor wants to run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SchedulingStrategy {
    /// Ray's hybrid policy: locality, then local node, then the least utilized.
    #[default]
    Default,
    /// Round-robin over the nodes that fit.
    Spread,
    /// Run on `node` (hard), or prefer it (soft).
    NodeAffinity {
        /// The target node.
        node: NodeId,
        /// Whether another node may be used when the target does not fit now.
        soft: bool,
    },
    /// Run inside a placement group's bundle (any bundle with `bundle_index: None`).
    PlacementGroup {
        /// The group.
        pg: PlacementGroupId,
        /// The bundle, or any bundle of the group.
        bundle_index: Option<usize>,
        /// Whether child tasks inherit this strategy (the caller propagates it; the policy
        /// itself does not look at it).
        capture_child_tasks: bool,
    },
}

/// One node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// The node's resource accounting.
    pub resources: NodeResources,
    /// Whether the node is alive.
    pub alive: bool,
    /// Whether the node is draining (takes no new work).
    pub draining: bool,
}

impl NodeView {
    /// An alive, non-draining node.
    pub fn new(resources: NodeResources) -> Self {
        Self {
            resources,
            alive: true,
            draining: false,
        }
    }

    /// Whether new work may be placed here: alive and not draining.
    pub fn is_schedulable(&self) -> bool {
        self.alive && !self.draining
    }
}

/// The resource view of the whole cluster, keyed (and iterated) by node id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// Every known node, alive or not.
    pub nodes: BTreeMap<NodeId, NodeView>,
}

impl ClusterView {
    /// An empty cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) an alive, non-draining node.
    pub fn add_node(&mut self, id: NodeId, resources: NodeResources) -> &mut NodeView {
        match self.nodes.entry(id) {
            Entry::Occupied(mut e) => {
                e.insert(NodeView::new(resources));
                e.into_mut()
            }
            Entry::Vacant(e) => e.insert(NodeView::new(resources)),
        }
    }

    /// Replaces a node's resources, keeping its flags; an unknown node is added alive.
    pub fn update_node(&mut self, id: NodeId, resources: NodeResources) {
        match self.nodes.get_mut(&id) {
            Some(nv) => nv.resources = resources,
            None => {
                self.nodes.insert(id, NodeView::new(resources));
            }
        }
    }

    /// Overwrites a node's aggregate `available` (e.g. from a resource report; GPU instances
    /// are left alone). Returns false for an unknown node.
    pub fn update_available(&mut self, id: NodeId, available: ResourceSet) -> bool {
        match self.nodes.get_mut(&id) {
            Some(nv) => {
                nv.resources.available = available;
                true
            }
            None => false,
        }
    }

    /// Forgets a node.
    pub fn remove_node(&mut self, id: NodeId) -> Option<NodeView> {
        self.nodes.remove(&id)
    }

    /// Marks a node dead (it stays in the view). Returns false for an unknown node.
    pub fn mark_dead(&mut self, id: NodeId) -> bool {
        self.nodes.get_mut(&id).map(|nv| nv.alive = false).is_some()
    }

    /// Sets a node's draining flag. Returns false for an unknown node.
    pub fn set_draining(&mut self, id: NodeId, draining: bool) -> bool {
        self.nodes
            .get_mut(&id)
            .map(|nv| nv.draining = draining)
            .is_some()
    }

    /// One node.
    pub fn get(&self, id: NodeId) -> Option<&NodeView> {
        self.nodes.get(&id)
    }

    /// One node, mutably (to allocate on it after a pick).
    pub fn get_mut(&mut self, id: NodeId) -> Option<&mut NodeView> {
        self.nodes.get_mut(&id)
    }

    /// Number of known nodes, dead ones included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node is known.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The alive nodes in id order.
    pub fn alive_nodes(&self) -> impl Iterator<Item = (NodeId, &NodeView)> + '_ {
        self.nodes
            .iter()
            .filter(|(_, nv)| nv.alive)
            .map(|(id, nv)| (*id, nv))
    }

    /// The alive, non-draining nodes in id order.
    pub fn schedulable_nodes(&self) -> impl Iterator<Item = (NodeId, &NodeView)> + '_ {
        self.nodes
            .iter()
            .filter(|(_, nv)| nv.is_schedulable())
            .map(|(id, nv)| (*id, nv))
    }

    /// Sum of the alive nodes' totals (placement-group resources included, as Ray's
    /// `cluster_resources()` shows them).
    pub fn total(&self) -> ResourceSet {
        let mut sum = ResourceSet::new();
        for (_, nv) in self.alive_nodes() {
            sum += &nv.resources.total;
        }
        sum
    }

    /// Sum of the alive nodes' available resources.
    pub fn available(&self) -> ResourceSet {
        let mut sum = ResourceSet::new();
        for (_, nv) in self.alive_nodes() {
            sum += &nv.resources.available;
        }
        sum
    }

    /// Where the bundles of `pg` are committed, on any node (dead ones included), by index.
    pub fn bundle_locations(&self, pg: PlacementGroupId) -> Vec<(usize, NodeId)> {
        let mut out: Vec<(usize, NodeId)> = self
            .nodes
            .iter()
            .flat_map(|(id, nv)| nv.resources.bundles_of(pg).into_iter().map(|i| (i, *id)))
            .collect();
        out.sort_unstable();
        out
    }
}

/// Tunables of the DEFAULT (hybrid) policy; the defaults are Ray's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PolicyConfig {
    /// Below this utilization a node counts as "not busy": the local node is kept, and all
    /// such nodes rank ahead of busy ones.
    pub spread_threshold: f64,
    /// k for the random top-k pick, as a fraction of the schedulable nodes (rounded up).
    pub top_k_fraction: f64,
    /// k is at least this.
    pub top_k_absolute: usize,
    /// Keep requests that ask for no GPU off GPU nodes while other nodes fit.
    pub avoid_gpu_nodes: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            spread_threshold: 0.5,
            top_k_fraction: 0.2,
            top_k_absolute: 1,
            avoid_gpu_nodes: true,
        }
    }
}

/// The outcome of [`Scheduler::pick_node`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run there: it fits now.
    Node(NodeId),
    /// Feasible (somewhere, or on the hard-affinity target) but nothing fits now: queue it.
    Wait,
    /// No alive node could ever satisfy it; the error says why.
    Infeasible(SchedError),
}

impl Decision {
    /// The chosen node, if any.
    pub fn node(&self) -> Option<NodeId> {
        match self {
            Decision::Node(id) => Some(*id),
            _ => None,
        }
    }
}

/// The stateful part of the policy: the SPREAD cursor and the RNG for the top-k pick.
#[derive(Debug)]
pub struct Scheduler {
    /// The tunables.
    pub config: PolicyConfig,
    rng: StdRng,
    last_spread: Option<NodeId>,
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::new()
    }
}

impl Scheduler {
    /// Default config, RNG seeded from the OS.
    pub fn new() -> Self {
        Self {
            config: PolicyConfig::default(),
            rng: StdRng::from_os_rng(),
            last_spread: None,
        }
    }

    /// Default config, deterministic RNG (tests, simulations).
    pub fn with_seed(seed: u64) -> Self {
        Self {
            config: PolicyConfig::default(),
            rng: StdRng::seed_from_u64(seed),
            last_spread: None,
        }
    }

    /// Builder: replaces the config.
    pub fn with_config(mut self, config: PolicyConfig) -> Self {
        self.config = config;
        self
    }

    /// Picks a node for `req` under `strategy`. `local` is the node asking; `preferred` the
    /// node holding most of the arguments' bytes, if known.
    pub fn pick_node(
        &mut self,
        view: &ClusterView,
        req: &ResourceSet,
        strategy: &SchedulingStrategy,
        local: NodeId,
        preferred: Option<NodeId>,
    ) -> Decision {
        match strategy {
            SchedulingStrategy::Default => self.pick_default(view, req, local, preferred),
            SchedulingStrategy::Spread => self.pick_spread(view, req),
            SchedulingStrategy::NodeAffinity { node, soft } => {
                self.pick_affinity(view, req, *node, *soft, local, preferred)
            }
            SchedulingStrategy::PlacementGroup {
                pg, bundle_index, ..
            } => self.pick_placement_group(view, req, *pg, *bundle_index, local, preferred),
        }
    }

    fn pick_default(
        &mut self,
        view: &ClusterView,
        req: &ResourceSet,
        local: NodeId,
        preferred: Option<NodeId>,
    ) -> Decision {
        let avoid_gpu = self.config.avoid_gpu_nodes;
        match self.hybrid(
            view,
            req,
            local,
            preferred,
            avoid_gpu,
            NodeView::is_schedulable,
        ) {
            Some(id) => Decision::Node(id),
            None => wait_or_infeasible(view, req),
        }
    }

    fn pick_spread(&mut self, view: &ClusterView, req: &ResourceSet) -> Decision {
        let fitting: Vec<NodeId> = view
            .schedulable_nodes()
            .filter(|(_, nv)| nv.resources.can_fit(req))
            .map(|(id, _)| id)
            .collect();
        let next = fitting
            .iter()
            .find(|id| self.last_spread.is_none_or(|last| **id > last))
            .or_else(|| fitting.first())
            .copied();
        match next {
            Some(id) => {
                self.last_spread = Some(id);
                Decision::Node(id)
            }
            None => wait_or_infeasible(view, req),
        }
    }

    fn pick_affinity(
        &mut self,
        view: &ClusterView,
        req: &ResourceSet,
        node: NodeId,
        soft: bool,
        local: NodeId,
        preferred: Option<NodeId>,
    ) -> Decision {
        let refusal = match view.get(node) {
            None => SchedError::UnknownNode(node),
            Some(nv) if !nv.alive => SchedError::DeadNode(node),
            Some(nv) if nv.draining => SchedError::NodeDraining(node),
            Some(nv) if nv.resources.can_fit(req) => return Decision::Node(node),
            Some(_) if soft => return self.pick_default(view, req, local, preferred),
            Some(nv) if nv.resources.is_feasible(req) => return Decision::Wait,
            Some(nv) => diagnose_node(node, &nv.resources, req),
        };
        if soft {
            self.pick_default(view, req, local, preferred)
        } else {
            Decision::Infeasible(refusal)
        }
    }

    fn pick_placement_group(
        &mut self,
        view: &ClusterView,
        req: &ResourceSet,
        pg: PlacementGroupId,
        index: Option<usize>,
        local: NodeId,
        preferred: Option<NodeId>,
    ) -> Decision {
        let marker = group_resource_name(BUNDLE, pg, index);
        let holds = |nv: &NodeView| nv.alive && nv.resources.total.contains(&marker);
        let preq = bundle_request(req, pg, index);
        if let Some(id) = self.hybrid(view, &preq, local, preferred, false, holds) {
            return Decision::Node(id);
        }
        let holders: Vec<&NodeResources> = view
            .nodes
            .values()
            .filter(|nv| holds(nv))
            .map(|nv| &nv.resources)
            .collect();
        if holders.is_empty() {
            return Decision::Infeasible(SchedError::BundleNotReserved { pg, index });
        }
        if holders.iter().any(|r| r.is_feasible(&preq)) {
            return Decision::Wait;
        }
        for (name, asked) in req.positive_part().iter() {
            let gname = group_resource_name(name, pg, index);
            let max = holders
                .iter()
                .map(|r| r.total.get(&gname))
                .max()
                .unwrap_or_default();
            if asked > max {
                return Decision::Infeasible(SchedError::BundleTooSmall {
                    pg,
                    index,
                    resource: name.to_string(),
                    asked,
                    max,
                });
            }
        }
        Decision::Infeasible(SchedError::InfeasibleCombination { request: preq })
    }

    /// The hybrid policy over the nodes passing `eligible`; `None` when none fits now.
    fn hybrid(
        &mut self,
        view: &ClusterView,
        req: &ResourceSet,
        local: NodeId,
        preferred: Option<NodeId>,
        avoid_gpu: bool,
        eligible: impl Fn(&NodeView) -> bool,
    ) -> Option<NodeId> {
        let fits = |nv: &NodeView| eligible(nv) && nv.resources.can_fit(req);
        if let Some(p) = preferred
            && view.get(p).is_some_and(fits)
        {
            return Some(p);
        }
        let universe = view.nodes.values().filter(|nv| eligible(nv)).count();
        let fitting: Vec<(NodeId, &NodeView)> = view
            .nodes
            .iter()
            .filter(|(_, nv)| fits(nv))
            .map(|(id, nv)| (*id, nv))
            .collect();
        let asks_gpu = req
            .iter()
            .any(|(k, v)| v.is_positive() && is_gpu_resource(k));
        let passes: &[bool] = if avoid_gpu && !asks_gpu {
            &[true, false]
        } else {
            &[false]
        };
        let threshold = self.config.spread_threshold;
        for &non_gpu_only in passes {
            let pool: Vec<(NodeId, f64)> = fitting
                .iter()
                .filter(|(_, nv)| !non_gpu_only || !nv.resources.has_gpu())
                .map(|(id, nv)| (*id, nv.resources.utilization_after(req)))
                .collect();
            if pool.is_empty() {
                continue;
            }
            if let Some((_, u)) = pool.iter().find(|(id, _)| *id == local)
                && *u < threshold
            {
                return Some(local);
            }
            let mut ranked = pool;
            ranked.sort_by(|(ia, ua), (ib, ub)| {
                (*ua >= threshold)
                    .cmp(&(*ub >= threshold))
                    .then(ua.total_cmp(ub))
                    .then(ia.cmp(ib))
            });
            let k = top_k(&self.config, universe).clamp(1, ranked.len());
            let pick = self.rng.random_range(0..k);
            return ranked.get(pick).map(|(id, _)| *id);
        }
        None
    }
}

/// `max(ceil(fraction * nodes), absolute)`.
fn top_k(config: &PolicyConfig, nodes: usize) -> usize {
    let by_fraction = (config.top_k_fraction.max(0.0) * nodes as f64).ceil();
    // The float is finite and non-negative here; `as` saturates on huge values.
    (by_fraction as usize).max(config.top_k_absolute)
}

/// `Wait` if some schedulable node could ever hold `req`, else why not.
fn wait_or_infeasible(view: &ClusterView, req: &ResourceSet) -> Decision {
    let nodes: Vec<&NodeResources> = view
        .schedulable_nodes()
        .map(|(_, nv)| &nv.resources)
        .collect();
    if nodes.iter().any(|r| r.is_feasible(req)) {
        Decision::Wait
    } else {
        Decision::Infeasible(diagnose(&nodes, req))
    }
}

/// Why no node among `nodes` could ever hold `req`: the first resource (in name order) asked
/// beyond every node's total, else the combination.
pub(crate) fn diagnose(nodes: &[&NodeResources], req: &ResourceSet) -> SchedError {
    if nodes.is_empty() {
        return SchedError::NoAliveNodes;
    }
    let demand = req.positive_part();
    for (name, asked) in demand.iter() {
        let max = nodes
            .iter()
            .map(|r| r.total.get(name))
            .max()
            .unwrap_or_default();
        if asked > max {
            return SchedError::Infeasible {
                resource: name.to_string(),
                asked,
                max,
            };
        }
    }
    SchedError::InfeasibleCombination { request: demand }
}

fn diagnose_node(node: NodeId, res: &NodeResources, req: &ResourceSet) -> SchedError {
    let demand = req.positive_part();
    for (name, asked) in demand.iter() {
        let max = res.total.get(name);
        if asked > max {
            return SchedError::InfeasibleOnNode {
                node,
                resource: name.to_string(),
                asked,
                max,
            };
        }
    }
    SchedError::NodeCannotHold {
        node,
        request: demand,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::sched::resources::{Amount, CPU, GPU, MEMORY};

    fn cpu(x: f64) -> ResourceSet {
        ResourceSet::new().with(CPU, x)
    }

    fn gpu(x: f64) -> ResourceSet {
        ResourceSet::new().with(GPU, x)
    }

    fn res(cpus: f64, gpus: f64) -> NodeResources {
        let mut total = cpu(cpus);
        if gpus > 0.0 {
            total = total.with(GPU, gpus);
        }
        NodeResources::new(total)
    }

    /// A cluster of `n` nodes with `cpus` CPUs each; ids in ascending order.
    fn cluster(n: usize, cpus: f64) -> (ClusterView, Vec<NodeId>) {
        let mut view = ClusterView::new();
        let ids: Vec<NodeId> = (0..n).map(|_| NodeId::new()).collect();
        for id in &ids {
            view.add_node(*id, res(cpus, 0.0));
        }
        (view, ids)
    }

    fn occupy(view: &mut ClusterView, id: NodeId, req: &ResourceSet) {
        view.get_mut(id)
            .and_then(|nv| nv.resources.allocate(req))
            .expect("occupy fits");
    }

    fn pick(s: &mut Scheduler, view: &ClusterView, req: &ResourceSet, local: NodeId) -> Decision {
        s.pick_node(view, req, &SchedulingStrategy::Default, local, None)
    }

    #[test]
    fn defaults_match_ray() {
        let c = PolicyConfig::default();
        assert_eq!(c.spread_threshold, 0.5);
        assert_eq!(c.top_k_fraction, 0.2);
        assert_eq!(c.top_k_absolute, 1);
        assert!(c.avoid_gpu_nodes);
        assert_eq!(SchedulingStrategy::default(), SchedulingStrategy::Default);
        assert_eq!(top_k(&c, 10), 2);
        assert_eq!(top_k(&c, 11), 3);
        assert_eq!(top_k(&c, 1), 1);
        assert_eq!(top_k(&c, 0), 1);
    }

    #[test]
    fn strategy_serializes() {
        for s in [
            SchedulingStrategy::Default,
            SchedulingStrategy::Spread,
            SchedulingStrategy::NodeAffinity {
                node: NodeId::new(),
                soft: true,
            },
            SchedulingStrategy::PlacementGroup {
                pg: PlacementGroupId::new(),
                bundle_index: Some(2),
                capture_child_tasks: true,
            },
        ] {
            let bytes = rmp_serde::to_vec(&s).expect("encode");
            let back: SchedulingStrategy = rmp_serde::from_slice(&bytes).expect("decode");
            assert_eq!(back, s);
        }
        let c = PolicyConfig::default();
        let bytes = rmp_serde::to_vec(&c).expect("encode");
        let back: PolicyConfig = rmp_serde::from_slice(&bytes).expect("decode");
        assert_eq!(back, c);
    }

    #[test]
    fn cluster_view_helpers() {
        let (mut view, ids) = cluster(3, 4.0);
        assert_eq!(view.len(), 3);
        assert_eq!(view.total().get(CPU), Amount::from_f64(12.0));
        occupy(&mut view, ids[0], &cpu(1.5));
        assert_eq!(view.available().get(CPU), Amount::from_f64(10.5));
        assert!(view.mark_dead(ids[2]));
        assert_eq!(
            view.total().get(CPU),
            Amount::from_f64(8.0),
            "dead nodes excluded"
        );
        assert_eq!(view.alive_nodes().count(), 2);
        assert!(view.set_draining(ids[1], true));
        assert_eq!(view.schedulable_nodes().count(), 1);
        assert!(view.update_available(ids[0], cpu(4.0)));
        assert_eq!(view.available().get(CPU), Amount::from_f64(8.0));
        view.update_node(ids[1], res(8.0, 0.0));
        let nv = view.get(ids[1]).expect("still there");
        assert!(nv.draining, "flags kept on update");
        assert_eq!(nv.resources.total.get(CPU), Amount::from_f64(8.0));
        let fresh = NodeId::new();
        view.update_node(fresh, res(1.0, 0.0));
        assert!(view.get(fresh).is_some_and(NodeView::is_schedulable));
        assert!(view.remove_node(ids[2]).is_some());
        assert!(!view.mark_dead(ids[2]));
        assert!(!view.set_draining(ids[2], true));
        assert!(!view.update_available(ids[2], cpu(1.0)));
        assert!(!view.is_empty());
        assert_eq!(ClusterView::new().total(), ResourceSet::new());
        let nv = view.add_node(ids[2], res(2.0, 0.0));
        assert!(nv.alive);
    }

    #[test]
    fn default_prefers_locality_node_when_it_fits() {
        let (mut view, ids) = cluster(4, 4.0);
        // The preferred node is busy (above threshold) but fits: locality wins.
        occupy(&mut view, ids[2], &cpu(3.0));
        let mut s = Scheduler::with_seed(1);
        let d = s.pick_node(
            &view,
            &cpu(1.0),
            &SchedulingStrategy::Default,
            ids[0],
            Some(ids[2]),
        );
        assert_eq!(d, Decision::Node(ids[2]));
        // Once full, the preferred node is skipped; the idle local node is taken.
        occupy(&mut view, ids[2], &cpu(1.0));
        let d = s.pick_node(
            &view,
            &cpu(1.0),
            &SchedulingStrategy::Default,
            ids[0],
            Some(ids[2]),
        );
        assert_eq!(d, Decision::Node(ids[0]));
        // A dead preferred node is never picked.
        let mut view2 = view.clone();
        view2.get_mut(ids[2]).expect("node").resources = res(4.0, 0.0);
        view2.mark_dead(ids[2]);
        let d = s.pick_node(
            &view2,
            &cpu(1.0),
            &SchedulingStrategy::Default,
            ids[0],
            Some(ids[2]),
        );
        assert_eq!(d, Decision::Node(ids[0]));
    }

    #[test]
    fn default_keeps_local_below_threshold_then_spills_to_least_utilized() {
        let (mut view, ids) = cluster(3, 4.0);
        let mut s = Scheduler::with_seed(7);
        let local = ids[1];
        // 0 -> 0.25 after placing: below 0.5, keep local.
        assert_eq!(pick(&mut s, &view, &cpu(1.0), local), Decision::Node(local));
        occupy(&mut view, local, &cpu(1.0));
        // 0.25 -> 0.5 after placing: not below 0.5, spill.
        occupy(&mut view, ids[0], &cpu(0.5));
        // With 3 nodes, k = max(ceil(0.6), 1) = 1: the least utilized after placing wins.
        // ids[2]: 0.25, ids[0]: 0.375, local: 0.5.
        for _ in 0..20 {
            assert_eq!(
                pick(&mut s, &view, &cpu(1.0), local),
                Decision::Node(ids[2])
            );
        }
        // Unknown local node: plain ranking.
        assert_eq!(
            pick(&mut s, &view, &cpu(1.0), NodeId::new()),
            Decision::Node(ids[2])
        );
    }

    #[test]
    fn default_picks_randomly_among_top_k() {
        let (mut view, ids) = cluster(10, 4.0);
        // Make ids[3] and ids[7] the least utilized by loading everything else a bit.
        for (i, id) in ids.iter().enumerate() {
            if i != 3 && i != 7 {
                occupy(&mut view, *id, &cpu(1.0));
            }
        }
        let local = ids[0];
        occupy(&mut view, local, &cpu(1.0)); // local at 0.5: never kept.
        let mut s = Scheduler::with_seed(42);
        let mut seen = BTreeSet::new();
        for _ in 0..200 {
            let d = pick(&mut s, &view, &cpu(1.0), local);
            seen.insert(d.node().expect("fits"));
        }
        // k = ceil(0.2 * 10) = 2: only the two least utilized, both of them.
        assert_eq!(seen, BTreeSet::from([ids[3], ids[7]]));

        // A wider k draws from more nodes, all below-threshold before above-threshold.
        let config = PolicyConfig {
            top_k_fraction: 0.5,
            ..PolicyConfig::default()
        };
        let mut s = Scheduler::with_seed(42).with_config(config);
        let mut seen = BTreeSet::new();
        for _ in 0..500 {
            seen.insert(pick(&mut s, &view, &cpu(1.0), local).node().expect("fits"));
        }
        assert_eq!(seen.len(), 5);
        assert!(!seen.contains(&local));
        assert!(seen.contains(&ids[3]) && seen.contains(&ids[7]));
    }

    #[test]
    fn seeded_schedulers_are_deterministic() {
        let (view, ids) = cluster(50, 4.0);
        let mut a = Scheduler::with_seed(9);
        let mut b = Scheduler::with_seed(9);
        let mut local_busy = view.clone();
        occupy(&mut local_busy, ids[0], &cpu(3.0));
        for _ in 0..50 {
            assert_eq!(
                pick(&mut a, &local_busy, &cpu(1.0), ids[0]),
                pick(&mut b, &local_busy, &cpu(1.0), ids[0])
            );
        }
        let mut entropy = Scheduler::default();
        assert!(
            pick(&mut entropy, &view, &cpu(1.0), ids[0])
                .node()
                .is_some()
        );
    }

    #[test]
    fn default_avoids_gpu_nodes_for_cpu_work() {
        let mut view = ClusterView::new();
        let gpu_node = NodeId::new();
        let cpu_node = NodeId::new();
        view.add_node(gpu_node, res(8.0, 2.0));
        view.add_node(cpu_node, res(4.0, 0.0));
        let mut s = Scheduler::with_seed(3);
        // Local is the idle GPU node, but CPU work goes to the CPU node.
        assert_eq!(
            pick(&mut s, &view, &cpu(1.0), gpu_node),
            Decision::Node(cpu_node)
        );
        // GPU work goes to the GPU node.
        assert_eq!(
            pick(&mut s, &view, &gpu(1.0), cpu_node),
            Decision::Node(gpu_node)
        );
        // When no non-GPU node fits, CPU work falls back to the GPU node.
        occupy(&mut view, cpu_node, &cpu(4.0));
        assert_eq!(
            pick(&mut s, &view, &cpu(1.0), cpu_node),
            Decision::Node(gpu_node)
        );
        // With the rule off, the idle local GPU node keeps the work.
        let (mut view2, _) = (view.clone(), ());
        view2.get_mut(cpu_node).expect("node").resources = res(4.0, 0.0);
        let mut s = Scheduler::with_seed(3).with_config(PolicyConfig {
            avoid_gpu_nodes: false,
            ..PolicyConfig::default()
        });
        assert_eq!(
            pick(&mut s, &view2, &cpu(1.0), gpu_node),
            Decision::Node(gpu_node)
        );
    }

    #[test]
    fn default_waits_when_busy_and_reports_infeasible() {
        let (mut view, ids) = cluster(2, 2.0);
        occupy(&mut view, ids[0], &cpu(2.0));
        occupy(&mut view, ids[1], &cpu(1.5));
        let mut s = Scheduler::with_seed(0);
        assert_eq!(pick(&mut s, &view, &cpu(1.0), ids[0]), Decision::Wait);
        assert_eq!(
            pick(&mut s, &view, &cpu(0.5), ids[0]),
            Decision::Node(ids[1])
        );
        let d = pick(&mut s, &view, &gpu(4.0), ids[0]);
        let Decision::Infeasible(e) = d else {
            panic!("expected infeasible, got {d:?}");
        };
        assert_eq!(
            e.to_string(),
            "infeasible: asks for 4 GPU, no node has more than 0"
        );
        let d = pick(&mut s, &view, &cpu(3.0), ids[0]);
        assert_eq!(
            d,
            Decision::Infeasible(SchedError::Infeasible {
                resource: CPU.into(),
                asked: Amount::from_f64(3.0),
                max: Amount::from_f64(2.0)
            })
        );
    }

    #[test]
    fn infeasible_combination_and_empty_cluster() {
        let mut view = ClusterView::new();
        let a = NodeId::new();
        let b = NodeId::new();
        view.add_node(a, res(8.0, 0.0));
        view.add_node(b, res(2.0, 1.0));
        let mut s = Scheduler::with_seed(0);
        let req = cpu(4.0).with(GPU, 1.0);
        assert_eq!(
            pick(&mut s, &view, &req, a),
            Decision::Infeasible(SchedError::InfeasibleCombination {
                request: req.clone()
            })
        );
        let mut s = Scheduler::with_seed(0);
        assert_eq!(
            pick(&mut s, &ClusterView::new(), &ResourceSet::new(), a),
            Decision::Infeasible(SchedError::NoAliveNodes)
        );
        // A zero-resource task runs anywhere, even on a full node.
        occupy(&mut view, a, &cpu(8.0));
        assert_eq!(
            pick(&mut s, &view, &ResourceSet::new(), a),
            Decision::Node(a)
        );
    }

    #[test]
    fn dead_and_draining_nodes_are_never_picked() {
        let (mut view, ids) = cluster(3, 4.0);
        view.mark_dead(ids[0]);
        view.set_draining(ids[1], true);
        let mut s = Scheduler::with_seed(5);
        for strategy in [SchedulingStrategy::Default, SchedulingStrategy::Spread] {
            for _ in 0..10 {
                let d = s.pick_node(&view, &cpu(1.0), &strategy, ids[0], Some(ids[1]));
                assert_eq!(d, Decision::Node(ids[2]));
            }
        }
        // Only the dead/draining nodes could hold it: infeasible.
        view.get_mut(ids[0]).expect("node").resources = res(16.0, 0.0);
        let d = pick(&mut s, &view, &cpu(8.0), ids[2]);
        assert!(
            matches!(d, Decision::Infeasible(SchedError::Infeasible { .. })),
            "{d:?}"
        );
        view.mark_dead(ids[2]);
        assert_eq!(
            pick(&mut s, &view, &cpu(1.0), ids[2]),
            Decision::Infeasible(SchedError::NoAliveNodes)
        );
    }

    #[test]
    fn spread_round_robins_over_fitting_nodes() {
        let (mut view, ids) = cluster(3, 2.0);
        let mut s = Scheduler::with_seed(0);
        let spread = SchedulingStrategy::Spread;
        let picks: Vec<NodeId> = (0..6)
            .map(|_| {
                s.pick_node(&view, &cpu(1.0), &spread, ids[0], None)
                    .node()
                    .expect("fits")
            })
            .collect();
        assert_eq!(picks, vec![ids[0], ids[1], ids[2], ids[0], ids[1], ids[2]]);
        // Full nodes are skipped; the cursor continues after the last pick.
        occupy(&mut view, ids[0], &cpu(2.0));
        let d = s.pick_node(&view, &cpu(1.0), &spread, ids[0], None);
        assert_eq!(d, Decision::Node(ids[1]));
        let d = s.pick_node(&view, &cpu(1.0), &spread, ids[0], None);
        assert_eq!(d, Decision::Node(ids[2]));
        let d = s.pick_node(&view, &cpu(1.0), &spread, ids[0], None);
        assert_eq!(d, Decision::Node(ids[1]));
        // The last-picked node disappears: the cursor still moves on.
        view.remove_node(ids[1]);
        let d = s.pick_node(&view, &cpu(1.0), &spread, ids[0], None);
        assert_eq!(d, Decision::Node(ids[2]));
        // Everything full: wait; too big: infeasible.
        occupy(&mut view, ids[2], &cpu(2.0));
        assert_eq!(
            s.pick_node(&view, &cpu(1.0), &spread, ids[0], None),
            Decision::Wait
        );
        assert!(matches!(
            s.pick_node(&view, &cpu(3.0), &spread, ids[0], None),
            Decision::Infeasible(_)
        ));
    }

    #[test]
    fn hard_affinity() {
        let (mut view, ids) = cluster(3, 2.0);
        let mut s = Scheduler::with_seed(0);
        let hard = |node| SchedulingStrategy::NodeAffinity { node, soft: false };
        assert_eq!(
            s.pick_node(&view, &cpu(1.0), &hard(ids[2]), ids[0], Some(ids[1])),
            Decision::Node(ids[2])
        );
        occupy(&mut view, ids[2], &cpu(2.0));
        assert_eq!(
            s.pick_node(&view, &cpu(1.0), &hard(ids[2]), ids[0], None),
            Decision::Wait
        );
        assert_eq!(
            s.pick_node(&view, &cpu(3.0), &hard(ids[2]), ids[0], None),
            Decision::Infeasible(SchedError::InfeasibleOnNode {
                node: ids[2],
                resource: CPU.into(),
                asked: Amount::from_f64(3.0),
                max: Amount::from_f64(2.0),
            })
        );
        let d = s.pick_node(&view, &gpu(2.0), &hard(ids[2]), ids[0], None);
        let Decision::Infeasible(e) = d else {
            panic!("expected infeasible");
        };
        assert_eq!(
            e.to_string(),
            format!("infeasible: asks for 2 GPU, node {} has 0", ids[2])
        );
        view.mark_dead(ids[1]);
        assert_eq!(
            s.pick_node(&view, &cpu(1.0), &hard(ids[1]), ids[0], None),
            Decision::Infeasible(SchedError::DeadNode(ids[1]))
        );
        let ghost = NodeId::new();
        assert_eq!(
            s.pick_node(&view, &cpu(1.0), &hard(ghost), ids[0], None),
            Decision::Infeasible(SchedError::UnknownNode(ghost))
        );
        view.set_draining(ids[0], true);
        assert_eq!(
            s.pick_node(&view, &cpu(1.0), &hard(ids[0]), ids[0], None),
            Decision::Infeasible(SchedError::NodeDraining(ids[0]))
        );
    }

    #[test]
    fn soft_affinity_falls_back_to_default() {
        let (mut view, ids) = cluster(3, 2.0);
        let mut s = Scheduler::with_seed(0);
        let soft = |node| SchedulingStrategy::NodeAffinity { node, soft: true };
        assert_eq!(
            s.pick_node(&view, &cpu(1.0), &soft(ids[2]), ids[0], None),
            Decision::Node(ids[2])
        );
        occupy(&mut view, ids[2], &cpu(2.0));
        // Busy target: DEFAULT, which keeps the idle local node.
        assert_eq!(
            s.pick_node(&view, &cpu(1.0), &soft(ids[2]), ids[0], None),
            Decision::Node(ids[0])
        );
        view.mark_dead(ids[1]);
        assert_eq!(
            s.pick_node(&view, &cpu(1.0), &soft(ids[1]), ids[0], None),
            Decision::Node(ids[0])
        );
        assert_eq!(
            s.pick_node(&view, &cpu(1.0), &soft(NodeId::new()), ids[0], None),
            Decision::Node(ids[0])
        );
        // Too big for the target and everything else: DEFAULT reports infeasible.
        assert!(matches!(
            s.pick_node(&view, &cpu(5.0), &soft(ids[0]), ids[0], None),
            Decision::Infeasible(SchedError::Infeasible { .. })
        ));
    }

    #[test]
    fn placement_group_tasks_go_to_their_bundles() {
        let (mut view, ids) = cluster(3, 4.0);
        let pg = PlacementGroupId::new();
        view.get_mut(ids[1])
            .expect("node")
            .resources
            .commit_bundle(pg, 0, &cpu(2.0))
            .expect("bundle 0");
        view.get_mut(ids[2])
            .expect("node")
            .resources
            .commit_bundle(pg, 1, &cpu(1.0))
            .expect("bundle 1");
        let mut s = Scheduler::with_seed(0);
        let strat = |bundle_index| SchedulingStrategy::PlacementGroup {
            pg,
            bundle_index,
            capture_child_tasks: false,
        };
        // Pinned to bundle 0 -> ids[1], even though local ids[0] is idle.
        let d = s.pick_node(&view, &cpu(1.0), &strat(Some(0)), ids[0], Some(ids[0]));
        assert_eq!(d, Decision::Node(ids[1]));
        assert_eq!(
            s.pick_node(&view, &cpu(1.0), &strat(Some(1)), ids[0], None),
            Decision::Node(ids[2])
        );
        // A zero-resource task is pinned too.
        assert_eq!(
            s.pick_node(&view, &ResourceSet::new(), &strat(Some(1)), ids[0], None),
            Decision::Node(ids[2])
        );
        // Any bundle: local inside the group wins if it holds a bundle.
        assert_eq!(
            s.pick_node(&view, &cpu(1.0), &strat(None), ids[2], None),
            Decision::Node(ids[2])
        );
        // Fill bundle 0: its tasks wait; wildcard tasks go to bundle 1's node.
        let t = bundle_request(&cpu(2.0), pg, Some(0));
        occupy(&mut view, ids[1], &t);
        assert_eq!(
            s.pick_node(&view, &cpu(1.0), &strat(Some(0)), ids[0], None),
            Decision::Wait
        );
        assert_eq!(
            s.pick_node(&view, &cpu(1.0), &strat(None), ids[1], None),
            Decision::Node(ids[2])
        );
        // More than the bundle holds: infeasible, naming the original resource.
        assert_eq!(
            s.pick_node(&view, &cpu(3.0), &strat(Some(0)), ids[0], None),
            Decision::Infeasible(SchedError::BundleTooSmall {
                pg,
                index: Some(0),
                resource: CPU.into(),
                asked: Amount::from_f64(3.0),
                max: Amount::from_f64(2.0),
            })
        );
        assert!(matches!(
            s.pick_node(&view, &gpu(1.0), &strat(None), ids[0], None),
            Decision::Infeasible(SchedError::BundleTooSmall { index: None, .. })
        ));
        // Unknown bundle index, unknown group, bundle on a dead node.
        assert_eq!(
            s.pick_node(&view, &cpu(1.0), &strat(Some(5)), ids[0], None),
            Decision::Infeasible(SchedError::BundleNotReserved { pg, index: Some(5) })
        );
        let other = PlacementGroupId::new();
        let d = s.pick_node(
            &view,
            &cpu(1.0),
            &SchedulingStrategy::PlacementGroup {
                pg: other,
                bundle_index: None,
                capture_child_tasks: true,
            },
            ids[0],
            None,
        );
        assert_eq!(
            d,
            Decision::Infeasible(SchedError::BundleNotReserved {
                pg: other,
                index: None
            })
        );
        view.mark_dead(ids[2]);
        assert_eq!(
            s.pick_node(&view, &cpu(1.0), &strat(Some(1)), ids[0], None),
            Decision::Infeasible(SchedError::BundleNotReserved { pg, index: Some(1) })
        );
        // A draining node still serves its bundles.
        view.set_draining(ids[1], true);
        view.get_mut(ids[1]).expect("node").resources.release(
            &crate::sched::resources::Allocation {
                resources: t,
                gpu_ids: vec![],
            },
        );
        assert_eq!(
            s.pick_node(&view, &cpu(1.0), &strat(Some(0)), ids[0], None),
            Decision::Node(ids[1])
        );
    }

    #[test]
    fn placement_group_gpu_task_gets_bundle_gpu() {
        let mut view = ClusterView::new();
        let n = NodeId::new();
        view.add_node(n, res(4.0, 2.0));
        let pg = PlacementGroupId::new();
        view.get_mut(n)
            .expect("node")
            .resources
            .commit_bundle(pg, 0, &gpu(1.0))
            .expect("commit");
        let mut s = Scheduler::with_seed(0);
        let strat = SchedulingStrategy::PlacementGroup {
            pg,
            bundle_index: Some(0),
            capture_child_tasks: false,
        };
        assert_eq!(
            s.pick_node(&view, &gpu(0.5), &strat, n, None),
            Decision::Node(n)
        );
        let nv = view.get_mut(n).expect("node");
        let alloc = nv
            .resources
            .allocate(&bundle_request(&gpu(0.5), pg, Some(0)))
            .expect("allocate");
        assert_eq!(alloc.gpu_indices(), vec![0]);
        // Plain GPU work gets the other GPU.
        let plain = nv.resources.allocate(&gpu(1.0)).expect("plain");
        assert_eq!(plain.gpu_indices(), vec![1]);
    }

    #[test]
    fn many_nodes_fill_evenly_then_wait() {
        let (mut view, ids) = cluster(200, 4.0);
        let mut s = Scheduler::with_seed(11);
        let mut placed = 0;
        let req = cpu(1.0).with(MEMORY, 0.0);
        loop {
            match pick(&mut s, &view, &req, ids[0]) {
                Decision::Node(id) => {
                    occupy(&mut view, id, &req);
                    placed += 1;
                }
                Decision::Wait => break,
                Decision::Infeasible(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(placed, 800);
        assert!(view.available().is_empty());
    }

    #[test]
    fn default_spreads_load_across_nodes() {
        // After the local node passes the threshold, work spreads: no node gets far ahead.
        let (mut view, ids) = cluster(20, 8.0);
        let mut s = Scheduler::with_seed(13);
        for _ in 0..80 {
            let id = pick(&mut s, &view, &cpu(1.0), ids[0]).node().expect("fits");
            occupy(&mut view, id, &cpu(1.0));
        }
        let max_util = view
            .nodes
            .values()
            .map(|nv| nv.resources.utilization())
            .fold(0.0, f64::max);
        assert!(max_util <= 0.625, "max utilization {max_util}");
    }
}
