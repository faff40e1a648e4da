//! Atomic file writes: a temporary file in the destination folder, renamed over the target.

use std::io::{BufWriter, Write};
use std::path::Path;

use crate::CheckpointError;

/// Writes a file through `fill`, then renames it to `path`, so a reader never sees a partial
/// file and an existing file survives a failed write.
pub(crate) fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<&mut std::fs::File>) -> std::io::Result<()>,
) -> Result<(), CheckpointError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".chatglm-checkpoint-")
        .tempfile_in(dir)
        .map_err(|e| CheckpointError::io(path, e))?;
    {
        let mut w = BufWriter::new(tmp.as_file_mut());
        fill(&mut w).map_err(|e| CheckpointError::io(path, e))?;
        w.flush().map_err(|e| CheckpointError::io(path, e))?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| CheckpointError::io(path, e))?;
    tmp.persist(path)
        .map_err(|e| CheckpointError::io(path, e.error))?;
    Ok(())
}
