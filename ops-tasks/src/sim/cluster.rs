//! Simulated nodes: free resources per node, placement, and pods left pending by
//! fragmentation.

use std::collections::{HashMap, VecDeque};

use ops_core::{Environment, Resources, TaskId};
use serde::{Deserialize, Serialize};

use crate::NodeGroup;

/// A simulated node: its index in the cluster, in the order of the node groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node-{}", self.0)
    }
}

/// Where [`SimCluster::place_or_wait`] put a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Placement {
    /// On this node.
    Placed(NodeId),
    /// No node has room now (fragmentation): the task waits in its pool's FIFO and is
    /// placed by a later [`SimCluster::free`].
    Pending,
    /// No node of the pool could ever hold it (larger than every node, or no GPU of the
    /// model).
    Impossible,
}

/// How busy the cluster is: used over total, per resource (0 when there is none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Utilisation {
    /// CPU.
    pub cpu: f64,
    /// Memory.
    pub memory: f64,
    /// GPUs.
    pub gpus: f64,
}

/// CPU, memory and GPU count without the GPU model: what placement compares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Amount {
    pub(crate) cpu: u64,
    pub(crate) mem: u64,
    pub(crate) gpus: u32,
}

impl Amount {
    pub(crate) fn of(r: &Resources) -> Self {
        Self {
            cpu: r.cpu_millis,
            mem: r.memory_bytes,
            gpus: r.gpus.count,
        }
    }

    #[inline]
    pub(crate) fn fits(&self, free: &Amount) -> bool {
        self.cpu <= free.cpu && self.mem <= free.mem && self.gpus <= free.gpus
    }

    #[inline]
    fn take(&mut self, a: &Amount) {
        self.cpu = self.cpu.saturating_sub(a.cpu);
        self.mem = self.mem.saturating_sub(a.mem);
        self.gpus = self.gpus.saturating_sub(a.gpus);
    }

    #[inline]
    fn give(&mut self, a: &Amount, cap: &Amount) {
        self.cpu = (self.cpu + a.cpu).min(cap.cpu);
        self.mem = (self.mem + a.mem).min(cap.mem);
        self.gpus = (self.gpus + a.gpus).min(cap.gpus);
    }

    fn times(&self, n: u32) -> Self {
        let n64 = u64::from(n);
        Self {
            cpu: self.cpu.saturating_mul(n64),
            mem: self.mem.saturating_mul(n64),
            gpus: self.gpus.saturating_mul(n),
        }
    }

    fn plus(&self, a: &Amount) -> Self {
        Self {
            cpu: self.cpu.saturating_add(a.cpu),
            mem: self.mem.saturating_add(a.mem),
            gpus: self.gpus.saturating_add(a.gpus),
        }
    }

    fn minus(&self, a: &Amount) -> Self {
        Self {
            cpu: self.cpu.saturating_sub(a.cpu),
            mem: self.mem.saturating_sub(a.mem),
            gpus: self.gpus.saturating_sub(a.gpus),
        }
    }

    fn resources(&self) -> Resources {
        Resources::new(self.cpu, self.mem).with_gpus(self.gpus, None)
    }
}

#[derive(Debug)]
struct Group {
    pool: usize,
    /// Lower-cased GPU model (`gpu` when unnamed), for substring matching.
    model: Option<String>,
    start: u32,
    len: u32,
    cap: Amount,
    /// Free resources summed over the group's nodes: a cheap "cannot fit" test.
    free_sum: Amount,
    /// Next-fit cursor (offset in the group).
    cursor: u32,
}

#[derive(Debug, Default)]
struct Pool {
    /// Groups in the order a request without GPUs tries them (GPU-less nodes first,
    /// as a GPU taint would).
    cpu_order: Vec<usize>,
    /// Groups with GPUs.
    gpu_groups: Vec<usize>,
    pending: VecDeque<Waiting>,
}

#[derive(Debug)]
struct Waiting {
    id: TaskId,
    need: Amount,
    model: Option<String>,
}

/// A cluster of simulated nodes built from [`NodeGroup`]s: per-node free resources,
/// first-fit placement per pool, and a FIFO of pods that fit the pool but no single node
/// (they are placed as nodes free up, like a pending pod).
///
/// A task goes to the pool of its segment when a node group is reserved for it, else to
/// the shared nodes (`pool = None`). A request with GPUs only goes to nodes with GPUs of
/// the model asked for (case-insensitive substring, as the local executor matches);
/// one without GPUs tries GPU-less nodes first.
///
/// ```
/// use ops_core::Resources;
/// use ops_tasks::NodeGroup;
/// use ops_tasks::sim::SimCluster;
///
/// let mut cluster = SimCluster::new(&[NodeGroup::new(2, Resources::new(4000, 8 << 30))]);
/// let task = Resources::new(3000, 1 << 30);
/// let a = cluster.place(None, &task, None).unwrap();
/// let b = cluster.place(None, &task, None).unwrap();
/// assert_ne!(a, b);
/// assert!(cluster.place(None, &task, None).is_none());
/// cluster.free(a, &task);
/// assert_eq!(cluster.place(None, &task, None), Some(a));
/// ```
#[derive(Debug)]
pub struct SimCluster {
    /// Free resources of every node.
    free: Vec<Amount>,
    /// Group of every node.
    node_group: Vec<u32>,
    groups: Vec<Group>,
    node_groups: Vec<NodeGroup>,
    pools: Vec<Pool>,
    pool_index: HashMap<Environment, usize>,
    shared: Option<usize>,
    total: Amount,
    used: Amount,
    pending: usize,
}

impl SimCluster {
    /// A cluster with every node of `groups` empty.
    pub fn new(groups: &[NodeGroup]) -> Self {
        let mut pools: Vec<Pool> = Vec::new();
        let mut pool_index = HashMap::new();
        let mut shared = None;
        let mut out_groups = Vec::new();
        let mut free = Vec::new();
        let mut node_group = Vec::new();
        let mut total = Amount::default();
        for g in groups {
            let pool = match &g.pool {
                Some(env) => *pool_index.entry(env.clone()).or_insert_with(|| {
                    pools.push(Pool::default());
                    pools.len() - 1
                }),
                None => *shared.get_or_insert_with(|| {
                    pools.push(Pool::default());
                    pools.len() - 1
                }),
            };
            let cap = Amount::of(&g.resources);
            let gi = out_groups.len();
            out_groups.push(Group {
                pool,
                // GPUs without a model are called "gpu", as admission calls them.
                model: (cap.gpus > 0).then(|| {
                    g.resources
                        .gpus
                        .model
                        .as_deref()
                        .unwrap_or("gpu")
                        .to_lowercase()
                }),
                start: free.len() as u32,
                len: g.count,
                cap,
                free_sum: cap.times(g.count),
                cursor: 0,
            });
            total = total.plus(&cap.times(g.count));
            for _ in 0..g.count {
                free.push(cap);
                node_group.push(gi as u32);
            }
            if cap.gpus > 0 {
                pools[pool].gpu_groups.push(gi);
            }
        }
        for (gi, g) in out_groups.iter().enumerate() {
            if g.cap.gpus == 0 {
                pools[g.pool].cpu_order.push(gi);
            }
        }
        for (gi, g) in out_groups.iter().enumerate() {
            if g.cap.gpus > 0 {
                pools[g.pool].cpu_order.push(gi);
            }
        }
        Self {
            free,
            node_group,
            groups: out_groups,
            node_groups: groups.to_vec(),
            pools,
            pool_index,
            shared,
            total,
            used: Amount::default(),
            pending: 0,
        }
    }

    /// The node groups it was built from.
    pub fn node_groups(&self) -> &[NodeGroup] {
        &self.node_groups
    }

    /// How many nodes.
    pub fn node_count(&self) -> usize {
        self.free.len()
    }

    /// Everything the nodes offer (GPU model not set).
    pub fn capacity(&self) -> Resources {
        self.total.resources()
    }

    /// What placed tasks hold.
    pub fn used(&self) -> Resources {
        self.used.resources()
    }

    /// Used over capacity, per resource.
    pub fn utilisation(&self) -> Utilisation {
        let ratio = |u: f64, t: f64| if t > 0.0 { u / t } else { 0.0 };
        Utilisation {
            cpu: ratio(self.used.cpu as f64, self.total.cpu as f64),
            memory: ratio(self.used.mem as f64, self.total.mem as f64),
            gpus: ratio(f64::from(self.used.gpus), f64::from(self.total.gpus)),
        }
    }

    /// What a node has free (`None` for a node that does not exist).
    pub fn node_free(&self, node: NodeId) -> Option<Resources> {
        self.free.get(node.0 as usize).map(Amount::resources)
    }

    /// The group (index in [`node_groups`](Self::node_groups)) a node belongs to.
    pub fn node_group(&self, node: NodeId) -> Option<usize> {
        self.node_group.get(node.0 as usize).map(|g| *g as usize)
    }

    /// Tasks waiting for a node (see [`place_or_wait`](Self::place_or_wait)).
    pub fn pending_len(&self) -> usize {
        self.pending
    }

    fn pool_of(&self, segment: Option<&Environment>) -> Option<usize> {
        segment
            .and_then(|s| self.pool_index.get(s).copied())
            .or(self.shared)
    }

    /// Whether some node of the segment's pool could hold `resources` when empty.
    pub fn fits_anywhere(
        &self,
        segment: Option<&Environment>,
        resources: &Resources,
        gpu_model: Option<&str>,
    ) -> bool {
        let Some(pool) = self.pool_of(segment) else {
            return false;
        };
        let need = Amount::of(resources);
        let model = wanted_model(resources, gpu_model);
        self.candidates(pool, &need)
            .iter()
            .any(|&gi| self.group_matches(gi, model.as_deref()) && need.fits(&self.groups[gi].cap))
    }

    fn candidates(&self, pool: usize, need: &Amount) -> &[usize] {
        if need.gpus > 0 {
            &self.pools[pool].gpu_groups
        } else {
            &self.pools[pool].cpu_order
        }
    }

    fn group_matches(&self, gi: usize, model: Option<&str>) -> bool {
        match model {
            None => true,
            Some(m) => self.groups[gi]
                .model
                .as_deref()
                .is_some_and(|g| g.contains(m)),
        }
    }

    /// Places `resources` on a node of the segment's pool (the shared nodes when the
    /// segment has no pool of its own), first fit from where the last placement in the
    /// group ended; `gpu_model` (or the request's own model) restricts GPU nodes.
    /// `None` when no node has room now.
    pub fn place(
        &mut self,
        segment: Option<&Environment>,
        resources: &Resources,
        gpu_model: Option<&str>,
    ) -> Option<NodeId> {
        let pool = self.pool_of(segment)?;
        let need = Amount::of(resources);
        let model = wanted_model(resources, gpu_model);
        self.place_amount(pool, &need, model.as_deref())
    }

    fn place_amount(&mut self, pool: usize, need: &Amount, model: Option<&str>) -> Option<NodeId> {
        let order_len = self.candidates(pool, need).len();
        for k in 0..order_len {
            let gi = self.candidates(pool, need)[k];
            if !self.group_matches(gi, model) {
                continue;
            }
            let g = &self.groups[gi];
            if g.len == 0 || !need.fits(&g.cap) || !need.fits(&g.free_sum) {
                continue;
            }
            let (start, len, cursor) = (g.start as usize, g.len as usize, g.cursor as usize);
            let nodes = &self.free[start..start + len];
            let found = nodes[cursor..]
                .iter()
                .position(|f| need.fits(f))
                .map(|i| cursor + i)
                .or_else(|| nodes[..cursor].iter().position(|f| need.fits(f)));
            if let Some(i) = found {
                self.take(NodeId((start + i) as u32), need);
                self.groups[gi].cursor = i as u32;
                return Some(NodeId((start + i) as u32));
            }
        }
        None
    }

    fn take(&mut self, node: NodeId, need: &Amount) {
        let gi = self.node_group[node.0 as usize] as usize;
        self.free[node.0 as usize].take(need);
        self.groups[gi].free_sum.take(need);
        self.used = self.used.plus(need);
    }

    /// Places like [`place`](Self::place), or queues the task (by `id`) in its pool's
    /// FIFO when no node has room now; a later [`free`](Self::free) places it.
    pub fn place_or_wait(
        &mut self,
        id: TaskId,
        segment: Option<&Environment>,
        resources: &Resources,
        gpu_model: Option<&str>,
    ) -> Placement {
        if !self.fits_anywhere(segment, resources, gpu_model) {
            return Placement::Impossible;
        }
        let Some(pool) = self.pool_of(segment) else {
            return Placement::Impossible;
        };
        let need = Amount::of(resources);
        let model = wanted_model(resources, gpu_model);
        match self.place_amount(pool, &need, model.as_deref()) {
            Some(node) => Placement::Placed(node),
            None => {
                self.pools[pool]
                    .pending
                    .push_back(Waiting { id, need, model });
                self.pending += 1;
                Placement::Pending
            }
        }
    }

    /// Drops a waiting task; `false` when it was not waiting.
    pub fn cancel_pending(&mut self, id: TaskId) -> bool {
        for pool in &mut self.pools {
            if let Some(i) = pool.pending.iter().position(|w| w.id == id) {
                pool.pending.remove(i);
                self.pending -= 1;
                return true;
            }
        }
        false
    }

    /// Returns `resources` to `node`, then places waiting tasks of its pool that now fit
    /// on it, in FIFO order: those are returned with the node.
    pub fn free(&mut self, node: NodeId, resources: &Resources) -> Vec<(TaskId, NodeId)> {
        let n = node.0 as usize;
        let Some(&gi) = self.node_group.get(n) else {
            return Vec::new();
        };
        let gi = gi as usize;
        let a = Amount::of(resources);
        let cap = self.groups[gi].cap;
        let before = self.free[n];
        self.free[n].give(&a, &cap);
        let given = self.free[n].minus(&before);
        self.groups[gi].free_sum = self.groups[gi].free_sum.plus(&given);
        self.used = self.used.minus(&given);

        let pool = self.groups[gi].pool;
        if self.pools[pool].pending.is_empty() {
            return Vec::new();
        }
        let mut placed = Vec::new();
        let mut i = 0;
        while i < self.pools[pool].pending.len() {
            let w = &self.pools[pool].pending[i];
            let ok = w.need.fits(&self.free[n])
                && (w.need.gpus == 0 || self.group_matches(gi, w.model.as_deref()));
            if ok {
                let need = w.need;
                let id = w.id;
                self.pools[pool].pending.remove(i);
                self.pending -= 1;
                self.take(node, &need);
                placed.push((id, node));
                if self.free[n].cpu == 0 && self.free[n].mem == 0 {
                    break;
                }
            } else {
                i += 1;
            }
        }
        placed
    }
}

fn wanted_model(resources: &Resources, gpu_model: Option<&str>) -> Option<String> {
    if resources.gpus.count == 0 {
        return None;
    }
    gpu_model
        .or(resources.gpus.model.as_deref())
        .map(str::to_lowercase)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu_node(model: &str) -> Resources {
        Resources::new(32_000, 256 << 30).with_gpus(8, Some(model.to_owned()))
    }

    #[test]
    fn pools_models_and_pending() {
        let groups = [
            NodeGroup::new(2, Resources::new(8000, 32 << 30)),
            NodeGroup::new(1, gpu_node("NVIDIA H100 80GB")),
            NodeGroup::new(1, gpu_node("NVIDIA A100"))
                .pool(ops_core::Environment::parse("training").unwrap()),
        ];
        let mut c = SimCluster::new(&groups);
        assert_eq!(c.node_count(), 4);
        assert_eq!(c.capacity().gpus.count, 16);
        // CPU work avoids GPU nodes while others have room.
        let cpu = Resources::new(8000, 1 << 30);
        assert_eq!(c.place(None, &cpu, None), Some(NodeId(0)));
        assert_eq!(c.place(None, &cpu, None), Some(NodeId(1)));
        assert_eq!(c.place(None, &cpu, None), Some(NodeId(2)));
        // Models are matched; the pool keeps its node.
        let h100 = Resources::new(1000, 1 << 30).with_gpus(4, Some("h100".into()));
        assert_eq!(c.place(None, &h100, None), Some(NodeId(2)));
        assert_eq!(c.place(None, &h100, Some("a100")), None);
        assert!(!c.fits_anywhere(None, &h100, Some("a100")));
        let training = Environment::parse("training").unwrap();
        assert_eq!(
            c.place(Some(&training), &h100, Some("A100")),
            Some(NodeId(3))
        );
        // Unknown segments use the shared nodes.
        let other = Environment::parse("other").unwrap();
        let id = TaskId::new();
        let big = Resources::new(24_000, 1 << 30);
        assert_eq!(
            c.place_or_wait(id, Some(&other), &big, None),
            Placement::Pending
        );
        assert_eq!(c.pending_len(), 1);
        assert!(c.free(NodeId(1), &cpu).is_empty());
        let placed = c.free(NodeId(2), &cpu);
        assert_eq!(placed, vec![(id, NodeId(2))]);
        assert_eq!(c.pending_len(), 0);
        let huge = Resources::new(64_000, 1);
        assert_eq!(
            c.place_or_wait(TaskId::new(), None, &huge, None),
            Placement::Impossible
        );
        assert!(c.utilisation().gpus > 0.0);
    }

    #[test]
    fn ten_thousand_nodes_place_quickly() {
        let node = Resources::new(64_000, 512 << 30).with_gpus(8, Some("H100".into()));
        let mut c = SimCluster::new(&[NodeGroup::new(10_000, node)]);
        let task = Resources::new(8000, 64 << 30).with_gpus(1, None);
        let start = std::time::Instant::now();
        let mut placed = Vec::new();
        while let Some(n) = c.place(None, &task, None) {
            placed.push(n);
        }
        assert_eq!(placed.len(), 80_000);
        for n in placed.iter().step_by(3) {
            c.free(*n, &task);
        }
        let mut again = 0;
        while c.place(None, &task, None).is_some() {
            again += 1;
        }
        assert_eq!(again, placed.iter().step_by(3).count());
        assert!(start.elapsed() < std::time::Duration::from_secs(20));
    }
}
