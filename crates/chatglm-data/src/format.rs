//! Input formats: chosen by extension, then checked against the file's first bytes so a file
//! that is not what its name says (or an encrypted workbook) gets a clear error.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// A supported input format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Office Open XML workbook (`.xlsx`).
    Xlsx,
    /// Macro-enabled Office Open XML workbook (`.xlsm`).
    Xlsm,
    /// Binary Office workbook (`.xlsb`).
    Xlsb,
    /// Legacy Excel 97-2003 workbook (`.xls`).
    Xls,
    /// OpenDocument spreadsheet (`.ods`).
    Ods,
    /// Comma-separated values (`.csv`), UTF-8.
    Csv,
    /// Tab-separated values (`.tsv`), UTF-8.
    Tsv,
    /// JSON: JSON lines, or one top-level array of objects (`.json`).
    Json,
    /// JSON lines (`.jsonl`).
    Jsonl,
}

const OLE_MAGIC: [u8; 8] = [0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];

impl Format {
    /// The format named by `path`'s extension (case-insensitive).
    ///
    /// # Errors
    /// [`Error::UnknownExtension`] for any other extension.
    pub fn from_path(path: &Path) -> Result<Format> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        Ok(match ext.as_str() {
            "xlsx" => Format::Xlsx,
            "xlsm" => Format::Xlsm,
            "xlsb" => Format::Xlsb,
            "xls" => Format::Xls,
            "ods" => Format::Ods,
            "csv" => Format::Csv,
            "tsv" => Format::Tsv,
            "json" => Format::Json,
            "jsonl" => Format::Jsonl,
            _ => {
                return Err(Error::UnknownExtension {
                    path: path.to_path_buf(),
                    ext,
                });
            }
        })
    }

    /// `true` for the spreadsheet formats read through calamine.
    pub fn is_workbook(self) -> bool {
        matches!(
            self,
            Format::Xlsx | Format::Xlsm | Format::Xlsb | Format::Xls | Format::Ods
        )
    }

    fn label(self) -> &'static str {
        match self {
            Format::Xlsx => ".xlsx",
            Format::Xlsm => ".xlsm",
            Format::Xlsb => ".xlsb",
            Format::Xls => ".xls",
            Format::Ods => ".ods",
            Format::Csv => ".csv",
            Format::Tsv => ".tsv",
            Format::Json => ".json",
            Format::Jsonl => ".jsonl",
        }
    }
}

/// What a file's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniffed {
    Zip,
    Ole,
    Pdf,
    Empty,
    Binary,
    Text,
}

impl Sniffed {
    fn describe(self) -> &'static str {
        match self {
            Sniffed::Zip => "a zip archive (.xlsx/.xlsm/.xlsb/.ods)",
            Sniffed::Ole => "an OLE2 compound file (legacy .xls)",
            Sniffed::Pdf => "a PDF document",
            Sniffed::Empty => "an empty file",
            Sniffed::Binary => "binary data",
            Sniffed::Text => "plain text",
        }
    }
}

fn sniff(head: &[u8]) -> Sniffed {
    if head.is_empty() {
        Sniffed::Empty
    } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Sniffed::Zip
    } else if head.starts_with(&OLE_MAGIC) {
        Sniffed::Ole
    } else if head.starts_with(b"%PDF") {
        Sniffed::Pdf
    } else if head.contains(&0) {
        Sniffed::Binary
    } else {
        Sniffed::Text
    }
}

/// `true` when an OLE2 container's bytes hold the stream names of an encrypted OOXML package
/// (`EncryptionInfo` / `EncryptedPackage`, stored as UTF-16LE in the directory entries).
fn ole_is_encrypted(bytes: &[u8]) -> bool {
    let utf16 = |s: &str| -> Vec<u8> { s.encode_utf16().flat_map(u16::to_le_bytes).collect() };
    let names = [utf16("EncryptedPackage"), utf16("EncryptionInfo")];
    names
        .iter()
        .any(|n| bytes.windows(n.len()).any(|w| w == n.as_slice()))
}

/// Checks that `path` exists, is readable and its content matches `format`.
///
/// # Errors
/// [`Error::NotFound`], [`Error::Io`], [`Error::Encrypted`] for a password-protected OOXML
/// workbook (an OLE2 container holding `EncryptedPackage`), [`Error::WrongContent`] otherwise.
pub(crate) fn check_content(path: &Path, format: Format) -> Result<()> {
    let mut file = std::fs::File::open(path).map_err(|e| open_error(path, e))?;
    let mut head = Vec::with_capacity(512);
    file.by_ref()
        .take(512)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, e))?;
    let found = sniff(&head);
    if found == Sniffed::Ole {
        let mut all = head;
        file.read_to_end(&mut all).map_err(|e| Error::io(path, e))?;
        if ole_is_encrypted(&all) {
            return Err(Error::Encrypted {
                path: path.to_path_buf(),
            });
        }
    }
    let ok = match format {
        Format::Xlsx | Format::Xlsm | Format::Xlsb | Format::Ods => found == Sniffed::Zip,
        Format::Xls => found == Sniffed::Ole,
        Format::Csv | Format::Tsv | Format::Json | Format::Jsonl => {
            matches!(found, Sniffed::Text | Sniffed::Empty)
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Error::WrongContent {
            path: path.to_path_buf(),
            expected: format.label(),
            found: found.describe(),
        })
    }
}

/// Maps an open error to [`Error::NotFound`] or [`Error::Io`].
pub(crate) fn open_error(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::NotFound {
            path: path.to_path_buf(),
        }
    } else {
        Error::io(path, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_is_case_insensitive() {
        assert_eq!(
            Format::from_path(Path::new("a/B.XLSX")).unwrap(),
            Format::Xlsx
        );
        assert_eq!(
            Format::from_path(Path::new("x.Jsonl")).unwrap(),
            Format::Jsonl
        );
        assert!(matches!(
            Format::from_path(Path::new("notes.txt")),
            Err(Error::UnknownExtension { ext, .. }) if ext == "txt"
        ));
        assert!(Format::from_path(Path::new("noext")).is_err());
    }

    #[test]
    fn sniffing() {
        assert_eq!(sniff(b""), Sniffed::Empty);
        assert_eq!(sniff(b"PK\x03\x04rest"), Sniffed::Zip);
        assert_eq!(sniff(&OLE_MAGIC), Sniffed::Ole);
        assert_eq!(sniff(b"Q,A\n1,2\n"), Sniffed::Text);
        assert_eq!(sniff(b"ab\0cd"), Sniffed::Binary);
    }

    #[test]
    fn encryption_stream_names() {
        let mut bytes = OLE_MAGIC.to_vec();
        bytes.extend([0u8; 40]);
        assert!(!ole_is_encrypted(&bytes));
        bytes.extend("EncryptedPackage".encode_utf16().flat_map(u16::to_le_bytes));
        assert!(ole_is_encrypted(&bytes));
    }
}
