//! The HTTP endpoints: `/metrics`, `/healthz`, `/readyz`, as an axum router to mount
//! anywhere.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::{Format, Monitor, Probe};

/// A router serving `monitor`:
///
/// - `GET /metrics`: the exposition, OpenMetrics or the Prometheus text format as the
///   `Accept` header asks ([`Format::negotiate`]);
/// - `GET /healthz`: the liveness checks; 200 when all pass, else 503, with one line a
///   check (`[+]history ok`, `[-]events failed: …`);
/// - `GET /readyz`: the same for readiness (liveness checks included).
///
/// Merge it into a bigger router or serve it alone:
///
/// ```no_run
/// # async fn run(monitor: ops_monitor::Monitor) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9464").await?;
/// axum::serve(listener, ops_monitor::http::router(monitor)).await
/// # }
/// ```
pub fn router(monitor: Monitor) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(monitor)
}

async fn metrics(State(monitor): State<Monitor>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    match monitor.scrape(format).await {
        Ok(body) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "could not encode the metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    }
}

async fn probe(monitor: &Monitor, probe: Probe) -> Response {
    let report = monitor.health(probe).await;
    let status = if report.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        report.to_text(),
    )
        .into_response()
}

async fn healthz(State(monitor): State<Monitor>) -> Response {
    probe(&monitor, Probe::Liveness).await
}

async fn readyz(State(monitor): State<Monitor>) -> Response {
    probe(&monitor, Probe::Readiness).await
}
