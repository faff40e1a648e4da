//! Spreadsheets, CSV and JSON in; P-Tuning v2 training records out (and back to `.xlsx`).
//!
//! The study note this project grew from converted every `.xlsx` of a folder (header `Q`, `A`)
//! into JSON lines `{"content": q, "summary": a}` by string concatenation. This crate does the
//! same job properly:
//!
//! - [`read_inputs`] / [`read_records`] read `.xlsx/.xlsm/.xls/.xlsb/.ods`, `.csv/.tsv` and
//!   `.json/.jsonl` files or folders, every worksheet (or one), every data row, with
//!   configurable columns ([`ReadOptions`]); rows with an empty question or answer are skipped
//!   and reported in the [`ReadReport`].
//! - [`write_jsonl`] writes ADGEN-style or chat-style JSON lines ([`Style`]) atomically;
//!   [`split_train_dev`] and [`dedup`] prepare train/dev files.
//! - [`export_xlsx`] writes records back to a `Q`,`A` workbook; [`read_history`],
//!   [`append_history`] and [`write_history`] keep the chat history workbook (`T`,`Q`,`A`).
//!
//! ```no_run
//! use chatglm_data::{ReadOptions, Style, read_records, split_train_dev, write_jsonl};
//!
//! let mut report = read_records("examples/data", &ReadOptions::default())?;
//! report.dedup();
//! for file in &report.files {
//!     tracing::info!("{file}"); // "examples/data/base.xlsx: read 5, written 5, skipped 0"
//! }
//! let (train, dev) = split_train_dev(report.records, 0.2, 42)?;
//! write_jsonl("train.json".as_ref(), &train, Style::Adgen)?;
//! write_jsonl("dev.json".as_ref(), &dev, Style::Adgen)?;
//! # Ok::<(), chatglm_data::Error>(())
//! ```
//!
//! # Differences from the note's converter (deliberate)
//! For the note's sample `base.xlsx` our output is byte-for-byte its `d1.json`: the same five
//! records in row order, written with Python's `json.dumps` spacing (`", "`, `": "`). Where
//! the two would differ is on purpose: the note caps each file at 99 rows (we read every row),
//! replaces newlines and double quotes inside cells (we keep the exact text and let serde_json
//! escape it, so `"`, `\`, newlines and emoji survive a round trip), and uses the same file for
//! train and validation (we split deterministically with [`split_train_dev`]). Its
//! concatenated JSON breaks on a cell holding `"` or `\`; ours cannot.

mod atomic;
mod cell;
mod columns;
mod error;
mod format;
mod history;
mod jsonl;
mod location;
mod read;
mod record;

pub use atomic::{StagedFile, write_atomic};
pub use cell::{cell_text, number_text};
pub use columns::{DEFAULT_COLUMN_PAIRS, DEFAULT_HISTORY_COLUMN, ReadOptions};
pub use error::{Error, Result};
pub use format::Format;
pub use history::{
    DEFAULT_SHEET_NAME, HistoryRow, append_history, export_xlsx, read_history, write_history,
};
pub use jsonl::{Style, stage_jsonl, write_jsonl, write_line};
pub use location::{Location, Unit};
pub use read::{
    FileReport, ReadReport, SkipReason, SkippedRow, collect_inputs, read_file, read_inputs,
    read_records,
};
pub use record::{Record, dedup, split_train_dev};
