//! The small panel model the dashboards are written in, and its Grafana JSON.
//!
//! A dashboard is a list of [`Item`]s: rows (full-width headers) and panels, laid out
//! left to right and wrapped onto the next line when the 24 grid columns are full, so
//! that no dashboard module has to count coordinates.

use serde_json::{Value, json};

use super::DashboardsConfig;

/// Grid columns Grafana lays panels on.
const GRID_WIDTH: u32 = 24;

/// How a panel draws its queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Timeseries,
    Stat,
    Table,
    Bargauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Timeseries => "timeseries",
            Kind::Stat => "stat",
            Kind::Table => "table",
            Kind::Bargauge => "bargauge",
        }
    }

    /// Tables, stats and bar gauges show the latest value: their queries are instant.
    fn instant(self) -> bool {
        !matches!(self, Kind::Timeseries)
    }
}

/// One PromQL query of a panel.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub expr: String,
    pub legend: String,
}

/// A query and its legend (`{{label}}` placeholders are Grafana's).
pub(crate) fn q(expr: impl Into<String>, legend: impl Into<String>) -> Target {
    Target {
        expr: expr.into(),
        legend: legend.into(),
    }
}

/// A panel: what it shows, how, and how much room it takes.
#[derive(Clone, Debug)]
pub(crate) struct Panel {
    pub title: String,
    pub description: String,
    pub kind: Kind,
    pub unit: &'static str,
    pub targets: Vec<Target>,
    pub width: u32,
    pub height: u32,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Threshold steps above the base colour (green): `(value, colour)`.
    pub thresholds: Vec<(f64, &'static str)>,
    /// Value mappings for stats and tables: `(value, text, colour)`.
    pub mappings: Vec<(&'static str, &'static str, &'static str)>,
    /// Table columns to rename: `(column, new name)`.
    pub rename: Vec<(&'static str, &'static str)>,
    pub stacked: bool,
}

impl Panel {
    fn new(kind: Kind, title: &str, unit: &'static str, targets: Vec<Target>) -> Self {
        let (width, height) = match kind {
            Kind::Timeseries => (12, 8),
            Kind::Stat => (4, 4),
            Kind::Table => (12, 8),
            Kind::Bargauge => (12, 8),
        };
        Panel {
            title: title.to_owned(),
            description: String::new(),
            kind,
            unit,
            targets,
            width,
            height,
            min: None,
            max: None,
            thresholds: Vec::new(),
            mappings: Vec::new(),
            rename: Vec::new(),
            stacked: false,
        }
    }

    /// A time series panel.
    pub fn timeseries(title: &str, unit: &'static str, targets: Vec<Target>) -> Self {
        Self::new(Kind::Timeseries, title, unit, targets)
    }

    /// A single-value panel.
    pub fn stat(title: &str, unit: &'static str, target: Target) -> Self {
        Self::new(Kind::Stat, title, unit, vec![target])
    }

    /// A table of instant values, one column a label.
    pub fn table(title: &str, unit: &'static str, targets: Vec<Target>) -> Self {
        Self::new(Kind::Table, title, unit, targets)
    }

    /// Horizontal bars of instant values.
    pub fn bargauge(title: &str, unit: &'static str, targets: Vec<Target>) -> Self {
        Self::new(Kind::Bargauge, title, unit, targets)
    }

    pub fn describe(mut self, description: &str) -> Self {
        self.description = description.to_owned();
        self
    }

    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.width = width.clamp(1, GRID_WIDTH);
        self.height = height.max(1);
        self
    }

    pub fn range(mut self, min: f64, max: f64) -> Self {
        self.min = Some(min);
        self.max = Some(max);
        self
    }

    pub fn min(mut self, min: f64) -> Self {
        self.min = Some(min);
        self
    }

    pub fn thresholds(mut self, steps: &[(f64, &'static str)]) -> Self {
        self.thresholds = steps.to_vec();
        self
    }

    pub fn mappings(mut self, mappings: &[(&'static str, &'static str, &'static str)]) -> Self {
        self.mappings = mappings.to_vec();
        self
    }

    pub fn rename(mut self, columns: &[(&'static str, &'static str)]) -> Self {
        self.rename = columns.to_vec();
        self
    }

    pub fn stacked(mut self) -> Self {
        self.stacked = true;
        self
    }
}

/// A dashboard's content: full-width row headers and panels, in reading order.
#[derive(Clone, Debug)]
pub(crate) enum Item {
    Row(&'static str),
    Panel(Panel),
}

/// A query variable (`label_values(...)`), multi-valued with an "All" that matches
/// every value (`.*`), so that panels filter with `label=~"$name"`.
#[derive(Clone, Debug)]
pub(crate) struct Variable {
    pub name: &'static str,
    pub label: &'static str,
    pub query: String,
}

pub(crate) fn var(name: &'static str, label: &'static str, query: impl Into<String>) -> Variable {
    Variable {
        name,
        label,
        query: query.into(),
    }
}

/// The data source every panel and variable queries: the `datasource` variable.
fn datasource() -> Value {
    json!({ "type": "prometheus", "uid": "${datasource}" })
}

/// Places the items on the grid: panels left to right, wrapping when a line is full; a
/// row starts a new line. Returns each item's `(x, y)`.
fn layout(items: &[Item]) -> Vec<(u32, u32)> {
    let (mut x, mut y, mut line_height) = (0u32, 0u32, 0u32);
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Item::Row(_) => {
                y += line_height;
                out.push((0, y));
                y += 1;
                x = 0;
                line_height = 0;
            }
            Item::Panel(p) => {
                if x + p.width > GRID_WIDTH {
                    y += line_height;
                    x = 0;
                    line_height = 0;
                }
                out.push((x, y));
                x += p.width;
                line_height = line_height.max(p.height);
            }
        }
    }
    out
}

fn panel_json(id: usize, p: &Panel, x: u32, y: u32) -> Value {
    let instant = p.kind.instant();
    let targets: Vec<Value> = p
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut target = json!({
                "refId": ref_id(i),
                "datasource": datasource(),
                "expr": t.expr,
                "legendFormat": t.legend,
                "range": !instant,
                "instant": instant,
                "editorMode": "code",
            });
            if p.kind == Kind::Table {
                target["format"] = json!("table");
            }
            target
        })
        .collect();

    let mut steps = vec![json!({ "color": "green", "value": null })];
    steps.extend(
        p.thresholds
            .iter()
            .map(|(value, color)| json!({ "color": color, "value": value })),
    );
    let mut defaults = json!({
        "unit": p.unit,
        "thresholds": { "mode": "absolute", "steps": steps },
        "mappings": mappings_json(&p.mappings),
        "color": { "mode": if p.kind == Kind::Timeseries { "palette-classic" } else { "thresholds" } },
    });
    if let Some(min) = p.min {
        defaults["min"] = json!(min);
    }
    if let Some(max) = p.max {
        defaults["max"] = json!(max);
    }
    let reduce = json!({ "calcs": ["lastNotNull"], "fields": "", "values": false });
    let (options, custom) = match p.kind {
        Kind::Timeseries => (
            json!({
                "legend": { "displayMode": "list", "placement": "bottom", "showLegend": true },
                "tooltip": { "mode": "multi", "sort": "desc" },
            }),
            json!({
                "drawStyle": "line",
                "lineWidth": 1,
                "fillOpacity": if p.stacked { 30 } else { 10 },
                "showPoints": "never",
                "spanNulls": false,
                "stacking": { "mode": if p.stacked { "normal" } else { "none" }, "group": "A" },
            }),
        ),
        Kind::Stat => (
            json!({
                "reduceOptions": reduce,
                "colorMode": "value",
                "graphMode": "area",
                "justifyMode": "auto",
                "orientation": "auto",
                "textMode": "auto",
            }),
            json!({}),
        ),
        Kind::Bargauge => (
            json!({
                "reduceOptions": reduce,
                "orientation": "horizontal",
                "displayMode": "gradient",
                "showUnfilled": true,
                "minVizHeight": 10,
                "minVizWidth": 0,
            }),
            json!({}),
        ),
        Kind::Table => (
            json!({
                "showHeader": true,
                "cellHeight": "sm",
                "footer": { "show": false, "reducer": ["sum"], "fields": "" },
            }),
            json!({ "align": "auto", "cellOptions": { "type": "auto" }, "inspect": false }),
        ),
    };
    defaults["custom"] = custom;

    let mut panel = json!({
        "id": id,
        "type": p.kind.as_str(),
        "title": p.title,
        "description": p.description,
        "datasource": datasource(),
        "gridPos": { "h": p.height, "w": p.width, "x": x, "y": y },
        "fieldConfig": { "defaults": defaults, "overrides": [] },
        "options": options,
        "targets": targets,
    });
    if p.kind == Kind::Table {
        // Instant table queries: drop the timestamp, merge several queries on their
        // labels, and name the value columns.
        let mut transformations = Vec::new();
        if p.targets.len() > 1 {
            transformations.push(json!({ "id": "merge", "options": {} }));
        }
        let rename: serde_json::Map<String, Value> = p
            .rename
            .iter()
            .map(|(from, to)| ((*from).to_owned(), json!(to)))
            .collect();
        transformations.push(json!({
            "id": "organize",
            "options": {
                "excludeByName": { "Time": true, "__name__": true, "job": true },
                "renameByName": rename,
            },
        }));
        panel["transformations"] = Value::Array(transformations);
    }
    panel
}

/// `A`, `B`, … `Z`, `AA`, … (Grafana's query letters).
fn ref_id(i: usize) -> String {
    let mut out = String::new();
    let mut n = i + 1;
    while n > 0 {
        let rem = (n - 1) % 26;
        out.insert(0, char::from(b'A' + rem as u8));
        n = (n - 1) / 26;
    }
    out
}

fn mappings_json(mappings: &[(&str, &str, &str)]) -> Value {
    if mappings.is_empty() {
        return json!([]);
    }
    let options: serde_json::Map<String, Value> = mappings
        .iter()
        .enumerate()
        .map(|(i, (value, text, color))| {
            (
                (*value).to_owned(),
                json!({ "text": text, "color": color, "index": i }),
            )
        })
        .collect();
    json!([{ "type": "value", "options": options }])
}

fn variable_json(v: &Variable) -> Value {
    json!({
        "name": v.name,
        "label": v.label,
        "type": "query",
        "datasource": datasource(),
        "definition": v.query,
        "query": { "query": v.query, "refId": "PrometheusVariableQueryEditor-VariableQuery" },
        "refresh": 2,
        "includeAll": true,
        "multi": true,
        "allValue": ".*",
        "current": { "selected": true, "text": ["All"], "value": ["$__all"] },
        "options": [],
        "regex": "",
        "sort": 1,
        "hide": 0,
        "skipUrlSync": false,
    })
}

/// The whole dashboard JSON, ready for Grafana's import or file provisioning.
pub(crate) fn dashboard_json(
    config: &DashboardsConfig,
    uid: &str,
    title: &str,
    description: &str,
    variables: &[Variable],
    items: &[Item],
) -> Value {
    let positions = layout(items);
    let panels: Vec<Value> = items
        .iter()
        .zip(positions)
        .enumerate()
        .map(|(i, (item, (x, y)))| match item {
            Item::Row(title) => json!({
                "id": i + 1,
                "type": "row",
                "title": title,
                "collapsed": false,
                "panels": [],
                "gridPos": { "h": 1, "w": GRID_WIDTH, "x": x, "y": y },
            }),
            Item::Panel(p) => panel_json(i + 1, p, x, y),
        })
        .collect();

    let mut list = vec![json!({
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": { "selected": true, "text": config.datasource, "value": config.datasource },
        "options": [],
        "regex": "",
        "refresh": 1,
        "hide": 0,
        "includeAll": false,
        "multi": false,
        "skipUrlSync": false,
    })];
    list.extend(variables.iter().map(variable_json));

    json!({
        "id": null,
        "uid": uid,
        "title": title,
        "description": description,
        "tags": config.tags,
        "timezone": "browser",
        "editable": true,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": false,
        "schemaVersion": 39,
        "version": 1,
        "refresh": config.refresh,
        "time": { "from": config.time_from, "to": config.time_to },
        "timepicker": {},
        "weekStart": "",
        "links": [{
            "title": "Ops dashboards",
            "type": "dashboards",
            "tags": config.tags,
            "asDropdown": true,
            "includeVars": true,
            "keepTime": true,
            "icon": "external link",
            "targetBlank": false,
            "tooltip": "",
            "url": "",
        }],
        "annotations": { "list": [{
            "builtIn": 1,
            "datasource": { "type": "grafana", "uid": "-- Grafana --" },
            "enable": true,
            "hide": true,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "templating": { "list": list },
        "panels": panels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_wraps_full_lines_and_rows_start_new_ones() {
        let p = |w, h| Item::Panel(Panel::timeseries("p", "short", vec![]).size(w, h));
        let items = [
            Item::Row("a"),
            p(12, 8),
            p(12, 6),
            p(8, 4),
            Item::Row("b"),
            p(24, 3),
        ];
        assert_eq!(
            layout(&items),
            vec![(0, 0), (0, 1), (12, 1), (0, 9), (0, 13), (0, 14)]
        );
    }

    #[test]
    fn ref_ids_are_letters() {
        assert_eq!(ref_id(0), "A");
        assert_eq!(ref_id(25), "Z");
        assert_eq!(ref_id(26), "AA");
    }
}
