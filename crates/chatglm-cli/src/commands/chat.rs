//! `chatglm chat`: the terminal chat of the original `cli_demo.py`, for daily use.
//!
//! Replies stream as they are generated. `clear` empties the history (and the screen), `stop` or
//! Ctrl-D exits. Ctrl-C while a reply streams stops that reply only: the part shown stays in the
//! history, as on the screen (`clear` forgets it). Ctrl-C at the prompt drops the line being typed
//! and prints a hint; a second one in a row exits. Lines are edited with rustyline, and what was
//! typed is kept in `chat_history.txt` under the data dir. A line ending in `\` goes on to the
//! next line; a ``` opens a block that runs to the closing ```. When the conversation outgrows the
//! context, the oldest turns are dropped with a one-line notice; a message too long even alone is
//! not sent. Without a terminal on stdin (a pipe, a file) lines are read as they come: no prompt,
//! no banner, no escape codes, no input history file.

use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use chatglm::model::{ChatGlm, EngineError, FinishReason, GenerationConfig};
use chatglm::tokenizer::{ChatVersion, Tokenizer};
use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Behavior, Config, Editor, Helper};

use super::generate::{ModelOpts, SamplingArgs};

/// What the banner and `--help` say about the session.
const USAGE: &str = "\
Type a message and press Enter; the reply streams as it is generated.
  clear          empty the history (and the screen)
  stop, Ctrl-D   exit
  Ctrl-C         stop the reply being generated (the part shown stays in the history);
                 at the prompt, drop the line (twice in a row: exit)
  multi-line     end a line with \\ to go on to the next one, or start a block with ```
                 and end it with ``` (the fences are sent as typed)";

/// Name of the input history file, in the data dir.
const HISTORY_FILE: &str = "chat_history.txt";

/// The label in front of each reply, as the original.
const REPLY_LABEL: &str = "ChatGLM-6B：";

/// Arguments of `chatglm chat`.
#[derive(Debug, clap::Args)]
#[command(after_help = format!("In the chat:\n{USAGE}\n\nInput history: {HISTORY_FILE} in \
    $CHATGLM_DATA_DIR, else $XDG_DATA_HOME/chatglm, else ~/.local/share/chatglm (terminal only)."))]
pub struct Args {
    #[command(flatten)]
    pub model: ModelOpts,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Longest reply, in tokens. The history is trimmed (oldest turns first, with a notice) so
    /// that the prompt plus this many tokens fits the context.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// Context the conversation must fit, prompt plus reply (default and most: the model's
    /// max_sequence_length).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// System prompt (ChatGLM3 only: ChatGLM-6B, v1, has no system role).
    #[arg(long)]
    pub system: Option<String>,
    /// After each reply, print `[N tokens, S s, R tok/s]`.
    #[arg(long)]
    pub stats: bool,
}

/// Runs `chatglm chat`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    let dir = args.model.dir()?;
    if args.system.is_some() {
        check_system_role(&dir)?;
    }
    let engine = args.model.load()?;
    engine.tokenizer()?;
    let model_context = engine.config().max_sequence_length;
    let context = match args.max_length {
        None => model_context,
        Some(0) => bail!("--max-length must be at least 1"),
        Some(n) if n > model_context => bail!(
            "--max-length {n} is more than the model's context of {model_context} tokens (max_sequence_length)"
        ),
        Some(n) => n,
    };
    let mut config = engine.generation_config(args.sampling.config());
    config.max_new_tokens = Some(args.max_new_tokens);
    config.max_length = context;
    config.seed = args.sampling.seed;

    let interactive = std::io::stdin().is_terminal();
    let signals = Signals::install(interactive);
    let mut input = Input::new(interactive)?;
    let mut session = Session {
        engine: &engine,
        config,
        context,
        stats: args.stats,
        history: Vec::new(),
        signals,
    };
    if interactive {
        println!("{}", banner(&engine));
    }
    let mut interrupted = false;
    loop {
        let line = match input.read() {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) if interrupted => break,
            Err(ReadlineError::Interrupted) => {
                interrupted = true;
                println!("(Ctrl-C again, `stop` or Ctrl-D to exit)");
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("reading the input"),
        };
        interrupted = false;
        let message = join_lines(&line);
        if message.trim().is_empty() {
            continue;
        }
        input.remember(&line);
        match message.trim() {
            "stop" => break,
            "clear" => {
                session.history.clear();
                if interactive {
                    input.clear_screen();
                    println!("{}", banner(&engine));
                }
                println!("(history cleared)");
            }
            _ => session.answer(message.trim_start_matches(['\n', '\r']).trim_end())?,
        }
        if interactive {
            println!();
        }
    }
    Ok(())
}

/// Refuses `--system` unless the model's prompt format has a system role (ChatGLM3).
fn check_system_role(dir: &std::path::Path) -> anyhow::Result<()> {
    let tokenizer = Tokenizer::from_dir(dir)
        .with_context(|| format!("{}: reading the tokenizer", dir.display()))?;
    match tokenizer.version() {
        ChatVersion::V1 => bail!(
            "--system: ChatGLM-6B (v1) has no system role; its prompt is only `[Round N] 问：... 答：...` \
             turns. Put the instructions in your first message instead."
        ),
        ChatVersion::V2 => bail!(
            "--system: ChatGLM2-6B (v2) has no system role. Put the instructions in your first \
             message instead."
        ),
        ChatVersion::V3 => bail!("--system: ChatGLM3 models are not supported by this build yet"),
    }
}

fn banner(engine: &ChatGlm) -> String {
    let prefix = engine
        .prefix_path()
        .map(|p| format!(", prefix {}", p.display()))
        .unwrap_or_default();
    format!(
        "ChatGLM-6B chat ({}{prefix}; {} on {})\n{USAGE}",
        engine.dir().display(),
        engine.dtype(),
        engine.device()
    )
}

/// The conversation and how to answer.
struct Session<'e> {
    engine: &'e ChatGlm,
    config: GenerationConfig,
    context: usize,
    stats: bool,
    history: Vec<(String, String)>,
    signals: Arc<Signals>,
}

impl Session<'_> {
    /// Answers `query` after as much of the history as fits, streaming the reply to stdout.
    fn answer(&mut self, query: &str) -> anyhow::Result<()> {
        let reply_tokens = self.config.max_new_tokens.unwrap_or(1);
        let fit =
            match self
                .engine
                .fit_chat_prompt(query, &self.history, reply_tokens, self.context)
            {
                Ok(fit) => fit,
                Err(EngineError::Context(overflow)) => {
                    println!("(not sent: {overflow})");
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
        if fit.dropped > 0 {
            self.history.drain(..fit.dropped);
            let s = if fit.dropped == 1 { "" } else { "s" };
            println!(
                "(dropped {} oldest turn{s} to fit the {}-token context)",
                fit.dropped, self.context
            );
        }
        let mut stdout = std::io::stdout();
        write!(stdout, "{REPLY_LABEL}")?;
        stdout.flush()?;
        let started = Instant::now();
        self.signals.cancel.store(false, Ordering::SeqCst);
        self.signals.generating.store(true, Ordering::SeqCst);
        let mut write_error = None;
        let result = self
            .engine
            .stream_chat_prompt(fit.ids, &self.config, |delta| {
                if !delta.is_empty()
                    && let Err(e) = write!(stdout, "{delta}").and_then(|()| stdout.flush())
                {
                    write_error = Some(e);
                    return ControlFlow::Break(());
                }
                if self.signals.cancel.load(Ordering::SeqCst) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
        self.signals.generating.store(false, Ordering::SeqCst);
        let seconds = started.elapsed().as_secs_f64();
        let reply = result?;
        if let Some(e) = write_error {
            return Err(e).context("writing the reply");
        }
        writeln!(stdout)?;
        match reply.finish {
            FinishReason::Cancelled => {
                println!("(reply stopped; the part shown stays in the history)");
            }
            FinishReason::Length => println!(
                "(reply cut at {reply_tokens} tokens; --max-new-tokens allows longer replies)"
            ),
            FinishReason::Stop => {}
        }
        if self.stats {
            println!("{}", stats_line(reply.new_tokens, seconds));
        }
        if !reply.response.is_empty() || reply.finish != FinishReason::Cancelled {
            self.history.push((query.to_owned(), reply.response));
        }
        Ok(())
    }
}

/// `[42 tokens, 1.37 s, 30.6 tok/s]`
fn stats_line(tokens: usize, seconds: f64) -> String {
    let rate = if seconds > 0.0 {
        tokens as f64 / seconds
    } else {
        0.0
    };
    let s = if tokens == 1 { "" } else { "s" };
    format!("[{tokens} token{s}, {seconds:.2} s, {rate:.1} tok/s]")
}

/// Ctrl-C: while a reply is generated it sets `cancel`, which the token callback checks. At other
/// times, with a terminal, rustyline reads Ctrl-C as a key (the handler does not run while it
/// edits); without one (input from a pipe or a file), Ctrl-C ends the program as usual (130).
#[derive(Debug, Default)]
struct Signals {
    generating: AtomicBool,
    cancel: AtomicBool,
}

impl Signals {
    fn install(interactive: bool) -> Arc<Self> {
        let signals = Arc::new(Self::default());
        let handler = Arc::clone(&signals);
        let installed = ctrlc::set_handler(move || {
            if handler.generating.load(Ordering::SeqCst) {
                handler.cancel.store(true, Ordering::SeqCst);
            } else if !interactive {
                std::process::exit(130);
            }
        });
        if let Err(e) = installed {
            tracing::warn!("no Ctrl-C handler ({e}): Ctrl-C will end the chat");
        }
        signals
    }
}

/// `true` while `input` needs more lines: it ends in `\`, or a ``` block is open.
fn needs_more(input: &str) -> bool {
    input.trim_end_matches(['\r', '\n']).ends_with('\\') || input.matches("```").count() % 2 == 1
}

/// The message typed: `\` + newline continuations become plain newlines.
fn join_lines(input: &str) -> String {
    input.replace("\r\n", "\n").replace("\\\n", "\n")
}

/// rustyline helper: only validation, which asks for more lines (see [`needs_more`]).
struct LineHelper;

impl Validator for LineHelper {
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        Ok(if needs_more(ctx.input()) {
            ValidationResult::Incomplete
        } else {
            ValidationResult::Valid(None)
        })
    }
}

impl Completer for LineHelper {
    type Candidate = String;
}

impl Hinter for LineHelper {
    type Hint = String;
}

impl Highlighter for LineHelper {}

impl Helper for LineHelper {}

/// The line editor, and the input history file (terminal only).
struct Input {
    editor: Editor<LineHelper, DefaultHistory>,
    prompt: &'static str,
    history_file: Option<PathBuf>,
}

impl Input {
    fn new(interactive: bool) -> anyhow::Result<Self> {
        // With a terminal on stdin, edit on the terminal itself even when stdout is redirected.
        let behavior = if interactive {
            Behavior::PreferTerm
        } else {
            Behavior::Stdio
        };
        let config = Config::builder()
            .behavior(behavior)
            .max_history_size(1000)
            .context("input history size")?
            .history_ignore_dups(true)
            .context("input history")?
            .auto_add_history(false)
            .build();
        let mut editor = Editor::with_config(config).context("starting the line editor")?;
        editor.set_helper(Some(LineHelper));
        let history_file = if interactive { history_file() } else { None };
        if let Some(path) = &history_file
            && path.exists()
            && let Err(e) = editor.load_history(path)
        {
            tracing::warn!("{}: input history not read: {e}", path.display());
        }
        Ok(Self {
            editor,
            prompt: if interactive { "用户：" } else { "" },
            history_file,
        })
    }

    fn read(&mut self) -> rustyline::Result<String> {
        self.editor.readline(self.prompt)
    }

    /// Adds `line` to the input history and appends it to the file; a file that cannot be
    /// written is reported once and then left alone.
    fn remember(&mut self, line: &str) {
        if self.editor.add_history_entry(line).is_err() {
            return;
        }
        if let Some(path) = &self.history_file
            && let Err(e) = self.editor.append_history(path)
        {
            eprintln!("(input history not saved to {}: {e})", path.display());
            self.history_file = None;
        }
    }

    fn clear_screen(&mut self) {
        let _ = self.editor.clear_screen();
    }
}

/// `chat_history.txt` in the data dir (created if needed), or `None` when there is none.
fn history_file() -> Option<PathBuf> {
    let dir = chatglm::serve::history::default_data_dir().ok()?;
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("(input history not kept: {}: {e})", dir.display());
        return None;
    }
    Some(dir.join(HISTORY_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backslash_and_open_fences_ask_for_more_lines() {
        assert!(!needs_more("hello"));
        assert!(needs_more("first line \\"));
        assert!(needs_more("first line \\\r"));
        assert!(!needs_more("first line \\\nsecond"));
        assert!(needs_more("```"));
        assert!(needs_more("```rust\nfn main() {}"));
        assert!(!needs_more("```rust\nfn main() {}\n```"));
        assert!(!needs_more("inline ```code``` here"));
    }

    #[test]
    fn continuations_become_newlines_and_fences_stay() {
        assert_eq!(join_lines("a \\\nb\\\r\nc"), "a \nb\nc");
        assert_eq!(join_lines("```\nx = 1\n```"), "```\nx = 1\n```");
    }

    #[test]
    fn stats_line_reads_well() {
        assert_eq!(stats_line(42, 1.37), "[42 tokens, 1.37 s, 30.7 tok/s]");
        assert_eq!(stats_line(1, 0.5), "[1 token, 0.50 s, 2.0 tok/s]");
        assert_eq!(stats_line(0, 0.0), "[0 tokens, 0.00 s, 0.0 tok/s]");
    }
}
