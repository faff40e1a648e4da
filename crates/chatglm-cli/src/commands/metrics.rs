//! `chatglm metrics FILE`: BLEU-4 and ROUGE-1/2/L of predictions against labels, exactly as the
//! official `ptuning/main.py` `compute_metrics` computes them.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use chatglm::metrics::{Aggregate, Scorer, Strictness, parse_pair_line};
use indicatif::{ProgressBar, ProgressStyle};

/// How many line numbers of empty pairs the warning lists.
const LISTED_EMPTY_LINES: usize = 10;

/// Score predictions against labels with BLEU-4 and ROUGE-1/2/L.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// JSON lines with `predict`/`labels` (the evaluation's `generated_predictions.txt`) or
    /// `prediction`/`label`; `-` reads standard input.
    pub file: PathBuf,
    /// Print one JSON line per pair (`rouge-1`, `rouge-2`, `rouge-l`, `bleu-4`) instead of the
    /// means; the means then go to standard error.
    #[arg(long)]
    pub per_sample: bool,
    /// Stop at an empty prediction or label with the official script's error, instead of
    /// scoring the pair 0.
    #[arg(long)]
    pub strict: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let name = args.file.display().to_string();
    let (input, size): (Box<dyn Read>, Option<u64>) = if args.file.as_os_str() == "-" {
        (Box::new(io::stdin().lock()), None)
    } else {
        let file = File::open(&args.file).with_context(|| format!("cannot open {name}"))?;
        let size = file
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        (Box::new(file), size)
    };
    let strictness = if args.strict {
        Strictness::Strict
    } else {
        Strictness::Lenient
    };
    let scorer = Scorer::with_strictness(strictness);
    let progress = progress_bar(size);
    let stdout = io::stdout().lock();
    let mut out = BufWriter::new(stdout);

    let result = score_stream(
        BufReader::new(input),
        &name,
        &scorer,
        args.per_sample,
        &progress,
        &mut out,
    );
    progress.finish_and_clear();
    let (total, empty_lines) = match result {
        Ok(done) => done,
        Err(err) if is_broken_pipe(&err) => return Ok(()),
        Err(err) => return Err(err),
    };

    report_empty(&total, &empty_lines);
    let Some(means) = total.means() else {
        bail!("{name}: no pairs found");
    };
    let summary = serde_json::to_string(&means)?;
    if args.per_sample {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("means: {summary}");
        }
    } else {
        writeln!(out, "{summary}").or_else(ignore_broken_pipe)?;
    }
    out.flush().or_else(ignore_broken_pipe)?;
    Ok(())
}

/// Reads, scores and (with `per_sample`) prints every pair; returns the totals and the line
/// numbers of the pairs scored 0 for being empty.
fn score_stream(
    mut input: impl BufRead,
    name: &str,
    scorer: &Scorer,
    per_sample: bool,
    progress: &ProgressBar,
    out: &mut impl Write,
) -> anyhow::Result<(Aggregate, Vec<usize>)> {
    let mut total = Aggregate::new();
    let mut empty_lines = Vec::new();
    let mut raw = Vec::new();
    let mut line_no = 0;
    loop {
        raw.clear();
        let read = input
            .read_until(b'\n', &mut raw)
            .with_context(|| format!("cannot read {name}"))?;
        if read == 0 {
            break;
        }
        line_no += 1;
        progress.inc(read as u64);
        let text = std::str::from_utf8(&raw)
            .with_context(|| format!("{name}: line {line_no}: not valid UTF-8"))?;
        let Some(pair) = parse_pair_line(text, line_no).with_context(|| name.to_owned())? else {
            continue;
        };
        let scores = scorer
            .score_pair(&pair.prediction, &pair.label)
            .with_context(|| {
                format!("{name}: line {line_no} (the official script raises ValueError here)")
            })?;
        if scores.empty.is_some() {
            empty_lines.push(line_no);
        }
        total.push(&scores);
        if per_sample {
            let line = serde_json::to_string(&scores)?;
            writeln!(out, "{line}")?;
        }
    }
    Ok((total, empty_lines))
}

fn report_empty(total: &Aggregate, empty_lines: &[usize]) {
    if empty_lines.is_empty() {
        return;
    }
    let listed: Vec<String> = empty_lines
        .iter()
        .take(LISTED_EMPTY_LINES)
        .map(ToString::to_string)
        .collect();
    let more = if empty_lines.len() > LISTED_EMPTY_LINES {
        ", ..."
    } else {
        ""
    };
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "warning: {} of {} pairs scored 0 because the prediction ({}) or the label ({}) is empty; \
             the official script stops there with ValueError (use --strict to do the same); lines {}{}",
            total.empty_pairs(),
            total.samples(),
            total.empty_hypotheses(),
            total.empty_references(),
            listed.join(", "),
            more
        );
    }
}

/// A byte-count bar on standard error, only when it is a terminal.
fn progress_bar(size: Option<u64>) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    match size {
        Some(len) => {
            let bar = ProgressBar::new(len);
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        }
        None => ProgressBar::new_spinner(),
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

fn ignore_broken_pipe(err: io::Error) -> io::Result<()> {
    if err.kind() == io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(err)
    }
}
