//! Resource accounting: exact quantities, resource sets and one node's book-keeping.
//!
//! This file owns:
//!
//! * [`Amount`]: a fixed-point quantity in units of 1/10000, so `0.5` CPU or `0.0001` of a
//!   custom resource add and subtract exactly (no float drift after a million tasks).
//! * [`ResourceSet`]: resource name to amount, zero entries dropped.
//! * [`NodeResources`]: one node's totals, availability, per-GPU instances, labels and the
//!   placement-group bundles committed on it, with [`NodeResources::allocate`] /
//!   [`NodeResources::release`] returning and taking back an [`Allocation`] that names the GPU
//!   instances (for `CUDA_VISIBLE_DEVICES`).
//! * The Ray naming scheme for placement-group resources ([`group_resource_name`],
//!   [`parse_group_resource`], [`bundle_request`]).
//!
//! ## GPU instances
//!
//! A node with `GPU = n` has `ceil(n)` instances: `floor(n)` of capacity 1 and, when `n` is not
//! whole, one more holding the fractional rest. A request of `g` GPUs needs `floor(g)` instances
//! that are completely free plus, when `g` has a fractional part `f`, one *other* instance with
//! at least `f` free (best fit: the instance with the least free space that still fits). The
//! same rule applies to the placement-group GPU resources (`GPU_group_...`), whose instances are
//! the physical GPUs the bundle reserved. When a request names several GPU resources (a
//! placement-group task asks for `GPU_group_<i>_<pg>` and `GPU_group_<pg>`), they are charged on
//! the *same* instances, chosen where all of them are free; they are normalized to the largest
//! of the asked amounts.
//!
//! ## Bundles
//!
//! [`NodeResources::commit_bundle`] follows Ray: the bundle's resources leave `available` and
//! reappear as `R_group_<i>_<pg>` (this bundle) and `R_group_<pg>` (all bundles of the group on
//! this node, accumulated) in both `total` and `available`, with `bundle_group_<i>_<pg>` and
//! `bundle_group_<pg>` markers of 1000 each. [`NodeResources::return_bundle`] returns the bundle
//! even when tasks still hold parts of it (Ray does the same: removing a group kills its
//! workers); a later [`NodeResources::release`] of such a task's allocation skips the group
//! resources that no longer exist and never raises `available` above `total`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Neg, Sub, SubAssign};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::SchedError;
use crate::ids::PlacementGroupId;

/// The CPU resource.
pub const CPU: &str = "CPU";
/// The GPU resource (instance-tracked).
pub const GPU: &str = "GPU";
/// Heap memory in bytes.
pub const MEMORY: &str = "memory";
/// Object-store memory in bytes.
pub const OBJECT_STORE_MEMORY: &str = "object_store_memory";
/// The pseudo-resource Ray uses to mark a bundle's presence (`bundle_group_<i>_<pg>`).
pub const BUNDLE: &str = "bundle";

/// Units per whole: an [`Amount`] of `SCALE` units is `1`.
pub const SCALE: i64 = 10_000;

/// The marker amount a committed bundle adds as `bundle_group_<i>_<pg>` (and to `bundle_group_<pg>`).
pub const BUNDLE_MARKER_TOTAL: Amount = Amount(1000 * SCALE);
/// The marker amount a placement-group task asks for, so even a zero-resource task is pinned.
pub const BUNDLE_MARKER_REQUEST: Amount = Amount(SCALE / 1000);

/// An exact resource quantity: an `i64` count of 1/10000 units.
///
/// Arithmetic saturates instead of overflowing. Serialized as the raw unit count (an integer),
/// so it crosses the wire exactly.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Amount(i64);

impl Amount {
    /// Zero.
    pub const ZERO: Amount = Amount(0);
    /// One whole unit.
    pub const ONE: Amount = Amount(SCALE);

    /// An amount of `units` 1/10000ths.
    pub const fn from_units(units: i64) -> Self {
        Self(units)
    }

    /// The raw count of 1/10000ths.
    pub const fn units(self) -> i64 {
        self.0
    }

    /// A whole amount (`from_whole(3)` is `3`).
    pub const fn from_whole(n: i64) -> Self {
        Self(n.saturating_mul(SCALE))
    }

    /// The nearest amount to `x` (rounded to 1/10000; NaN is zero, infinities saturate).
    pub fn from_f64(x: f64) -> Self {
        // `as` saturates on overflow and maps NaN to 0.
        Self((x * SCALE as f64).round() as i64)
    }

    /// The amount as a float.
    pub fn to_f64(self) -> f64 {
        self.0 as f64 / SCALE as f64
    }

    /// Whether the amount is zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Whether the amount is above zero.
    pub const fn is_positive(self) -> bool {
        self.0 > 0
    }

    /// Whether the amount is below zero.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// Whether the amount is a whole number.
    pub const fn is_whole(self) -> bool {
        self.0 % SCALE == 0
    }

    /// The whole part, truncated toward zero (`2.5` -> `2`).
    pub const fn whole_part(self) -> i64 {
        self.0 / SCALE
    }

    /// What is left after the whole part (`2.5` -> `0.5`, `-2.5` -> `-0.5`).
    pub const fn fraction_part(self) -> Amount {
        Amount(self.0 % SCALE)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let scale = SCALE.unsigned_abs();
        let (whole, frac) = (abs / scale, abs % scale);
        if frac == 0 {
            write!(f, "{sign}{whole}")
        } else {
            let digits = format!("{frac:04}");
            write!(f, "{sign}{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Add for Amount {
    type Output = Amount;
    fn add(self, rhs: Amount) -> Amount {
        Amount(self.0.saturating_add(rhs.0))
    }
}

impl Sub for Amount {
    type Output = Amount;
    fn sub(self, rhs: Amount) -> Amount {
        Amount(self.0.saturating_sub(rhs.0))
    }
}

impl AddAssign for Amount {
    fn add_assign(&mut self, rhs: Amount) {
        *self = *self + rhs;
    }
}

impl SubAssign for Amount {
    fn sub_assign(&mut self, rhs: Amount) {
        *self = *self - rhs;
    }
}

impl Neg for Amount {
    type Output = Amount;
    fn neg(self) -> Amount {
        Amount(self.0.saturating_neg())
    }
}

impl Sum for Amount {
    fn sum<I: Iterator<Item = Amount>>(iter: I) -> Amount {
        iter.fold(Amount::ZERO, Add::add)
    }
}

/// A set of named resource amounts. Zero entries are never stored; amounts may be negative
/// (an oversubscribed `available`).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ResourceSet {
    map: BTreeMap<String, Amount>,
}

impl ResourceSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builder: `self` plus `amount` of `name` (a float, rounded to 1/10000).
    pub fn with(self, name: &str, amount: f64) -> Self {
        self.with_amount(name, Amount::from_f64(amount))
    }

    /// Builder: `self` plus an exact `amount` of `name`.
    pub fn with_amount(mut self, name: &str, amount: Amount) -> Self {
        self.add_amount(name, amount);
        self
    }

    /// From a float map, as the user API hands resources over.
    pub fn from_map(map: &HashMap<String, f64>) -> Self {
        map.iter()
            .map(|(k, v)| (k.clone(), Amount::from_f64(*v)))
            .collect()
    }

    /// The amount of `name` (zero if absent).
    pub fn get(&self, name: &str) -> Amount {
        self.map.get(name).copied().unwrap_or_default()
    }

    /// Whether `name` has a non-zero amount.
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Sets `name` to `amount` (removing it when zero).
    pub fn set(&mut self, name: &str, amount: Amount) {
        if amount.is_zero() {
            self.map.remove(name);
        } else if let Some(v) = self.map.get_mut(name) {
            *v = amount;
        } else {
            self.map.insert(name.to_string(), amount);
        }
    }

    /// Removes `name`, returning its amount (zero if absent).
    pub fn remove(&mut self, name: &str) -> Amount {
        self.map.remove(name).unwrap_or_default()
    }

    /// Adds `amount` to `name`.
    pub fn add_amount(&mut self, name: &str, amount: Amount) {
        let v = self.get(name) + amount;
        self.set(name, v);
    }

    /// Subtracts `amount` from `name` (may go negative).
    pub fn sub_amount(&mut self, name: &str, amount: Amount) {
        let v = self.get(name) - amount;
        self.set(name, v);
    }

    /// Whether there is no non-zero entry.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of non-zero entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether every amount is at most `other`'s amount of the same name (absent is zero).
    pub fn is_subset_of(&self, other: &ResourceSet) -> bool {
        self.map.iter().all(|(k, v)| *v <= other.get(k))
            && other
                .map
                .iter()
                .all(|(k, v)| !v.is_negative() || self.get(k) <= *v)
    }

    /// Whether some entry is negative.
    pub fn has_negative(&self) -> bool {
        self.map.values().any(|v| v.is_negative())
    }

    /// The entries in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Amount)> + '_ {
        self.map.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// The names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.map.keys().map(String::as_str)
    }

    /// The positive entries only.
    pub fn positive_part(&self) -> ResourceSet {
        self.iter().filter(|(_, v)| v.is_positive()).collect()
    }

    /// As a float map, for the user API and metrics.
    pub fn to_f64_map(&self) -> HashMap<String, f64> {
        self.map
            .iter()
            .map(|(k, v)| (k.clone(), v.to_f64()))
            .collect()
    }

    /// Borrows the underlying map.
    pub fn as_map(&self) -> &BTreeMap<String, Amount> {
        &self.map
    }
}

impl<S: Into<String>> FromIterator<(S, Amount)> for ResourceSet {
    fn from_iter<I: IntoIterator<Item = (S, Amount)>>(iter: I) -> Self {
        let mut set = ResourceSet::new();
        for (k, v) in iter {
            let k: String = k.into();
            set.add_amount(&k, v);
        }
        set
    }
}

impl AddAssign<&ResourceSet> for ResourceSet {
    fn add_assign(&mut self, rhs: &ResourceSet) {
        for (k, v) in rhs.iter() {
            self.add_amount(k, v);
        }
    }
}

impl SubAssign<&ResourceSet> for ResourceSet {
    fn sub_assign(&mut self, rhs: &ResourceSet) {
        for (k, v) in rhs.iter() {
            self.sub_amount(k, v);
        }
    }
}

impl Add<&ResourceSet> for &ResourceSet {
    type Output = ResourceSet;
    fn add(self, rhs: &ResourceSet) -> ResourceSet {
        let mut out = self.clone();
        out += rhs;
        out
    }
}

impl Sub<&ResourceSet> for &ResourceSet {
    type Output = ResourceSet;
    fn sub(self, rhs: &ResourceSet) -> ResourceSet {
        let mut out = self.clone();
        out -= rhs;
        out
    }
}

impl fmt::Display for ResourceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}: {v}")?;
        }
        f.write_str("}")
    }
}

impl fmt::Debug for ResourceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for ResourceSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.map.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ResourceSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, Amount>::deserialize(d)?;
        Ok(map.into_iter().collect())
    }
}

/// The name of a placement-group resource: `R_group_<index>_<pghex>` for a bundle,
/// `R_group_<pghex>` (the wildcard) for `index = None`.
pub fn group_resource_name(name: &str, pg: PlacementGroupId, index: Option<usize>) -> String {
    match index {
        Some(i) => format!("{name}_group_{i}_{}", pg.hex()),
        None => format!("{name}_group_{}", pg.hex()),
    }
}

/// A placement-group resource name taken apart by [`parse_group_resource`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupResource<'a> {
    /// The resource the bundle reserved, e.g. `CPU` (or `bundle` for the markers).
    pub original: &'a str,
    /// The bundle index, `None` for the wildcard.
    pub index: Option<usize>,
    /// The placement group id, 32 hex digits.
    pub pg_hex: &'a str,
}

/// Recognizes `R_group_<i>_<32 hex>` and `R_group_<32 hex>`; anything else is `None`.
pub fn parse_group_resource(name: &str) -> Option<GroupResource<'_>> {
    let split = name.len().checked_sub(32)?;
    let pg_hex = name.get(split..)?;
    if !pg_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let head = name.get(..split)?.strip_suffix('_')?;
    if let Some((pre, digits)) = head.rsplit_once('_')
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Some(original) = pre.strip_suffix("_group")
        && !original.is_empty()
        && let Ok(index) = digits.parse::<usize>()
    {
        return Some(GroupResource {
            original,
            index: Some(index),
            pg_hex,
        });
    }
    let original = head.strip_suffix("_group")?;
    if original.is_empty() {
        return None;
    }
    Some(GroupResource {
        original,
        index: None,
        pg_hex,
    })
}

/// Whether `name` is one of the synthetic placement-group resources.
pub fn is_group_resource(name: &str) -> bool {
    parse_group_resource(name).is_some()
}

/// Whether `name` is instance-tracked like a GPU: `GPU` itself or a `GPU_group_...` resource.
pub fn is_gpu_resource(name: &str) -> bool {
    name == GPU || parse_group_resource(name).is_some_and(|g| g.original == GPU)
}

/// Translates a task's demand into the resources of placement group `pg`, the Ray way.
///
/// Every resource `R` becomes the wildcard `R_group_<pg>`; with a bundle index it *also*
/// becomes `R_group_<index>_<pg>` (so the wildcard keeps counting everything running in the
/// group on that node). A `bundle_group_<pg>` marker of 0.001 (and `bundle_group_<index>_<pg>`
/// with an index) is added so even a zero-resource task is pinned to the group's nodes.
pub fn bundle_request(
    req: &ResourceSet,
    pg: PlacementGroupId,
    index: Option<usize>,
) -> ResourceSet {
    let mut out = ResourceSet::new();
    for (name, amount) in req.iter().filter(|(_, a)| a.is_positive()) {
        out.add_amount(&group_resource_name(name, pg, None), amount);
        if index.is_some() {
            out.add_amount(&group_resource_name(name, pg, index), amount);
        }
    }
    out.add_amount(
        &group_resource_name(BUNDLE, pg, None),
        BUNDLE_MARKER_REQUEST,
    );
    if index.is_some() {
        out.add_amount(
            &group_resource_name(BUNDLE, pg, index),
            BUNDLE_MARKER_REQUEST,
        );
    }
    out
}

/// What [`NodeResources::allocate`] took: the resources (normalized, positive) and, for GPU
/// requests, which GPU instances and how much of each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The resources taken from `available`.
    pub resources: ResourceSet,
    /// `(gpu index, amount)` per GPU instance used, in index order.
    pub gpu_ids: Vec<(usize, Amount)>,
}

impl Allocation {
    /// The GPU indices, e.g. for `CUDA_VISIBLE_DEVICES`.
    pub fn gpu_indices(&self) -> Vec<usize> {
        self.gpu_ids.iter().map(|(i, _)| *i).collect()
    }
}

/// One node's resources: what it has, what is free, its GPU instances, its labels and the
/// placement-group bundles committed on it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeResources {
    /// Everything the node has, including committed bundles' group resources.
    pub total: ResourceSet,
    /// What is free now. May go negative through [`NodeResources::force_acquire`].
    pub available: ResourceSet,
    /// Free fraction of each physical GPU (the plain `GPU` resource).
    pub gpu_instances: Vec<Amount>,
    /// Free fraction of each physical GPU under each `GPU_group_...` resource (same length as
    /// `gpu_instances`; zero where the bundle holds nothing of that GPU).
    pub group_gpu_instances: BTreeMap<String, Vec<Amount>>,
    /// Node labels (`key = value`), carried for label-aware callers.
    pub labels: BTreeMap<String, String>,
    /// Committed bundles: what each one reserved from the plain resources.
    #[serde(with = "pairs")]
    pub bundles: BTreeMap<(PlacementGroupId, usize), Allocation>,
}

/// A candidate choice of GPU instances for a request.
struct Plan {
    demand: ResourceSet,
    gpu_ids: Vec<(usize, Amount)>,
}

impl NodeResources {
    /// A node with `total` resources, all free.
    pub fn new(total: ResourceSet) -> Self {
        let gpu_instances = base_gpu_capacity(total.get(GPU));
        Self {
            available: total.clone(),
            total,
            gpu_instances,
            ..Self::default()
        }
    }

    /// Builder: adds a label.
    pub fn with_label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// The same node with nothing allocated and no bundles: what it could hold "ever".
    pub fn pristine(&self) -> NodeResources {
        let total = self
            .total
            .iter()
            .filter(|(k, _)| !is_group_resource(k))
            .collect();
        let mut node = NodeResources::new(total);
        node.labels = self.labels.clone();
        node
    }

    /// Whether the node has any GPU.
    pub fn has_gpu(&self) -> bool {
        self.total.get(GPU).is_positive()
    }

    /// Whether `req` fits in what is available now (GPU instance rule included).
    pub fn can_fit(&self, req: &ResourceSet) -> bool {
        self.plan(req).is_some()
    }

    /// Whether `req` could ever fit here, i.e. fits in `total` (GPU instance rule included).
    pub fn is_feasible(&self, req: &ResourceSet) -> bool {
        let demand = normalize(req);
        if !demand.iter().all(|(k, v)| v <= self.total.get(k)) {
            return false;
        }
        let names = gpu_names(&demand);
        if names.is_empty() {
            return true;
        }
        let caps: Vec<Vec<Amount>> = names.iter().map(|n| self.capacity(n)).collect();
        pick_instances(&elementwise_min(&caps), demand.get(names[0])).is_some()
    }

    /// Takes `req` from `available` if it fits now; the [`Allocation`] names the GPU instances.
    pub fn allocate(&mut self, req: &ResourceSet) -> Option<Allocation> {
        let plan = self.plan(req)?;
        self.available -= &plan.demand;
        for name in gpu_names(&plan.demand) {
            if let Some(v) = self.instances_mut(name) {
                for (i, a) in &plan.gpu_ids {
                    if let Some(slot) = v.get_mut(*i) {
                        *slot -= *a;
                    }
                }
            }
        }
        Some(Allocation {
            resources: plan.demand,
            gpu_ids: plan.gpu_ids,
        })
    }

    /// Gives an [`Allocation`] back. Resources that no longer exist (a returned bundle's) are
    /// skipped, and nothing rises above its total or instance capacity.
    pub fn release(&mut self, alloc: &Allocation) {
        for (name, amount) in alloc.resources.iter() {
            let total = self.total.get(name);
            if total.is_zero() {
                self.available.remove(name);
                continue;
            }
            let v = (self.available.get(name) + amount).min(total);
            self.available.set(name, v);
        }
        for name in gpu_names(&alloc.resources) {
            let cap = self.release_cap(name);
            if let Some(v) = self.instances_mut(name) {
                for (i, a) in &alloc.gpu_ids {
                    if let (Some(slot), Some(c)) = (v.get_mut(*i), cap.get(*i)) {
                        *slot = (*slot + *a).min(*c);
                    }
                }
            }
        }
    }

    /// Takes `set` from `available` unconditionally (may go negative). Only the aggregate
    /// counts move; GPU instances are untouched. Used when a worker blocked in `get` takes its
    /// CPU back, oversubscribing the node like Ray does.
    pub fn force_acquire(&mut self, set: &ResourceSet) {
        self.available -= set;
    }

    /// Adds `set` to `available` unconditionally: the exact inverse of
    /// [`NodeResources::force_acquire`] (a worker blocking in `get` gives its CPU back).
    pub fn force_release(&mut self, set: &ResourceSet) {
        self.available += set;
    }

    /// Critical-resource utilization: the largest `used / total` over the node's plain
    /// (non placement-group) resources; 0 for a node with nothing. Above 1 when oversubscribed.
    pub fn utilization(&self) -> f64 {
        utilization_of(&self.total, &self.available)
    }

    /// [`NodeResources::utilization`] as it would be after taking `req`.
    pub fn utilization_after(&self, req: &ResourceSet) -> f64 {
        let available = &self.available - &normalize(req);
        utilization_of(&self.total, &available)
    }

    /// Commits bundle `index` of placement group `pg` on this node (see the module docs).
    /// Committing the same bundle again with the same resources is a no-op.
    pub fn commit_bundle(
        &mut self,
        pg: PlacementGroupId,
        index: usize,
        bundle: &ResourceSet,
    ) -> Result<(), SchedError> {
        if let Some(existing) = self.bundles.get(&(pg, index)) {
            return if existing.resources == normalize(bundle) {
                Ok(())
            } else {
                Err(SchedError::BundleConflict { pg, index })
            };
        }
        let alloc = self
            .allocate(bundle)
            .ok_or_else(|| SchedError::BundleUnavailable {
                pg,
                index,
                bundle: bundle.clone(),
            })?;
        let width = self.gpu_instances.len();
        for (name, amount) in alloc.resources.iter() {
            let indexed = group_resource_name(name, pg, Some(index));
            let wildcard = group_resource_name(name, pg, None);
            for n in [&indexed, &wildcard] {
                self.total.add_amount(n, amount);
                self.available.add_amount(n, amount);
            }
            if is_gpu_resource(name) {
                for n in [indexed, wildcard] {
                    let v = self
                        .group_gpu_instances
                        .entry(n)
                        .or_insert_with(|| vec![Amount::ZERO; width]);
                    for (i, a) in &alloc.gpu_ids {
                        if let Some(slot) = v.get_mut(*i) {
                            *slot += *a;
                        }
                    }
                }
            }
        }
        for n in [
            group_resource_name(BUNDLE, pg, Some(index)),
            group_resource_name(BUNDLE, pg, None),
        ] {
            self.total.add_amount(&n, BUNDLE_MARKER_TOTAL);
            self.available.add_amount(&n, BUNDLE_MARKER_TOTAL);
        }
        self.bundles.insert((pg, index), alloc);
        Ok(())
    }

    /// Returns bundle `index` of `pg`: removes its group resources and gives the reserved
    /// resources back to the node, even if tasks still hold parts of the bundle (Ray does the
    /// same; see the module docs). Fails only if the node holds no such bundle.
    pub fn return_bundle(&mut self, pg: PlacementGroupId, index: usize) -> Result<(), SchedError> {
        let alloc = self
            .bundles
            .remove(&(pg, index))
            .ok_or(SchedError::UnknownBundle { pg, index })?;
        let mut shares: Vec<(String, Amount)> = alloc
            .resources
            .iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        shares.push((BUNDLE.to_string(), BUNDLE_MARKER_TOTAL));
        for (name, amount) in &shares {
            let indexed = group_resource_name(name, pg, Some(index));
            self.total.remove(&indexed);
            self.available.remove(&indexed);
            self.group_gpu_instances.remove(&indexed);
            let wildcard = group_resource_name(name, pg, None);
            self.total.sub_amount(&wildcard, *amount);
            if self.total.get(&wildcard).is_positive() {
                self.available.sub_amount(&wildcard, *amount);
                if let Some(v) = self.group_gpu_instances.get_mut(&wildcard) {
                    for (i, a) in &alloc.gpu_ids {
                        if let Some(slot) = v.get_mut(*i) {
                            *slot -= *a;
                        }
                    }
                }
            } else {
                self.total.remove(&wildcard);
                self.available.remove(&wildcard);
                self.group_gpu_instances.remove(&wildcard);
            }
        }
        self.release(&alloc);
        Ok(())
    }

    /// The bundle indices of `pg` committed on this node.
    pub fn bundles_of(&self, pg: PlacementGroupId) -> Vec<usize> {
        self.bundles
            .keys()
            .filter(|(p, _)| *p == pg)
            .map(|(_, i)| *i)
            .collect()
    }

    fn plan(&self, req: &ResourceSet) -> Option<Plan> {
        let demand = normalize(req);
        if !demand.iter().all(|(k, v)| v <= self.available.get(k)) {
            return None;
        }
        let names = gpu_names(&demand);
        let gpu_ids = if names.is_empty() {
            Vec::new()
        } else {
            let vectors: Vec<Vec<Amount>> = names
                .iter()
                .filter_map(|n| self.instances(n).map(<[Amount]>::to_vec))
                .collect();
            if vectors.is_empty() {
                Vec::new()
            } else {
                pick_instances(&elementwise_min(&vectors), demand.get(names[0]))?
            }
        };
        Some(Plan { demand, gpu_ids })
    }

    fn instances(&self, name: &str) -> Option<&[Amount]> {
        if name == GPU {
            Some(&self.gpu_instances)
        } else {
            self.group_gpu_instances.get(name).map(Vec::as_slice)
        }
    }

    fn instances_mut(&mut self, name: &str) -> Option<&mut Vec<Amount>> {
        if name == GPU {
            Some(&mut self.gpu_instances)
        } else {
            self.group_gpu_instances.get_mut(name)
        }
    }

    /// The most each GPU instance can ever hold under `name`: the physical capacity for
    /// `GPU`, the bundles' reservations for a `GPU_group_...` name.
    fn capacity(&self, name: &str) -> Vec<Amount> {
        let mut cap = base_gpu_capacity(self.total.get(GPU));
        if name == GPU {
            return cap;
        }
        cap.iter_mut().for_each(|c| *c = Amount::ZERO);
        for ((pg, index), alloc) in &self.bundles {
            if group_resource_name(GPU, *pg, Some(*index)) == name
                || group_resource_name(GPU, *pg, None) == name
            {
                for (i, a) in &alloc.gpu_ids {
                    if let Some(c) = cap.get_mut(*i) {
                        *c += *a;
                    }
                }
            }
        }
        cap
    }

    /// The most each GPU instance can hold under `name` now, with the committed bundles in
    /// place: for `GPU` the physical capacity minus what bundles reserved.
    fn release_cap(&self, name: &str) -> Vec<Amount> {
        let mut cap = self.capacity(name);
        if name == GPU {
            for alloc in self.bundles.values() {
                for (i, a) in &alloc.gpu_ids {
                    if let Some(c) = cap.get_mut(*i) {
                        *c -= *a;
                    }
                }
            }
        }
        cap
    }
}

/// Positive entries only, with every GPU-like entry raised to the largest GPU-like amount so
/// they can be charged on the same instances.
fn normalize(req: &ResourceSet) -> ResourceSet {
    let mut demand = req.positive_part();
    let names: Vec<String> = demand
        .names()
        .filter(|n| is_gpu_resource(n))
        .map(str::to_string)
        .collect();
    if let Some(max) = names.iter().map(|n| demand.get(n)).max() {
        for n in &names {
            demand.set(n, max);
        }
    }
    demand
}

fn gpu_names(demand: &ResourceSet) -> Vec<&str> {
    demand.names().filter(|n| is_gpu_resource(n)).collect()
}

/// `floor(n)` instances of 1, plus one holding the fractional rest.
fn base_gpu_capacity(total: Amount) -> Vec<Amount> {
    if !total.is_positive() {
        return Vec::new();
    }
    let whole = usize::try_from(total.whole_part()).unwrap_or(0);
    let mut v = vec![Amount::ONE; whole];
    if !total.fraction_part().is_zero() {
        v.push(total.fraction_part());
    }
    v
}

fn elementwise_min(vectors: &[Vec<Amount>]) -> Vec<Amount> {
    let len = vectors.iter().map(Vec::len).min().unwrap_or(0);
    (0..len)
        .map(|i| vectors.iter().map(|v| v[i]).min().unwrap_or(Amount::ZERO))
        .collect()
}

/// Chooses instances for `amount` GPUs out of `free` (see the module docs for the rule).
fn pick_instances(free: &[Amount], amount: Amount) -> Option<Vec<(usize, Amount)>> {
    let whole = usize::try_from(amount.whole_part()).ok()?;
    let frac = amount.fraction_part();
    let mut chosen: Vec<(usize, Amount)> = free
        .iter()
        .enumerate()
        .filter(|(_, f)| **f >= Amount::ONE)
        .take(whole)
        .map(|(i, _)| (i, Amount::ONE))
        .collect();
    if chosen.len() < whole {
        return None;
    }
    if frac.is_positive() {
        let best = free
            .iter()
            .enumerate()
            .filter(|(i, f)| **f >= frac && !chosen.iter().any(|(c, _)| c == i))
            .min_by_key(|(i, f)| (**f, *i))
            .map(|(i, _)| i)?;
        chosen.push((best, frac));
        chosen.sort_unstable();
    }
    Some(chosen)
}

fn utilization_of(total: &ResourceSet, available: &ResourceSet) -> f64 {
    total
        .iter()
        .filter(|(k, v)| v.is_positive() && !is_group_resource(k))
        .map(|(k, t)| (t - available.get(k)).to_f64() / t.to_f64())
        .fold(0.0, f64::max)
}

/// Serializes a map with non-string keys as a list of pairs (JSON-friendly).
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(x: f64) -> Amount {
        Amount::from_f64(x)
    }

    fn node(cpu: f64, gpu: f64) -> NodeResources {
        let mut total = ResourceSet::new().with(CPU, cpu);
        if gpu > 0.0 {
            total = total.with(GPU, gpu);
        }
        NodeResources::new(total)
    }

    #[test]
    fn amount_is_exact_and_displays_compactly() {
        let mut sum = Amount::ZERO;
        for _ in 0..10_000 {
            sum += a(0.0001);
        }
        assert_eq!(sum, Amount::ONE);
        assert_eq!(a(0.1) + a(0.2), a(0.3));
        assert_eq!(a(0.5).to_string(), "0.5");
        assert_eq!(a(2.0).to_string(), "2");
        assert_eq!(a(0.0001).to_string(), "0.0001");
        assert_eq!(a(-1.25).to_string(), "-1.25");
        assert_eq!(format!("{:?}", a(3.5)), "3.5");
        assert_eq!(a(0.5).to_f64(), 0.5);
        assert_eq!(a(0.00004), Amount::ZERO, "rounds to 1/10000");
        assert_eq!(Amount::from_f64(f64::NAN), Amount::ZERO);
        assert_eq!(Amount::from_f64(f64::INFINITY).units(), i64::MAX);
        assert_eq!(
            Amount::from_units(i64::MAX) + Amount::ONE,
            Amount::from_units(i64::MAX)
        );
        assert_eq!(-a(1.5), a(-1.5));
        assert_eq!(a(2.5).whole_part(), 2);
        assert_eq!(a(2.5).fraction_part(), a(0.5));
        assert!(a(3.0).is_whole() && !a(3.5).is_whole());
        assert_eq!(Amount::from_whole(3), a(3.0));
        assert_eq!([a(1.0), a(0.5)].into_iter().sum::<Amount>(), a(1.5));
    }

    #[test]
    fn amount_and_set_serialize_exactly() {
        let bytes = rmp_serde::to_vec(&a(0.0003)).expect("encode");
        let back: Amount = rmp_serde::from_slice(&bytes).expect("decode");
        assert_eq!(back, a(0.0003));
        let set = ResourceSet::new().with(CPU, 0.5).with("custom", 0.0001);
        let bytes = rmp_serde::to_vec(&set).expect("encode");
        let back: ResourceSet = rmp_serde::from_slice(&bytes).expect("decode");
        assert_eq!(back, set);
        // Zero entries are dropped on the way in.
        let mut raw = BTreeMap::new();
        raw.insert("CPU".to_string(), Amount::ZERO);
        raw.insert("GPU".to_string(), Amount::ONE);
        let bytes = rmp_serde::to_vec(&raw).expect("encode");
        let back: ResourceSet = rmp_serde::from_slice(&bytes).expect("decode");
        assert_eq!(back, ResourceSet::new().with(GPU, 1.0));
    }

    #[test]
    fn resource_set_basics() {
        let mut m = HashMap::new();
        m.insert(CPU.to_string(), 2.0);
        m.insert(GPU.to_string(), 0.0);
        m.insert(MEMORY.to_string(), 1e9);
        let s = ResourceSet::from_map(&m);
        assert_eq!(s.len(), 2, "zero GPU dropped");
        assert_eq!(s.get(CPU), a(2.0));
        assert_eq!(s.get(GPU), Amount::ZERO);
        assert_eq!(s.get(OBJECT_STORE_MEMORY), Amount::ZERO);
        assert!(!s.contains(GPU));
        assert_eq!(s.to_f64_map().get(MEMORY), Some(&1e9));
        assert_eq!(s.to_string(), "{CPU: 2, memory: 1000000000}");
        assert!(ResourceSet::new().is_empty());

        let small = ResourceSet::new().with(CPU, 1.0);
        assert!(small.is_subset_of(&s));
        assert!(!s.is_subset_of(&small));
        assert!(ResourceSet::new().is_subset_of(&s));
        let neg = ResourceSet::new().with(CPU, -1.0);
        assert!(!ResourceSet::new().is_subset_of(&neg));
        assert!(neg.is_subset_of(&ResourceSet::new()));

        let sum = &s + &small;
        assert_eq!(sum.get(CPU), a(3.0));
        let diff = &sum - &s;
        assert_eq!(diff, small);
        let mut zero = small.clone();
        zero -= &small;
        assert!(zero.is_empty(), "zeros are dropped");
        let mut x = ResourceSet::new();
        x.sub_amount(CPU, a(1.0));
        assert!(x.has_negative());
        assert_eq!(x.positive_part(), ResourceSet::new());
        x.set(CPU, Amount::ZERO);
        assert!(x.is_empty());
        let names: Vec<&str> = s.names().collect();
        assert_eq!(names, vec![CPU, MEMORY]);
        let collected: ResourceSet = s.iter().collect();
        assert_eq!(collected, s);
        assert_eq!(x.remove("nothing"), Amount::ZERO);
    }

    #[test]
    fn fit_allocate_release_fractional_cpu() {
        let mut n = node(2.0, 0.0);
        let half = ResourceSet::new().with(CPU, 0.5);
        let mut allocs = Vec::new();
        for _ in 0..4 {
            assert!(n.can_fit(&half));
            allocs.push(n.allocate(&half).expect("fits"));
        }
        assert!(!n.can_fit(&half));
        assert!(n.allocate(&half).is_none());
        assert!(n.is_feasible(&ResourceSet::new().with(CPU, 2.0)));
        assert!(!n.is_feasible(&ResourceSet::new().with(CPU, 2.5)));
        assert!((n.utilization() - 1.0).abs() < 1e-9);
        for al in &allocs {
            n.release(al);
        }
        assert_eq!(n.available, n.total);
        assert_eq!(n.utilization(), 0.0);
        // Releasing twice never raises available above total.
        n.release(&allocs[0]);
        assert_eq!(n.available, n.total);
        // An empty request always fits and takes nothing.
        let empty = n.allocate(&ResourceSet::new()).expect("empty fits");
        assert!(empty.resources.is_empty() && empty.gpu_ids.is_empty());
        // Unknown resources never fit.
        assert!(!n.can_fit(&ResourceSet::new().with("TPU", 1.0)));
        assert!(!n.is_feasible(&ResourceSet::new().with("TPU", 1.0)));
        // Negative entries in a request are ignored.
        assert!(n.can_fit(&ResourceSet::new().with(CPU, -5.0)));
    }

    #[test]
    fn gpu_instances_whole_and_fractional() {
        let mut n = node(8.0, 4.0);
        assert_eq!(n.gpu_instances, vec![Amount::ONE; 4]);
        let two = n
            .allocate(&ResourceSet::new().with(GPU, 2.0))
            .expect("two gpus");
        assert_eq!(two.gpu_indices(), vec![0, 1]);
        assert_eq!(two.gpu_ids, vec![(0, Amount::ONE), (1, Amount::ONE)]);
        let q = n
            .allocate(&ResourceSet::new().with(GPU, 0.25))
            .expect("quarter");
        assert_eq!(q.gpu_ids, vec![(2, a(0.25))]);
        // Best fit: the next fraction goes on the partly used instance 2.
        let h = n
            .allocate(&ResourceSet::new().with(GPU, 0.5))
            .expect("half");
        assert_eq!(h.gpu_ids, vec![(2, a(0.5))]);
        // 2 whole GPUs are free in aggregate (0.25 + 1) = 1.25 < 2 anyway; 1 whole fits on gpu 3.
        assert!(!n.can_fit(&ResourceSet::new().with(GPU, 2.0)));
        let one = n.allocate(&ResourceSet::new().with(GPU, 1.0)).expect("one");
        assert_eq!(one.gpu_indices(), vec![3]);
        // 0.25 left on gpu 2, aggregate 0.25.
        assert!(n.can_fit(&ResourceSet::new().with(GPU, 0.25)));
        assert!(!n.can_fit(&ResourceSet::new().with(GPU, 0.3)));
        n.release(&two);
        assert_eq!(n.gpu_instances, vec![a(1.0), a(1.0), a(0.25), a(0.0)]);
        n.release(&q);
        n.release(&h);
        n.release(&one);
        assert_eq!(n.gpu_instances, vec![Amount::ONE; 4]);
        assert_eq!(n.available, n.total);
    }

    #[test]
    fn fractional_gpus_need_one_instance_with_room() {
        let mut n = node(4.0, 2.0);
        let a1 = n.allocate(&ResourceSet::new().with(GPU, 0.6)).expect("0.6");
        let a2 = n.allocate(&ResourceSet::new().with(GPU, 0.6)).expect("0.6");
        assert_eq!(a1.gpu_indices(), vec![0]);
        assert_eq!(a2.gpu_indices(), vec![1]);
        // Aggregate free is 0.8 but no single instance has 0.5 free.
        assert_eq!(n.available.get(GPU), a(0.8));
        assert!(!n.can_fit(&ResourceSet::new().with(GPU, 0.5)));
        assert!(n.can_fit(&ResourceSet::new().with(GPU, 0.4)));
        // A whole GPU needs a fully free instance even with enough aggregate.
        n.release(&a1);
        assert!(n.can_fit(&ResourceSet::new().with(GPU, 1.0)));
        assert!(!n.can_fit(&ResourceSet::new().with(GPU, 1.5)));
        n.release(&a2);
        let mixed = n
            .allocate(&ResourceSet::new().with(GPU, 1.5))
            .expect("1.5 = one whole + half of another");
        assert_eq!(mixed.gpu_ids, vec![(0, a(1.0)), (1, a(0.5))]);
    }

    #[test]
    fn fractional_node_gpu_total_has_partial_instance() {
        let n = node(1.0, 2.5);
        assert_eq!(n.gpu_instances, vec![a(1.0), a(1.0), a(0.5)]);
        assert!(n.is_feasible(&ResourceSet::new().with(GPU, 2.5)));
        assert!(!n.is_feasible(&ResourceSet::new().with(GPU, 3.0)));
        // 0.7 fits on a whole instance; but with only the partial one left it could not.
        let mut m = node(1.0, 1.5);
        assert!(m.is_feasible(&ResourceSet::new().with(GPU, 0.7)));
        m.allocate(&ResourceSet::new().with(GPU, 1.0))
            .expect("whole");
        assert!(!m.can_fit(&ResourceSet::new().with(GPU, 0.7)));
        assert!(m.can_fit(&ResourceSet::new().with(GPU, 0.5)));
        // 1.5 on [1, 0.5] fits, 1.6 does not, and never will.
        let p = node(1.0, 1.5);
        assert!(p.is_feasible(&ResourceSet::new().with(GPU, 1.5)));
        let q = node(1.0, 1.6);
        assert!(q.is_feasible(&ResourceSet::new().with(GPU, 1.6)));
        assert!(!q.is_feasible(&ResourceSet::new().with(GPU, 1.7)));
    }

    #[test]
    fn utilization_is_critical_resource() {
        let mut n = NodeResources::new(
            ResourceSet::new()
                .with(CPU, 4.0)
                .with(MEMORY, 1000.0)
                .with(OBJECT_STORE_MEMORY, 100.0),
        );
        assert_eq!(n.utilization(), 0.0);
        n.allocate(&ResourceSet::new().with(CPU, 1.0).with(MEMORY, 500.0))
            .expect("fits");
        assert!((n.utilization() - 0.5).abs() < 1e-9, "memory is critical");
        let after = n.utilization_after(&ResourceSet::new().with(CPU, 3.0));
        assert!((after - 1.0).abs() < 1e-9);
        assert_eq!(NodeResources::default().utilization(), 0.0);
    }

    #[test]
    fn force_acquire_oversubscribes_and_release_inverts() {
        let mut n = node(1.0, 0.0);
        let one = ResourceSet::new().with(CPU, 1.0);
        let held = n.allocate(&one).expect("fits");
        // The worker blocks in get: gives its CPU back, another task runs.
        n.force_release(&one);
        let other = n.allocate(&one).expect("borrowed cpu");
        // The blocked worker wakes and takes its CPU again: oversubscribed.
        n.force_acquire(&one);
        assert_eq!(n.available.get(CPU), a(-1.0));
        assert!(!n.can_fit(&ResourceSet::new().with(CPU, 0.1)));
        assert!((n.utilization() - 2.0).abs() < 1e-9);
        n.release(&other);
        n.release(&held);
        assert_eq!(n.available, n.total);
    }

    #[test]
    fn group_names_round_trip() {
        let pg = PlacementGroupId::new();
        let idx = group_resource_name(CPU, pg, Some(3));
        let wc = group_resource_name(CPU, pg, None);
        assert_eq!(idx, format!("CPU_group_3_{}", pg.hex()));
        assert_eq!(wc, format!("CPU_group_{}", pg.hex()));
        let p = parse_group_resource(&idx).expect("indexed");
        assert_eq!((p.original, p.index), (CPU, Some(3)));
        assert_eq!(p.pg_hex, pg.hex());
        let p = parse_group_resource(&wc).expect("wildcard");
        assert_eq!((p.original, p.index), (CPU, None));
        let custom = group_resource_name("my_res_2", pg, Some(10));
        let p = parse_group_resource(&custom).expect("custom");
        assert_eq!((p.original, p.index), ("my_res_2", Some(10)));
        assert!(is_gpu_resource(&group_resource_name(GPU, pg, None)));
        assert!(is_gpu_resource(GPU));
        assert!(!is_gpu_resource(&group_resource_name(CPU, pg, None)));
        assert!(parse_group_resource(CPU).is_none());
        assert!(parse_group_resource("my_group_thing").is_none());
        assert!(parse_group_resource(&format!("_group_{}", pg.hex())).is_none());
        assert!(parse_group_resource("ééééééééééééééééééééééééééééééééé").is_none());
    }

    #[test]
    fn bundle_request_translates_names() {
        let pg = PlacementGroupId::new();
        let req = ResourceSet::new().with(CPU, 1.0).with(GPU, 0.5);
        let any = bundle_request(&req, pg, None);
        assert_eq!(any.len(), 3);
        assert_eq!(any.get(&group_resource_name(CPU, pg, None)), a(1.0));
        assert_eq!(any.get(&group_resource_name(GPU, pg, None)), a(0.5));
        assert_eq!(any.get(&group_resource_name(BUNDLE, pg, None)), a(0.001));
        let one = bundle_request(&req, pg, Some(1));
        assert_eq!(one.len(), 6);
        assert_eq!(one.get(&group_resource_name(CPU, pg, Some(1))), a(1.0));
        assert_eq!(one.get(&group_resource_name(BUNDLE, pg, Some(1))), a(0.001));
        let empty = bundle_request(&ResourceSet::new(), pg, Some(0));
        assert_eq!(empty.len(), 2, "markers pin even a zero-resource task");
    }

    #[test]
    fn commit_and_return_bundle() {
        let pg = PlacementGroupId::new();
        let mut n = node(8.0, 0.0);
        let b = ResourceSet::new().with(CPU, 2.0);
        n.commit_bundle(pg, 0, &b).expect("commit 0");
        n.commit_bundle(pg, 1, &b).expect("commit 1");
        assert_eq!(n.available.get(CPU), a(4.0));
        assert_eq!(n.total.get(CPU), a(8.0));
        let c0 = group_resource_name(CPU, pg, Some(0));
        let cw = group_resource_name(CPU, pg, None);
        assert_eq!(n.total.get(&c0), a(2.0));
        assert_eq!(n.available.get(&c0), a(2.0));
        assert_eq!(n.total.get(&cw), a(4.0), "wildcard accumulates");
        assert_eq!(
            n.total.get(&group_resource_name(BUNDLE, pg, Some(1))),
            a(1000.0)
        );
        assert_eq!(
            n.total.get(&group_resource_name(BUNDLE, pg, None)),
            a(2000.0)
        );
        assert_eq!(n.bundles_of(pg), vec![0, 1]);
        // Bundle reservation counts toward utilization; group resources do not.
        assert!((n.utilization() - 0.5).abs() < 1e-9);

        // Idempotent recommit, conflicting recommit.
        n.commit_bundle(pg, 0, &b).expect("same again is a no-op");
        assert_eq!(n.available.get(CPU), a(4.0));
        assert_eq!(
            n.commit_bundle(pg, 0, &ResourceSet::new().with(CPU, 1.0)),
            Err(SchedError::BundleConflict { pg, index: 0 })
        );
        // Too big for what is left.
        let err = n
            .commit_bundle(pg, 2, &ResourceSet::new().with(CPU, 5.0))
            .expect_err("does not fit");
        assert!(matches!(
            err,
            SchedError::BundleUnavailable { index: 2, .. }
        ));
        assert_eq!(
            n.available.get(CPU),
            a(4.0),
            "failed commit changes nothing"
        );

        // A task pinned to bundle 0 uses it.
        let t = n
            .allocate(&bundle_request(
                &ResourceSet::new().with(CPU, 1.5),
                pg,
                Some(0),
            ))
            .expect("fits in bundle 0");
        assert_eq!(n.available.get(&c0), a(0.5));
        assert_eq!(n.available.get(&cw), a(2.5));
        assert!(!n.can_fit(&bundle_request(
            &ResourceSet::new().with(CPU, 1.0),
            pg,
            Some(0)
        )));
        assert!(n.can_fit(&bundle_request(
            &ResourceSet::new().with(CPU, 1.0),
            pg,
            Some(1)
        )));
        assert!(n.can_fit(&bundle_request(
            &ResourceSet::new().with(CPU, 2.5),
            pg,
            None
        )));
        assert!(!n.can_fit(&bundle_request(
            &ResourceSet::new().with(CPU, 2.6),
            pg,
            None
        )));
        n.release(&t);
        assert_eq!(n.available.get(&cw), a(4.0));

        n.return_bundle(pg, 0).expect("return 0");
        assert_eq!(n.available.get(CPU), a(6.0));
        assert!(!n.total.contains(&c0));
        assert_eq!(n.total.get(&cw), a(2.0));
        assert_eq!(
            n.total.get(&group_resource_name(BUNDLE, pg, None)),
            a(1000.0)
        );
        assert_eq!(
            n.return_bundle(pg, 0),
            Err(SchedError::UnknownBundle { pg, index: 0 })
        );
        n.return_bundle(pg, 1).expect("return 1");
        assert_eq!(n, node(8.0, 0.0), "back to pristine");
    }

    #[test]
    fn return_bundle_while_in_use_then_late_release() {
        let pg = PlacementGroupId::new();
        let mut n = node(4.0, 0.0);
        n.commit_bundle(pg, 0, &ResourceSet::new().with(CPU, 2.0))
            .expect("commit");
        let t = n
            .allocate(&bundle_request(
                &ResourceSet::new().with(CPU, 2.0),
                pg,
                Some(0),
            ))
            .expect("task");
        n.return_bundle(pg, 0).expect("returns even in use");
        assert_eq!(n.available.get(CPU), a(4.0));
        // The killed task's allocation comes back late: nothing goes above total.
        n.release(&t);
        assert_eq!(n, node(4.0, 0.0));
    }

    #[test]
    fn gpu_bundles_pin_physical_gpus() {
        let pg = PlacementGroupId::new();
        let mut n = node(8.0, 4.0);
        let plain = n
            .allocate(&ResourceSet::new().with(GPU, 1.0))
            .expect("gpu 0");
        assert_eq!(plain.gpu_indices(), vec![0]);
        n.commit_bundle(pg, 0, &ResourceSet::new().with(GPU, 1.0).with(CPU, 1.0))
            .expect("bundle 0 on gpu 1");
        n.commit_bundle(pg, 1, &ResourceSet::new().with(GPU, 1.0))
            .expect("bundle 1 on gpu 2");
        assert_eq!(n.gpu_instances, vec![a(0.0), a(0.0), a(0.0), a(1.0)]);
        let g1 = group_resource_name(GPU, pg, Some(1));
        let gw = group_resource_name(GPU, pg, None);
        assert_eq!(
            n.group_gpu_instances[&g1],
            vec![a(0.0), a(0.0), a(1.0), a(0.0)]
        );
        assert_eq!(
            n.group_gpu_instances[&gw],
            vec![a(0.0), a(1.0), a(1.0), a(0.0)]
        );

        // Half of bundle 1's GPU: physical GPU 2.
        let t1 = n
            .allocate(&bundle_request(
                &ResourceSet::new().with(GPU, 0.5),
                pg,
                Some(1),
            ))
            .expect("half of bundle 1");
        assert_eq!(t1.gpu_ids, vec![(2, a(0.5))]);
        // A wildcard task wanting a whole GPU gets bundle 0's GPU 1.
        let t2 = n
            .allocate(&bundle_request(
                &ResourceSet::new().with(GPU, 1.0),
                pg,
                None,
            ))
            .expect("whole gpu from the group");
        assert_eq!(t2.gpu_indices(), vec![1]);
        // Bundle 0's GPU is taken (by the wildcard task) even though its indexed count is free.
        assert!(!n.can_fit(&bundle_request(
            &ResourceSet::new().with(GPU, 0.5),
            pg,
            Some(0)
        )));
        // The remaining half of GPU 2 is still usable through bundle 1.
        assert!(n.can_fit(&bundle_request(
            &ResourceSet::new().with(GPU, 0.5),
            pg,
            Some(1)
        )));
        // Plain tasks only see GPU 3.
        let p2 = n
            .allocate(&ResourceSet::new().with(GPU, 1.0))
            .expect("gpu 3");
        assert_eq!(p2.gpu_indices(), vec![3]);
        assert!(!n.can_fit(&ResourceSet::new().with(GPU, 0.1)));

        // Feasibility of group GPU requests is bounded by what the bundles hold.
        assert!(n.is_feasible(&bundle_request(
            &ResourceSet::new().with(GPU, 1.0),
            pg,
            Some(0)
        )));
        assert!(!n.is_feasible(&bundle_request(
            &ResourceSet::new().with(GPU, 2.0),
            pg,
            Some(0)
        )));
        assert!(n.is_feasible(&bundle_request(
            &ResourceSet::new().with(GPU, 2.0),
            pg,
            None
        )));

        for t in [&t1, &t2, &plain, &p2] {
            n.release(t);
        }
        n.return_bundle(pg, 1).expect("return 1");
        n.return_bundle(pg, 0).expect("return 0");
        assert_eq!(n, node(8.0, 4.0));
    }

    #[test]
    fn return_gpu_bundle_in_use_clamps_late_release() {
        let pg = PlacementGroupId::new();
        let mut n = node(2.0, 2.0);
        n.commit_bundle(pg, 0, &ResourceSet::new().with(GPU, 1.0))
            .expect("b0");
        n.commit_bundle(pg, 1, &ResourceSet::new().with(GPU, 1.0))
            .expect("b1");
        let t = n
            .allocate(&bundle_request(
                &ResourceSet::new().with(GPU, 1.0),
                pg,
                Some(0),
            ))
            .expect("task on gpu 0");
        assert_eq!(t.gpu_indices(), vec![0]);
        n.return_bundle(pg, 0).expect("return in use");
        n.release(&t);
        let gw = group_resource_name(GPU, pg, None);
        assert_eq!(n.group_gpu_instances[&gw], vec![a(0.0), a(1.0)]);
        assert_eq!(n.available.get(&gw), a(1.0));
        assert_eq!(n.gpu_instances, vec![a(1.0), a(0.0)]);
        n.return_bundle(pg, 1).expect("return 1");
        assert_eq!(n, node(2.0, 2.0));
    }

    #[test]
    fn pristine_drops_bundles_and_usage() {
        let pg = PlacementGroupId::new();
        let mut n = node(4.0, 1.0).with_label("zone", "a");
        n.commit_bundle(pg, 0, &ResourceSet::new().with(CPU, 1.0))
            .expect("commit");
        n.allocate(&ResourceSet::new().with(GPU, 1.0)).expect("gpu");
        let p = n.pristine();
        assert_eq!(p, node(4.0, 1.0).with_label("zone", "a"));
        assert!(p.has_gpu());
        assert!(!node(1.0, 0.0).has_gpu());
    }

    #[test]
    fn node_resources_serialize() {
        let pg = PlacementGroupId::new();
        let mut n = node(4.0, 2.0).with_label("zone", "a");
        n.commit_bundle(pg, 0, &ResourceSet::new().with(GPU, 1.0))
            .expect("commit");
        let bytes = rmp_serde::to_vec(&n).expect("encode");
        let back: NodeResources = rmp_serde::from_slice(&bytes).expect("decode");
        assert_eq!(back, n);
    }
}
