//! `chatglm tokenize`: encode text with a model folder's tokenizer and print the ids as JSON.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context as _;
use chatglm::tokenizer::{ChatVersion, Tokenizer};

/// Arguments of `chatglm tokenize`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model folder holding ice_text.model (ChatGLM-6B) or tokenizer.model (ChatGLM2/3).
    #[arg(long)]
    pub model: PathBuf,
    /// Force the ChatGLM version (v1, v2, v3) instead of detecting it from the folder.
    #[arg(long)]
    pub version: Option<ChatVersion>,
    /// Do not add the special tokens ([gMASK] and <sop>/sop).
    #[arg(long)]
    pub no_special: bool,
    /// ChatGLM3: turn role tokens typed in the text (<|user|>) into their special ids.
    #[arg(long)]
    pub encode_special_tokens: bool,
    /// Also print the token strings (one JSON object with "ids" and "tokens").
    #[arg(long)]
    pub tokens: bool,
    /// Text to encode; `-` reads standard input.
    pub text: String,
}

/// Loads the tokenizer of `dir`, with an optional version override.
pub fn load(dir: &std::path::Path, version: Option<ChatVersion>) -> anyhow::Result<Tokenizer> {
    let tok = match version {
        Some(v) => Tokenizer::from_dir_with_version(dir, v),
        None => Tokenizer::from_dir(dir),
    };
    tok.with_context(|| format!("cannot load the tokenizer of {}", dir.display()))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut tok = load(&args.model, args.version)?;
    tok.set_encode_special_tokens(args.encode_special_tokens);
    let text = if args.text == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read standard input")?;
        s
    } else {
        args.text
    };
    let ids = tok.encode(&text, !args.no_special);
    let out = if args.tokens {
        let tokens = tok.ids_to_tokens(&ids)?;
        serde_json::to_string(&serde_json::json!({ "ids": ids, "tokens": tokens }))?
    } else {
        serde_json::to_string(&ids)?
    };
    #[allow(clippy::print_stdout)]
    {
        println!("{out}");
    }
    Ok(())
}
