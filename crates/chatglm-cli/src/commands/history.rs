//! `chatglm history`: per-user chat history in and out of the `T, Q, A` workbook layout.

use std::path::PathBuf;

use anyhow::{Context, bail};
use chatglm::data::{HistoryRow, read_history, write_history};
use chatglm::serve::history::{HistoryStore, StoredTurn, block_on, resolve_url};

/// Where the history lives (the same store `chatglm serve` uses).
#[derive(Debug, clap::Args)]
pub struct Store {
    /// Folder of the history database (default: $CHATGLM_DATA_DIR, $XDG_DATA_HOME/chatglm or
    /// ~/.local/share/chatglm).
    #[arg(long, env = "CHATGLM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// History database URL instead of the SQLite file in the data dir (sqlite://… or postgres://…).
    #[arg(long, env = "CHATGLM_HISTORY_DB", hide_env_values = true)]
    pub history_db: Option<String>,
}

impl Store {
    fn open(&self) -> anyhow::Result<HistoryStore> {
        let url = resolve_url(self.history_db.clone(), self.data_dir.clone())?;
        Ok(block_on(HistoryStore::connect(&url))?)
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum Args {
    /// Write a user's turns to a workbook (sheet `sheet1`, columns T, Q, A).
    Export {
        /// The user name (as sent in `user_name`).
        #[arg(long)]
        user: String,
        /// The .xlsx file to write.
        out: PathBuf,
        #[command(flatten)]
        store: Store,
    },
    /// Read T, Q, A workbooks into the history (the note's history_lib/<user>.xlsx files).
    Import {
        /// The user the turns belong to (default: each file's name without .xlsx).
        #[arg(long)]
        user: Option<String>,
        /// Delete the user's stored turns first.
        #[arg(long)]
        replace: bool,
        /// The workbooks.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        store: Store,
    },
    /// List users with stored turns.
    List {
        #[command(flatten)]
        store: Store,
    },
}

#[allow(clippy::print_stdout)]
pub fn run(args: Args) -> anyhow::Result<()> {
    match args {
        Args::Export { user, out, store } => {
            let store = store.open()?;
            let turns = block_on(store.all(&user))?;
            if turns.is_empty() {
                bail!("no stored turns for user `{user}`");
            }
            let count = turns.len();
            let rows: Vec<HistoryRow> = turns.into_iter().map(HistoryRow::from).collect();
            write_history(&out, &rows)?;
            println!("{}: {count} turns of `{user}`", out.display());
        }
        Args::Import {
            user,
            replace,
            files,
            store,
        } => {
            // Read every file first so a bad one changes nothing.
            let mut batches = Vec::new();
            for file in &files {
                let name = match &user {
                    Some(u) => u.clone(),
                    None => file
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .filter(|s| !s.is_empty())
                        .with_context(|| {
                            format!(
                                "{}: no user name in the file name; pass --user",
                                file.display()
                            )
                        })?,
                };
                let turns: Vec<StoredTurn> = read_history(file)?
                    .into_iter()
                    .map(StoredTurn::from)
                    .collect();
                batches.push((name, file, turns));
            }
            let store = store.open()?;
            if replace {
                let mut users: Vec<&str> = batches.iter().map(|(u, _, _)| u.as_str()).collect();
                users.dedup();
                for u in users {
                    block_on(store.clear(u))?;
                }
            }
            for (name, file, turns) in &batches {
                block_on(store.append_all(name, turns))?;
                println!(
                    "{}: {} turns imported for `{name}`",
                    file.display(),
                    turns.len()
                );
            }
        }
        Args::List { store } => {
            let store = store.open()?;
            for (name, count) in block_on(store.users())? {
                println!("{name}\t{count}");
            }
        }
    }
    Ok(())
}
