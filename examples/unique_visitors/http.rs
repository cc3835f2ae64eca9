//! The job's per-page counts over HTTP, read from the consumer's state while it runs
//! (`StateQuery`): `GET /pages/<page>` answers the page's open one-minute windows on this
//! member (closed windows went to the output topic and left the store), `GET /partitions`
//! what this member owns. A page another member owns answers 421 naming the owner; a
//! partition still restoring answers 503 — never an empty answer presented as current.
//! Shared by the example and `tests/query.rs`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use kafka_stateful::query::QueryError;
use kafka_stateful::window::WindowDef;
use kafka_stateful::StateQuery;
use serde_json::json;

struct App {
    query: StateQuery,
    counts: WindowDef<String, (u64, u64)>,
}

/// Serves until the listener fails.
///
/// # Errors
/// The listener's.
pub async fn serve(
    listener: tokio::net::TcpListener,
    query: StateQuery,
    counts: WindowDef<String, (u64, u64)>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/pages/{page}", get(page))
        .route("/partitions", get(partitions))
        .with_state(Arc::new(App { query, counts }));
    axum::serve(listener, app).await
}

async fn page(State(app): State<Arc<App>>, Path(page): Path<String>) -> (StatusCode, String) {
    match app
        .query
        .windows_of(&app.counts, &page, (i64::MIN, i64::MAX))
        .await
    {
        Ok(windows) => {
            let windows: Vec<_> = windows
                .iter()
                .map(|(start, (unique, views))| {
                    json!({"window_start": start, "unique_visitors": unique, "views": views})
                })
                .collect();
            (
                StatusCode::OK,
                json!({"page": page, "windows": windows}).to_string(),
            )
        }
        Err(error) => {
            let status = match &error {
                QueryError::NotOwned { .. } => StatusCode::MISDIRECTED_REQUEST,
                QueryError::NotReady { .. } => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let owner = match &error {
                QueryError::NotOwned { owner, .. } => owner.clone(),
                _ => None,
            };
            let body = json!({"page": page, "error": error.to_string(), "owner": owner});
            (status, body.to_string())
        }
    }
}

async fn partitions(State(app): State<Arc<App>>) -> String {
    let parts: Vec<_> = app
        .query
        .partitions()
        .into_iter()
        .map(|(topic, partition, ready)| json!({"topic": topic, "partition": partition, "ready": ready}))
        .collect();
    json!(parts).to_string()
}
