//! One module per subcommand. Each exposes `Args` (clap) and `run(Args) -> anyhow::Result<()>`.

pub mod chat;
pub mod data;
pub mod demo;
pub mod detokenize;
pub mod eval;
pub mod export;
pub mod generate;
pub mod history;
pub mod logits;
pub mod metrics;
pub mod serve;
pub mod tokenize;
pub mod train;
