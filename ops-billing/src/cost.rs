//! The seller's view: what the fleet costs, how much of it tasks used, what stood idle,
//! and the margin per task, template, tenant and GPU model.
//!
//! A [`CostBook`] (TOML) lists the fleet's nodes with their cost per hour, configured
//! (`hourly`) or an owned machine's amortized cost (`owned`). Each node's hourly cost
//! is split into CPU, memory and GPU shares the way OpenCost does it: by relative
//! weights per unit ([`SplitWeights`], OpenCost's default prices), or by shares given
//! per node ([`CostSplit`]). That gives a cost per core-second, per GiB-second and per
//! GPU-second of each GPU model ([`CostRates`]), averaged over the fleet.
//!
//! Task events carry no node name, so costs are modelled per resource class across the
//! fleet, not per node: a core-second costs the same wherever it ran. A
//! [`CostReport`] over a period prices the fleet's capacity (fleet cost), the usage
//! records of its tasks (allocated cost), the difference (idle cost: capacity paid for
//! but not allocated), and compares each task's cost with what it was charged.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use chrono::{DateTime, Utc};
use ops_core::TaskId;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::meter::builtin;
use crate::{Currency, Error, Metering, Money, Result, UsageRecord};

/// Hours in a month when amortizing an owned machine (8760 / 12).
pub const HOURS_PER_MONTH: u32 = 730;

/// Relative cost of one unit of each resource per hour, to split a node's hourly cost
/// when the node gives no [`CostSplit`] (`[weights]` in the cost book).
///
/// A node's share of a resource is its units × the weight, over the sum for all of its
/// resources, as OpenCost splits a node's price. The defaults are OpenCost's default
/// prices: 0.031611 per core-hour, 0.004237 per GiB-hour and 0.95 per GPU-hour, that
/// is about 1 : 0.134 : 30. Only the ratios matter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitWeights {
    /// Weight of one core.
    pub cpu: Decimal,
    /// Weight of one GiB of memory.
    pub memory: Decimal,
    /// Weight of one GPU.
    pub gpu: Decimal,
}

impl Default for SplitWeights {
    fn default() -> Self {
        Self {
            cpu: Decimal::new(31_611, 6),
            memory: Decimal::new(4_237, 6),
            gpu: Decimal::new(95, 2),
        }
    }
}

/// Shares of a node's hourly cost: fractions for CPU, memory and GPUs summing to 1
/// (`split = { cpu = "0.2", memory = "0.1", gpu = "0.7" }`; a share left out is 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CostSplit {
    /// The CPU share.
    pub cpu: Decimal,
    /// The memory share.
    pub memory: Decimal,
    /// The GPU share.
    pub gpu: Decimal,
}

/// An owned machine's cost: its price spread over `months`, plus what running it costs
/// per hour (power, space, support).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnedCost {
    /// What the machine cost.
    pub price: Decimal,
    /// Months to amortize it over.
    pub months: u32,
    /// Running cost per hour (default nothing).
    #[serde(default)]
    pub hourly_running: Decimal,
}

impl OwnedCost {
    /// Cost per hour: `price / (months × 730) + hourly_running`; `None` for 0 months.
    pub fn hourly(&self) -> Option<Decimal> {
        let hours = Decimal::from(self.months).checked_mul(Decimal::from(HOURS_PER_MONTH))?;
        self.price
            .checked_div(hours)?
            .checked_add(self.hourly_running)
    }
}

/// A kind of node in the fleet (`[[nodes]]`): how many, their capacity, and their cost
/// per hour (exactly one of `hourly` and `owned`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeCost {
    /// The kind's name, unique in the book.
    pub name: String,
    /// How many such nodes (default 1).
    #[serde(default = "one")]
    pub count: u32,
    /// Cores per node.
    pub cores: u32,
    /// Memory per node, in GiB.
    pub memory_gib: Decimal,
    /// GPUs per node (default none).
    #[serde(default)]
    pub gpus: u32,
    /// The GPUs' model (needed with GPUs), matched case-insensitively as a substring of
    /// the model tasks request, like prices are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
    /// What one node costs per hour (rented, or a price to charge oneself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly: Option<Decimal>,
    /// An owned node's price, amortized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owned: Option<OwnedCost>,
    /// Shares of the hourly cost, instead of the book's weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<CostSplit>,
}

fn one() -> u32 {
    1
}

impl NodeCost {
    /// What one node costs per hour: `hourly`, or `owned` amortized; `None` unless
    /// exactly one is given (and the amortization has months).
    pub fn hourly(&self) -> Option<Decimal> {
        match (&self.hourly, &self.owned) {
            (Some(h), None) => Some(*h),
            (None, Some(owned)) => owned.hourly(),
            _ => None,
        }
    }

    /// The shares of its hourly cost: its `split`, else its units weighted by
    /// `weights` (all zero when every weight of its resources is zero).
    pub fn shares(&self, weights: &SplitWeights) -> CostSplit {
        if let Some(split) = self.split {
            return split;
        }
        let cpu = Decimal::from(self.cores).checked_mul(weights.cpu);
        let memory = self.memory_gib.checked_mul(weights.memory);
        let gpu = Decimal::from(self.gpus).checked_mul(weights.gpu);
        let (Some(cpu), Some(memory), Some(gpu)) = (cpu, memory, gpu) else {
            return CostSplit::default();
        };
        let share = |part: Decimal| {
            cpu.checked_add(memory)
                .and_then(|t| t.checked_add(gpu))
                .and_then(|total| part.checked_div(total))
                .unwrap_or_default()
        };
        CostSplit {
            cpu: share(cpu),
            memory: share(memory),
            gpu: share(gpu),
        }
    }
}

/// The fleet's costs (TOML, a document of its own or a table of a larger file).
///
/// ```
/// use ops_billing::cost::CostBook;
/// let book = CostBook::parse(r#"
///     currency = "EUR"
///
///     [[nodes]]
///     name = "cpu"
///     count = 4
///     cores = 32
///     memory_gib = 128
///     hourly = "1.20"
///     split = { cpu = "0.75", memory = "0.25" }
///
///     [[nodes]]
///     name = "a100"
///     cores = 64
///     memory_gib = 512
///     gpus = 8
///     gpu_model = "a100"
///     owned = { price = "262800", months = 36, hourly_running = "2" }
///     split = { cpu = "0.1", memory = "0.1", gpu = "0.8" }
/// "#)?;
/// // 262800 over 36 × 730 hours is 10.00 an hour, plus 2.00 to run it.
/// assert_eq!(book.nodes[1].hourly().unwrap().to_string(), "12");
/// let rates = book.rates()?;
/// // 4 nodes × 1.20 × 0.75 + 1 × 12 × 0.1 = 4.80 an hour for 192 cores.
/// assert_eq!(rates.cpu.hourly.normalize().to_string(), "4.8");
/// assert_eq!(rates.cpu.units.to_string(), "192");
/// // 8 A100s cost 12 × 0.8 = 9.60 an hour: 1.20 per GPU-hour.
/// let a100 = &rates.gpus["a100"];
/// let per_hour = a100.unit_second * rust_decimal::Decimal::from(3600);
/// assert_eq!(per_hour.round_dp(6).normalize().to_string(), "1.2");
/// # Ok::<(), ops_billing::Error>(())
/// ```
///
/// In a platform file the same keys can sit under `[costs]`: deserialize the book as
/// part of the file and check it with [`problems`](CostBook::problems), whose key
/// paths are then relative to `costs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostBook {
    /// The currency of every cost; the price book's.
    pub currency: Currency,
    /// Relative weights splitting a node's cost, for nodes without a `split`.
    #[serde(default)]
    pub weights: SplitWeights,
    /// The fleet.
    #[serde(default)]
    pub nodes: Vec<NodeCost>,
}

impl CostBook {
    /// Reads and checks a TOML cost book; errors name the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = Some(path.display().to_string());
        let text = std::fs::read_to_string(path).map_err(|e| Error::InvalidCostBook {
            file: file.clone(),
            problems: vec![e.to_string()],
        })?;
        Self::parse(&text).map_err(|e| match e {
            Error::InvalidCostBook { problems, .. } => Error::InvalidCostBook { file, problems },
            other => other,
        })
    }

    /// Parses and checks TOML text. An unknown currency is listed with every problem of
    /// content; an error of shape (an unknown key, a wrong type) is listed with its key
    /// path, and only the first one.
    pub fn parse(text: &str) -> Result<Self> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| invalid(vec![e.to_string().trim_end().to_owned()]))?;
        let mut problems = Vec::new();
        // The currency is checked apart, so that a bad one is listed with the rest; a
        // stand-in lets the rest be read.
        let currency = match table.get("currency") {
            Some(toml::Value::String(code)) => {
                code.parse::<Currency>().err().map(|e| e.to_string())
            }
            Some(_) => Some("expected an ISO 4217 code such as \"EUR\"".to_owned()),
            None => Some("missing".to_owned()),
        };
        if let Some(problem) = currency {
            problems.push(format!("currency: {problem}"));
            table.insert("currency".to_owned(), "EUR".into());
        }
        let book: CostBook = serde_path_to_error::deserialize(table).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().message().trim_end().to_owned();
            problems.push(if path == "." {
                message
            } else {
                format!("{path}: {message}")
            });
            invalid(problems.clone())
        })?;
        problems.extend(book.problems());
        if problems.is_empty() {
            Ok(book)
        } else {
            Err(invalid(problems))
        }
    }

    /// Every problem of content, each with its key path: no nodes, a node without a
    /// name or named twice, zero count, cores or memory, negative values, GPUs without
    /// a model or a model without GPUs, neither or both of `hourly` and `owned`, an
    /// amortization over 0 months, a split that does not sum to 1 or gives a share to
    /// GPUs the node lacks, weights that give a node no share at all.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let negative = |out: &mut Vec<String>, at: &str, value: Decimal| {
            if value < Decimal::ZERO {
                out.push(format!("{at}: {value} is negative"));
            }
        };
        negative(&mut out, "weights.cpu", self.weights.cpu);
        negative(&mut out, "weights.memory", self.weights.memory);
        negative(&mut out, "weights.gpu", self.weights.gpu);
        if self.nodes.is_empty() {
            out.push("nodes: the fleet needs at least one node".to_owned());
        }
        let mut names = BTreeMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let at = format!("nodes[{i}]");
            if node.name.trim().is_empty() {
                out.push(format!("{at}.name: must not be empty"));
            } else if let Some(first) = names.insert(node.name.as_str(), i) {
                out.push(format!(
                    "{at}.name: {:?} is already the name of nodes[{first}]",
                    node.name
                ));
                names.insert(node.name.as_str(), first);
            }
            if node.count == 0 {
                out.push(format!("{at}.count: 0 nodes have no capacity"));
            }
            if node.cores == 0 {
                out.push(format!("{at}.cores: a node has at least one core"));
            }
            if node.memory_gib <= Decimal::ZERO {
                out.push(format!(
                    "{at}.memory_gib: {} is no capacity; give the memory in GiB",
                    node.memory_gib
                ));
            }
            match (node.gpus, node.gpu_model.as_deref().map(str::trim)) {
                (0, Some(_)) => {
                    out.push(format!("{at}.gpu_model: the node has no GPUs (set gpus)"))
                }
                (n, None | Some("")) if n > 0 => out.push(format!(
                    "{at}.gpu_model: needed with gpus, e.g. \"a100\" or \"h100\""
                )),
                _ => {}
            }
            match (node.hourly, &node.owned) {
                (None, None) => out.push(format!(
                    "{at}: give its cost, either hourly = \"1.20\" or owned = {{ price = \"25000\", months = 36 }}"
                )),
                (Some(_), Some(_)) => out.push(format!(
                    "{at}: give either hourly or owned, not both"
                )),
                (Some(hourly), None) => negative(&mut out, &format!("{at}.hourly"), hourly),
                (None, Some(owned)) => {
                    negative(&mut out, &format!("{at}.owned.price"), owned.price);
                    negative(
                        &mut out,
                        &format!("{at}.owned.hourly_running"),
                        owned.hourly_running,
                    );
                    if owned.months == 0 {
                        out.push(format!(
                            "{at}.owned.months: amortization needs at least one month"
                        ));
                    }
                }
            }
            if let Some(split) = &node.split {
                negative(&mut out, &format!("{at}.split.cpu"), split.cpu);
                negative(&mut out, &format!("{at}.split.memory"), split.memory);
                negative(&mut out, &format!("{at}.split.gpu"), split.gpu);
                let sum = split
                    .cpu
                    .checked_add(split.memory)
                    .and_then(|s| s.checked_add(split.gpu));
                if sum != Some(Decimal::ONE) {
                    let sum = sum.map_or_else(|| "too much".to_owned(), |s| s.to_string());
                    out.push(format!("{at}.split: the shares sum to {sum}, not 1"));
                }
                if node.gpus == 0 && split.gpu != Decimal::ZERO {
                    out.push(format!(
                        "{at}.split.gpu: the node has no GPUs to carry a share"
                    ));
                }
            } else if node.shares(&self.weights) == CostSplit::default() && node.cores > 0 {
                out.push(format!(
                    "{at}: the weights give none of its resources a share; set weights or split"
                ));
            }
        }
        out
    }

    /// The fleet's cost per hour and per unit-second of each resource class. A book
    /// with [`problems`](Self::problems) is [`Error::InvalidCostBook`]; amounts too
    /// large are [`Error::Overflow`].
    pub fn rates(&self) -> Result<CostRates> {
        let problems = self.problems();
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        let mut cpu = ClassRate::default();
        let mut memory = ClassRate::default();
        let mut gpus: BTreeMap<String, ClassRate> = BTreeMap::new();
        for node in &self.nodes {
            let overflow = || Error::Overflow {
                what: format!("the cost of node {}", node.name),
            };
            let count = Decimal::from(node.count);
            let hourly = node
                .hourly()
                .and_then(|h| h.checked_mul(count))
                .ok_or_else(overflow)?;
            let shares = node.shares(&self.weights);
            cpu.add(
                Decimal::from(node.cores) * count,
                hourly.checked_mul(shares.cpu).ok_or_else(overflow)?,
            )
            .ok_or_else(overflow)?;
            memory
                .add(
                    node.memory_gib.checked_mul(count).ok_or_else(overflow)?,
                    hourly.checked_mul(shares.memory).ok_or_else(overflow)?,
                )
                .ok_or_else(overflow)?;
            if let (Some(model), true) = (&node.gpu_model, node.gpus > 0) {
                gpus.entry(model.trim().to_lowercase())
                    .or_default()
                    .add(
                        Decimal::from(node.gpus) * count,
                        hourly.checked_mul(shares.gpu).ok_or_else(overflow)?,
                    )
                    .ok_or_else(overflow)?;
            }
        }
        cpu.finish();
        memory.finish();
        gpus.values_mut().for_each(ClassRate::finish);
        Ok(CostRates { cpu, memory, gpus })
    }
}

fn invalid(problems: Vec<String>) -> Error {
    Error::InvalidCostBook {
        file: None,
        problems,
    }
}

/// One resource class across the fleet: its units, what they cost per hour, and the
/// cost of one unit for one second (the fleet-weighted average over its nodes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassRate {
    /// Cores, GiB or GPUs in the whole fleet.
    pub units: Decimal,
    /// What they cost per hour, together.
    pub hourly: Decimal,
    /// What one unit costs per second: `hourly / units / 3600` (0 without units).
    pub unit_second: Decimal,
}

impl ClassRate {
    fn add(&mut self, units: Decimal, hourly: Decimal) -> Option<()> {
        self.units = self.units.checked_add(units)?;
        self.hourly = self.hourly.checked_add(hourly)?;
        Some(())
    }

    fn finish(&mut self) {
        self.unit_second = self
            .units
            .checked_mul(Decimal::from(3600))
            .and_then(|s| self.hourly.checked_div(s))
            .unwrap_or_default();
    }
}

/// The fleet's cost rates per resource class.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostRates {
    /// Cores: a core-second's cost.
    pub cpu: ClassRate,
    /// Memory: a GiB-second's cost.
    pub memory: ClassRate,
    /// GPUs by model (in lower case): a GPU-second's cost.
    pub gpus: BTreeMap<String, ClassRate>,
}

impl CostRates {
    /// The GPU class a task's requested model falls in: the longest configured model
    /// that is a case-insensitive substring of it, as prices match.
    pub fn gpu_class(&self, requested: &str) -> Option<&str> {
        let requested = requested.to_lowercase();
        self.gpus
            .keys()
            .filter(|model| requested.contains(model.as_str()))
            .max_by_key(|model| model.len())
            .map(String::as_str)
    }
}

/// The resource class of the CPU (`classes["cpu"]`).
pub const CPU_CLASS: &str = "cpu";
/// The resource class of memory (`classes["memory"]`).
pub const MEMORY_CLASS: &str = "memory";
/// The prefix of GPU classes (`classes["gpu:a100"]`).
pub const GPU_CLASS_PREFIX: &str = "gpu:";

/// One resource class over the period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassCost {
    /// Unit-seconds the fleet had (core-, GiB- or GPU-seconds).
    pub capacity: Decimal,
    /// Unit-seconds tasks used.
    pub allocated: Decimal,
    /// What the capacity cost.
    pub fleet_cost: Money,
    /// What the allocated unit-seconds cost.
    pub allocated_cost: Money,
    /// What stood idle: fleet cost − allocated cost, never negative.
    pub idle_cost: Money,
    /// What was allocated beyond the capacity (allocated cost − fleet cost when
    /// positive; the capacity is then wrong or out of date).
    pub overcommitted_cost: Money,
}

/// A kind of node over the period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    /// How many.
    pub count: u32,
    /// What one costs per hour (amortized for owned nodes), unrounded.
    pub hourly: Decimal,
    /// What all of them cost over the period.
    pub cost: Money,
}

/// Revenue against cost for a task or a group of tasks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Margin {
    /// The tasks counted.
    pub tasks: u64,
    /// What they were charged (as settlement charged them).
    pub revenue: Money,
    /// What their usage cost at the fleet's rates, rounded once.
    pub cost: Money,
    /// Revenue − cost.
    pub margin: Money,
    /// Margin as a percentage of revenue, to two places; `None` without revenue.
    pub margin_percent: Option<Decimal>,
}

impl Margin {
    fn new(tasks: u64, revenue: Money, cost: Decimal) -> Result<Self> {
        let cost = Money::from_decimal(cost, revenue.currency)?;
        let margin = revenue.checked_sub(cost)?;
        Ok(Self {
            tasks,
            revenue,
            cost,
            margin,
            margin_percent: percent(margin, revenue),
        })
    }
}

fn percent(part: Money, of: Money) -> Option<Decimal> {
    (part.to_decimal() * Decimal::ONE_HUNDRED)
        .checked_div(of.to_decimal())
        .filter(|_| of.amount != 0)
        .map(|p| p.round_dp(2))
}

/// The GPU model key of tasks that used no GPU.
pub const NO_GPU: &str = "none";

/// The seller's view of a period: fleet, allocated and idle cost per resource class,
/// and revenue, cost and margin per task, template, tenant and GPU model.
///
/// Amounts are rounded once each, half to even. Totals are the sums of the class rows,
/// so `idle_cost + allocated_cost = fleet_cost + overcommitted_cost` holds exactly; the
/// fleet cost may then differ from the node rows' sum by a minor unit per class, and
/// the task rows, each rounded, may differ from the totals by as much per row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostReport {
    /// The currency.
    pub currency: Currency,
    /// The period's start (inclusive).
    pub from: DateTime<Utc>,
    /// The period's end (exclusive).
    pub to: DateTime<Utc>,
    /// The period's length in hours.
    pub hours: Decimal,
    /// The fleet's rates.
    pub rates: CostRates,
    /// Each kind of node and what it cost.
    pub nodes: BTreeMap<String, NodeRow>,
    /// Each resource class: `cpu`, `memory`, `gpu:<model>`.
    pub classes: BTreeMap<String, ClassCost>,
    /// What the fleet cost.
    pub fleet_cost: Money,
    /// What the tasks' usage cost.
    pub allocated_cost: Money,
    /// What stood idle.
    pub idle_cost: Money,
    /// What was used beyond the capacity.
    pub overcommitted_cost: Money,
    /// What the tasks were charged.
    pub revenue: Money,
    /// Revenue − allocated cost: the margin on what was sold.
    pub margin: Money,
    /// Margin as a percentage of revenue, to two places; `None` without revenue.
    pub margin_percent: Option<Decimal>,
    /// Revenue − fleet cost: what remains once idle capacity is paid for too.
    pub net: Money,
    /// Per task.
    pub by_task: BTreeMap<TaskId, Margin>,
    /// Per template.
    pub by_template: BTreeMap<String, Margin>,
    /// Per tenant.
    pub by_tenant: BTreeMap<String, Margin>,
    /// Per GPU model (the class the tasks' GPUs fell in; [`NO_GPU`] for tasks without).
    pub by_gpu_model: BTreeMap<String, Margin>,
    /// What the reader should know: overcommitted classes, GPU models no node has,
    /// records left out.
    pub notes: Vec<String>,
}

/// A table of the report: a title, a header and rows of cells.
type Table = (&'static str, Vec<&'static str>, Vec<Vec<String>>);

/// One task's figures while the report is built.
#[derive(Default)]
struct TaskTally {
    tenant: String,
    template: String,
    gpu_model: Option<String>,
    cost: Decimal,
    events: BTreeMap<ops_core::EventId, Vec<UsageRecord>>,
}

/// A group's figures while the report is built.
struct GroupTally {
    tasks: u64,
    revenue: Money,
    cost: Decimal,
}

impl CostReport {
    /// The report for `[from, to)`: the fleet of `book` over the period, against the
    /// task usage `records` that ended in it (others are ignored), charged by
    /// `metering` as settlement charges them ([`Metering::charge`] per event).
    ///
    /// Usage is costed whether or not it was charged: free scavenger work and free
    /// failed tasks cost what they used. A cost book in another currency than the price
    /// book is [`Error::CurrencyMismatch`]; one with problems is
    /// [`Error::InvalidCostBook`]; an empty period is [`Error::InvalidPeriod`].
    pub fn build(
        book: &CostBook,
        metering: &Metering,
        records: &[UsageRecord],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Self> {
        let currency = metering.book().currency;
        if book.currency != currency {
            return Err(Error::CurrencyMismatch {
                expected: currency,
                found: book.currency,
            });
        }
        if to <= from {
            return Err(Error::InvalidPeriod { from, to });
        }
        let rates = book.rates()?;
        let overflow = |what: &str| Error::Overflow {
            what: what.to_owned(),
        };
        let seconds = Decimal::from((to - from).num_milliseconds()) / Decimal::ONE_THOUSAND;
        let hours = seconds / Decimal::from(3600);
        let mut notes = Vec::new();

        let mut nodes = BTreeMap::new();
        for node in &book.nodes {
            let hourly = node.hourly().unwrap_or_default();
            let cost = hourly
                .checked_mul(Decimal::from(node.count))
                .and_then(|h| h.checked_mul(hours))
                .ok_or_else(|| overflow(&format!("the cost of node {}", node.name)))?;
            nodes.insert(
                node.name.clone(),
                NodeRow {
                    count: node.count,
                    hourly,
                    cost: Money::from_decimal(cost, currency)?,
                },
            );
        }

        // Per class: (capacity, allocated unit-seconds, fleet cost, allocated cost).
        let mut classes: BTreeMap<String, [Decimal; 4]> = BTreeMap::new();
        let mut class_rates: Vec<(String, &ClassRate)> = vec![
            (CPU_CLASS.to_owned(), &rates.cpu),
            (MEMORY_CLASS.to_owned(), &rates.memory),
        ];
        class_rates.extend(
            rates
                .gpus
                .iter()
                .map(|(model, rate)| (format!("{GPU_CLASS_PREFIX}{model}"), rate)),
        );
        for (class, rate) in &class_rates {
            let capacity = rate.units.checked_mul(seconds);
            let fleet = rate.hourly.checked_mul(hours);
            let (Some(capacity), Some(fleet)) = (capacity, fleet) else {
                return Err(overflow(&format!("the fleet cost of {class}")));
            };
            classes.insert(
                class.clone(),
                [capacity, Decimal::ZERO, fleet, Decimal::ZERO],
            );
        }
        let gpu_units: Decimal = rates.gpus.values().map(|r| r.units).sum();

        let mut tasks: BTreeMap<TaskId, TaskTally> = BTreeMap::new();
        let mut unmatched: BTreeSet<String> = BTreeSet::new();
        let mut gpu_without_fleet = Decimal::ZERO;
        let mut left_out = 0_u64;
        for r in records.iter().filter(|r| r.at >= from && r.at < to) {
            let Some(task_id) = r.task_id else {
                left_out += 1;
                continue;
            };
            let tally = tasks.entry(task_id).or_default();
            tally.tenant.clone_from(&r.tenant);
            if let Some(template) = &r.template {
                tally.template.clone_from(template);
            }
            tally.events.entry(r.event_id).or_default().push(r.clone());
            let quantity = r.quantity.max(Decimal::ZERO);
            // (class, unit-seconds) this record allocates.
            let mut allocations: Vec<(String, Decimal)> = Vec::new();
            match r.meter.as_str() {
                builtin::CPU_CORE_SECONDS => allocations.push((CPU_CLASS.to_owned(), quantity)),
                builtin::MEMORY_GIB_SECONDS => {
                    allocations.push((MEMORY_CLASS.to_owned(), quantity));
                }
                builtin::GPU_SECONDS if quantity > Decimal::ZERO => {
                    let class = r
                        .gpu_model
                        .as_deref()
                        .and_then(|m| rates.gpu_class(m).map(str::to_owned));
                    tally.gpu_model = Some(
                        class
                            .clone()
                            .or_else(|| r.gpu_model.clone())
                            .unwrap_or_else(|| "any".to_owned()),
                    );
                    match class {
                        Some(model) => {
                            allocations.push((format!("{GPU_CLASS_PREFIX}{model}"), quantity));
                        }
                        None if gpu_units > Decimal::ZERO => {
                            unmatched
                                .insert(r.gpu_model.clone().unwrap_or_else(|| "any".to_owned()));
                            // Spread over every GPU class by its capacity: the fleet's
                            // average GPU rate.
                            for (model, rate) in &rates.gpus {
                                let part = quantity
                                    .checked_mul(rate.units)
                                    .and_then(|q| q.checked_div(gpu_units))
                                    .ok_or_else(|| overflow("gpu_seconds"))?;
                                allocations.push((format!("{GPU_CLASS_PREFIX}{model}"), part));
                            }
                        }
                        None => {
                            gpu_without_fleet = gpu_without_fleet
                                .checked_add(quantity)
                                .ok_or_else(|| overflow("gpu_seconds"))?;
                        }
                    }
                }
                _ => {}
            }
            for (class, units) in allocations {
                let Some(row) = classes.get_mut(&class) else {
                    continue;
                };
                let rate = class_rates
                    .iter()
                    .find(|(c, _)| *c == class)
                    .map(|(_, r)| r.unit_second)
                    .unwrap_or_default();
                let cost = units
                    .checked_mul(rate)
                    .ok_or_else(|| overflow(&format!("the cost of {units} {class}")))?;
                row[1] = row[1].checked_add(units).ok_or_else(|| overflow(&class))?;
                row[3] = row[3].checked_add(cost).ok_or_else(|| overflow(&class))?;
                tally.cost = tally
                    .cost
                    .checked_add(cost)
                    .ok_or_else(|| overflow(&format!("the cost of task {task_id}")))?;
            }
        }

        let zero = Money::zero(currency);
        let (mut fleet_cost, mut allocated_cost, mut idle_cost, mut overcommitted_cost) =
            (zero, zero, zero, zero);
        let mut class_rows = BTreeMap::new();
        for (class, [capacity, allocated, fleet, used]) in classes {
            let fleet = Money::from_decimal(fleet, currency)?;
            let used = Money::from_decimal(used, currency)?;
            let idle = fleet.checked_sub(used)?;
            let (idle, over) = if idle.is_negative() {
                notes.push(format!(
                    "{class}: tasks used {} unit-seconds of a capacity of {}; overcommitted by {} (is the cost book's fleet up to date?)",
                    allocated.normalize(),
                    capacity.normalize(),
                    used.checked_sub(fleet)?
                ));
                (zero, used.checked_sub(fleet)?)
            } else {
                (idle, zero)
            };
            fleet_cost = fleet_cost.checked_add(fleet)?;
            allocated_cost = allocated_cost.checked_add(used)?;
            idle_cost = idle_cost.checked_add(idle)?;
            overcommitted_cost = overcommitted_cost.checked_add(over)?;
            class_rows.insert(
                class,
                ClassCost {
                    capacity,
                    allocated,
                    fleet_cost: fleet,
                    allocated_cost: used,
                    idle_cost: idle,
                    overcommitted_cost: over,
                },
            );
        }
        for model in &unmatched {
            notes.push(format!(
                "GPU model {model:?} matches no node's gpu_model; its GPU-seconds are costed at the fleet's average GPU rate, spread over the GPU classes"
            ));
        }
        if gpu_without_fleet > Decimal::ZERO {
            notes.push(format!(
                "tasks used {} GPU-seconds but the fleet has no GPUs; they are not costed",
                gpu_without_fleet.normalize()
            ));
        }
        if left_out > 0 {
            notes.push(format!(
                "{left_out} records of period meters (storage, declared meters) are left out: the cost book prices compute only"
            ));
        }

        let mut revenue = zero;
        let mut by_task = BTreeMap::new();
        let mut groups: [BTreeMap<String, GroupTally>; 3] = Default::default();
        for (task_id, tally) in &tasks {
            let mut charged = zero;
            for records in tally.events.values() {
                charged = charged.checked_add(metering.charge(records)?)?;
            }
            revenue = revenue.checked_add(charged)?;
            by_task.insert(*task_id, Margin::new(1, charged, tally.cost)?);
            let keys = [
                tally.template.clone(),
                tally.tenant.clone(),
                tally.gpu_model.clone().unwrap_or_else(|| NO_GPU.to_owned()),
            ];
            for (group, key) in groups.iter_mut().zip(keys) {
                let g = group.entry(key).or_insert(GroupTally {
                    tasks: 0,
                    revenue: zero,
                    cost: Decimal::ZERO,
                });
                g.tasks += 1;
                g.revenue = g.revenue.checked_add(charged)?;
                g.cost = g
                    .cost
                    .checked_add(tally.cost)
                    .ok_or_else(|| overflow(&format!("the cost of task {task_id}")))?;
            }
        }
        let [by_template, by_tenant, by_gpu_model] = groups.map(|group| {
            group
                .into_iter()
                .map(|(k, g)| Margin::new(g.tasks, g.revenue, g.cost).map(|m| (k, m)))
                .collect::<Result<BTreeMap<_, _>>>()
        });
        let margin = revenue.checked_sub(allocated_cost)?;
        Ok(Self {
            currency,
            from,
            to,
            hours,
            rates,
            nodes,
            classes: class_rows,
            fleet_cost,
            allocated_cost,
            idle_cost,
            overcommitted_cost,
            revenue,
            margin,
            margin_percent: percent(margin, revenue),
            net: revenue.checked_sub(fleet_cost)?,
            by_task,
            by_template: by_template?,
            by_tenant: by_tenant?,
            by_gpu_model: by_gpu_model?,
            notes,
        })
    }

    /// The report's tables, for text and HTML.
    fn tables(&self) -> Vec<Table> {
        let money = |m: &Money| m.to_decimal().to_string();
        let pct = |p: &Option<Decimal>| p.map_or_else(|| "-".to_owned(), |p| format!("{p}%"));
        let mut out = Vec::new();
        out.push((
            "Nodes",
            vec!["node", "count", "hourly", "cost"],
            self.nodes
                .iter()
                .map(|(name, n)| {
                    vec![
                        name.clone(),
                        n.count.to_string(),
                        {
                            let mut hourly = n.hourly.round_dp(4).normalize();
                            if hourly.scale() < 2 {
                                hourly.rescale(2);
                            }
                            hourly.to_string()
                        },
                        money(&n.cost),
                    ]
                })
                .collect(),
        ));
        let mut classes: Vec<Vec<String>> = self
            .classes
            .iter()
            .map(|(class, c)| {
                vec![
                    class.clone(),
                    c.capacity.round_dp(2).normalize().to_string(),
                    c.allocated.round_dp(2).normalize().to_string(),
                    money(&c.fleet_cost),
                    money(&c.allocated_cost),
                    money(&c.idle_cost),
                    money(&c.overcommitted_cost),
                ]
            })
            .collect();
        classes.push(vec![
            "total".to_owned(),
            String::new(),
            String::new(),
            money(&self.fleet_cost),
            money(&self.allocated_cost),
            money(&self.idle_cost),
            money(&self.overcommitted_cost),
        ]);
        out.push((
            "Resource classes",
            vec![
                "class",
                "capacity",
                "allocated",
                "fleet cost",
                "allocated cost",
                "idle cost",
                "overcommitted",
            ],
            classes,
        ));
        let margins = |rows: Vec<(String, &Margin)>| -> Vec<Vec<String>> {
            rows.into_iter()
                .map(|(key, m)| {
                    vec![
                        key,
                        m.tasks.to_string(),
                        money(&m.revenue),
                        money(&m.cost),
                        money(&m.margin),
                        pct(&m.margin_percent),
                    ]
                })
                .collect()
        };
        let header = |key| vec![key, "tasks", "revenue", "cost", "margin", "margin %"];
        let named = |map: &BTreeMap<String, Margin>| {
            margins(map.iter().map(|(k, m)| (k.clone(), m)).collect())
        };
        out.push(("By tenant", header("tenant"), named(&self.by_tenant)));
        out.push(("By template", header("template"), named(&self.by_template)));
        out.push((
            "By GPU model",
            header("GPU model"),
            named(&self.by_gpu_model),
        ));
        out.push((
            "By task",
            header("task"),
            margins(
                self.by_task
                    .iter()
                    .map(|(k, m)| (k.to_string(), m))
                    .collect(),
            ),
        ));
        out
    }

    fn summary(&self) -> String {
        format!(
            "revenue {}, allocated cost {}, margin {} ({}), idle cost {}, net of fleet cost {}",
            self.revenue,
            self.allocated_cost,
            self.margin,
            self.margin_percent
                .map_or_else(|| "-".to_owned(), |p| format!("{p}%")),
            self.idle_cost,
            self.net
        )
    }

    /// The report as plain-text tables, amounts in the report's currency.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "Cost report {} to {} ({} h, {})\n{}\n",
            self.from.to_rfc3339(),
            self.to.to_rfc3339(),
            self.hours.round_dp(2).normalize(),
            self.currency,
            self.summary()
        );
        for (title, header, rows) in self.tables() {
            let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
            for row in &rows {
                for (w, cell) in widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            let _ = writeln!(out, "\n{title}");
            let line = |cells: Vec<&str>| {
                let mut text = String::new();
                for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
                    if i == 0 {
                        let _ = write!(text, "{cell:<w$}");
                    } else {
                        let _ = write!(text, "  {cell:>w$}");
                    }
                }
                text.trim_end().to_owned()
            };
            let _ = writeln!(out, "{}", line(header.clone()));
            for row in &rows {
                let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "\nnote: {note}");
        }
        out
    }

    /// The report as a small, self-contained HTML page.
    pub fn to_html(&self) -> String {
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
        };
        let mut body = String::new();
        for (title, header, rows) in self.tables() {
            let _ = write!(body, "<h2>{}</h2>\n<table><tr>", esc(title));
            for h in header {
                let _ = write!(body, "<th>{}</th>", esc(h));
            }
            body.push_str("</tr>\n");
            for row in rows {
                body.push_str("<tr>");
                for (i, cell) in row.iter().enumerate() {
                    let class = if i == 0 { "" } else { " class=n" };
                    let _ = write!(body, "<td{class}>{}</td>", esc(cell));
                }
                body.push_str("</tr>\n");
            }
            body.push_str("</table>\n");
        }
        for note in &self.notes {
            let _ = writeln!(body, "<p>Note: {}</p>", esc(note));
        }
        format!(
            "<!doctype html>\n<html><head><meta charset=utf-8><title>Cost report</title>\
             <style>body{{font-family:sans-serif}}td,th{{padding:4px 8px}}.n{{text-align:right}}</style></head>\n\
             <body><h1>Cost report</h1><p>{from} to {to} ({currency})</p>\n<p>{summary}</p>\n{body}</body></html>\n",
            from = self.from.to_rfc3339(),
            to = self.to.to_rfc3339(),
            currency = self.currency,
            summary = esc(&self.summary()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn node(cores: u32, memory_gib: u32, gpus: u32) -> NodeCost {
        NodeCost {
            name: "n".into(),
            count: 1,
            cores,
            memory_gib: Decimal::from(memory_gib),
            gpus,
            gpu_model: (gpus > 0).then(|| "a100".to_owned()),
            hourly: Some(Decimal::ONE),
            owned: None,
            split: None,
        }
    }

    #[test]
    fn an_owned_node_is_amortized_over_730_hours_a_month_plus_running_cost() {
        let owned = OwnedCost {
            price: d("25000"),
            months: 36,
            hourly_running: d("0.08"),
        };
        // 25000 / (36 × 730) = 0.95129375951… + 0.08
        assert_eq!(owned.hourly().unwrap().round_dp(6), d("1.031294"));
        let round = OwnedCost {
            price: d("262800"),
            months: 36,
            hourly_running: d("2"),
        };
        assert_eq!(round.hourly().unwrap(), d("12"));
        let never = OwnedCost {
            months: 0,
            ..round.clone()
        };
        assert_eq!(never.hourly(), None);
        let mut n = node(8, 32, 0);
        n.hourly = None;
        n.owned = Some(round);
        assert_eq!(n.hourly(), Some(d("12")));
        n.hourly = Some(Decimal::ONE);
        assert_eq!(n.hourly(), None, "both given is no cost");
    }

    #[test]
    fn default_weights_split_like_opencost() {
        let w = SplitWeights::default();
        assert_eq!(
            (w.cpu, w.memory, w.gpu),
            (d("0.031611"), d("0.004237"), d("0.95"))
        );
        // 8 cores × 0.031611 = 0.252888 and 32 GiB × 0.004237 = 0.135584, of 0.388472.
        let s = node(8, 32, 0).shares(&w);
        assert_eq!(s.cpu.round_dp(6), d("0.650981"));
        assert_eq!(s.memory.round_dp(6), d("0.349019"));
        assert_eq!(s.gpu, Decimal::ZERO);
        // One GPU (0.95) with 8 cores and 64 GiB (0.271168): the GPU takes 64 %.
        let s = node(8, 64, 1).shares(&w);
        assert_eq!(s.gpu.round_dp(6), d("0.644480"));
        assert_eq!(s.cpu.round_dp(6), d("0.171559"));
        assert_eq!(s.memory.round_dp(6), d("0.183960"));
        // Equal weights split by units alone; a split given wins.
        let even = SplitWeights {
            cpu: Decimal::ONE,
            memory: Decimal::ONE,
            gpu: Decimal::ONE,
        };
        assert_eq!(node(3, 1, 0).shares(&even).cpu, d("0.75"));
        let mut fixed = node(3, 1, 0);
        fixed.split = Some(CostSplit {
            cpu: d("0.5"),
            memory: d("0.5"),
            gpu: Decimal::ZERO,
        });
        assert_eq!(fixed.shares(&even).cpu, d("0.5"));
        let none = SplitWeights {
            cpu: Decimal::ZERO,
            memory: Decimal::ZERO,
            gpu: Decimal::ONE,
        };
        assert_eq!(node(3, 1, 0).shares(&none), CostSplit::default());
    }

    #[test]
    fn gpu_classes_match_like_prices_the_longest_first() {
        let mut rates = CostRates::default();
        for model in ["a100", "a100-80gb", "h100"] {
            rates.gpus.insert(model.to_owned(), ClassRate::default());
        }
        assert_eq!(rates.gpu_class("NVIDIA-A100-SXM4-40GB"), Some("a100"));
        assert_eq!(rates.gpu_class("NVIDIA-A100-80GB-PCIe"), Some("a100-80gb"));
        assert_eq!(rates.gpu_class("NVIDIA-H100-80GB-HBM3"), Some("h100"));
        assert_eq!(rates.gpu_class("Tesla-T4"), None);
    }

    #[test]
    fn a_book_built_in_code_is_checked_before_use() {
        let book = CostBook {
            currency: "EUR".parse().unwrap(),
            weights: SplitWeights::default(),
            nodes: vec![node(0, 1, 0)],
        };
        let err = book.rates().unwrap_err();
        assert!(
            err.to_string()
                .contains("nodes[0].cores: a node has at least one core"),
            "{err}"
        );
        assert_eq!(err.kind(), ops_core::ErrorKind::InvalidInput);
    }

    #[test]
    fn margin_percent_is_rounded_and_absent_without_revenue() {
        let eur: Currency = "EUR".parse().unwrap();
        let m = Margin::new(1, Money::new(389, eur), d("2.555")).unwrap();
        // 2.555 rounds half to even to 2.56; (3.89 − 2.56) / 3.89 = 34.190…%
        assert_eq!(m.cost, Money::new(256, eur));
        assert_eq!(m.margin, Money::new(133, eur));
        assert_eq!(m.margin_percent, Some(d("34.19")));
        let free = Margin::new(1, Money::zero(eur), d("0.5")).unwrap();
        assert_eq!(free.margin, Money::new(-50, eur));
        assert_eq!(free.margin_percent, None);
    }
}
