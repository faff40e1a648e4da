//! `chatglm data`: convert spreadsheets / CSV / JSON into P-Tuning JSON lines, or export back.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chatglm::data::{self, ReadOptions, ReadReport, Style};

/// `chatglm data` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Args {
    /// Convert .xlsx/.xlsm/.xls/.xlsb/.ods/.csv/.tsv/.json/.jsonl files or folders into JSON lines.
    Convert(ConvertArgs),
    /// Write JSON lines (or any readable input) back to an .xlsx workbook with a Q/A header.
    Export(ExportArgs),
}

/// Column and sheet selection shared by both subcommands.
#[derive(Debug, clap::Args)]
pub struct ColumnArgs {
    /// Read only this sheet of each workbook (default: every worksheet).
    #[arg(long)]
    sheet: Option<String>,
    /// Question column (default: first present of Q/A, 问题/答案, question/answer,
    /// prompt/response, content/summary).
    #[arg(long)]
    prompt_column: Option<String>,
    /// Answer column (default: see --prompt-column).
    #[arg(long)]
    response_column: Option<String>,
    /// History column holding [[q, a], ...] as JSON (default: `history` when present).
    #[arg(long)]
    history_column: Option<String>,
}

impl ColumnArgs {
    fn options(&self) -> ReadOptions {
        ReadOptions {
            sheet: self.sheet.clone(),
            prompt_column: self.prompt_column.clone(),
            response_column: self.response_column.clone(),
            history_column: self.history_column.clone(),
        }
    }
}

/// Output layout.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StyleArg {
    /// {"content": q, "summary": a}
    Adgen,
    /// {"prompt": q, "response": a, "history": [[q, a], ...]}
    Chat,
}

/// Arguments of `chatglm data convert`.
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// Input files or folders (a folder contributes every supported file directly in it).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Train output file (default: the first input with a .json extension, or
    /// NAME.converted.json when the input is already JSON).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Dev output file, written when --dev-ratio > 0 (default: dev.json beside a train.json
    /// output, else NAME.dev.EXT beside the output).
    #[arg(long)]
    dev_output: Option<PathBuf>,
    /// Output layout.
    #[arg(long, value_enum, default_value = "adgen")]
    style: StyleArg,
    /// Drop exact duplicate records (the first occurrence stays).
    #[arg(long)]
    dedup: bool,
    /// Fraction of records sent to the dev file, in [0, 1).
    #[arg(long, default_value_t = 0.0)]
    dev_ratio: f64,
    /// Seed of the deterministic train/dev split (ChaCha8).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    columns: ColumnArgs,
}

/// Arguments of `chatglm data export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Input JSON lines (or any format `convert` reads).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The .xlsx file to write.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    columns: ColumnArgs,
}

/// Runs a `chatglm data` subcommand.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args {
        Args::Convert(a) => convert(a),
        Args::Export(a) => export(a),
    }
}

fn default_output(first: &Path) -> PathBuf {
    let is_json = first
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json") || e.eq_ignore_ascii_case("jsonl"));
    if first.is_dir() {
        let name = first
            .file_name()
            .map_or_else(|| "data".into(), |n| n.to_string_lossy().into_owned());
        first.with_file_name(format!("{name}.json"))
    } else if is_json {
        first.with_extension("converted.json")
    } else {
        first.with_extension("json")
    }
}

fn default_dev_output(train: &Path) -> PathBuf {
    let stem = train
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = train.extension().map(|e| e.to_string_lossy().into_owned());
    let dot_ext = ext.map(|e| format!(".{e}")).unwrap_or_default();
    if stem == "train" {
        train.with_file_name(format!("dev{dot_ext}"))
    } else {
        train.with_file_name(format!("{stem}.dev{dot_ext}"))
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

#[allow(clippy::print_stderr)]
fn print_report(report: &ReadReport) {
    for file in &report.files {
        eprintln!("{file}");
        for s in &file.skipped {
            eprintln!("  skipped {}: {}", s.location, s.reason);
        }
    }
}

#[allow(clippy::print_stderr)]
fn convert(args: ConvertArgs) -> anyhow::Result<()> {
    if !(0.0..1.0).contains(&args.dev_ratio) {
        bail!(
            "--dev-ratio must be at least 0 and below 1 (got {})",
            args.dev_ratio
        );
    }
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| default_output(&args.inputs[0]));
    let dev_output = (args.dev_ratio > 0.0).then(|| {
        args.dev_output
            .clone()
            .unwrap_or_else(|| default_dev_output(&output))
    });
    // A folder input must not pick up our own output of an earlier run.
    let inputs: Vec<PathBuf> = data::collect_inputs(&args.inputs)?
        .into_iter()
        .filter(|p| !same_file(p, &output) && !dev_output.as_ref().is_some_and(|d| same_file(p, d)))
        .collect();
    if inputs.is_empty() {
        bail!("no input files left to read");
    }
    let mut report = data::read_inputs(&inputs, &args.columns.options())?;
    if args.dedup {
        report.dedup();
    }
    print_report(&report);
    if report.records.is_empty() {
        bail!(
            "no records: {} rows read, {} skipped; nothing written",
            report.total_read(),
            report.total_skipped()
        );
    }
    let style = match args.style {
        StyleArg::Adgen => Style::Adgen,
        StyleArg::Chat => Style::Chat,
    };
    let (train, dev) = data::split_train_dev(
        std::mem::take(&mut report.records),
        args.dev_ratio,
        args.seed,
    )?;
    // Stage every output before committing any, so a failure leaves no partial output.
    let staged_train = data::stage_jsonl(&output, &train, style)?;
    let staged_dev = match &dev_output {
        Some(path) => Some(data::stage_jsonl(path, &dev, style)?),
        None => None,
    };
    staged_train.commit()?;
    eprintln!("wrote {} records to {}", train.len(), output.display());
    if let (Some(staged), Some(path)) = (staged_dev, &dev_output) {
        staged.commit()?;
        eprintln!("wrote {} records to {}", dev.len(), path.display());
    }
    Ok(())
}

#[allow(clippy::print_stderr)]
fn export(args: ExportArgs) -> anyhow::Result<()> {
    let is_xlsx = args
        .output
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("xlsx"));
    if !is_xlsx {
        bail!(
            "{}: the export writes an .xlsx workbook; give --output a name ending in .xlsx",
            args.output.display()
        );
    }
    let report = data::read_inputs(&args.inputs, &args.columns.options())?;
    print_report(&report);
    data::export_xlsx(&report.records, &args.output)
        .with_context(|| format!("exporting to {}", args.output.display()))?;
    eprintln!(
        "wrote {} records to {}",
        report.records.len(),
        args.output.display()
    );
    Ok(())
}
