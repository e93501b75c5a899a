//! Watches: newline-delimited JSON events from a resourceVersion, served from the
//! store's change log (each event serialized once and shared by every watcher).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::selector::{FieldSelector, LabelSelector};
use super::status::Failure;
use super::{ApiState, Params, param_true};
use crate::store::{ChangeType, Kind, Since, event_line};

/// Counts an open watch for as long as it lives.
struct OpenWatch(Arc<ApiState>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Filter {
    kind: Kind,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.ns
            && obj.pointer("/metadata/namespace").and_then(Value::as_str) != Some(ns.as_str())
        {
            return false;
        }
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

fn expired_line(from: u64, oldest: u64) -> Bytes {
    event_line(
        "ERROR",
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {from} ({oldest})"),
            "reason": "Expired", "code": 410}),
    )
}

fn bookmark_line(kind: Kind, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": kind.name(), "apiVersion": kind.api_version(), "metadata": meta}),
    )
}

/// Starts a watch response.
pub(crate) fn watch(
    st: Arc<ApiState>,
    kind: Kind,
    ns: Option<&str>,
    params: &Params,
) -> Result<Response, Failure> {
    let filter = Filter {
        kind,
        ns: ns.map(str::to_string),
        labels: LabelSelector::parse(params.get("labelSelector").map_or("", String::as_str))?,
        fields: FieldSelector::parse(kind, params.get("fieldSelector").map_or("", String::as_str))?,
    };
    let bookmarks = param_true(params, "allowWatchBookmarks");
    let send_initial = param_true(params, "sendInitialEvents");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map(Duration::from_secs);
    let rv_param = params
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    // Everything before the response starts is decided under the store's consistency:
    // either a snapshot (rv "" / "0" / sendInitialEvents) or a resume point.
    let mut first = Vec::new();
    let start_rv;
    if rv_param.is_empty() || rv_param == "0" || send_initial {
        start_rv = st.store.scan(kind, ns, None, |_, v| {
            if filter.matches(v) {
                first.extend_from_slice(&event_line("ADDED", v));
            }
            true
        });
        if send_initial {
            first.extend_from_slice(&bookmark_line(kind, start_rv, true));
        }
    } else {
        let from: u64 = rv_param
            .parse()
            .map_err(|_| Failure::bad_request(format!("invalid resource version: {rv_param}")))?;
        match st.store.changes_since(from) {
            Since::Expired(oldest) => {
                return Ok(stream_response(Body::from(expired_line(from, oldest))));
            }
            Since::Changes(..) => start_rv = from,
        }
    }
    if bookmarks && !send_initial {
        first.extend_from_slice(&bookmark_line(kind, start_rv, false));
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::convert::Infallible>>(16);
    st.open_watches.fetch_add(1, Ordering::Relaxed);
    let guard = OpenWatch(st.clone());
    tokio::spawn(async move {
        let _guard = guard;
        run(
            st,
            filter,
            tx,
            Bytes::from(first),
            start_rv,
            bookmarks,
            timeout,
        )
        .await;
    });
    Ok(stream_response(Body::from_stream(ReceiverStream::new(rx))))
}

fn stream_response(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("valid response")
}

type Tx = mpsc::Sender<Result<Bytes, std::convert::Infallible>>;

async fn run(
    st: Arc<ApiState>,
    filter: Filter,
    tx: Tx,
    first: Bytes,
    mut last: u64,
    bookmarks: bool,
    timeout: Option<Duration>,
) {
    let mut epoch = st.epoch.subscribe();
    epoch.mark_unchanged();
    let mut rv_rx = st.store.rv_watch();
    if !first.is_empty() && tx.send(Ok(first)).await.is_err() {
        return;
    }
    let deadline =
        tokio::time::Instant::now() + timeout.unwrap_or(Duration::from_secs(86_400 * 365));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        rv_rx.mark_unchanged();
        match st.store.changes_after(last) {
            Since::Expired(oldest) => {
                let _ = tx.send(Ok(expired_line(last, oldest))).await;
                return;
            }
            Since::Changes(changes, upto) => {
                let mut buf: Vec<u8> = Vec::new();
                for l in changes {
                    let c = &l.change;
                    if c.kind != filter.kind {
                        continue;
                    }
                    let now = filter.matches(&c.object);
                    let before = match (&c.ty, &l.prev) {
                        (ChangeType::Added, _) | (_, None) => false,
                        (_, Some(p)) => filter.matches(p),
                    };
                    match c.ty {
                        ChangeType::Added if now => buf.extend_from_slice(&l.line()),
                        ChangeType::Modified if now && before => buf.extend_from_slice(&l.line()),
                        ChangeType::Modified if now => {
                            buf.extend_from_slice(&event_line("ADDED", &c.object));
                        }
                        ChangeType::Modified if before => {
                            buf.extend_from_slice(&event_line("DELETED", &c.object));
                        }
                        ChangeType::Deleted if now || before => buf.extend_from_slice(&l.line()),
                        _ => {}
                    }
                    if buf.len() > 256 * 1024
                        && tx
                            .send(Ok(Bytes::from(std::mem::take(&mut buf))))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
                last = upto;
                if !buf.is_empty() && tx.send(Ok(Bytes::from(buf))).await.is_err() {
                    return;
                }
            }
        }
        tokio::select! {
            r = rv_rx.changed() => if r.is_err() { return },
            _ = epoch.changed() => return,
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tx.closed() => return,
            _ = tick.tick(), if bookmarks => {
                if tx.send(Ok(bookmark_line(filter.kind, last, false))).await.is_err() {
                    return;
                }
            }
        }
    }
}
