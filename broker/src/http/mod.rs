//! The HTTP listener: the web console at `/`, the JSON admin API under
//! `/api/v1/` (described by `/api/v1/openapi.json`), Prometheus metrics at
//! `/metrics` and a liveness probe at `/health`.
//!
//! Both the console and the API read the broker through [`views`], the
//! same [`BrokerState`] calls the gRPC and Kafka front ends make, checked
//! by the same authorizer: one data layer, two renderings. With a
//! credentials file, every console and API request must authenticate,
//! with a bearer token (`Authorization: Bearer …`) or with HTTP basic
//! authentication (a SCRAM user's password, or any user name with a token
//! as the password); `/health` and `/metrics` stay open, for probes and
//! scrapers.

mod api;
mod auth;
mod console;
mod history;
mod views;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::auth::CredentialsStore;
use crate::state::BrokerState;

pub use history::{HISTORY_INTERVAL, HISTORY_SAMPLES};
pub use views::MAX_BROWSE_RECORDS;

/// Largest request body the listener reads (a topic to create, a reset).
pub const MAX_HTTP_BODY_BYTES: usize = 64 * 1024;

/// The addresses the broker serves on, as the overview shows them.
#[derive(Clone, Debug, Default)]
pub struct ListenerInfo {
    /// The gRPC listener.
    pub grpc: Option<SocketAddr>,
    /// The Kafka listener.
    pub kafka: Option<SocketAddr>,
    /// This listener.
    pub http: Option<SocketAddr>,
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct Http {
    pub(crate) state: Arc<BrokerState>,
    pub(crate) credentials: Option<Arc<CredentialsStore>>,
    pub(crate) started: Instant,
    pub(crate) listeners: ListenerInfo,
    pub(crate) history: Arc<history::History>,
}

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's Prometheus recorder, once; `None` if another
/// recorder was installed first (an embedding application's own).
fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let installed = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ])
                .map(|b| b.install_recorder());
            match installed.and_then(|r| r) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "another metrics recorder is installed; /metrics is empty");
                    None
                }
            }
        })
        .as_ref()
}

/// Serves the HTTP listener until the task is aborted; the history
/// sampler runs beside it.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<BrokerState>,
    credentials: Option<Arc<CredentialsStore>>,
    listeners: ListenerInfo,
) {
    let history = Arc::new(history::History::default());
    let sampler = tokio::spawn(history::run(state.clone(), history.clone(), prometheus()));
    let http = Http {
        state,
        credentials,
        started: Instant::now(),
        listeners,
        history,
    };
    let app = router(http);
    if let Err(e) = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    {
        tracing::error!(error = %e, "the HTTP listener stopped");
    }
    sampler.abort();
}

fn router(http: Http) -> Router {
    let guarded = Router::new()
        .merge(console::routes())
        .nest("/api/v1", api::routes())
        .layer(axum::middleware::from_fn_with_state(
            http.clone(),
            auth::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            http.clone(),
            auth::same_origin,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(guarded)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_HTTP_BODY_BYTES))
        .with_state(http)
}

async fn health(State(http): State<Http>) -> Response {
    if http.state.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        "ok\n".into_response()
    }
}

async fn metrics() -> Response {
    let body = prometheus().map(|h| h.render()).unwrap_or_default();
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        api::ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no API endpoint at {}", uri.path()),
        )
        .into_response()
    } else {
        console::not_found(uri.path())
    }
}
