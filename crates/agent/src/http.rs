//! The daemon's loopback HTTP listener.
//!
//! - `GET /health`: 200 while the process is alive, converged or not (a
//!   liveness probe must not restart a daemon that is correctly holding
//!   back a bad change).
//! - `GET /metrics`: Prometheus text.
//! - `GET /status`: JSON per target and per backend (see [`Status`]).
//! - `POST /release/{name}`: accept the current catalog once for a held
//!   backend or database.
//!
//! [`Status`]: crate::status::Status

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::watch;

use crate::daemon::Control;
use crate::status::Board;

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
        .route("/release/{backend}", post(release))
        .with_state(App { board, control });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.board.metrics_text(),
    )
}

async fn status(State(app): State<App>) -> impl IntoResponse {
    Json(app.board.status())
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
