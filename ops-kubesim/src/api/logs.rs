//! `GET .../pods/{name}/log`: serves the agent's per-container log files
//! (`<RFC3339Nano> <text>` lines), following them while the container runs.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::Response;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::status::Failure;
use super::{ApiState, Params, param_true};
use crate::store::{ApiError, Kind};

struct LogOpts {
    timestamps: bool,
    since: Option<Timestamp>,
    tail: Option<usize>,
    limit_bytes: Option<usize>,
}

impl LogOpts {
    /// The line as served, or None when filtered out by sinceTime.
    fn render(&self, line: &str) -> Option<String> {
        let (ts, text) = line.split_once(' ').unwrap_or((line, ""));
        if let Some(since) = self.since
            && ts.parse::<Timestamp>().is_ok_and(|t| t < since)
        {
            return None;
        }
        Some(if self.timestamps {
            format!("{line}\n")
        } else {
            format!("{text}\n")
        })
    }
}

fn waiting_reason(pod: &Value, container: &str) -> Option<String> {
    let statuses = ["containerStatuses", "initContainerStatuses"]
        .iter()
        .flat_map(|k| {
            pod.pointer(&format!("/status/{k}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .find(|s| s.get("name").and_then(Value::as_str) == Some(container));
    let Some(s) = statuses else {
        return Some("ContainerCreating".to_string());
    };
    let started = s.pointer("/state/running").is_some()
        || s.pointer("/state/terminated").is_some()
        || s.pointer("/lastState/terminated").is_some();
    if started {
        return None;
    }
    let reason = s
        .pointer("/state/waiting/reason")
        .and_then(Value::as_str)
        .unwrap_or("ContainerCreating");
    Some(match reason {
        "ErrImagePull" => "image can't be pulled".to_string(),
        "ImagePullBackOff" => "trying and failing to pull image".to_string(),
        r => r.to_string(),
    })
}

/// Serves a container's log.
pub(crate) async fn logs(
    st: Arc<ApiState>,
    ns: &str,
    name: &str,
    params: &Params,
) -> Result<Response, Failure> {
    let Some(pod) = st.store.get_arc(Kind::Pod, Some(ns), name) else {
        return Err(ApiError::not_found(Kind::Pod, name).into());
    };
    let names: Vec<String> = ["containers", "initContainers"]
        .iter()
        .flat_map(|k| {
            pod.pointer(&format!("/spec/{k}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    let regular = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let container = match params.get("container").filter(|c| !c.is_empty()) {
        Some(c) => {
            if !names.contains(c) {
                return Err(Failure::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )));
            }
            c.clone()
        }
        None if regular == 1 => names
            .iter()
            .find(|n| {
                pod.pointer("/spec/containers/0/name")
                    .and_then(Value::as_str)
                    == Some(n.as_str())
            })
            .cloned()
            .unwrap_or_default(),
        None => {
            return Err(Failure::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                names.join(" ")
            )));
        }
    };
    if let Some(reason) = waiting_reason(&pod, &container) {
        return Err(Failure::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"
        )));
    }
    let since =
        match (params.get("sinceTime"), params.get("sinceSeconds")) {
            (Some(t), _) => Some(t.parse::<Timestamp>().map_err(|e| {
                Failure::bad_request(format!("sinceTime: invalid value {t:?}: {e}"))
            })?),
            (None, Some(s)) => {
                let secs: i64 = s.parse().map_err(|_| {
                    Failure::bad_request(format!("sinceSeconds: invalid value {s:?}"))
                })?;
                Timestamp::now()
                    .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(secs))
                    .ok()
            }
            _ => None,
        };
    let opts = LogOpts {
        timestamps: param_true(params, "timestamps"),
        since,
        tail: params
            .get("tailLines")
            .and_then(|t| t.parse::<i64>().ok())
            .filter(|t| *t >= 0)
            .map(|t| t as usize),
        limit_bytes: params
            .get("limitBytes")
            .and_then(|t| t.parse::<i64>().ok())
            .filter(|t| *t > 0)
            .map(|t| t as usize),
    };
    let path = st.agent.log_file(ns, name, &container);
    let follow = param_true(params, "follow");
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let (ns, name) = (ns.to_string(), name.to_string());
    tokio::spawn(async move {
        stream_log(st, path, ns, name, container, opts, follow, tx).await;
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from_stream(ReceiverStream::new(rx)))
        .expect("valid response"))
}

type Tx = mpsc::Sender<Result<Bytes, std::io::Error>>;

/// Sends text within the byte limit; false when done (limit reached or client gone).
async fn emit(tx: &Tx, text: String, left: &mut Option<usize>) -> bool {
    let mut bytes = text.into_bytes();
    if let Some(l) = left {
        if bytes.len() >= *l {
            bytes.truncate(*l);
            let _ = tx.send(Ok(Bytes::from(bytes))).await;
            return false;
        }
        *l -= bytes.len();
    }
    bytes.is_empty() || tx.send(Ok(Bytes::from(bytes))).await.is_ok()
}

#[allow(clippy::too_many_arguments)]
async fn stream_log(
    st: Arc<ApiState>,
    path: PathBuf,
    ns: String,
    name: String,
    container: String,
    opts: LogOpts,
    follow: bool,
    tx: Tx,
) {
    let mut left = opts.limit_bytes;
    let mut offset: u64 = 0;
    let mut partial = String::new();
    // First: what is there now (tailLines applies to it).
    let mut initial = read_from(&path, &mut offset, &mut partial).await;
    let running = follow && st.agent.container_running(&ns, &name, &container);
    if !running && !partial.is_empty() {
        initial.push(std::mem::take(&mut partial));
    }
    let mut lines: VecDeque<String> = initial
        .into_iter()
        .filter_map(|l| opts.render(&l))
        .collect();
    if let Some(t) = opts.tail {
        while lines.len() > t {
            lines.pop_front();
        }
    }
    if !emit(&tx, lines.into_iter().collect(), &mut left).await || !follow {
        return;
    }
    loop {
        let running = st.agent.container_running(&ns, &name, &container);
        let mut fresh = read_from(&path, &mut offset, &mut partial).await;
        if !running && !partial.is_empty() {
            fresh.push(std::mem::take(&mut partial));
        }
        let text: String = fresh.iter().filter_map(|l| opts.render(l)).collect();
        if !emit(&tx, text, &mut left).await {
            return;
        }
        if !running {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = tx.closed() => return,
        }
    }
}

/// Reads complete lines appended since `offset`; an unterminated tail stays in `partial`.
async fn read_from(path: &PathBuf, offset: &mut u64, partial: &mut String) -> Vec<String> {
    let Ok(mut f) = tokio::fs::File::open(path).await else {
        return Vec::new();
    };
    if f.seek(std::io::SeekFrom::Start(*offset)).await.is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).await.is_err() {
        return Vec::new();
    }
    *offset += buf.len() as u64;
    partial.push_str(&String::from_utf8_lossy(&buf));
    let mut lines = Vec::new();
    while let Some(i) = partial.find('\n') {
        let line: String = partial.drain(..=i).collect();
        lines.push(line.trim_end_matches('\n').to_string());
    }
    lines
}
