//! `chatglm detokenize`: decode token ids with a model folder's tokenizer and print the text.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context as _;
use chatglm::tokenizer::ChatVersion;

/// Arguments of `chatglm detokenize`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model folder holding ice_text.model (ChatGLM-6B) or tokenizer.model (ChatGLM2/3).
    #[arg(long)]
    pub model: PathBuf,
    /// Force the ChatGLM version (v1, v2, v3) instead of detecting it from the folder.
    #[arg(long)]
    pub version: Option<ChatVersion>,
    /// Drop special tokens as `skip_special_tokens=True` does.
    #[arg(long)]
    pub skip_special: bool,
    /// Ids as a JSON array (`[5, 6]`) or separated by commas/spaces; `-` reads standard input.
    pub ids: String,
}

/// Parses `[1, 2]`, `1,2` or `1 2`.
pub fn parse_ids(text: &str) -> anyhow::Result<Vec<u32>> {
    let trimmed = text.trim().trim_start_matches('[').trim_end_matches(']');
    trimmed
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>().with_context(|| {
                format!("{s:?} is not a token id (expected a non-negative integer)")
            })
        })
        .collect()
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let tok = super::tokenize::load(&args.model, args.version)?;
    let raw = if args.ids == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read standard input")?;
        s
    } else {
        args.ids
    };
    let ids = parse_ids(&raw)?;
    let text = tok.decode(&ids, args.skip_special)?;
    #[allow(clippy::print_stdout)]
    {
        println!("{text}");
    }
    Ok(())
}
