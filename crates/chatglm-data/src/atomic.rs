//! Atomic file output: write everything into a temporary file beside the target, then rename.
//! A failure at any point leaves the target untouched (no partial output).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::error::{Error, Result};

/// A fully written temporary file that becomes `path` on [`StagedFile::commit`].
/// Dropping it without committing deletes the temporary file.
#[derive(Debug)]
pub struct StagedFile {
    path: PathBuf,
    temp: NamedTempFile,
}

impl StagedFile {
    /// Writes `fill`'s output into a temporary file in `path`'s folder (created if missing).
    ///
    /// # Errors
    /// [`Error::Io`] naming `path` when the folder or the temporary file cannot be written; any
    /// error `fill` returns.
    pub fn write_with(
        path: &Path,
        fill: impl FnOnce(&mut dyn Write) -> Result<()>,
    ) -> Result<Self> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(path, e))?;
        let temp = tempfile::Builder::new()
            .prefix(".chatglm-data-")
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(|e| Error::io(path, e))?;
        {
            let mut out = BufWriter::new(temp.as_file());
            fill(&mut out)?;
            out.flush().map_err(|e| Error::io(path, e))?;
        }
        temp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
        Ok(StagedFile {
            path: path.to_path_buf(),
            temp,
        })
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the temporary file onto the final path (replacing any file there).
    ///
    /// # Errors
    /// [`Error::Io`] naming the final path when the rename fails.
    pub fn commit(self) -> Result<()> {
        let path = self.path;
        self.temp
            .persist(&path)
            .map_err(|e| Error::io(&path, e.error))?;
        Ok(())
    }
}

/// Writes `bytes` to `path` atomically.
///
/// # Errors
/// [`Error::Io`] naming `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    StagedFile::write_with(path, |w| w.write_all(bytes).map_err(|e| Error::io(path, e)))?.commit()
}
