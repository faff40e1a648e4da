//! [`Checkpoint`]: one model's tensors, from a folder, a file or a sharded index.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::store::{Entry, FileFormat, Shard, map_file};
use crate::{CheckpointError, TensorInfo, TensorView};

/// File names looked for in a model folder, in order of preference (as transformers does).
pub const CANDIDATES: [&str; 4] = [
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
];

/// The tensors of a model checkpoint, memory-mapped.
///
/// Opening parses headers only; tensor bytes are read (borrowed from the map, or converted)
/// when asked for, so a 12 GB model costs no RAM beyond the pages touched.
#[derive(Debug)]
pub struct Checkpoint {
    /// What was opened (folder, file or index).
    source: PathBuf,
    shards: Vec<Shard>,
    entries: BTreeMap<String, Entry>,
    metadata: HashMap<String, String>,
}

impl Checkpoint {
    /// Opens a checkpoint.
    ///
    /// `path` may be a model folder (holding one of [`CANDIDATES`]), a `.safetensors` file, a
    /// PyTorch `.bin`/`.pt` file (zip or legacy format) or a sharded `*.index.json`.
    ///
    /// # Errors
    /// A [`CheckpointError`] naming the file (and tensor) at fault: missing files or shards,
    /// truncated or corrupt files, unsupported dtypes or pickle content.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint, CheckpointError> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| CheckpointError::io(path, e))?;
        let file = if meta.is_dir() {
            CANDIDATES
                .iter()
                .map(|c| path.join(c))
                .find(|p| p.is_file())
                .ok_or_else(|| CheckpointError::NoCheckpoint {
                    dir: path.to_path_buf(),
                })?
        } else {
            path.to_path_buf()
        };
        let mut ckpt = Checkpoint {
            source: path.to_path_buf(),
            shards: Vec::new(),
            entries: BTreeMap::new(),
            metadata: HashMap::new(),
        };
        if file.to_string_lossy().ends_with(".json") {
            ckpt.load_index(&file)?;
        } else {
            let entries = ckpt.load_file(&file)?;
            ckpt.entries = entries.into_iter().collect();
        }
        tracing::debug!(
            source = %ckpt.source.display(),
            tensors = ckpt.entries.len(),
            files = ckpt.shards.len(),
            "opened checkpoint"
        );
        Ok(ckpt)
    }

    /// Maps one file and parses its header, returning its tensors.
    fn load_file(&mut self, file: &Path) -> Result<Vec<(String, Entry)>, CheckpointError> {
        let map = map_file(file)?;
        let shard = self.shards.len();
        let (format, parsed) = if map.starts_with(b"PK\x03\x04") {
            (
                FileFormat::TorchZip,
                crate::torch::parse_zip(file, &map, shard)?,
            )
        } else if crate::torch::is_legacy(&map) {
            (
                FileFormat::TorchLegacy,
                crate::torch::parse_legacy(file, &map, shard)?,
            )
        } else {
            let parsed = crate::safetensors::parse(file, &map, shard)?;
            self.metadata.extend(parsed.metadata);
            (FileFormat::Safetensors, parsed.entries)
        };
        self.shards.push(Shard {
            path: file.to_path_buf(),
            map,
            format,
        });
        Ok(parsed)
    }

    /// Loads a sharded checkpoint from its index (`{"weight_map": {name: shard file}}`).
    fn load_index(&mut self, index: &Path) -> Result<(), CheckpointError> {
        let text = std::fs::read(index).map_err(|e| CheckpointError::io(index, e))?;
        let bad = |reason: String| CheckpointError::BadIndex {
            path: index.to_path_buf(),
            reason,
        };
        let json: Value =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("no weight_map object".to_string()))?;
        let dir = index.parent().unwrap_or(Path::new(""));
        // Shard file name -> tensors the index places there.
        let mut by_shard: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| bad(format!("weight_map entry {name} is not a string")))?;
            let rel = Path::new(file);
            if !rel
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
            {
                return Err(bad(format!(
                    "shard {file} of tensor {name} is not a path inside the index's folder"
                )));
            }
            by_shard.entry(file).or_default().push(name);
        }
        for (file, names) in by_shard {
            let shard_path = dir.join(file);
            if !shard_path.is_file() {
                return Err(CheckpointError::MissingShard {
                    index: index.to_path_buf(),
                    shard: shard_path,
                    name: names.first().map(|n| n.to_string()).unwrap_or_default(),
                });
            }
            let mut found: HashMap<String, Entry> =
                self.load_file(&shard_path)?.into_iter().collect();
            for name in names {
                let entry = found
                    .remove(name)
                    .ok_or_else(|| CheckpointError::MissingInShard {
                        index: index.to_path_buf(),
                        shard: shard_path.clone(),
                        name: name.to_string(),
                    })?;
                self.entries.insert(name.to_string(), entry);
            }
            for (name, entry) in found {
                if map.contains_key(&name) {
                    continue;
                }
                tracing::debug!(shard = %shard_path.display(), %name, "tensor not listed in the index");
                self.entries.entry(name).or_insert(entry);
            }
        }
        Ok(())
    }

    /// What was opened: the folder, file or index path given to [`Checkpoint::open`].
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The files mapped, with their formats.
    pub fn files(&self) -> impl Iterator<Item = (&Path, FileFormat)> {
        self.shards.iter().map(|s| (s.path.as_path(), s.format))
    }

    /// The safetensors `__metadata__` entries (merged over shards; empty for PyTorch files).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the checkpoint holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Type, shape and file of a tensor, without reading its data.
    pub fn info(&self, name: &str) -> Option<TensorInfo> {
        let e = self.entries.get(name)?;
        Some(TensorInfo {
            dtype: e.dtype,
            shape: e.shape.clone(),
            file: self.shards[e.shard].path.clone(),
        })
    }

    /// A tensor's bytes: borrowed from the memory map when the file stores them contiguous and
    /// little-endian, else materialised into an owned buffer.
    ///
    /// # Errors
    /// [`CheckpointError::NotFound`] for an unknown name; layout errors name file and tensor.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>, CheckpointError> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| CheckpointError::NotFound {
                path: self.source.clone(),
                name: name.to_string(),
            })?;
        let shard = &self.shards[e.shard];
        e.view(&shard.map, &shard.path, name)
    }

    /// A tensor converted to `f32` (from F16, BF16, F32, F64; integers are cast), with its shape.
    ///
    /// # Shapes
    /// Returns `(values, shape)` with `values.len() == shape.iter().product()`, row-major.
    ///
    /// # Errors
    /// As [`Checkpoint::tensor`].
    pub fn to_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), CheckpointError> {
        let t = self.tensor(name)?;
        Ok((t.to_f32(), t.shape().to_vec()))
    }

    /// Every tensor whose name starts with `prefix`, the prefix removed (e.g.
    /// `"transformer.prefix_encoder."` to load a P-Tuning checkpoint), sorted by name.
    ///
    /// # Errors
    /// As [`Checkpoint::tensor`].
    pub fn tensors_with_prefix(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, TensorView<'_>)>, CheckpointError> {
        self.entries
            .keys()
            .filter_map(|n| n.strip_prefix(prefix).map(|rest| (n, rest)))
            .map(|(n, rest)| Ok((rest.to_string(), self.tensor(n)?)))
            .collect()
    }
}
