//! `chatglm logits`: the full `[seq, vocab]` f32 logits of one forward pass, saved as safetensors.

use std::path::PathBuf;

use anyhow::Context;
use chatglm::checkpoint::{Dtype, TensorView, save_safetensors};

use super::generate::ModelOpts;

/// Arguments of `chatglm logits`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelOpts,
    /// Comma-separated input ids.
    #[arg(long, value_delimiter = ',', required = true)]
    pub ids: Vec<u32>,
    /// Output safetensors file; the logits are stored under the key `logits`.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `chatglm logits`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let engine = args.model.load()?;
    let logits = engine.logits(&args.ids)?;
    let shape = vec![args.ids.len(), engine.config().vocab_size];
    let view = TensorView::from_f32(Dtype::F32, shape.clone(), &logits)?;
    save_safetensors(&args.out, &[("logits", view)], None)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "{}",
        serde_json::json!({ "out": args.out, "key": "logits", "shape": shape })
    );
    Ok(())
}
