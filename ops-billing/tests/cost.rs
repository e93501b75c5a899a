//! The seller's view: cost rates of a mixed fleet, fleet, allocated and idle cost, and
//! margins per task, template, tenant and GPU model, every figure computed by hand.

use chrono::{DateTime, TimeZone, Utc};
use ops_billing::cost::{CostBook, CostReport, NO_GPU};
use ops_billing::{Currency, Error, Metering, Money, PriceBook, UsageRecord};
use ops_core::{EventId, TaskId, TaskStatus};
use proptest::prelude::*;
use rust_decimal::Decimal;

/// Ten CPU nodes at 1.60 an hour, two owned A100 nodes (262800 over 36 months is 10.00
/// an hour, plus 2.00 to run) and one H100 node at 24.00 an hour: 64.00 an hour.
///
/// | class  | units    | per hour                          | per unit-hour |
/// |--------|----------|-----------------------------------|---------------|
/// | cpu    | 520 cores| 10×1.60×.75 + 2×12×.1 + 24×.05 = 15.60 | 0.03     |
/// | memory | 4000 GiB | 10×1.60×.25 + 2×12×.1 + 24×.15 = 10.00 | 0.0025   |
/// | a100   | 16 GPUs  | 2×12×.8 = 19.20                   | 1.20          |
/// | h100   | 8 GPUs   | 24×.8 = 19.20                     | 2.40          |
const FLEET: &str = r#"
currency = "EUR"

[[nodes]]
name = "cpu"
count = 10
cores = 32
memory_gib = 128
hourly = "1.60"
split = { cpu = "0.75", memory = "0.25" }

[[nodes]]
name = "a100"
count = 2
cores = 64
memory_gib = 512
gpus = 8
gpu_model = "A100"
owned = { price = "262800", months = 36, hourly_running = "2.00" }
split = { cpu = "0.1", memory = "0.1", gpu = "0.8" }

[[nodes]]
name = "h100"
cores = 72
memory_gib = 1696
gpus = 8
gpu_model = "h100"
hourly = "24.00"
split = { cpu = "0.05", memory = "0.15", gpu = "0.8" }
"#;

/// 0.072 a core-hour, 0.0036 a GiB-hour, 1.80 an A100-hour, 3.60 an H100-hour.
const PRICES: &str = r#"
currency = "EUR"

[[prices]]
meter = "cpu_core_seconds"
unit_price = "0.00002"

[[prices]]
meter = "memory_gib_seconds"
unit_price = "0.000001"

[[prices]]
meter = "gpu_seconds"
gpu_model = "a100"
unit_price = "0.0005"

[[prices]]
meter = "gpu_seconds"
gpu_model = "h100"
unit_price = "0.001"
"#;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn eur() -> Currency {
    "EUR".parse().unwrap()
}

/// An amount in EUR, e.g. `money("8.71")`.
fn money(amount: &str) -> Money {
    Money::from_decimal(d(amount), eur()).unwrap()
}

fn at(hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, hour, 0, 0).unwrap()
}

/// A finished task's records, as metering writes them from its final event.
struct Task<'a> {
    tenant: &'a str,
    template: &'a str,
    gpu_model: Option<&'a str>,
    cpu: u64,
    memory: u64,
    gpu: u64,
    scavenger: bool,
    hour: u32,
}

impl Task<'_> {
    fn records(&self) -> Vec<UsageRecord> {
        let event_id = EventId::new();
        let task_id = TaskId::new();
        [
            ("cpu_core_seconds", self.cpu),
            ("memory_gib_seconds", self.memory),
            ("gpu_seconds", self.gpu),
            ("wall_seconds", 3600),
            ("tasks", 1),
        ]
        .into_iter()
        .map(|(meter, quantity)| UsageRecord {
            event_id,
            meter: meter.to_owned(),
            tenant: self.tenant.to_owned(),
            environment: Some("production".to_owned()),
            template: Some(self.template.to_owned()),
            task_id: Some(task_id),
            gpu_model: (meter == "gpu_seconds")
                .then(|| self.gpu_model.map(str::to_owned))
                .flatten(),
            outcome: Some(TaskStatus::Succeeded),
            scavenger: self.scavenger,
            preempted: false,
            attempt: None,
            quantity: Decimal::from(quantity),
            at: at(self.hour),
        })
        .collect()
    }
}

fn task<'a>(tenant: &'a str, template: &'a str, gpu_model: Option<&'a str>) -> Task<'a> {
    Task {
        tenant,
        template,
        gpu_model,
        cpu: 0,
        memory: 0,
        gpu: 0,
        scavenger: false,
        hour: 3,
    }
}

fn metering() -> Metering {
    Metering::new(PriceBook::parse(PRICES).unwrap())
}

#[test]
fn rates_of_a_mixed_fleet_are_fleet_weighted_averages_per_class() {
    let book = CostBook::parse(FLEET).unwrap();
    assert_eq!(book.nodes[1].hourly(), Some(d("12")));
    let rates = book.rates().unwrap();
    let per_hour = |r: Decimal| (r * Decimal::from(3600)).round_dp(10).normalize();
    assert_eq!(rates.cpu.units, d("520"));
    assert_eq!(rates.cpu.hourly, d("15.6"));
    assert_eq!(per_hour(rates.cpu.unit_second), d("0.03"));
    assert_eq!(rates.memory.units, d("4000"));
    assert_eq!(rates.memory.hourly, d("10"));
    assert_eq!(per_hour(rates.memory.unit_second), d("0.0025"));
    assert_eq!(
        rates.gpus.keys().collect::<Vec<_>>(),
        ["a100", "h100"],
        "models are lower case"
    );
    assert_eq!(rates.gpus["a100"].units, d("16"));
    assert_eq!(per_hour(rates.gpus["a100"].unit_second), d("1.2"));
    assert_eq!(per_hour(rates.gpus["h100"].unit_second), d("2.4"));
    assert_eq!(rates.gpu_class("NVIDIA-A100-SXM4-80GB"), Some("a100"));
}

/// Three tasks over ten hours, by hand:
///
/// | task | cpu core-h | GiB-h | GPU-h    | cost                         | charged                          |
/// |------|------------|-------|----------|------------------------------|----------------------------------|
/// | t1   | 10         | 100   | -        | .30 + .25 = .55              | .72 + .36 = 1.08                 |
/// | t2   | 2          | 40    | 2 A100   | .06 + .10 + 2.40 = 2.56      | .144 + .144 + 3.60 = 3.888 → 3.89 |
/// | t3   | 1          | 20    | 1 H100   | .03 + .05 + 2.40 = 2.48      | .072 + .072 + 3.60 = 3.744 → 3.74 |
#[test]
fn a_small_period_by_hand() {
    let book = CostBook::parse(FLEET).unwrap();
    let t1 = Task {
        cpu: 36_000,
        memory: 360_000,
        ..task("acme", "render", None)
    };
    let t2 = Task {
        cpu: 7_200,
        memory: 144_000,
        gpu: 7_200,
        ..task("acme", "train", Some("NVIDIA-A100-SXM4-80GB"))
    };
    let t3 = Task {
        cpu: 3_600,
        memory: 72_000,
        gpu: 3_600,
        ..task("globex", "train", Some("NVIDIA-H100-80GB-HBM3"))
    };
    let (r1, r2, r3) = (t1.records(), t2.records(), t3.records());
    let mut records: Vec<UsageRecord> = [r1.clone(), r2.clone(), r3.clone()].concat();
    // Outside the period: ignored.
    records.extend(
        Task {
            cpu: 1_000_000,
            hour: 12,
            ..task("acme", "render", None)
        }
        .records(),
    );
    let report = CostReport::build(&book, &metering(), &records, at(0), at(10)).unwrap();

    assert_eq!(report.hours, d("10"));
    assert_eq!(report.nodes["cpu"].cost, money("160.00"));
    assert_eq!(report.nodes["a100"].cost, money("240.00"));
    assert_eq!(report.nodes["a100"].hourly, d("12"));
    assert_eq!(report.nodes["h100"].cost, money("240.00"));

    // Fleet 10 h × 64.00; allocated 13 core-h, 160 GiB-h, 2 A100-h, 1 H100-h.
    let class = |name: &str| report.classes[name].clone();
    assert_eq!(
        report.classes.keys().collect::<Vec<_>>(),
        ["cpu", "gpu:a100", "gpu:h100", "memory"]
    );
    assert_eq!(class("cpu").capacity, d("18720000"));
    assert_eq!(class("cpu").allocated, d("46800"));
    assert_eq!(class("cpu").fleet_cost, money("156.00"));
    assert_eq!(class("cpu").allocated_cost, money("0.39"));
    assert_eq!(class("cpu").idle_cost, money("155.61"));
    assert_eq!(class("memory").fleet_cost, money("100.00"));
    assert_eq!(class("memory").allocated_cost, money("0.40"));
    assert_eq!(class("memory").idle_cost, money("99.60"));
    assert_eq!(class("gpu:a100").fleet_cost, money("192.00"));
    assert_eq!(class("gpu:a100").allocated_cost, money("2.40"));
    assert_eq!(class("gpu:a100").idle_cost, money("189.60"));
    assert_eq!(class("gpu:h100").allocated_cost, money("2.40"));
    assert_eq!(class("gpu:h100").idle_cost, money("189.60"));
    assert_eq!(report.fleet_cost, money("640.00"));
    assert_eq!(report.allocated_cost, money("5.59"));
    assert_eq!(report.idle_cost, money("634.41"));
    assert_eq!(report.overcommitted_cost, money("0"));

    // Revenue 1.08 + 3.89 + 3.74 = 8.71; margin 8.71 − 5.59 = 3.12 (35.82 %).
    assert_eq!(report.revenue, money("8.71"));
    assert_eq!(report.margin, money("3.12"));
    assert_eq!(report.margin_percent, Some(d("35.82")));
    assert_eq!(report.net, money("-631.29"));

    let task_id = |r: &[UsageRecord]| r[0].task_id.unwrap();
    let row = |m: &ops_billing::Margin| (m.tasks, m.revenue, m.cost, m.margin, m.margin_percent);
    assert_eq!(report.by_task.len(), 3);
    assert_eq!(
        row(&report.by_task[&task_id(&r1)]),
        (
            1,
            money("1.08"),
            money("0.55"),
            money("0.53"),
            Some(d("49.07"))
        )
    );
    assert_eq!(
        row(&report.by_task[&task_id(&r2)]),
        (
            1,
            money("3.89"),
            money("2.56"),
            money("1.33"),
            Some(d("34.19"))
        )
    );
    assert_eq!(
        row(&report.by_task[&task_id(&r3)]),
        (
            1,
            money("3.74"),
            money("2.48"),
            money("1.26"),
            Some(d("33.69"))
        )
    );
    assert_eq!(
        row(&report.by_template["render"]),
        (
            1,
            money("1.08"),
            money("0.55"),
            money("0.53"),
            Some(d("49.07"))
        )
    );
    assert_eq!(
        row(&report.by_template["train"]),
        (
            2,
            money("7.63"),
            money("5.04"),
            money("2.59"),
            Some(d("33.94"))
        )
    );
    assert_eq!(
        row(&report.by_tenant["acme"]),
        (
            2,
            money("4.97"),
            money("3.11"),
            money("1.86"),
            Some(d("37.42"))
        )
    );
    assert_eq!(
        row(&report.by_tenant["globex"]),
        (
            1,
            money("3.74"),
            money("2.48"),
            money("1.26"),
            Some(d("33.69"))
        )
    );
    assert_eq!(
        report.by_gpu_model.keys().collect::<Vec<_>>(),
        ["a100", "h100", NO_GPU]
    );
    assert_eq!(row(&report.by_gpu_model["a100"]).3, money("1.33"));
    assert_eq!(row(&report.by_gpu_model["h100"]).3, money("1.26"));
    assert_eq!(row(&report.by_gpu_model[NO_GPU]).3, money("0.53"));
    assert!(report.notes.is_empty(), "{:?}", report.notes);

    // The same report from the records in any order, through JSON and back.
    let mut reversed = records.clone();
    reversed.reverse();
    let again = CostReport::build(&book, &metering(), &reversed, at(0), at(10)).unwrap();
    assert_eq!(again, report);
    let json = serde_json::to_string(&report).unwrap();
    assert_eq!(serde_json::from_str::<CostReport>(&json).unwrap(), report);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["idle_cost"]["amount"], 63441);
    assert_eq!(value["by_tenant"]["acme"]["margin_percent"], "37.42");

    let text = report.to_text();
    assert!(text.contains("margin 3.12 EUR (35.82%)"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    "gpu:a100", "576000", "7200", "192.00", "2.40", "189.60", "0.00"
                ]),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("globex")), "{text}");
    let html = report.to_html();
    assert!(html.contains("<td>gpu:h100</td>"), "{html}");
    assert!(html.contains("<td class=n>634.41</td>"), "{html}");
}

#[test]
fn free_work_costs_what_it_uses_and_unknown_gpus_cost_the_fleet_average() {
    let book = CostBook::parse(FLEET).unwrap();
    // Scavenger work is free but used 1 A100-hour: cost 1.20, margin −1.20.
    let scavenger = Task {
        gpu: 3_600,
        scavenger: true,
        ..task("acme", "sweep", Some("NVIDIA-A100-PCIE-40GB"))
    };
    // A T4 no node has, 2 GPU-hours: the fleet's average GPU-hour is 38.40 / 24 = 1.60,
    // 16/24 of it on the A100s (2/3 × 2 × 1.20 = 1.60) and 8/24 on the H100 (1.60).
    let t4 = Task {
        gpu: 7_200,
        ..task("globex", "infer", Some("Tesla-T4"))
    };
    let records = [scavenger.records(), t4.records()].concat();
    let report = CostReport::build(&book, &metering(), &records, at(0), at(10)).unwrap();
    let sweep = &report.by_template["sweep"];
    assert_eq!(
        (
            sweep.revenue,
            sweep.cost,
            sweep.margin,
            sweep.margin_percent
        ),
        (money("0"), money("1.20"), money("-1.20"), None)
    );
    let infer = &report.by_template["infer"];
    assert_eq!((infer.revenue, infer.cost), (money("0"), money("3.20")));
    assert_eq!(report.classes["gpu:a100"].allocated_cost, money("2.80"));
    assert_eq!(report.classes["gpu:h100"].allocated_cost, money("1.60"));
    assert_eq!(report.by_gpu_model["a100"].tasks, 1);
    assert_eq!(report.by_gpu_model["Tesla-T4"].cost, money("3.20"));
    assert_eq!(report.revenue, money("0"));
    assert_eq!(report.margin, money("-4.40"));
    assert_eq!(report.margin_percent, None);
    assert_eq!(report.notes.len(), 1, "{:?}", report.notes);
    assert!(
        report.notes[0].contains("GPU model \"Tesla-T4\" matches no node's gpu_model"),
        "{:?}",
        report.notes
    );
}

#[test]
fn allocation_beyond_capacity_is_overcommitted_never_negative_idle() {
    let book = CostBook::parse(FLEET).unwrap();
    // 10 hours of 20 H100s on a fleet of 8: 480.00 of 192.00.
    let greedy = Task {
        gpu: 20 * 36_000,
        ..task("acme", "train", Some("H100"))
    };
    let report = CostReport::build(&book, &metering(), &greedy.records(), at(0), at(10)).unwrap();
    let h100 = &report.classes["gpu:h100"];
    assert_eq!(h100.allocated_cost, money("480.00"));
    assert_eq!(h100.idle_cost, money("0"));
    assert_eq!(h100.overcommitted_cost, money("288.00"));
    assert_eq!(report.overcommitted_cost, money("288.00"));
    // cpu 156 + memory 100 + a100 192 stand idle.
    assert_eq!(report.idle_cost, money("448.00"));
    assert_eq!(
        report.idle_cost.checked_add(report.allocated_cost).unwrap(),
        report
            .fleet_cost
            .checked_add(report.overcommitted_cost)
            .unwrap()
    );
    assert!(
        report.notes.iter().any(|n| n.starts_with(
            "gpu:h100: tasks used 720000 unit-seconds of a capacity of 288000; overcommitted by 288.00 EUR"
        )),
        "{:?}",
        report.notes
    );
}

#[test]
fn a_cost_book_in_another_currency_is_a_mismatch() {
    let book = CostBook::parse(&FLEET.replace("\"EUR\"", "\"USD\"")).unwrap();
    let err = CostReport::build(&book, &metering(), &[], at(0), at(10)).unwrap_err();
    assert!(
        matches!(&err, Error::CurrencyMismatch { expected, found }
            if expected.code() == "EUR" && found.code() == "USD"),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "currency mismatch: expected EUR, found USD"
    );
    assert_eq!(err.kind(), ops_core::ErrorKind::InvalidInput);
}

#[test]
fn an_empty_or_inverted_period_is_refused() {
    let book = CostBook::parse(FLEET).unwrap();
    for (from, to) in [(at(5), at(5)), (at(5), at(4))] {
        let err = CostReport::build(&book, &metering(), &[], from, to).unwrap_err();
        assert!(matches!(err, Error::InvalidPeriod { .. }), "{err}");
        assert_eq!(err.kind(), ops_core::ErrorKind::InvalidInput);
    }
}

#[test]
fn every_problem_of_a_cost_book_is_listed_with_its_key_path() {
    let err = CostBook::parse(
        r#"
        currency = "EUX"
        weights = { cpu = "-1" }

        [[nodes]]
        name = "cpu"
        count = 0
        cores = 0
        memory_gib = 0

        [[nodes]]
        name = "cpu"
        cores = 8
        memory_gib = 32
        hourly = "1"
        owned = { price = "100", months = 12 }

        [[nodes]]
        name = "gpu"
        cores = 8
        memory_gib = "-32"
        gpus = 2
        owned = { price = "-100", months = 0, hourly_running = "-1" }
        split = { cpu = "0.5", memory = "0.6", gpu = "-0.2" }

        [[nodes]]
        name = "t4"
        cores = 8
        memory_gib = 32
        gpu_model = "t4"
        hourly = "-0.5"
        split = { cpu = "0.5", gpu = "0.5" }
        "#,
    )
    .unwrap_err();
    let Error::InvalidCostBook { problems, file } = &err else {
        panic!("{err}")
    };
    assert_eq!(file, &None);
    let text = problems.join("\n");
    for needle in [
        "currency: unknown currency \"EUX\"",
        "weights.cpu: -1 is negative",
        "nodes[0].count: 0 nodes have no capacity",
        "nodes[0].cores: a node has at least one core",
        "nodes[0].memory_gib: 0 is no capacity",
        "nodes[0]: give its cost, either hourly = \"1.20\" or owned = ",
        "nodes[1].name: \"cpu\" is already the name of nodes[0]",
        "nodes[1]: give either hourly or owned, not both",
        "nodes[2].memory_gib: -32 is no capacity",
        "nodes[2].gpu_model: needed with gpus",
        "nodes[2].owned.price: -100 is negative",
        "nodes[2].owned.hourly_running: -1 is negative",
        "nodes[2].owned.months: amortization needs at least one month",
        "nodes[2].split.gpu: -0.2 is negative",
        "nodes[2].split: the shares sum to 0.9, not 1",
        "nodes[3].gpu_model: the node has no GPUs (set gpus)",
        "nodes[3].hourly: -0.5 is negative",
        "nodes[3].split.gpu: the node has no GPUs to carry a share",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    assert_eq!(problems.len(), 18, "{problems:#?}");
    assert_eq!(err.kind(), ops_core::ErrorKind::InvalidInput);
    assert!(
        err.to_string()
            .starts_with("cost book: currency: unknown currency")
    );
}

#[test]
fn errors_of_shape_name_the_key_and_the_file() {
    let err = CostBook::parse("currency = \"EUR\"\n[[nodes]]\nname = \"a\"\ncores = 1\nmemory_gib = 1\nhourly = 1\nhourlyy = 2\n")
        .unwrap_err();
    assert!(
        err.to_string().contains("nodes[0].hourlyy: unknown field"),
        "{err}"
    );
    let err =
        CostBook::parse("currency = 7\n[[nodes]]\nname = \"a\"\ncores = \"many\"\n").unwrap_err();
    let Error::InvalidCostBook { problems, .. } = &err else {
        panic!("{err}")
    };
    assert!(
        problems[0].starts_with("currency: expected an ISO 4217 code"),
        "{problems:?}"
    );
    assert!(problems[1].starts_with("nodes[0].cores:"), "{problems:?}");
    let err = CostBook::parse("[[nodes]").unwrap_err();
    assert!(err.to_string().starts_with("cost book: "), "{err}");
    let empty = CostBook::parse("currency = \"EUR\"").unwrap_err();
    assert!(
        empty
            .to_string()
            .contains("nodes: the fleet needs at least one node"),
        "{empty}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("costs.toml");
    std::fs::write(&file, FLEET.replace("months = 36", "months = 0")).unwrap();
    let err = CostBook::load(&file).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert!(
        text.contains("nodes[1].owned.months: amortization needs at least one month"),
        "{text}"
    );
    let missing = CostBook::load(dir.path().join("missing.toml")).unwrap_err();
    assert!(missing.to_string().contains("missing.toml"), "{missing}");
    std::fs::write(&file, FLEET).unwrap();
    assert_eq!(
        CostBook::load(&file).unwrap(),
        CostBook::parse(FLEET).unwrap()
    );
}

#[test]
fn a_platform_file_can_embed_the_book_as_a_costs_table() {
    #[derive(serde::Deserialize)]
    struct PlatformFile {
        costs: CostBook,
    }
    let embedded = FLEET
        .replace("[[nodes]]", "[[costs.nodes]]")
        .replace("currency = \"EUR\"", "[costs]\ncurrency = \"EUR\"");
    let file: PlatformFile = toml::from_str(&embedded).unwrap();
    assert!(file.costs.problems().is_empty());
    assert_eq!(file.costs, CostBook::parse(FLEET).unwrap());
}

fn model() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        Just(None),
        Just(Some("NVIDIA-A100-SXM4-80GB")),
        Just(Some("NVIDIA-H100-80GB-HBM3")),
        Just(Some("Tesla-T4")),
    ]
}

prop_compose! {
    fn any_task()(
        tenant in prop::sample::select(vec!["acme", "globex", "initech"]),
        template in prop::sample::select(vec!["render", "train", "infer"]),
        gpu_model in model(),
        cpu in 0u64..200_000,
        memory in 0u64..2_000_000,
        gpu in 0u64..10_000,
        scavenger in any::<bool>(),
        hour in 0u32..10,
    ) -> (Vec<UsageRecord>, Decimal) {
        let t = Task { tenant, template, gpu_model, cpu, memory, gpu, scavenger, hour };
        // The cost by hand: 0.03 a core-hour, 0.0025 a GiB-hour, 1.20 an A100-hour,
        // 2.40 an H100-hour, 1.60 (the fleet average) for a T4 or no model.
        let gpu_hourly = match gpu_model {
            Some(m) if m.contains("A100") => d("1.2"),
            Some(m) if m.contains("H100") => d("2.4"),
            _ => d("1.6"),
        };
        let cost = (Decimal::from(cpu) * d("0.03")
            + Decimal::from(memory) * d("0.0025")
            + Decimal::from(gpu) * gpu_hourly)
            / Decimal::from(3600);
        (t.records(), cost)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any usage within capacity: idle + allocated = fleet (64.00 × 10 h) in every
    /// class, margin = revenue − allocated cost, revenue is what settlement charged,
    /// and every grouping adds up to the totals (costs within a cent a row).
    #[test]
    fn idle_plus_allocated_is_the_fleet_and_margin_is_revenue_less_cost(
        tasks in prop::collection::vec(any_task(), 0..16)
    ) {
        let book = CostBook::parse(FLEET).unwrap();
        let metering = metering();
        let records: Vec<UsageRecord> = tasks.iter().flat_map(|(r, _)| r.clone()).collect();
        let report = CostReport::build(&book, &metering, &records, at(0), at(10)).unwrap();

        prop_assert_eq!(report.fleet_cost, money("640.00"));
        prop_assert_eq!(report.overcommitted_cost, money("0"));
        prop_assert_eq!(report.idle_cost.checked_add(report.allocated_cost).unwrap(), report.fleet_cost);
        for (name, class) in &report.classes {
            prop_assert!(!class.idle_cost.is_negative(), "{}", name);
            prop_assert_eq!(class.idle_cost.checked_add(class.allocated_cost).unwrap(), class.fleet_cost);
        }
        let by_hand: Decimal = tasks.iter().map(|(_, c)| *c).sum();
        let classes = report.classes.len() as i64;
        prop_assert!((report.allocated_cost.amount - Money::from_decimal(by_hand, eur()).unwrap().amount).abs() <= classes);

        let charged = tasks.iter().map(|(r, _)| metering.charge(r).unwrap())
            .try_fold(money("0"), Money::checked_add).unwrap();
        prop_assert_eq!(report.revenue, charged);
        prop_assert_eq!(report.margin, report.revenue.checked_sub(report.allocated_cost).unwrap());
        prop_assert_eq!(report.net, report.revenue.checked_sub(report.fleet_cost).unwrap());

        let tolerance = tasks.len() as i64 + classes;
        for rows in [
            report.by_task.values().collect::<Vec<_>>(),
            report.by_template.values().collect(),
            report.by_tenant.values().collect(),
            report.by_gpu_model.values().collect(),
        ] {
            let tasks_counted: u64 = rows.iter().map(|m| m.tasks).sum();
            prop_assert_eq!(tasks_counted as usize, tasks.len());
            let revenue: i64 = rows.iter().map(|m| m.revenue.amount).sum();
            prop_assert_eq!(revenue, report.revenue.amount);
            let cost: i64 = rows.iter().map(|m| m.cost.amount).sum();
            prop_assert!((cost - report.allocated_cost.amount).abs() <= tolerance);
            let margin: i64 = rows.iter().map(|m| m.margin.amount).sum();
            prop_assert_eq!(margin, revenue - cost);
        }
    }
}
