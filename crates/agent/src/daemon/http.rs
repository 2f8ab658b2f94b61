//! The daemon's loopback HTTP listener.
//!
//! - `GET /health`: 200 while the process is alive, converged or not (a
//!   liveness probe must not restart a daemon that is correctly holding
//!   back a bad change).
//! - `GET /metrics`: OpenMetrics text, served as
//!   `application/openmetrics-text; version=1.0.0`.
//! - `GET /status`: JSON per target and per backend (see [`Status`]).
//! - `GET /events?since=SEQ`: what the daemon did after event `SEQ`
//!   (see [`events`](super::events)), for `converge drill`.
//! - `POST /release/{name}`: accept the current catalog once for a held
//!   backend or database.
//!
//! [`Status`]: super::board::Status

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::watch;

use super::board::Board;
use super::control::Control;

#[derive(Clone)]
struct App {
    board: Arc<Board>,
    control: Control,
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    board: Arc<Board>,
    control: Control,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/events", get(events))
        .route("/release/{backend}", post(release))
        .with_state(App { board, control });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

/// The content type of an OpenMetrics 1.0 text body, which is what the
/// `prometheus-client` encoder writes (it ends in `# EOF`). Serving it as
/// Prometheus' `text/plain; version=0.0.4` made strict scrapers parse it
/// with the wrong grammar.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    metrics_response(&app.board)
}

fn metrics_response(board: &Board) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS)], board.metrics_text())
}

async fn status(State(app): State<App>) -> impl IntoResponse {
    Json(app.board.status())
}

/// `since` from the query string (0 when absent or not a number, so a
/// reader that sends nothing gets every event kept).
async fn events(State(app): State<App>, uri: Uri) -> impl IntoResponse {
    let since = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("since="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Json(app.board.events.since(since))
}

async fn release(State(app): State<App>, Path(backend): Path<String>) -> impl IntoResponse {
    let status = app.board.status();
    let known =
        status.backends.contains_key(&backend) || status.holds.iter().any(|h| h.backend == backend);
    if !known {
        return (
            StatusCode::NOT_FOUND,
            format!("no backend or held database `{backend}`\n"),
        );
    }
    app.control.release(&backend);
    (
        StatusCode::ACCEPTED,
        format!("released `{backend}` for the next pass\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics_text() {
        let board = Board::new("lb1", "file");
        board.fail("render");
        let response = metrics_response(&board).into_response();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.to_str().ok()),
            Some(Some(OPENMETRICS))
        );
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let text = std::str::from_utf8(&body).expect("utf-8");
        // The OpenMetrics grammar: descriptors, samples, and `# EOF` last.
        assert!(text.ends_with("# EOF\n"), "{text}");
        for line in text.lines() {
            let descriptor = ["# HELP ", "# TYPE ", "# UNIT ", "# EOF"]
                .iter()
                .any(|p| line.starts_with(p));
            let sample = line
                .rsplit_once(' ')
                .is_some_and(|(name, value)| !name.is_empty() && value.parse::<f64>().is_ok());
            assert!(descriptor || sample, "not OpenMetrics: {line:?}\n{text}");
        }
        assert!(
            text.contains("converge_failures_total{stage=\"render\"} 1"),
            "{text}"
        );
    }
}
