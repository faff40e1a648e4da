//! The `chatglm` binary: a thin main that dispatches to one module per subcommand.
//!
//! This is the one crate that talks to the terminal: printing is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use clap::{Parser, Subcommand};

mod commands;

/// ChatGLM without Python: data preparation, evaluation, inference, tuning and serving.
#[derive(Debug, Parser)]
#[command(name = "chatglm", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Convert spreadsheets / CSV / JSON lines into training records, or export them back.
    #[command(subcommand)]
    Data(commands::data::Args),
    /// Score predictions against labels with BLEU-4 and ROUGE-1/2/L.
    Metrics(commands::metrics::Args),
    /// Encode text into token ids with a model folder's tokenizer (prints a JSON array).
    Tokenize(commands::tokenize::Args),
    /// Decode token ids back into text with a model folder's tokenizer.
    Detokenize(commands::detokenize::Args),
    /// Serve the model over HTTP: api.py's route, an OpenAI-compatible API and a web page.
    Serve(commands::serve::Args),
    /// Export or import per-user chat history (the `T, Q, A` workbook layout).
    #[command(subcommand)]
    History(commands::history::Args),
    /// Generate from a text prompt or raw ids (`--json` prints the new ids and text).
    Generate(commands::generate::Args),
    /// Save the full [seq, vocab] logits of one forward pass as safetensors (key `logits`).
    Logits(commands::logits::Args),
    /// Chat with the model in the terminal (`clear` empties the history, `stop` exits).
    Chat(commands::chat::Args),
    /// P-Tuning v2: train a prefix for a frozen model (official main.py flag names).
    Train(Box<commands::train::Args>),
    /// Generate for a test file and score BLEU-4 / ROUGE (official --do_predict outputs).
    Eval(Box<commands::eval::Args>),
    /// Export a P-Tuning checkpoint to the official trainer's layout (pytorch_model.bin + config.json).
    Export(commands::export::Args),
    /// The whole workflow with no download: convert, score, P-tune, score, answer.
    Demo(commands::demo::Args),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Data(args) => commands::data::run(args),
        Command::Metrics(args) => commands::metrics::run(args),
        Command::Tokenize(args) => commands::tokenize::run(args),
        Command::Detokenize(args) => commands::detokenize::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::History(args) => commands::history::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Logits(args) => commands::logits::run(args),
        Command::Chat(args) => commands::chat::run(args),
        Command::Train(args) => commands::train::run(*args),
        Command::Eval(args) => commands::eval::run(*args),
        Command::Export(args) => commands::export::run(args),
        Command::Demo(args) => commands::demo::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {err:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
