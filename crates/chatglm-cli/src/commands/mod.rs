//! One module per subcommand. Each exposes `Args` (clap) and `run(Args) -> anyhow::Result<()>`.

pub mod data;
pub mod detokenize;
pub mod history;
pub mod metrics;
pub mod serve;
pub mod tokenize;
