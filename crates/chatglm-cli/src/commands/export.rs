//! `chatglm export`: a `chatglm train` checkpoint in the official trainer's layout
//! (`pytorch_model.bin` with `transformer.prefix_encoder.*` plus `config.json` with
//! `pre_seq_len` / `prefix_projection`), for the official `main.py --ptuning_checkpoint`, its
//! web demo and the other tools that read that layout.

use std::path::PathBuf;

use chatglm::ptuning::run::{ExportOptions, export_official};

/// Export a P-Tuning checkpoint (`checkpoint-N/`) to the official trainer's layout.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkpoint folder written by `chatglm train` (`.../checkpoint-N`).
    #[arg(long, alias = "ptuning_checkpoint", alias = "ptuning-checkpoint")]
    pub checkpoint: PathBuf,
    /// The folder to write (`pytorch_model.bin`, `config.json`); built beside it and renamed
    /// into place.
    #[arg(long, alias = "output_dir", alias = "output-dir")]
    pub out: PathBuf,
    /// Base model folder the prefix must fit (its layers and hidden size); checked when given.
    #[arg(long, alias = "model_name_or_path", alias = "model-name-or-path")]
    pub model: Option<PathBuf>,
    /// Replace the output folder if it exists and is not empty.
    #[arg(long)]
    pub force: bool,
}

/// Runs `chatglm export`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let opts = ExportOptions {
        base_model: args.model,
        overwrite: args.force,
    };
    let summary = export_official(&args.checkpoint, &args.out, &opts)?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
