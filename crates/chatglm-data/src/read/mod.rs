//! Reading inputs into records, with a per-file report of what was read, written and skipped.

pub(crate) mod sheet;
mod text;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::columns::ReadOptions;
use crate::error::{Error, Result};
use crate::format::{self, Format};
use crate::location::Location;
use crate::record::{self, Record};

/// Why a data row produced no record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The question cell is empty (or only whitespace).
    EmptyPrompt,
    /// The answer cell is empty (or only whitespace).
    EmptyResponse,
    /// Both are empty (other cells of the row hold something).
    EmptyBoth,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::EmptyPrompt => "empty question",
            SkipReason::EmptyResponse => "empty answer",
            SkipReason::EmptyBoth => "empty question and answer",
        })
    }
}

/// A data row that was skipped, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRow {
    /// File, sheet and row/line number.
    pub location: Location,
    /// Why it was skipped.
    pub reason: SkipReason,
}

/// Counts for one input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// The file.
    pub path: PathBuf,
    /// Data rows read (rows after the header that are not entirely blank).
    pub read: usize,
    /// Records kept for output (`read - skipped - duplicates`).
    pub written: usize,
    /// Records dropped as duplicates by [`ReadReport::dedup`].
    pub duplicates: usize,
    /// Rows skipped for an empty question or answer.
    pub skipped: Vec<SkippedRow>,
}

impl FileReport {
    fn new(path: &Path) -> Self {
        FileReport {
            path: path.to_path_buf(),
            read: 0,
            written: 0,
            duplicates: 0,
            skipped: Vec::new(),
        }
    }
}

impl fmt::Display for FileReport {
    /// `path: read N, written N, skipped N` (and `, duplicates N` when there were any).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: read {}, written {}, skipped {}",
            self.path.display(),
            self.read,
            self.written,
            self.skipped.len()
        )?;
        if self.duplicates > 0 {
            write!(f, ", duplicates {}", self.duplicates)?;
        }
        Ok(())
    }
}

/// The records of all inputs, in input order, with one [`FileReport`] per file.
#[derive(Debug, Clone, Default)]
pub struct ReadReport {
    /// The records, file by file, row by row.
    pub records: Vec<Record>,
    /// One entry per input file, in reading order.
    pub files: Vec<FileReport>,
    /// Index into `files` of each record.
    origins: Vec<usize>,
}

impl ReadReport {
    /// Removes exact duplicate records across all files (the first occurrence stays) and
    /// updates each file's `written` / `duplicates`. Returns how many were removed.
    pub fn dedup(&mut self) -> usize {
        let keep = record::first_occurrences(&self.records);
        let mut removed = 0;
        for (k, &origin) in keep.iter().zip(&self.origins) {
            if !k {
                self.files[origin].written -= 1;
                self.files[origin].duplicates += 1;
                removed += 1;
            }
        }
        let mut it = keep.iter();
        self.records.retain(|_| *it.next().unwrap_or(&true));
        let mut it = keep.iter();
        self.origins.retain(|_| *it.next().unwrap_or(&true));
        removed
    }

    /// Total data rows read over all files.
    pub fn total_read(&self) -> usize {
        self.files.iter().map(|f| f.read).sum()
    }

    /// Total rows skipped over all files.
    pub fn total_skipped(&self) -> usize {
        self.files.iter().map(|f| f.skipped.len()).sum()
    }

    fn push_file(&mut self, report: FileReport, records: Vec<Record>) {
        let idx = self.files.len();
        self.origins.extend(std::iter::repeat_n(idx, records.len()));
        self.records.extend(records);
        self.files.push(report);
    }
}

/// Collects one file's records and counts while its reader walks the rows.
pub(crate) struct Collector {
    report: FileReport,
    records: Vec<Record>,
}

impl Collector {
    fn new(path: &Path) -> Self {
        Collector {
            report: FileReport::new(path),
            records: Vec::new(),
        }
    }

    /// Takes one non-blank data row; `location` is only built when the row is skipped.
    pub(crate) fn row(
        &mut self,
        location: impl FnOnce() -> Location,
        prompt: String,
        response: String,
        history: Vec<(String, String)>,
    ) {
        self.report.read += 1;
        let reason = match (prompt.trim().is_empty(), response.trim().is_empty()) {
            (false, false) => {
                self.report.written += 1;
                self.records.push(Record {
                    prompt,
                    response,
                    history,
                });
                return;
            }
            (true, false) => SkipReason::EmptyPrompt,
            (false, true) => SkipReason::EmptyResponse,
            (true, true) => SkipReason::EmptyBoth,
        };
        let location = location();
        tracing::debug!("skipping {location}: {reason}");
        self.report.skipped.push(SkippedRow { location, reason });
    }
}

/// Expands folders into the supported files they hold (not recursive; sorted by name; hidden
/// files and Office lock files `~$name.xlsx` left out). Files are kept as given.
///
/// # Errors
/// [`Error::NotFound`] for a missing path, [`Error::EmptyFolder`] for a folder without a
/// supported file, [`Error::Io`] when a folder cannot be listed.
pub fn collect_inputs<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let p = p.as_ref();
        let meta = std::fs::metadata(p).map_err(|e| format::open_error(p, e))?;
        if !meta.is_dir() {
            out.push(p.to_path_buf());
            continue;
        }
        let mut found = Vec::new();
        for entry in std::fs::read_dir(p).map_err(|e| Error::io(p, e))? {
            let entry = entry.map_err(|e| Error::io(p, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.starts_with("~$") || !path.is_file() {
                continue;
            }
            if Format::from_path(&path).is_ok() {
                found.push(path);
            }
        }
        if found.is_empty() {
            return Err(Error::EmptyFolder {
                path: p.to_path_buf(),
            });
        }
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

/// Reads one file (any supported format) into records and its report.
///
/// # Errors
/// Any [`Error`] naming the file: unknown extension, wrong content, encrypted workbook,
/// missing sheet or column, invalid UTF-8, malformed CSV/JSON.
pub fn read_file(path: &Path, opts: &ReadOptions) -> Result<(Vec<Record>, FileReport)> {
    let format = Format::from_path(path)?;
    format::check_content(path, format)?;
    let mut c = Collector::new(path);
    match format {
        Format::Csv => text::read_csv(path, b',', opts, &mut c)?,
        Format::Tsv => text::read_csv(path, b'\t', opts, &mut c)?,
        Format::Json | Format::Jsonl => text::read_json(path, format, opts, &mut c)?,
        _ => sheet::read_workbook(path, format, opts, &mut c)?,
    }
    Ok((c.records, c.report))
}

/// Reads every input (files, or folders as in [`collect_inputs`]) into one report.
/// Nothing is returned unless every file reads cleanly.
///
/// # Errors
/// The first file's [`Error`].
pub fn read_inputs<P: AsRef<Path>>(paths: &[P], opts: &ReadOptions) -> Result<ReadReport> {
    let mut report = ReadReport::default();
    for path in collect_inputs(paths)? {
        let (records, file) = read_file(&path, opts)?;
        tracing::info!("{file}");
        report.push_file(file, records);
    }
    Ok(report)
}

/// Reads one file or folder; see [`read_inputs`].
///
/// # Errors
/// As [`read_inputs`].
pub fn read_records(path: impl AsRef<Path>, opts: &ReadOptions) -> Result<ReadReport> {
    read_inputs(&[path.as_ref()], opts)
}
