//! Where a row came from: file, sheet and row/line/record number, for reports and errors.

use std::fmt;
use std::path::PathBuf;

/// What a [`Location`]'s number counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// A spreadsheet row, 1-based as the spreadsheet shows it (the header is usually row 1).
    Row,
    /// A text line, 1-based (CSV/TSV records start on this line; JSON lines).
    Line,
    /// An element of a top-level JSON array, 1-based.
    Record,
}

/// A place in an input: the file, the sheet for workbooks, and a row/line/record number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    /// The input file.
    pub file: PathBuf,
    /// The sheet, for workbooks.
    pub sheet: Option<String>,
    /// What `number` counts.
    pub unit: Unit,
    /// 1-based row/line/record number; `None` when the location is the whole file or sheet.
    pub number: Option<usize>,
}

impl Location {
    /// The whole file (no sheet, no row).
    pub fn file(file: impl Into<PathBuf>) -> Self {
        Location {
            file: file.into(),
            sheet: None,
            unit: Unit::Line,
            number: None,
        }
    }

    /// The same file and sheet at another number.
    pub fn at(&self, unit: Unit, number: usize) -> Self {
        Location {
            file: self.file.clone(),
            sheet: self.sheet.clone(),
            unit,
            number: Some(number),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(sheet) = &self.sheet {
            write!(f, ", sheet {sheet:?}")?;
        }
        if let Some(n) = self.number {
            let unit = match self.unit {
                Unit::Row => "row",
                Unit::Line => "line",
                Unit::Record => "record",
            };
            write!(f, ", {unit} {n}")?;
        }
        Ok(())
    }
}
