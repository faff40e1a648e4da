//! The HTTP server: routes, API key check, CORS, binding and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::ServerConfig;
use crate::engine::ChatEngine;
use crate::error::ApiError;
use crate::history::{HistoryError, HistoryStore};
use crate::scheduler::Scheduler;
use crate::state::{AppState, unix_now};
use crate::{legacy, openai, page};

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The engine serves no model id.
    #[error("the engine serves no model")]
    NoModel,
    /// The history store could not be opened.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// Worker threads or the runtime could not start, or the connection loop failed.
    #[error("server I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A bound server, ready to [`serve`](Self::serve).
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    state: Arc<AppState>,
    config: ServerConfig,
}

impl Server {
    /// Opens the history store, starts the generation workers and binds the address.
    ///
    /// # Errors
    /// See [`ServeError`].
    pub async fn bind(
        config: ServerConfig,
        engine: Arc<dyn ChatEngine>,
    ) -> Result<Self, ServeError> {
        let models = engine.models();
        if models.is_empty() {
            return Err(ServeError::NoModel);
        }
        let history = match &config.history_url {
            Some(url) => Some(HistoryStore::connect(url).await?),
            None => None,
        };
        let scheduler = Scheduler::start(Arc::clone(&engine), config.workers, config.max_queue)?;
        let addr = SocketAddr::new(config.host, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let state = Arc::new(AppState {
            engine,
            scheduler,
            history,
            api_key: config.api_key.clone(),
            history_turns: config.history_turns,
            models,
            created: unix_now(),
        });
        Ok(Self {
            listener,
            state,
            config,
        })
    }

    /// The address actually bound (useful with port 0).
    ///
    /// # Errors
    /// An I/O error reading the socket address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets running requests finish (up to
    /// the drain timeout) and returns.
    ///
    /// # Errors
    /// An I/O error of the accept loop.
    pub async fn serve<F>(self, shutdown: F) -> Result<(), ServeError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let app = router(Arc::clone(&self.state), &self.config);
        let signalled = Arc::new(Notify::new());
        let notify = Arc::clone(&signalled);
        let serve = axum::serve(self.listener, app).with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: draining running requests");
            notify.notify_one();
        });
        let drain = self.config.drain_timeout;
        tokio::select! {
            result = serve => result?,
            () = async { signalled.notified().await; tokio::time::sleep(drain).await } => {
                tracing::warn!(?drain, "drain timeout: exiting with requests still running");
            }
        }
        Ok(())
    }
}

/// Builds the router over a state.
fn router(state: Arc<AppState>, config: &ServerConfig) -> Router {
    let mut app = Router::new()
        .route("/", get(page::index).post(legacy::api_py))
        .route("/assets/{file}", get(page::asset))
        .route(
            "/v1/chat/completions",
            axum::routing::post(openai::chat_completions),
        )
        .route("/v1/models", get(openai::models))
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_key,
        ))
        .with_state(state);
    if !config.cors_origins.is_empty() {
        let origins = if config.cors_origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(
                config
                    .cors_origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
            )
        };
        app = app.layer(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]),
        );
    }
    app
}

/// Rejects requests without the right `Authorization: Bearer` (all routes but `/health`).
async fn require_key(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(key) = state.api_key.as_deref() else {
        return next.run(request).await;
    };
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer_token(v.as_bytes()))
        .unwrap_or_default();
    if bool::from(presented.ct_eq(key.as_bytes())) {
        next.run(request).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(token)
}

/// `GET /health`: liveness plus queue load (never needs the key).
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let (queued, running) = state.scheduler.load();
    axum::Json(json!({
        "status": "ok",
        "models": state.models,
        "context_length": state.engine.context_length(),
        "queued": queued,
        "running": running,
    }))
    .into_response()
}

/// `GET /openapi.json`: the description of every route.
async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        page::OPENAPI_JSON,
    )
        .into_response()
}

async fn fallback(uri: Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

/// Binds and serves on a new multi-threaded runtime until SIGTERM or Ctrl-C, then drains.
/// `on_ready` gets the bound address once the server accepts connections.
///
/// # Errors
/// See [`ServeError`].
pub fn serve_blocking(
    config: ServerConfig,
    engine: Arc<dyn ChatEngine>,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let server = Server::bind(config, engine).await?;
        on_ready(server.local_addr()?);
        server.serve(shutdown_signal()).await
    })
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
