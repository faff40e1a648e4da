//! Export of a `chatglm train` checkpoint to the official trainer's layout: a folder holding
//! `pytorch_model.bin` (a `torch.save` zip of the `transformer.prefix_encoder.*` tensors,
//! float32) and `config.json` (the base model's config with `pre_seq_len` and
//! `prefix_projection`), which the official `main.py --ptuning_checkpoint` and web demos load.
//!
//! The folder is written atomically: built as a hidden temporary folder beside the target, then
//! renamed into place, so an interrupted export leaves no folder that looks complete.

use std::path::{Path, PathBuf};

use chatglm_model::config::GlmConfig;
use chatglm_model::prefix::{PREFIX_KEY, prefix_shape};

use crate::checkpoint::{CONFIG_FILE, PREFIX_FILE, list_checkpoints};
use crate::run::{RunError, load_config};
use crate::store::Tensors;

/// File of the prefix tensors in the official layout.
pub const OFFICIAL_PREFIX_FILE: &str = "pytorch_model.bin";

/// Options of [`export_official`].
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// A base model folder the prefix must fit (its layers and hidden size); checked when given.
    pub base_model: Option<PathBuf>,
    /// Replace an output folder that exists and is not empty (otherwise that is an error).
    pub overwrite: bool,
}

/// What [`export_official`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExportSummary {
    /// The output folder.
    pub out_dir: PathBuf,
    /// Prefix length.
    pub pre_seq_len: usize,
    /// Whether the prefix has the projection MLP.
    pub prefix_projection: bool,
    /// The tensor names written (`transformer.prefix_encoder.*`).
    pub tensors: Vec<String>,
}

fn fail(path: &Path, message: impl Into<String>) -> RunError {
    RunError::Export {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Explains why `dir` is not one of our checkpoint folders.
fn not_a_checkpoint(dir: &Path) -> RunError {
    let inside = list_checkpoints(dir);
    let message = if !dir.is_dir() {
        "no such checkpoint folder".to_string()
    } else if let Some((_, last)) = inside.last() {
        let names: Vec<String> = inside
            .iter()
            .filter_map(|(_, p)| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        format!(
            "this is a training output folder holding {}; export one of them, e.g. {}",
            names.join(", "),
            last.display()
        )
    } else if dir.join(OFFICIAL_PREFIX_FILE).is_file() {
        format!("{OFFICIAL_PREFIX_FILE} is here: the folder is already in the official layout")
    } else {
        format!(
            "not a `chatglm train` checkpoint folder: {PREFIX_FILE} or {CONFIG_FILE} is missing"
        )
    };
    fail(dir, message)
}

/// Reads and checks the prefix of a checkpoint folder: its tensors, its config (with the prefix
/// settings filled in) and the tensor names.
fn read_checkpoint(
    dir: &Path,
    base_model: Option<&Path>,
) -> Result<(Tensors, serde_json::Value, ExportSummary), RunError> {
    if !dir.join(PREFIX_FILE).is_file() || !dir.join(CONFIG_FILE).is_file() {
        return Err(not_a_checkpoint(dir));
    }
    let prefix_path = dir.join(PREFIX_FILE);
    let tensors = crate::store::load_safetensors(&prefix_path)
        .map_err(|e| fail(&prefix_path, e.to_string()))?;
    if let Some(other) = tensors.keys().find(|n| !n.starts_with(PREFIX_KEY)) {
        return Err(fail(
            &prefix_path,
            format!("tensor `{other}` is not a prefix tensor ({PREFIX_KEY}*)"),
        ));
    }
    let config_path = dir.join(CONFIG_FILE);
    let cfg = GlmConfig::from_file(&config_path).map_err(|e| fail(&config_path, e.to_string()))?;
    let names: Vec<String> = tensors.keys().cloned().collect();
    let rows = tensors
        .get(&format!("{PREFIX_KEY}embedding.weight"))
        .and_then(|t| t.shape.first().copied());
    let shape = prefix_shape(dir, &names, rows, &cfg).map_err(|e| fail(dir, e.to_string()))?;
    crate::params::check_params(&shape, &tensors).map_err(|e| fail(&prefix_path, e.to_string()))?;
    if let Some(base_dir) = base_model {
        let (base, _) = load_config(base_dir)?;
        if (base.num_layers, base.hidden_size) != (cfg.num_layers, cfg.hidden_size) {
            return Err(fail(
                dir,
                format!(
                    "the prefix was trained for a base with {} layers and hidden size {}, but {} has {} layers and hidden size {}",
                    cfg.num_layers,
                    cfg.hidden_size,
                    base_dir.display(),
                    base.num_layers,
                    base.hidden_size
                ),
            ));
        }
    }
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| fail(&config_path, e.to_string()))?;
    let mut config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| fail(&config_path, e.to_string()))?;
    let serde_json::Value::Object(map) = &mut config else {
        return Err(fail(&config_path, "config.json is not a JSON object"));
    };
    map.insert("pre_seq_len".into(), shape.pre_seq_len.into());
    map.insert("prefix_projection".into(), shape.projection.into());
    let summary = ExportSummary {
        out_dir: PathBuf::new(),
        pre_seq_len: shape.pre_seq_len,
        prefix_projection: shape.projection,
        tensors: names,
    };
    Ok((tensors, config, summary))
}

/// Writes the two official files into `dir`.
fn write_files(dir: &Path, tensors: &Tensors, config: &serde_json::Value) -> Result<(), RunError> {
    let bin = dir.join(OFFICIAL_PREFIX_FILE);
    let views: Vec<(String, chatglm_checkpoint::TensorView<'static>)> = tensors
        .iter()
        .map(|(n, t)| {
            chatglm_checkpoint::TensorView::from_f32(
                chatglm_checkpoint::Dtype::F32,
                t.shape.clone(),
                &t.data,
            )
            .map(|v| (n.clone(), v))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| fail(&bin, e.to_string()))?;
    chatglm_checkpoint::save_pytorch(&bin, &views).map_err(|e| fail(&bin, e.to_string()))?;
    let cfg = dir.join(CONFIG_FILE);
    let mut text = serde_json::to_string_pretty(config).map_err(|e| fail(&cfg, e.to_string()))?;
    text.push('\n');
    crate::store::write_atomic(&cfg, text.as_bytes()).map_err(|e| fail(&cfg, e.to_string()))
}

/// Moves the finished temporary folder `staged` to `out`, replacing the folder there (checked by
/// the caller); on failure the old folder is put back.
fn put_in_place(staged: &Path, out: &Path, parent: &Path) -> Result<(), RunError> {
    let io = |e: std::io::Error| fail(out, e.to_string());
    if !out.exists() {
        return std::fs::rename(staged, out).map_err(io);
    }
    let old = tempfile::Builder::new()
        .prefix(".chatglm-export-old-")
        .tempdir_in(parent)
        .map_err(io)?;
    let aside = old.path().join("old");
    std::fs::rename(out, &aside).map_err(io)?;
    if let Err(e) = std::fs::rename(staged, out) {
        let _ = std::fs::rename(&aside, out);
        return Err(io(e));
    }
    // Dropping `old` deletes the replaced folder.
    Ok(())
}

/// Writes a checkpoint's prefix in the official trainer's format into the folder `out_dir`:
/// `pytorch_model.bin` (`transformer.prefix_encoder.*`, float32) plus `config.json` (the
/// checkpoint's model config, `pre_seq_len` and `prefix_projection` set).
///
/// `checkpoint_dir` is a `checkpoint-N` folder of `chatglm train`; its prefix is checked against
/// its config (and against `opts.base_model` when given). The output folder is built beside its
/// final place and renamed there; an existing non-empty `out_dir` is replaced only with
/// `opts.overwrite`.
///
/// # Errors
/// [`RunError::Export`] naming the file or folder at fault: not a checkpoint folder, tensors
/// that do not match the config or the base model, an output folder that exists and is not
/// empty, or a write failure.
pub fn export_official(
    checkpoint_dir: &Path,
    out_dir: &Path,
    opts: &ExportOptions,
) -> Result<ExportSummary, RunError> {
    let (tensors, config, mut summary) =
        read_checkpoint(checkpoint_dir, opts.base_model.as_deref())?;
    let name = out_dir
        .file_name()
        .filter(|n| *n != "." && *n != "..")
        .ok_or_else(|| fail(out_dir, "the output must name a folder"))?;
    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if out_dir.exists() {
        if !out_dir.is_dir() {
            return Err(fail(out_dir, "exists and is not a folder"));
        }
        let same =
            std::fs::canonicalize(out_dir).ok() == std::fs::canonicalize(checkpoint_dir).ok();
        if same {
            return Err(fail(
                out_dir,
                "the output folder is the checkpoint folder itself",
            ));
        }
        let empty = std::fs::read_dir(out_dir)
            .map_err(|e| fail(out_dir, e.to_string()))?
            .next()
            .is_none();
        if !empty && !opts.overwrite {
            return Err(fail(
                out_dir,
                "the folder exists and is not empty (use --force to replace it)",
            ));
        }
    }
    std::fs::create_dir_all(&parent).map_err(|e| fail(&parent, e.to_string()))?;
    let staged = tempfile::Builder::new()
        .prefix(&format!(".{}.export-", name.to_string_lossy()))
        .tempdir_in(&parent)
        .map_err(|e| fail(&parent, e.to_string()))?;
    write_files(staged.path(), &tensors, &config)?;
    if let Ok(f) = std::fs::File::open(staged.path()) {
        let _ = f.sync_all();
    }
    let staged = staged.keep();
    if let Err(e) = put_in_place(&staged, out_dir, &parent) {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(e);
    }
    summary.out_dir = out_dir.to_path_buf();
    Ok(summary)
}
