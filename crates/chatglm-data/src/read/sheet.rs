//! Workbooks (.xlsx/.xlsm/.xlsb/.xls/.ods) through calamine: every worksheet or one named sheet,
//! header in the first used row, every data row after it.

use std::path::Path;

use calamine::{Data, Reader, SheetType, Sheets, open_workbook};

use super::Collector;
use super::text::parse_history_text;
use crate::cell::{cell_text, is_blank};
use crate::columns::{ReadOptions, resolve};
use crate::error::{Error, Result};
use crate::format::Format;
use crate::location::{Location, Unit};

/// Maps calamine's errors, turning every "password protected" variant into [`Error::Encrypted`].
pub(crate) fn workbook_error(path: &Path, e: calamine::Error) -> Error {
    use calamine::{OdsError, XlsError, XlsbError, XlsxError};
    let encrypted = matches!(
        e,
        calamine::Error::Xlsx(XlsxError::Password)
            | calamine::Error::Xls(XlsError::Password)
            | calamine::Error::Xlsb(XlsbError::Password)
            | calamine::Error::Ods(OdsError::Password)
    );
    if encrypted {
        Error::Encrypted {
            path: path.to_path_buf(),
        }
    } else {
        Error::Workbook {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// Opens a workbook of a known format.
pub(crate) fn open(
    path: &Path,
    format: Format,
) -> Result<Sheets<std::io::BufReader<std::fs::File>>> {
    let err = |e: calamine::Error| workbook_error(path, e);
    Ok(match format {
        Format::Xls => Sheets::Xls(open_workbook(path).map_err(|e| err(calamine::Error::Xls(e)))?),
        Format::Xlsb => {
            Sheets::Xlsb(open_workbook(path).map_err(|e| err(calamine::Error::Xlsb(e)))?)
        }
        Format::Ods => Sheets::Ods(open_workbook(path).map_err(|e| err(calamine::Error::Ods(e)))?),
        _ => Sheets::Xlsx(open_workbook(path).map_err(|e| err(calamine::Error::Xlsx(e)))?),
    })
}

/// The worksheets to read: the one `opts.sheet` names, else every worksheet (chart and macro
/// sheets are not tables and are left out).
fn sheets_to_read<R: Reader<RS>, RS: std::io::Read + std::io::Seek>(
    wb: &R,
    path: &Path,
    opts: &ReadOptions,
) -> Result<Vec<String>> {
    let worksheets: Vec<String> = wb
        .sheets_metadata()
        .iter()
        .filter(|s| s.typ == SheetType::WorkSheet)
        .map(|s| s.name.clone())
        .collect();
    let Some(wanted) = &opts.sheet else {
        return Ok(worksheets);
    };
    let exact = worksheets.iter().find(|s| *s == wanted);
    let loose = || {
        let lower = wanted.trim().to_lowercase();
        worksheets.iter().find(|s| s.trim().to_lowercase() == lower)
    };
    match exact.or_else(loose) {
        Some(s) => Ok(vec![s.clone()]),
        None => Err(Error::SheetNotFound {
            path: path.to_path_buf(),
            sheet: wanted.clone(),
            available: worksheets,
        }),
    }
}

pub(crate) fn read_workbook(
    path: &Path,
    format: Format,
    opts: &ReadOptions,
    out: &mut Collector,
) -> Result<()> {
    let mut wb = open(path, format)?;
    for name in sheets_to_read(&wb, path, opts)? {
        let range = wb
            .worksheet_range(&name)
            .map_err(|e| workbook_error(path, e))?;
        let Some((start_row, _)) = range.start() else {
            continue; // empty sheet
        };
        let sheet_loc = Location {
            file: path.to_path_buf(),
            sheet: Some(name.clone()),
            unit: Unit::Row,
            number: None,
        };
        let mut rows = range.rows();
        let Some(header_cells) = rows.next() else {
            continue;
        };
        let header: Vec<String> = header_cells
            .iter()
            .map(|c| cell_text(c).trim().to_owned())
            .collect();
        let cols = resolve(
            &header,
            opts,
            &sheet_loc.at(Unit::Row, start_row as usize + 1),
        )?;
        let get = |row: &[Data], i: usize| row.get(i).map(cell_text).unwrap_or_default();
        for (i, row) in rows.enumerate() {
            if row.iter().all(is_blank) {
                continue;
            }
            let row_no = start_row as usize + i + 2;
            let history = match cols.history {
                Some(h) => parse_history_text(&get(row, h), || sheet_loc.at(Unit::Row, row_no))?,
                None => Vec::new(),
            };
            out.row(
                || sheet_loc.at(Unit::Row, row_no),
                get(row, cols.prompt),
                get(row, cols.response),
                history,
            );
        }
    }
    Ok(())
}
