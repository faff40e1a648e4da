//! The study note's per-user history workbook: one sheet with a header row `T, Q, A` (time,
//! question, answer), as in its `history_temp.xlsx`.

use std::path::{Path, PathBuf};

use calamine::{Data, Reader, open_workbook_auto};
use rust_xlsxwriter::Workbook;

use crate::history::StoredTurn;

/// The sheet name of the note's template.
pub const SHEET_NAME: &str = "sheet1";

/// Errors reading or writing a `T, Q, A` workbook.
#[derive(Debug, thiserror::Error)]
pub enum WorkbookError {
    /// The file could not be opened or parsed as a spreadsheet.
    #[error("{path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A required column is missing from the header row.
    #[error(
        "{path}: sheet `{sheet}` has no `{column}` column in its header row (expected T, Q, A)"
    )]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The sheet read.
        sheet: String,
        /// The missing column.
        column: &'static str,
    },
    /// A row has a question without an answer or the reverse.
    #[error("{path}: row {row}: {message}")]
    BadRow {
        /// The file.
        path: PathBuf,
        /// 1-based spreadsheet row.
        row: usize,
        /// What is wrong.
        message: String,
    },
    /// The workbook could not be written.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Writes `turns` as a `T, Q, A` workbook at `path`, through a temporary file renamed into place.
///
/// # Errors
/// [`WorkbookError::Write`].
pub fn write_tqa(path: &Path, turns: &[StoredTurn]) -> Result<(), WorkbookError> {
    let fail = |message: String| WorkbookError::Write {
        path: path.to_path_buf(),
        message,
    };
    let mut book = Workbook::new();
    let sheet = book.add_worksheet();
    sheet
        .set_name(SHEET_NAME)
        .map_err(|e| fail(e.to_string()))?;
    for (col, name) in ["T", "Q", "A"].into_iter().enumerate() {
        sheet
            .write_string(0, col as u16, name)
            .map_err(|e| fail(e.to_string()))?;
    }
    for (i, turn) in turns.iter().enumerate() {
        let row = u32::try_from(i + 1).map_err(|_| fail("too many rows".into()))?;
        for (col, value) in [&turn.time, &turn.query, &turn.response]
            .into_iter()
            .enumerate()
        {
            sheet
                .write_string(row, col as u16, value.as_str())
                .map_err(|e| fail(e.to_string()))?;
        }
    }
    let bytes = book.save_to_buffer().map_err(|e| fail(e.to_string()))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| fail("not a file path".into()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).map_err(|e| fail(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e.to_string())
    })
}

fn cell_text(cell: Option<&Data>) -> String {
    match cell {
        None | Some(Data::Empty) => String::new(),
        Some(Data::String(s)) | Some(Data::DateTimeIso(s)) | Some(Data::DurationIso(s)) => {
            s.clone()
        }
        Some(Data::DateTime(dt)) => {
            let (y, mo, d, h, mi, s, _) = dt.to_ymd_hms_milli();
            format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
        }
        Some(other) => other.to_string(),
    }
}

/// Reads the turns of a `T, Q, A` workbook (first sheet; columns found by their header names).
/// Blank rows are skipped; a row with only a question or only an answer is an error.
///
/// # Errors
/// Unreadable file, missing column, or a half-filled row (named by its row number).
pub fn read_tqa(path: &Path) -> Result<Vec<StoredTurn>, WorkbookError> {
    let read = |message: String| WorkbookError::Read {
        path: path.to_path_buf(),
        message,
    };
    let mut book = open_workbook_auto(path).map_err(|e| read(e.to_string()))?;
    let sheet = book
        .sheet_names()
        .first()
        .cloned()
        .ok_or_else(|| read("the workbook has no sheet".into()))?;
    let range = book
        .worksheet_range(&sheet)
        .map_err(|e| read(e.to_string()))?;
    let mut rows = range.rows();
    let header: Vec<String> = rows
        .next()
        .map(|r| {
            r.iter()
                .map(|c| cell_text(Some(c)).trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    let column = |name: &'static str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| WorkbookError::MissingColumn {
                path: path.to_path_buf(),
                sheet: sheet.clone(),
                column: name,
            })
    };
    let (t, q, a) = (column("T")?, column("Q")?, column("A")?);
    let first_row = range.start().map_or(0, |(r, _)| r as usize);
    let mut turns = Vec::new();
    for (i, row) in rows.enumerate() {
        let (time, query, response) = (
            cell_text(row.get(t)),
            cell_text(row.get(q)),
            cell_text(row.get(a)),
        );
        let row_number = first_row + i + 2;
        match (query.is_empty(), response.is_empty()) {
            (true, true) => continue,
            (false, false) => turns.push(StoredTurn {
                time,
                query,
                response,
            }),
            (empty_q, _) => {
                return Err(WorkbookError::BadRow {
                    path: path.to_path_buf(),
                    row: row_number,
                    message: format!(
                        "{} is empty but {} is not",
                        if empty_q { "Q" } else { "A" },
                        if empty_q { "A" } else { "Q" }
                    ),
                });
            }
        }
    }
    Ok(turns)
}
