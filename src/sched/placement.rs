//! Placement groups: deciding where each bundle goes, and reserving them all-or-nothing.
//!
//! This file owns the bundle placement strategies ([`PlacementStrategy`]), the pure placement
//! computation ([`place_bundles`]) and the atomic reserve/release of a group's bundles on a
//! [`ClusterView`] ([`reserve`], [`release`]).
//!
//! Placement is computed against *available* resources with every bundle of the group fitting
//! at the same time (allocations are simulated on copies of the candidate nodes). Candidates
//! are the alive, non-draining nodes. The same computation is first run against a pristine
//! copy of the cluster (nothing allocated, no bundles): if it fails there the group is
//! [`PlaceError::Infeasible`], otherwise a failure now is [`PlaceError::Unavailable`].
//!
//! * STRICT_PACK: one node holding all bundles; best fit (the node left most utilized).
//! * PACK: STRICT_PACK if possible, else greedy: each bundle (largest first) goes to a node the
//!   group already uses (best fit), else opens the node that could take the largest share of
//!   the remaining bundles' total (ties: best fit).
//! * STRICT_SPREAD: a bundle per node, found by bipartite matching (so the order of bundles
//!   never causes a false failure), preferring the least utilized nodes.
//! * SPREAD: as many bundles on distinct nodes as a maximum matching allows, the rest on the
//!   nodes with the fewest of the group's bundles (then least utilized).
//!
//! PACK and SPREAD are greedy beyond that; they may report a failure where a cleverer
//! arrangement exists (bin packing is NP-hard), never a placement that does not fit.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::SchedError;
use super::policy::{ClusterView, diagnose};
use super::resources::{CPU, GPU, NodeResources, ResourceSet};
use crate::ids::{NodeId, PlacementGroupId};

/// How a placement group's bundles are spread over nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum PlacementStrategy {
    /// As few nodes as possible (soft).
    #[default]
    Pack,
    /// Distinct nodes where possible (soft).
    Spread,
    /// All bundles on one node, or fail.
    StrictPack,
    /// Every bundle on a different node, or fail.
    StrictSpread,
}

impl fmt::Display for PlacementStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PlacementStrategy::Pack => "PACK",
            PlacementStrategy::Spread => "SPREAD",
            PlacementStrategy::StrictPack => "STRICT_PACK",
            PlacementStrategy::StrictSpread => "STRICT_SPREAD",
        })
    }
}

/// Why a placement group cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum PlaceError {
    /// It can never fit in this cluster (or the bundles are malformed).
    #[error(transparent)]
    Infeasible(SchedError),
    /// It could fit once resources are freed: keep it pending.
    #[error("placement group does not fit in the available resources now")]
    Unavailable,
}

/// Where each bundle goes (`result[i]` is bundle `i`'s node), see the module docs.
pub fn place_bundles(
    view: &ClusterView,
    bundles: &[ResourceSet],
    strategy: PlacementStrategy,
) -> Result<Vec<NodeId>, PlaceError> {
    place_bundles_excluding(view, bundles, strategy, &BTreeSet::new())
}

/// [`place_bundles`] never using the nodes in `exclude` (e.g. rescheduling the lost bundles
/// of a STRICT_SPREAD group away from the nodes holding the surviving ones).
pub fn place_bundles_excluding(
    view: &ClusterView,
    bundles: &[ResourceSet],
    strategy: PlacementStrategy,
    exclude: &BTreeSet<NodeId>,
) -> Result<Vec<NodeId>, PlaceError> {
    validate(bundles).map_err(PlaceError::Infeasible)?;
    let ids: Vec<NodeId> = view
        .schedulable_nodes()
        .filter(|(id, _)| !exclude.contains(id))
        .map(|(id, _)| id)
        .collect();
    let live: Vec<NodeResources> = ids
        .iter()
        .filter_map(|id| view.get(*id).map(|nv| nv.resources.clone()))
        .collect();
    let fresh: Vec<NodeResources> = live.iter().map(NodeResources::pristine).collect();
    let fresh_refs: Vec<&NodeResources> = fresh.iter().collect();
    for bundle in bundles {
        if !fresh.iter().any(|n| n.is_feasible(bundle)) {
            return Err(PlaceError::Infeasible(diagnose(&fresh_refs, bundle)));
        }
    }
    if strategy == PlacementStrategy::StrictSpread && bundles.len() > ids.len() {
        return Err(PlaceError::Infeasible(
            SchedError::StrictSpreadTooFewNodes {
                bundles: bundles.len(),
                nodes: ids.len(),
            },
        ));
    }
    if solve(fresh, bundles, strategy).is_none() {
        return Err(PlaceError::Infeasible(SchedError::BundlesDoNotFit {
            strategy,
            bundles: bundles.len(),
            nodes: ids.len(),
        }));
    }
    let placed = solve(live, bundles, strategy).ok_or(PlaceError::Unavailable)?;
    placed
        .into_iter()
        .map(|i| ids.get(i).copied().ok_or(PlaceError::Unavailable))
        .collect()
}

/// Places and commits bundles `0..n` of `pg` atomically: on any failure nothing is committed.
/// Returns each bundle's node.
pub fn reserve(
    view: &mut ClusterView,
    pg: PlacementGroupId,
    bundles: &[ResourceSet],
    strategy: PlacementStrategy,
) -> Result<Vec<NodeId>, PlaceError> {
    let indexed: Vec<(usize, ResourceSet)> = bundles.iter().cloned().enumerate().collect();
    let placed = reserve_bundles(view, pg, &indexed, strategy, &BTreeSet::new())?;
    Ok(placed.into_iter().map(|(_, node)| node).collect())
}

/// Places and commits the given bundles of `pg` (explicit indices, e.g. the ones lost with a
/// node) atomically, avoiding `exclude`. Fails with `BundleExists` if an alive node already
/// holds one of these indices. Returns `(index, node)` in the order given.
pub fn reserve_bundles(
    view: &mut ClusterView,
    pg: PlacementGroupId,
    indexed: &[(usize, ResourceSet)],
    strategy: PlacementStrategy,
    exclude: &BTreeSet<NodeId>,
) -> Result<Vec<(usize, NodeId)>, PlaceError> {
    let mut seen = BTreeSet::new();
    for (index, _) in indexed {
        if !seen.insert(*index) {
            return Err(PlaceError::Infeasible(SchedError::InvalidBundles(format!(
                "bundle index {index} appears twice"
            ))));
        }
    }
    for (id, nv) in view.alive_nodes() {
        if let Some(index) = nv
            .resources
            .bundles_of(pg)
            .into_iter()
            .find(|i| seen.contains(i))
        {
            return Err(PlaceError::Infeasible(SchedError::BundleExists {
                pg,
                index,
                node: id,
            }));
        }
    }
    let bundles: Vec<ResourceSet> = indexed.iter().map(|(_, b)| b.clone()).collect();
    let nodes = place_bundles_excluding(view, &bundles, strategy, exclude)?;
    // Commit on copies of the touched nodes; write them back only if every commit worked.
    let mut staged: BTreeMap<NodeId, NodeResources> = BTreeMap::new();
    for ((index, bundle), node) in indexed.iter().zip(&nodes) {
        let slot = match staged.entry(*node) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let current = view.get(*node).ok_or(PlaceError::Unavailable)?;
                e.insert(current.resources.clone())
            }
        };
        slot.commit_bundle(pg, *index, bundle)
            .map_err(|e| match e {
                SchedError::BundleUnavailable { .. } => PlaceError::Unavailable,
                other => PlaceError::Infeasible(other),
            })?;
    }
    for (id, resources) in staged {
        if let Some(nv) = view.get_mut(id) {
            nv.resources = resources;
        }
    }
    Ok(indexed.iter().map(|(i, _)| *i).zip(nodes).collect())
}

/// Returns the listed bundles of `pg`. Bundles or nodes no longer known are skipped. Returns
/// how many bundles were returned.
pub fn release(
    view: &mut ClusterView,
    pg: PlacementGroupId,
    placement: &[(usize, NodeId)],
) -> usize {
    placement
        .iter()
        .filter(|(index, node)| {
            view.get_mut(*node)
                .is_some_and(|nv| nv.resources.return_bundle(pg, *index).is_ok())
        })
        .count()
}

/// Returns every bundle of `pg` on every node (dead ones included). Returns how many.
pub fn release_all(view: &mut ClusterView, pg: PlacementGroupId) -> usize {
    let placement = view.bundle_locations(pg);
    release(view, pg, &placement)
}

fn validate(bundles: &[ResourceSet]) -> Result<(), SchedError> {
    if bundles.is_empty() {
        return Err(SchedError::InvalidBundles("no bundles".to_string()));
    }
    for (i, b) in bundles.iter().enumerate() {
        if b.has_negative() {
            return Err(SchedError::InvalidBundles(format!(
                "bundle {i} has a negative amount"
            )));
        }
        if b.is_empty() {
            return Err(SchedError::InvalidBundles(format!(
                "bundle {i} asks for nothing"
            )));
        }
    }
    Ok(())
}

/// Node index per bundle, or `None`. `nodes` are simulated on (consumed).
fn solve(
    mut nodes: Vec<NodeResources>,
    bundles: &[ResourceSet],
    strategy: PlacementStrategy,
) -> Option<Vec<usize>> {
    let order = size_order(bundles);
    match strategy {
        PlacementStrategy::StrictPack => strict_pack(&nodes, bundles, &order),
        PlacementStrategy::Pack => strict_pack(&nodes, bundles, &order)
            .or_else(|| pack_greedy(&mut nodes, bundles, &order)),
        PlacementStrategy::StrictSpread => {
            let matched = matching(&nodes, bundles, &order);
            matched.into_iter().collect()
        }
        PlacementStrategy::Spread => spread(&mut nodes, bundles, &order),
    }
}

/// Bundle indices, largest first: by GPU, then CPU, then the sum of everything.
fn size_order(bundles: &[ResourceSet]) -> Vec<usize> {
    let key = |b: &ResourceSet| {
        let all: i128 = b.iter().map(|(_, v)| i128::from(v.units())).sum();
        (b.get(GPU), b.get(CPU), all)
    };
    let mut order: Vec<usize> = (0..bundles.len()).collect();
    order.sort_by(|x, y| key(&bundles[*y]).cmp(&key(&bundles[*x])).then(x.cmp(y)));
    order
}

/// Allocates `order`'s bundles on a copy of `node`, skipping those that do not fit; returns the
/// copy and how many fitted.
fn try_all(
    node: &NodeResources,
    bundles: &[ResourceSet],
    order: &[usize],
) -> (NodeResources, usize) {
    let mut sim = node.clone();
    let fitted = order
        .iter()
        .filter(|b| sim.allocate(&bundles[**b]).is_some())
        .count();
    (sim, fitted)
}

fn strict_pack(
    nodes: &[NodeResources],
    bundles: &[ResourceSet],
    order: &[usize],
) -> Option<Vec<usize>> {
    let mut sum = ResourceSet::new();
    for b in bundles {
        sum += b;
    }
    let mut best: Option<(f64, usize)> = None;
    for (i, node) in nodes.iter().enumerate() {
        // Cheap aggregate check before simulating.
        if !sum.iter().all(|(k, v)| v <= node.available.get(k)) {
            continue;
        }
        let (sim, fitted) = try_all(node, bundles, order);
        if fitted == bundles.len() {
            let u = sim.utilization();
            if best.is_none_or(|(bu, _)| u > bu) {
                best = Some((u, i));
            }
        }
    }
    best.map(|(_, i)| vec![i; bundles.len()])
}

fn pack_greedy(
    nodes: &mut [NodeResources],
    bundles: &[ResourceSet],
    order: &[usize],
) -> Option<Vec<usize>> {
    let mut assign = vec![0; bundles.len()];
    let mut used: Vec<usize> = Vec::new();
    for (pos, &b) in order.iter().enumerate() {
        let bundle = &bundles[b];
        // Best fit among the nodes already used.
        let mut choice: Option<(f64, usize)> = None;
        for &i in &used {
            if nodes[i].can_fit(bundle) {
                let u = nodes[i].utilization_after(bundle);
                if choice.is_none_or(|(cu, _)| u > cu) {
                    choice = Some((u, i));
                }
            }
        }
        let target = match choice {
            Some((_, i)) => i,
            None => {
                // Open the node covering most of what is left (then best fit).
                let mut rest = ResourceSet::new();
                for r in &order[pos..] {
                    rest += &bundles[*r];
                }
                let mut open: Option<(f64, f64, usize)> = None;
                for (i, node) in nodes.iter().enumerate() {
                    if used.contains(&i) || !node.can_fit(bundle) {
                        continue;
                    }
                    let cover = coverage(node, &rest);
                    let u = node.utilization_after(bundle);
                    let better = match open {
                        None => true,
                        Some((oc, ou, _)) => cover > oc || (cover == oc && u > ou),
                    };
                    if better {
                        open = Some((cover, u, i));
                    }
                }
                let (_, _, i) = open?;
                used.push(i);
                i
            }
        };
        nodes[target].allocate(bundle)?;
        assign[b] = target;
    }
    Some(assign)
}

/// The share of `demand` the node could take now: the smallest `available / demand` over the
/// demanded resources, capped at 1.
fn coverage(node: &NodeResources, demand: &ResourceSet) -> f64 {
    demand
        .iter()
        .filter(|(_, v)| v.is_positive())
        .map(|(k, v)| (node.available.get(k).to_f64() / v.to_f64()).clamp(0.0, 1.0))
        .fold(1.0, f64::min)
}

fn spread(
    nodes: &mut [NodeResources],
    bundles: &[ResourceSet],
    order: &[usize],
) -> Option<Vec<usize>> {
    let matched = matching(nodes, bundles, order);
    let mut counts = vec![0usize; nodes.len()];
    let mut assign = vec![0; bundles.len()];
    for (b, m) in matched.iter().enumerate() {
        if let Some(i) = *m {
            nodes[i].allocate(&bundles[b])?;
            counts[i] += 1;
            assign[b] = i;
        }
    }
    for &b in order.iter().filter(|b| matched[**b].is_none()) {
        let bundle = &bundles[b];
        let mut choice: Option<(usize, f64, usize)> = None;
        for (i, node) in nodes.iter().enumerate() {
            if !node.can_fit(bundle) {
                continue;
            }
            let u = node.utilization_after(bundle);
            let better = match choice {
                None => true,
                Some((cc, cu, _)) => counts[i] < cc || (counts[i] == cc && u < cu),
            };
            if better {
                choice = Some((counts[i], u, i));
            }
        }
        let (_, _, i) = choice?;
        nodes[i].allocate(bundle)?;
        counts[i] += 1;
        assign[b] = i;
    }
    Some(assign)
}

/// A maximum matching of bundles to distinct nodes they fit on now (Kuhn's augmenting paths),
/// trying the least utilized nodes first. `result[b]` is bundle `b`'s node, if matched.
fn matching(
    nodes: &[NodeResources],
    bundles: &[ResourceSet],
    order: &[usize],
) -> Vec<Option<usize>> {
    let mut pref: Vec<(f64, usize)> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.utilization(), i))
        .collect();
    pref.sort_by(|(ua, ia), (ub, ib)| ua.total_cmp(ub).then(ia.cmp(ib)));
    let adj: Vec<Vec<usize>> = bundles
        .iter()
        .map(|b| {
            pref.iter()
                .map(|(_, i)| *i)
                .filter(|i| nodes[*i].can_fit(b))
                .collect()
        })
        .collect();
    let mut node_match: Vec<Option<usize>> = vec![None; nodes.len()];
    for &b in order {
        let mut seen = vec![false; nodes.len()];
        augment(b, &adj, &mut seen, &mut node_match);
    }
    let mut result = vec![None; bundles.len()];
    for (i, m) in node_match.iter().enumerate() {
        if let Some(b) = *m {
            result[b] = Some(i);
        }
    }
    result
}

fn augment(
    b: usize,
    adj: &[Vec<usize>],
    seen: &mut [bool],
    node_match: &mut [Option<usize>],
) -> bool {
    for &i in &adj[b] {
        if seen[i] {
            continue;
        }
        seen[i] = true;
        let free = match node_match[i] {
            None => true,
            Some(other) => augment(other, adj, seen, node_match),
        };
        if free {
            node_match[i] = Some(b);
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::resources::{Amount, BUNDLE, group_resource_name};

    fn cpu(x: f64) -> ResourceSet {
        ResourceSet::new().with(CPU, x)
    }

    fn res(cpus: f64, gpus: f64) -> NodeResources {
        let mut total = cpu(cpus);
        if gpus > 0.0 {
            total = total.with(GPU, gpus);
        }
        NodeResources::new(total)
    }

    fn cluster(specs: &[(f64, f64)]) -> (ClusterView, Vec<NodeId>) {
        let mut view = ClusterView::new();
        let ids: Vec<NodeId> = specs.iter().map(|_| NodeId::new()).collect();
        for (id, (c, g)) in ids.iter().zip(specs) {
            view.add_node(*id, res(*c, *g));
        }
        (view, ids)
    }

    fn occupy(view: &mut ClusterView, id: NodeId, req: &ResourceSet) {
        view.get_mut(id)
            .and_then(|nv| nv.resources.allocate(req))
            .expect("occupy fits");
    }

    fn distinct(nodes: &[NodeId]) -> usize {
        nodes.iter().collect::<BTreeSet<_>>().len()
    }

    #[test]
    fn strategy_display_and_serde() {
        assert_eq!(PlacementStrategy::default(), PlacementStrategy::Pack);
        assert_eq!(PlacementStrategy::StrictSpread.to_string(), "STRICT_SPREAD");
        assert_eq!(PlacementStrategy::Spread.to_string(), "SPREAD");
        assert_eq!(PlacementStrategy::Pack.to_string(), "PACK");
        for s in [
            PlacementStrategy::Pack,
            PlacementStrategy::Spread,
            PlacementStrategy::StrictPack,
            PlacementStrategy::StrictSpread,
        ] {
            let bytes = rmp_serde::to_vec(&s).expect("encode");
            let back: PlacementStrategy = rmp_serde::from_slice(&bytes).expect("decode");
            assert_eq!(back, s);
        }
        assert_eq!(
            PlaceError::Unavailable.to_string(),
            "placement group does not fit in the available resources now"
        );
        assert_eq!(
            PlaceError::Infeasible(SchedError::NoAliveNodes).to_string(),
            "infeasible: the cluster has no alive node"
        );
    }

    #[test]
    fn malformed_bundles_are_rejected() {
        let (view, _) = cluster(&[(4.0, 0.0)]);
        let err = |bundles: &[ResourceSet]| place_bundles(&view, bundles, PlacementStrategy::Pack);
        assert_eq!(
            err(&[]),
            Err(PlaceError::Infeasible(SchedError::InvalidBundles(
                "no bundles".into()
            )))
        );
        assert_eq!(
            err(&[cpu(1.0), ResourceSet::new()]),
            Err(PlaceError::Infeasible(SchedError::InvalidBundles(
                "bundle 1 asks for nothing".into()
            )))
        );
        assert_eq!(
            err(&[cpu(-1.0)]),
            Err(PlaceError::Infeasible(SchedError::InvalidBundles(
                "bundle 0 has a negative amount".into()
            )))
        );
    }

    #[test]
    fn pack_uses_one_node_when_it_can() {
        let (mut view, ids) = cluster(&[(8.0, 0.0), (8.0, 0.0), (8.0, 0.0)]);
        occupy(&mut view, ids[1], &cpu(2.0));
        let bundles = vec![cpu(2.0), cpu(2.0), cpu(1.5)];
        let placed = place_bundles(&view, &bundles, PlacementStrategy::Pack).expect("fits");
        // Best fit: the already busier node ids[1] still holds all three.
        assert_eq!(placed, vec![ids[1]; 3]);
        let placed = place_bundles(&view, &bundles, PlacementStrategy::StrictPack).expect("fits");
        assert_eq!(placed, vec![ids[1]; 3]);
    }

    #[test]
    fn pack_falls_back_to_few_nodes() {
        let (view, ids) = cluster(&[(4.0, 0.0), (4.0, 0.0), (4.0, 0.0), (4.0, 0.0)]);
        let bundles = vec![cpu(2.0); 5];
        let placed = place_bundles(&view, &bundles, PlacementStrategy::Pack).expect("fits");
        assert_eq!(distinct(&placed), 3, "ceil(10 / 4) nodes");
        assert!(placed.iter().all(|n| ids.contains(n)));
        // Pack with fractional bundles: 0.5 * 8 = 4 CPU fits one node.
        let placed =
            place_bundles(&view, &vec![cpu(0.5); 8], PlacementStrategy::Pack).expect("fits");
        assert_eq!(distinct(&placed), 1);
        // Strict pack cannot split: infeasible (no node could ever hold 10 CPU).
        assert_eq!(
            place_bundles(&view, &bundles, PlacementStrategy::StrictPack),
            Err(PlaceError::Infeasible(SchedError::BundlesDoNotFit {
                strategy: PlacementStrategy::StrictPack,
                bundles: 5,
                nodes: 4
            }))
        );
    }

    #[test]
    fn pack_opens_the_node_that_holds_most() {
        // Big bundle first goes to the big node, which also takes the small ones.
        let (view, ids) = cluster(&[(2.0, 0.0), (16.0, 0.0), (2.0, 0.0)]);
        let mut full = view.clone();
        occupy(&mut full, ids[1], &cpu(8.0));
        let bundles = vec![cpu(1.0), cpu(5.0), cpu(1.0), cpu(1.0)];
        let placed = place_bundles(&full, &bundles, PlacementStrategy::Pack).expect("fits");
        assert_eq!(placed, vec![ids[1]; 4]);
        // Now too big for one node: 7 + 1 + 1 + 1 on a node with 8 free.
        let bundles = vec![cpu(1.0), cpu(7.0), cpu(1.0), cpu(1.0)];
        let placed = place_bundles(&full, &bundles, PlacementStrategy::Pack).expect("fits");
        assert_eq!(placed[1], ids[1]);
        assert_eq!(distinct(&placed), 2);
        assert_eq!(
            place_bundles(&full, &bundles, PlacementStrategy::StrictPack),
            Err(PlaceError::Unavailable),
            "fits one node once resources are freed"
        );
    }

    #[test]
    fn spread_prefers_distinct_nodes() {
        let (mut view, ids) = cluster(&[(4.0, 0.0), (4.0, 0.0), (4.0, 0.0)]);
        let placed =
            place_bundles(&view, &vec![cpu(1.0); 3], PlacementStrategy::Spread).expect("fits");
        assert_eq!(distinct(&placed), 3);
        let placed = place_bundles(&view, &vec![cpu(1.0); 3], PlacementStrategy::StrictSpread)
            .expect("fits");
        assert_eq!(distinct(&placed), 3);
        // More bundles than nodes: soft spread reuses, evenly.
        let placed =
            place_bundles(&view, &vec![cpu(1.0); 7], PlacementStrategy::Spread).expect("fits");
        let mut counts = BTreeMap::new();
        for n in &placed {
            *counts.entry(*n).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|c| *c == 2 || *c == 3));
        assert_eq!(
            place_bundles(&view, &vec![cpu(1.0); 4], PlacementStrategy::StrictSpread),
            Err(PlaceError::Infeasible(
                SchedError::StrictSpreadTooFewNodes {
                    bundles: 4,
                    nodes: 3
                }
            ))
        );
        // Busy nodes: strict spread waits, soft spread doubles up.
        occupy(&mut view, ids[0], &cpu(4.0));
        assert_eq!(
            place_bundles(&view, &vec![cpu(1.0); 3], PlacementStrategy::StrictSpread),
            Err(PlaceError::Unavailable)
        );
        let placed =
            place_bundles(&view, &vec![cpu(1.0); 3], PlacementStrategy::Spread).expect("fits");
        assert!(!placed.contains(&ids[0]));
        assert_eq!(distinct(&placed), 2);
        // Spread goes to the least utilized nodes first.
        occupy(&mut view, ids[1], &cpu(1.0));
        let placed = place_bundles(&view, &[cpu(1.0)], PlacementStrategy::Spread).expect("fits");
        assert_eq!(placed, vec![ids[2]]);
    }

    #[test]
    fn strict_spread_uses_matching_not_greedy_order() {
        // Bundle 0 (GPU) fits only node B; bundle 1 (CPU) fits A and B. Size order tries the GPU
        // bundle first anyway; swap so a greedy pass in index order would fail: bundle 0 = 2 CPU
        // fits A or B, bundle 1 = 3 CPU fits only B.
        let (view, ids) = cluster(&[(2.0, 0.0), (3.0, 0.0)]);
        let placed = place_bundles(
            &view,
            &[cpu(2.0), cpu(3.0)],
            PlacementStrategy::StrictSpread,
        )
        .expect("matching finds it");
        assert_eq!(placed, vec![ids[0], ids[1]]);
        // Same sizes, where only an augmenting path works: least-utilized-first would put the
        // first bundle on the node the second one needs.
        let (mut view, ids) = cluster(&[(4.0, 0.0), (4.0, 0.0)]);
        occupy(&mut view, ids[0], &cpu(2.0)); // ids[0]: 2 free, ids[1]: 4 free.
        let placed = place_bundles(
            &view,
            &[cpu(2.0), cpu(2.0)],
            PlacementStrategy::StrictSpread,
        )
        .expect("fits");
        assert_eq!(distinct(&placed), 2);
        let placed = place_bundles(
            &view,
            &[cpu(1.0), cpu(3.0)],
            PlacementStrategy::StrictSpread,
        )
        .expect("fits");
        assert_eq!(placed, vec![ids[0], ids[1]]);
    }

    #[test]
    fn infeasible_bundles_name_the_resource() {
        let (view, _) = cluster(&[(4.0, 0.0), (8.0, 1.0)]);
        assert_eq!(
            place_bundles(&view, &[cpu(1.0), cpu(16.0)], PlacementStrategy::Spread),
            Err(PlaceError::Infeasible(SchedError::Infeasible {
                resource: CPU.into(),
                asked: Amount::from_f64(16.0),
                max: Amount::from_f64(8.0)
            }))
        );
        let e = place_bundles(
            &view,
            &[ResourceSet::new().with(GPU, 2.0)],
            PlacementStrategy::Pack,
        )
        .expect_err("infeasible");
        assert_eq!(
            e.to_string(),
            "infeasible: asks for 2 GPU, no node has more than 1"
        );
        // Soft strategies still need everything to fit together eventually.
        assert!(matches!(
            place_bundles(&view, &[cpu(8.0), cpu(8.0)], PlacementStrategy::Spread),
            Err(PlaceError::Infeasible(SchedError::BundlesDoNotFit { .. }))
        ));
        assert_eq!(
            place_bundles(&ClusterView::new(), &[cpu(1.0)], PlacementStrategy::Pack),
            Err(PlaceError::Infeasible(SchedError::NoAliveNodes))
        );
    }

    #[test]
    fn dead_and_draining_nodes_are_not_used() {
        let (mut view, ids) = cluster(&[(4.0, 0.0), (4.0, 0.0), (4.0, 0.0)]);
        view.mark_dead(ids[0]);
        view.set_draining(ids[1], true);
        let placed =
            place_bundles(&view, &vec![cpu(1.0); 2], PlacementStrategy::Spread).expect("fits");
        assert_eq!(placed, vec![ids[2]; 2]);
        assert!(matches!(
            place_bundles(&view, &vec![cpu(1.0); 2], PlacementStrategy::StrictSpread),
            Err(PlaceError::Infeasible(
                SchedError::StrictSpreadTooFewNodes { nodes: 1, .. }
            ))
        ));
    }

    #[test]
    fn gpu_and_fractional_bundles() {
        let (mut view, ids) = cluster(&[(8.0, 1.0), (8.0, 2.0)]);
        let half = ResourceSet::new().with(GPU, 0.5).with(CPU, 0.25);
        // Two halves pack onto the 1-GPU node... the best fit is the node left most utilized.
        let placed = place_bundles(
            &view,
            &[half.clone(), half.clone()],
            PlacementStrategy::StrictPack,
        )
        .expect("fits");
        assert_eq!(placed, vec![ids[0]; 2]);
        // Three halves do not fit one GPU; STRICT_PACK takes the 2-GPU node.
        let placed = place_bundles(
            &view,
            &[half.clone(), half.clone(), half.clone()],
            PlacementStrategy::StrictPack,
        )
        .expect("fits");
        assert_eq!(placed, vec![ids[1]; 3]);
        // 0.6 + 0.6 cannot share one GPU instance.
        let big = ResourceSet::new().with(GPU, 0.6);
        let placed = place_bundles(
            &view,
            &[big.clone(), big.clone()],
            PlacementStrategy::StrictPack,
        )
        .expect("fits on the 2-GPU node");
        assert_eq!(placed, vec![ids[1]; 2]);
        occupy(&mut view, ids[1], &ResourceSet::new().with(GPU, 1.0));
        assert_eq!(
            place_bundles(
                &view,
                &[big.clone(), big.clone()],
                PlacementStrategy::StrictPack
            ),
            Err(PlaceError::Unavailable)
        );
        let placed =
            place_bundles(&view, &[big.clone(), big], PlacementStrategy::Pack).expect("fits");
        assert_eq!(distinct(&placed), 2);
    }

    #[test]
    fn reserve_commits_all_or_nothing() {
        let (mut view, ids) = cluster(&[(4.0, 0.0), (4.0, 0.0)]);
        let before = view.clone();
        let pg = PlacementGroupId::new();
        let bundles = vec![cpu(2.0), cpu(3.0)];
        let placed =
            reserve(&mut view, pg, &bundles, PlacementStrategy::StrictSpread).expect("reserved");
        assert_eq!(distinct(&placed), 2);
        for (i, node) in placed.iter().enumerate() {
            let r = &view.get(*node).expect("node").resources;
            assert_eq!(r.bundles_of(pg), vec![i]);
            assert_eq!(
                r.total.get(&group_resource_name(CPU, pg, Some(i))),
                bundles[i].get(CPU)
            );
            assert!(r.total.contains(&group_resource_name(BUNDLE, pg, None)));
        }
        assert_eq!(view.available().get(CPU), Amount::from_f64(3.0));
        assert_eq!(
            view.bundle_locations(pg),
            vec![(0, placed[0]), (1, placed[1])]
        );

        // Reserving again: the bundles exist.
        let again = reserve(&mut view, pg, &bundles, PlacementStrategy::StrictSpread);
        assert!(matches!(
            again,
            Err(PlaceError::Infeasible(SchedError::BundleExists {
                index: 0,
                ..
            }))
        ));

        // A second group that does not fit now leaves the view untouched.
        let snapshot = view.clone();
        let pg2 = PlacementGroupId::new();
        assert_eq!(
            reserve(
                &mut view,
                pg2,
                &[cpu(2.0), cpu(2.0)],
                PlacementStrategy::StrictSpread
            ),
            Err(PlaceError::Unavailable)
        );
        assert_eq!(view, snapshot);
        assert!(matches!(
            reserve(&mut view, pg2, &[cpu(9.0)], PlacementStrategy::Pack),
            Err(PlaceError::Infeasible(_))
        ));
        assert_eq!(view, snapshot);

        let placement: Vec<(usize, NodeId)> = placed.iter().copied().enumerate().collect();
        assert_eq!(release(&mut view, pg, &placement), 2);
        assert_eq!(view, before, "released back to the original");
        assert_eq!(release(&mut view, pg, &placement), 0, "already released");
        assert_eq!(release(&mut view, pg, &[(0, NodeId::new())]), 0);
        let _ = ids;
    }

    #[test]
    fn reserve_pack_on_one_node_and_release_all() {
        let (mut view, ids) = cluster(&[(4.0, 0.0), (8.0, 0.0)]);
        let before = view.clone();
        let pg = PlacementGroupId::new();
        let placed = reserve(
            &mut view,
            pg,
            &[cpu(1.0), cpu(0.5), cpu(2.5)],
            PlacementStrategy::Pack,
        )
        .expect("reserved");
        // Best fit: the 4-CPU node is left fully used.
        assert_eq!(placed, vec![ids[0]; 3]);
        let r = &view.get(ids[0]).expect("node").resources;
        assert_eq!(r.available.get(CPU), Amount::ZERO);
        assert_eq!(
            r.total.get(&group_resource_name(CPU, pg, None)),
            Amount::from_f64(4.0)
        );
        assert_eq!(
            r.total.get(&group_resource_name(BUNDLE, pg, None)),
            Amount::from_f64(3000.0)
        );
        assert_eq!(release_all(&mut view, pg), 3);
        assert_eq!(view, before);
    }

    #[test]
    fn reserve_bundles_reschedules_lost_ones() {
        let (mut view, ids) = cluster(&[(4.0, 0.0), (4.0, 0.0), (4.0, 0.0), (4.0, 0.0)]);
        let pg = PlacementGroupId::new();
        let bundles = vec![cpu(1.0); 3];
        let placed =
            reserve(&mut view, pg, &bundles, PlacementStrategy::StrictSpread).expect("reserved");
        // The node with bundle 1 dies; reschedule bundle 1 away from the survivors.
        view.mark_dead(placed[1]);
        let survivors: BTreeSet<NodeId> = [placed[0], placed[2]].into_iter().collect();
        let re = reserve_bundles(
            &mut view,
            pg,
            &[(1, cpu(1.0))],
            PlacementStrategy::StrictSpread,
            &survivors,
        )
        .expect("rescheduled");
        assert_eq!(re.len(), 1);
        let (index, node) = re[0];
        assert_eq!(index, 1);
        assert!(!survivors.contains(&node) && node != placed[1]);
        assert!(ids.contains(&node));
        // Duplicate indices are malformed.
        assert!(matches!(
            reserve_bundles(
                &mut view,
                pg,
                &[(5, cpu(1.0)), (5, cpu(1.0))],
                PlacementStrategy::Pack,
                &BTreeSet::new()
            ),
            Err(PlaceError::Infeasible(SchedError::InvalidBundles(_)))
        ));
        // The stale record on the dead node is cleaned by release_all too.
        assert_eq!(release_all(&mut view, pg), 4);
        assert!(view.bundle_locations(pg).is_empty());
    }

    #[test]
    fn many_nodes() {
        let specs = vec![(4.0, 0.0); 300];
        let (mut view, _) = cluster(&specs);
        let pg = PlacementGroupId::new();
        let placed = reserve(
            &mut view,
            pg,
            &vec![cpu(1.0); 100],
            PlacementStrategy::StrictSpread,
        )
        .expect("reserved");
        assert_eq!(distinct(&placed), 100);
        let pg2 = PlacementGroupId::new();
        let placed = reserve(
            &mut view,
            pg2,
            &vec![cpu(4.0); 200],
            PlacementStrategy::Pack,
        )
        .expect("reserved");
        assert_eq!(
            distinct(&placed),
            200,
            "only the untouched nodes have 4 free"
        );
        assert_eq!(
            place_bundles(&view, &[cpu(4.0)], PlacementStrategy::Pack),
            Err(PlaceError::Unavailable)
        );
        assert_eq!(view.available().get(CPU), Amount::from_f64(300.0));
    }
}
