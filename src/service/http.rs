//! The operations endpoint: `/metrics` (Prometheus text format), `/healthz` (the process is
//! alive) and `/readyz` (group joined, partitions assigned, brokers reachable; 503 with the
//! reason otherwise).

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use super::Status;

#[derive(Clone)]
struct App {
    metrics: PrometheusHandle,
    status: watch::Receiver<Status>,
}

/// Why the service is not ready, or `None` when it is.
pub fn not_ready(s: &Status) -> Option<String> {
    if let Some(why) = &s.broker_down {
        return Some(format!("broker unreachable ({why})"));
    }
    if s.assigned.is_empty() {
        return Some("no partitions assigned yet (joining the consumer group)".into());
    }
    None
}

/// Binds `listen` and serves until `shutdown` completes. Returns the bound address.
pub async fn serve(
    listen: &str,
    metrics: PrometheusHandle,
    status: watch::Receiver<Status>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (http.listen): {e}"))?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(App { metrics, status });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
    });
    Ok(addr)
}

async fn metrics_page(State(app): State<App>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
}

async fn ready(State(app): State<App>) -> impl IntoResponse {
    match not_ready(&app.status.borrow()) {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_partitions_and_reachable_brokers() {
        let mut s = Status::default();
        assert!(not_ready(&s).unwrap().contains("no partitions"));
        s.assigned.push(("cx.interactions".into(), 0));
        assert_eq!(not_ready(&s), None);
        s.broker_down = Some("all brokers down".into());
        assert!(not_ready(&s).unwrap().contains("broker unreachable"));
    }
}
