//! Records back to a workbook: `export_xlsx` (header `Q`,`A`) and the chat history workbook in
//! the study note's `T`,`Q`,`A` layout (`read_history`, `append_history`, `write_history`).

use std::path::Path;
use std::sync::Mutex;

use calamine::{Data, Reader};
use rust_xlsxwriter::{Format as CellFormat, Workbook, XlsxError};

use crate::atomic::write_atomic;
use crate::cell::{cell_text, is_blank};
use crate::columns::{ReadOptions, resolve};
use crate::error::{Error, Result};
use crate::format::{self, Format};
use crate::location::{Location, Unit};
use crate::read::sheet;
use crate::record::Record;

/// Sheet name used for new workbooks (the note's files use `sheet1`).
pub const DEFAULT_SHEET_NAME: &str = "sheet1";

/// One row of a chat history workbook.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryRow {
    /// When the answer was given, as text (`YYYY-MM-DD HH:MM:SS` in the note).
    pub time: String,
    /// The user's question.
    pub prompt: String,
    /// The model's answer.
    pub response: String,
}

/// Serializes read-modify-write cycles on history workbooks within this process.
static HISTORY_LOCK: Mutex<()> = Mutex::new(());

fn xlsx_err(path: &Path, record: usize, e: XlsxError) -> Error {
    Error::Export {
        path: path.to_path_buf(),
        record,
        message: e.to_string(),
    }
}

/// Builds a one-sheet workbook: a bold header row, then `rows`, every cell as text.
fn build(
    path: &Path,
    sheet: &str,
    header: &[&str],
    widths: &[f64],
    rows: &[Vec<&str>],
) -> Result<Vec<u8>> {
    let mut wb = Workbook::new();
    let ws = wb.add_worksheet();
    ws.set_name(sheet).map_err(|e| Error::XlsxWrite {
        path: path.to_path_buf(),
        source: e,
    })?;
    let bold = CellFormat::new().set_bold();
    for (c, (name, width)) in header.iter().zip(widths).enumerate() {
        let c = c as u16;
        ws.write_string_with_format(0, c, *name, &bold)
            .and_then(|ws| ws.set_column_width(c, *width))
            .map_err(|e| xlsx_err(path, 0, e))?;
    }
    for (i, row) in rows.iter().enumerate() {
        let r = u32::try_from(i + 1)
            .map_err(|_| xlsx_err(path, i + 1, XlsxError::RowColumnLimitError))?;
        for (c, text) in row.iter().enumerate() {
            ws.write_string(r, c as u16, *text)
                .map_err(|e| xlsx_err(path, i + 1, e))?;
        }
    }
    wb.save_to_buffer().map_err(|e| Error::XlsxWrite {
        path: path.to_path_buf(),
        source: e,
    })
}

/// Writes `records` to a new `.xlsx` at `path` (atomically): sheet `sheet1`, header `Q`,`A`,
/// one row per record, every cell as text. When any record has history, a third column
/// `history` holds it as a JSON array of `[q, a]` pairs, which [`read_records`](crate::read_records)
/// reads back.
///
/// # Errors
/// [`Error::Export`] naming the record when a text is longer than a cell can hold (32,767
/// characters) or there are more rows than a sheet can hold; [`Error::Io`] on write failure.
pub fn export_xlsx(records: &[Record], path: &Path) -> Result<()> {
    let with_history = records.iter().any(|r| !r.history.is_empty());
    let histories: Vec<String> = if with_history {
        records
            .iter()
            .map(|r| serde_json::to_string(&r.history).unwrap_or_default())
            .collect()
    } else {
        Vec::new()
    };
    let rows: Vec<Vec<&str>> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut row = vec![r.prompt.as_str(), r.response.as_str()];
            if with_history {
                row.push(histories[i].as_str());
            }
            row
        })
        .collect();
    let (header, widths): (&[&str], &[f64]) = if with_history {
        (&["Q", "A", "history"], &[60.0, 60.0, 40.0])
    } else {
        (&["Q", "A"], &[60.0, 60.0])
    };
    let bytes = build(path, DEFAULT_SHEET_NAME, header, widths, &rows)?;
    write_atomic(path, &bytes)
}

/// Reads a chat history workbook (first worksheet, header `T`,`Q`,`A`; `T` may be missing).
/// Rows keep their cells as text; blank rows are left out.
///
/// # Errors
/// As [`read_records`](crate::read_records) for a workbook (missing file, wrong content,
/// encrypted, no `Q`/`A` columns).
pub fn read_history(path: &Path) -> Result<Vec<HistoryRow>> {
    Ok(read_sheet(path)?.1)
}

fn read_sheet(path: &Path) -> Result<(String, Vec<HistoryRow>)> {
    let format = Format::from_path(path)?;
    if !format.is_workbook() {
        return Err(Error::WrongContent {
            path: path.to_path_buf(),
            expected: "workbook (.xlsx/.xlsm/.xls/.xlsb/.ods)",
            found: "a text format",
        });
    }
    format::check_content(path, format)?;
    let mut wb = sheet::open(path, format)?;
    let Some(name) = wb.sheet_names().into_iter().next() else {
        return Ok((DEFAULT_SHEET_NAME.to_owned(), Vec::new()));
    };
    let range = wb
        .worksheet_range(&name)
        .map_err(|e| sheet::workbook_error(path, e))?;
    let Some((start_row, _)) = range.start() else {
        return Ok((name, Vec::new()));
    };
    let mut rows = range.rows();
    let header: Vec<String> = rows
        .next()
        .map(|h| h.iter().map(|c| cell_text(c).trim().to_owned()).collect())
        .unwrap_or_default();
    let loc = Location {
        file: path.to_path_buf(),
        sheet: Some(name.clone()),
        unit: Unit::Row,
        number: Some(start_row as usize + 1),
    };
    let opts = ReadOptions::default()
        .with_prompt_column("Q")
        .with_response_column("A");
    let cols = resolve(&header, &opts, &loc)?;
    let t = header.iter().position(|h| h.eq_ignore_ascii_case("T"));
    let get = |row: &[Data], i: Option<usize>| {
        i.and_then(|i| row.get(i))
            .map(cell_text)
            .unwrap_or_default()
    };
    let out = rows
        .filter(|row| !row.iter().all(is_blank))
        .map(|row| HistoryRow {
            time: get(row, t),
            prompt: get(row, Some(cols.prompt)),
            response: get(row, Some(cols.response)),
        })
        .collect();
    Ok((name, out))
}

/// The bytes of a `T`,`Q`,`A` history workbook holding `rows` on sheet `sheet`.
fn history_bytes(path: &Path, sheet: &str, rows: &[HistoryRow]) -> Result<Vec<u8>> {
    let cells: Vec<Vec<&str>> = rows
        .iter()
        .map(|r| vec![r.time.as_str(), r.prompt.as_str(), r.response.as_str()])
        .collect();
    build(path, sheet, &["T", "Q", "A"], &[20.0, 50.0, 80.0], &cells)
}

/// Writes `rows` as a new history workbook at `path` (sheet `sheet1`, header `T`,`Q`,`A`, every
/// cell as text), replacing any file there. The file is written atomically (a temporary file
/// beside it, renamed into place): a failure leaves the old file, or none, and no partial output.
/// [`read_history`] reads the rows back unchanged.
///
/// # Errors
/// [`Error::Export`] naming the 1-based row when a text is longer than a cell can hold (32,767
/// characters) or there are more rows than a sheet can hold; [`Error::Io`] on write failure.
pub fn write_history(path: &Path, rows: &[HistoryRow]) -> Result<()> {
    let _guard = HISTORY_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let bytes = history_bytes(path, DEFAULT_SHEET_NAME, rows)?;
    write_atomic(path, &bytes)
}

/// Appends a `(time, question, answer)` row to the history workbook at `path`, creating it
/// (header `T`,`Q`,`A`, sheet `sheet1`) when missing. Existing rows and the sheet name are kept
/// (as text, in the `T`,`Q`,`A` columns); the file is rewritten atomically, and appends from
/// threads of one process are serialized.
///
/// # Errors
/// As [`read_history`] for an existing file; [`Error::Export`] for a text too long for a cell;
/// [`Error::Io`] on write failure.
pub fn append_history(path: &Path, time: &str, prompt: &str, response: &str) -> Result<()> {
    let _guard = HISTORY_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let (sheet, mut rows) = if path.exists() {
        read_sheet(path)?
    } else {
        (DEFAULT_SHEET_NAME.to_owned(), Vec::new())
    };
    rows.push(HistoryRow {
        time: time.to_owned(),
        prompt: prompt.to_owned(),
        response: response.to_owned(),
    });
    let bytes = history_bytes(path, &sheet, &rows)?;
    write_atomic(path, &bytes)
}
