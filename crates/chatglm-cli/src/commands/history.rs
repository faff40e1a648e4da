//! STUB: replaced by the helper that owns this subcommand.

#[derive(Debug, clap::Subcommand)]
pub enum Args {}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args {}
}
