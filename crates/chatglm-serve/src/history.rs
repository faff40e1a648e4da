//! Per-user chat history (the study note's `history_lib/<user>.xlsx`, kept in a database). The
//! workbooks themselves are read and written by `chatglm-data` ([`chatglm_data::read_history`],
//! [`chatglm_data::write_history`]); [`StoredTurn`] converts from and to its rows.
//!
//! The store speaks SQL through sqlx's `Any` driver with runtime queries, so the default SQLite file
//! (bundled SQLite, under the data dir) can be replaced by a `postgres://` URL when several servers
//! share their users.

use std::path::{Path, PathBuf};

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

/// One stored exchange, as in the `T, Q, A` workbook.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredTurn {
    /// When it happened, `YYYY-MM-DD HH:MM:SS` (local time).
    pub time: String,
    /// The user's question.
    pub query: String,
    /// The answer.
    pub response: String,
}

/// A row of the study note's `T, Q, A` history workbook ([`chatglm_data::read_history`]) as a
/// stored turn.
impl From<chatglm_data::HistoryRow> for StoredTurn {
    fn from(row: chatglm_data::HistoryRow) -> Self {
        Self {
            time: row.time,
            query: row.prompt,
            response: row.response,
        }
    }
}

/// A stored turn as a row of the `T, Q, A` history workbook ([`chatglm_data::write_history`]).
impl From<StoredTurn> for chatglm_data::HistoryRow {
    fn from(turn: StoredTurn) -> Self {
        Self {
            time: turn.time,
            prompt: turn.query,
            response: turn.response,
        }
    }
}

/// Errors of the history store.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The URL names a database this build cannot use.
    #[error("history database `{0}`: only sqlite:// and postgres:// URLs are supported")]
    UnsupportedUrl(String),
    /// The data dir could not be created.
    #[error("cannot create the data dir {path}: {source}")]
    DataDir {
        /// The folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// No data dir could be derived from the environment.
    #[error("no data dir: set CHATGLM_DATA_DIR, XDG_DATA_HOME or HOME, or pass --data-dir")]
    NoDataDir,
    /// A database operation failed.
    #[error("history database `{url}`: {source}")]
    Database {
        /// The URL, without credentials.
        url: String,
        /// The cause.
        source: sqlx::Error,
    },
    /// The async runtime for a blocking call could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// A user name that cannot be stored.
    #[error("user name must not be empty")]
    EmptyUser,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A connection pool to the history database.
#[derive(Debug, Clone)]
pub struct HistoryStore {
    pool: AnyPool,
    url: String,
}

/// The default data dir: `$CHATGLM_DATA_DIR`, else `$XDG_DATA_HOME/chatglm`, else
/// `$HOME/.local/share/chatglm`.
///
/// # Errors
/// [`HistoryError::NoDataDir`] when none of these variables is set.
pub fn default_data_dir() -> Result<PathBuf, HistoryError> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("CHATGLM_DATA_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = var("XDG_DATA_HOME") {
        return Ok(PathBuf::from(dir).join("chatglm"));
    }
    var("HOME")
        .map(|home| PathBuf::from(home).join(".local/share/chatglm"))
        .ok_or(HistoryError::NoDataDir)
}

/// The SQLite URL of `history.db` in `data_dir`, creating the folder.
///
/// # Errors
/// [`HistoryError::DataDir`] when the folder cannot be created.
pub fn sqlite_url_in(data_dir: &Path) -> Result<String, HistoryError> {
    std::fs::create_dir_all(data_dir).map_err(|source| HistoryError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    Ok(format!(
        "sqlite://{}?mode=rwc",
        data_dir.join("history.db").display()
    ))
}

/// The history URL to use: `url` if given, else the SQLite file `history.db` in `data_dir` (or in
/// [`default_data_dir`]).
///
/// # Errors
/// No data dir, or one that cannot be created.
pub fn resolve_url(url: Option<String>, data_dir: Option<PathBuf>) -> Result<String, HistoryError> {
    if let Some(url) = url {
        return Ok(url);
    }
    let dir = match data_dir {
        Some(dir) => dir,
        None => default_data_dir()?,
    };
    sqlite_url_in(&dir)
}

/// Runs a store operation to completion from synchronous code (the CLI) on a private runtime.
///
/// # Errors
/// [`HistoryError::Runtime`] if the runtime cannot start; otherwise the operation's own result.
pub fn block_on<T, F>(operation: F) -> Result<T, HistoryError>
where
    F: std::future::Future<Output = Result<T, HistoryError>>,
{
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(HistoryError::Runtime)?
        .block_on(operation)
}

/// The URL with any password hidden, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_string(),
    }
}

impl HistoryStore {
    /// Opens (and creates if needed) the store at a `sqlite://` or `postgres://` URL.
    ///
    /// # Errors
    /// Unsupported URL or a database error.
    pub async fn connect(url: &str) -> Result<Self, HistoryError> {
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(HistoryError::UnsupportedUrl(redact(url)));
        };
        install_default_drivers();
        let shown = redact(url);
        let db = |source| HistoryError::Database {
            url: shown.clone(),
            source,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .connect(url)
            .await
            .map_err(db)?;
        let create = match backend {
            Backend::Sqlite => {
                "CREATE TABLE IF NOT EXISTS chat_history (id INTEGER PRIMARY KEY AUTOINCREMENT, \
                 user_name TEXT NOT NULL, t TEXT NOT NULL, q TEXT NOT NULL, a TEXT NOT NULL)"
            }
            Backend::Postgres => {
                "CREATE TABLE IF NOT EXISTS chat_history (id BIGSERIAL PRIMARY KEY, \
                 user_name TEXT NOT NULL, t TEXT NOT NULL, q TEXT NOT NULL, a TEXT NOT NULL)"
            }
        };
        sqlx::query(create).execute(&pool).await.map_err(db)?;
        sqlx::query("CREATE INDEX IF NOT EXISTS chat_history_user ON chat_history (user_name, id)")
            .execute(&pool)
            .await
            .map_err(db)?;
        Ok(Self { pool, url: shown })
    }

    fn db(&self, source: sqlx::Error) -> HistoryError {
        HistoryError::Database {
            url: self.url.clone(),
            source,
        }
    }

    /// The last `limit` turns of `user`, oldest first.
    ///
    /// # Errors
    /// A database error.
    pub async fn recent(&self, user: &str, limit: usize) -> Result<Vec<StoredTurn>, HistoryError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT t, q, a FROM (SELECT id, t, q, a FROM chat_history WHERE user_name = $1 \
             ORDER BY id DESC LIMIT $2) AS r ORDER BY id ASC",
        )
        .bind(user)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db(e))?;
        rows.iter().map(|row| self.turn(row)).collect()
    }

    /// Every turn of `user`, oldest first.
    ///
    /// # Errors
    /// A database error.
    pub async fn all(&self, user: &str) -> Result<Vec<StoredTurn>, HistoryError> {
        let rows =
            sqlx::query("SELECT t, q, a FROM chat_history WHERE user_name = $1 ORDER BY id ASC")
                .bind(user)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.db(e))?;
        rows.iter().map(|row| self.turn(row)).collect()
    }

    fn turn(&self, row: &sqlx::any::AnyRow) -> Result<StoredTurn, HistoryError> {
        Ok(StoredTurn {
            time: row.try_get(0).map_err(|e| self.db(e))?,
            query: row.try_get(1).map_err(|e| self.db(e))?,
            response: row.try_get(2).map_err(|e| self.db(e))?,
        })
    }

    /// Appends one turn for `user`.
    ///
    /// # Errors
    /// An empty user name or a database error.
    pub async fn append(&self, user: &str, turn: &StoredTurn) -> Result<(), HistoryError> {
        self.append_all(user, std::slice::from_ref(turn)).await
    }

    /// Appends turns for `user` in one transaction (all or nothing).
    ///
    /// # Errors
    /// An empty user name or a database error.
    pub async fn append_all(&self, user: &str, turns: &[StoredTurn]) -> Result<(), HistoryError> {
        if user.is_empty() {
            return Err(HistoryError::EmptyUser);
        }
        let mut tx = self.pool.begin().await.map_err(|e| self.db(e))?;
        for turn in turns {
            sqlx::query("INSERT INTO chat_history (user_name, t, q, a) VALUES ($1, $2, $3, $4)")
                .bind(user)
                .bind(&turn.time)
                .bind(&turn.query)
                .bind(&turn.response)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
        }
        tx.commit().await.map_err(|e| self.db(e))
    }

    /// Deletes every turn of `user`; returns how many there were.
    ///
    /// # Errors
    /// A database error.
    pub async fn clear(&self, user: &str) -> Result<u64, HistoryError> {
        sqlx::query("DELETE FROM chat_history WHERE user_name = $1")
            .bind(user)
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(|e| self.db(e))
    }

    /// Users with stored turns and their turn counts, by name.
    ///
    /// # Errors
    /// A database error.
    pub async fn users(&self) -> Result<Vec<(String, u64)>, HistoryError> {
        let rows = sqlx::query(
            "SELECT user_name, COUNT(*) FROM chat_history GROUP BY user_name ORDER BY user_name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db(e))?;
        rows.iter()
            .map(|row| {
                let name: String = row.try_get(0).map_err(|e| self.db(e))?;
                let count: i64 = row.try_get(1).map_err(|e| self.db(e))?;
                Ok((name, u64::try_from(count).unwrap_or(0)))
            })
            .collect()
    }
}
