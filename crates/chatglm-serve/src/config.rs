//! Server settings and their builder.

use std::net::IpAddr;
use std::time::Duration;

/// Default listening address (loopback only).
pub const DEFAULT_HOST: &str = "127.0.0.1";
/// Default port (api.py's).
pub const DEFAULT_PORT: u16 = 8000;
/// Default number of waiting requests before 429.
pub const DEFAULT_MAX_QUEUE: usize = 64;
/// Default number of stored turns a `user_name` request sees as history.
pub const DEFAULT_HISTORY_TURNS: usize = 10;

/// Errors of [`ServerConfigBuilder::build`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `host` is not an IP address.
    #[error("--host `{0}` is not an IP address (e.g. 127.0.0.1 or 0.0.0.0)")]
    Host(String),
    /// A count that must be positive is zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// An empty API key would accept `Authorization: Bearer ` only.
    #[error("--api-key must not be empty")]
    EmptyApiKey,
    /// A CORS origin that is not `*` nor an `http(s)://` origin.
    #[error("--cors-origin `{0}` must be `*` or an origin like https://example.com")]
    CorsOrigin(String),
}

/// Settings of a [`crate::Server`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub(crate) host: IpAddr,
    pub(crate) port: u16,
    pub(crate) api_key: Option<String>,
    pub(crate) cors_origins: Vec<String>,
    pub(crate) max_queue: usize,
    pub(crate) workers: usize,
    pub(crate) history_url: Option<String>,
    pub(crate) history_turns: usize,
    pub(crate) drain_timeout: Duration,
}

impl ServerConfig {
    /// A builder with the defaults: 127.0.0.1:8000, no key, no CORS, queue 64, 1 worker,
    /// no history store, 10 history turns, 30 s to drain on shutdown.
    pub fn builder() -> ServerConfigBuilder {
        ServerConfigBuilder {
            host: DEFAULT_HOST.into(),
            port: DEFAULT_PORT,
            api_key: None,
            cors_origins: Vec::new(),
            max_queue: DEFAULT_MAX_QUEUE,
            workers: 1,
            history_url: None,
            history_turns: DEFAULT_HISTORY_TURNS,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Builder of [`ServerConfig`].
#[derive(Debug, Clone)]
pub struct ServerConfigBuilder {
    host: String,
    port: u16,
    api_key: Option<String>,
    cors_origins: Vec<String>,
    max_queue: usize,
    workers: usize,
    history_url: Option<String>,
    history_turns: usize,
    drain_timeout: Duration,
}

impl ServerConfigBuilder {
    /// The IP address to bind.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// The port to bind (0: any free port).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Requires `Authorization: Bearer <key>` on every route but `/health`.
    pub fn api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key;
        self
    }

    /// Allows browser requests from this origin (`*` for any).
    pub fn cors_origin(mut self, origin: impl Into<String>) -> Self {
        self.cors_origins.push(origin.into());
        self
    }

    /// Waiting requests beyond which new ones get 429.
    pub fn max_queue(mut self, n: usize) -> Self {
        self.max_queue = n;
        self
    }

    /// Generation worker threads (each decodes one batch at a time).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// The history database URL (`sqlite://…` or `postgres://…`); `None` disables `user_name`.
    pub fn history_url(mut self, url: Option<String>) -> Self {
        self.history_url = url;
        self
    }

    /// How many recent stored turns a `user_name` request gets as history.
    pub fn history_turns(mut self, n: usize) -> Self {
        self.history_turns = n;
        self
    }

    /// How long shutdown waits for running requests.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// A host that is not an IP address, zero workers or queue, an empty key, a bad origin.
    pub fn build(self) -> Result<ServerConfig, ConfigError> {
        let host: IpAddr = self
            .host
            .parse()
            .map_err(|_| ConfigError::Host(self.host.clone()))?;
        if self.max_queue == 0 {
            return Err(ConfigError::Zero("--max-queue"));
        }
        if self.workers == 0 {
            return Err(ConfigError::Zero("--workers"));
        }
        if self.api_key.as_deref() == Some("") {
            return Err(ConfigError::EmptyApiKey);
        }
        for origin in &self.cors_origins {
            let ok = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && axum::http::HeaderValue::from_str(origin).is_ok()
                    && !origin.trim_end_matches('/').ends_with("//"));
            if !ok {
                return Err(ConfigError::CorsOrigin(origin.clone()));
            }
        }
        Ok(ServerConfig {
            host,
            port: self.port,
            api_key: self.api_key,
            cors_origins: self.cors_origins,
            max_queue: self.max_queue,
            workers: self.workers,
            history_url: self.history_url,
            history_turns: self.history_turns,
            drain_timeout: self.drain_timeout,
        })
    }
}
