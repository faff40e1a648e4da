//! HTTP serving for ChatGLM: api.py's `POST /`, an OpenAI-compatible API with SSE streaming, a
//! chat page, and per-user history in SQLite (or PostgreSQL).
//!
//! The server is generic over [`ChatEngine`]: the model adapter implements it, and the tests use
//! [`testing::EchoEngine`]. Requests are validated (OpenAI-style 400/401/404/429 bodies), queued in
//! a bounded queue and decoded on worker threads, in batches when the engine supports it.
//!
//! ```no_run
//! # async fn demo(engine: std::sync::Arc<dyn chatglm_serve::ChatEngine>) -> Result<(), Box<dyn std::error::Error>> {
//! use chatglm_serve::{Server, ServerConfig};
//! let config = ServerConfig::builder().port(0).build()?;
//! let server = Server::bind(config, engine).await?;
//! println!("listening on http://{}", server.local_addr()?);
//! server.serve(chatglm_serve::shutdown_signal()).await?;
//! # Ok(()) }
//! ```

mod config;
pub mod engine;
mod error;
pub mod history;
mod legacy;
pub mod model_engine;
mod openai;
mod page;
mod scheduler;
mod server;
mod state;
mod stop;
pub mod testing;

pub use config::{
    ConfigError, DEFAULT_HISTORY_TURNS, DEFAULT_HOST, DEFAULT_MAX_QUEUE, DEFAULT_PORT,
    ServerConfig, ServerConfigBuilder,
};
pub use engine::{
    BatchJob, ChatEngine, Completion, Conversation, EngineError, FinishReason, GenerateRequest,
    Job, JobFeed, SamplingParams, TokenEvent, Turn, static_batches,
};
pub use error::ApiError;
pub use history::{HistoryError, HistoryStore, StoredTurn};
pub use legacy::{DEFAULT_MAX_LENGTH, DEFAULT_TEMPERATURE, DEFAULT_TOP_P};
pub use model_engine::{DEFAULT_MAX_BATCH, ModelEngine};
pub use page::{APP_CSS, APP_JS, INDEX_HTML, OPENAPI_JSON};
pub use server::{ServeError, Server, serve_blocking, shutdown_signal};
