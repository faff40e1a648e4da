//! The crate's error type: every variant names the file and, where it applies, the sheet, row,
//! line or column at fault.

use std::path::PathBuf;

use crate::location::Location;

/// Everything that can go wrong while reading inputs or writing outputs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input path does not exist.
    #[error("{path}: no such file or folder", path = .path.display())]
    NotFound {
        /// The missing path.
        path: PathBuf,
    },
    /// Reading or writing a file failed at the operating-system level.
    #[error("{path}: {source}", path = .path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file name ends in an extension this crate does not read.
    #[error(
        "{path}: unsupported file type {ext:?} (supported: .xlsx .xlsm .xls .xlsb .ods .csv .tsv .json .jsonl)",
        path = .path.display()
    )]
    UnknownExtension {
        /// The file.
        path: PathBuf,
        /// Its extension (empty when it has none).
        ext: String,
    },
    /// The file's content does not match its extension (e.g. a CSV renamed to `.xlsx`).
    #[error("{path}: is not a valid {expected} file (its content looks like {found})", path = .path.display())]
    WrongContent {
        /// The file.
        path: PathBuf,
        /// What the extension promised.
        expected: &'static str,
        /// What the first bytes look like.
        found: &'static str,
    },
    /// The workbook is encrypted with a password, which this crate cannot open.
    #[error(
        "{path}: the workbook is encrypted / password-protected; save a copy without a password and convert that",
        path = .path.display()
    )]
    Encrypted {
        /// The workbook.
        path: PathBuf,
    },
    /// The spreadsheet library could not parse the workbook.
    #[error("{path}: cannot read the workbook: {source}", path = .path.display())]
    Workbook {
        /// The workbook.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: calamine::Error,
    },
    /// `--sheet NAME` names a sheet the workbook does not have.
    #[error("{path}: no sheet named {sheet:?} (sheets found: {available})", path = .path.display(), available = quoted_list(.available))]
    SheetNotFound {
        /// The workbook.
        path: PathBuf,
        /// The requested sheet.
        sheet: String,
        /// The sheets the workbook has.
        available: Vec<String>,
    },
    /// A required column is not in the header.
    #[error("{location}: no {role} column {wanted} (columns found: {found})", found = quoted_list(.found))]
    MissingColumn {
        /// File and sheet (or the first JSON record) whose header lacks the column.
        location: Box<Location>,
        /// `question`, `answer` or `history`.
        role: &'static str,
        /// The names that were looked for, already formatted.
        wanted: String,
        /// The columns the header does have.
        found: Vec<String>,
    },
    /// A CSV/TSV/JSON input is not valid UTF-8.
    #[error("{location}: invalid UTF-8 (save the file as UTF-8 and try again)")]
    InvalidUtf8 {
        /// Where the bad bytes are.
        location: Location,
    },
    /// The CSV parser failed.
    #[error("{location}: malformed CSV: {source}")]
    Csv {
        /// Where parsing stopped.
        location: Location,
        /// The parser's error.
        #[source]
        source: csv::Error,
    },
    /// A JSON line (or the JSON document) does not parse.
    #[error("{location}: malformed JSON: {source}")]
    Json {
        /// The offending line or document.
        location: Location,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A JSON value parses but has the wrong shape (not an object, a field that is not text, ...).
    #[error("{location}: {message}")]
    Shape {
        /// Where the value is.
        location: Location,
        /// What is wrong with it.
        message: String,
    },
    /// A folder given as input holds no supported file.
    #[error("{path}: the folder holds no .xlsx/.xlsm/.xls/.xlsb/.ods/.csv/.tsv/.json/.jsonl file", path = .path.display())]
    EmptyFolder {
        /// The folder.
        path: PathBuf,
    },
    /// The dev ratio is outside `[0, 1)`.
    #[error("dev ratio {ratio} is out of range: it must be at least 0 and below 1")]
    InvalidRatio {
        /// The ratio given.
        ratio: f64,
    },
    /// A record cannot be stored in a workbook cell.
    #[error("{path}: cannot write record {record}: {message}", path = .path.display())]
    Export {
        /// The workbook being written.
        path: PathBuf,
        /// 1-based record number.
        record: usize,
        /// Why.
        message: String,
    },
    /// The workbook writer failed.
    #[error("{path}: cannot write the workbook: {source}", path = .path.display())]
    XlsxWrite {
        /// The workbook being written.
        path: PathBuf,
        /// The writer's error.
        #[source]
        source: rust_xlsxwriter::XlsxError,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn quoted_list(items: &[String]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    items
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
