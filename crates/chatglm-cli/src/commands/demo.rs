//! `chatglm demo`: the study note's workflow end to end with no download — convert the sample
//! sheet, score the untuned model, P-tune, score again, answer "你是谁?".

use std::path::PathBuf;

use chatglm::ptuning::workflow::{DemoEvent, DemoOptions, run_demo};
use indicatif::{ProgressBar, ProgressStyle};

/// Run the whole P-Tuning workflow on the embedded demo model (or a real one with --model).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where data, checkpoints, the loss curve and evaluations go.
    #[arg(
        long = "output-dir",
        alias = "output_dir",
        default_value = "chatglm-demo"
    )]
    pub output_dir: PathBuf,
    /// A real ChatGLM-6B folder instead of the embedded demo model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Base dtype (default f32 on CPU, f16 on CUDA).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Training steps (default: the demo recipe).
    #[arg(long = "max-steps", alias = "max_steps")]
    pub max_steps: Option<u64>,
    /// Prefix length (default: the demo recipe).
    #[arg(long = "pre-seq-len", alias = "pre_seq_len")]
    pub pre_seq_len: Option<usize>,
    /// Learning rate (default: the demo recipe).
    #[arg(long = "learning-rate", alias = "learning_rate")]
    pub learning_rate: Option<f64>,
    /// The question asked at the end.
    #[arg(long, default_value = "你是谁?")]
    pub question: String,
}

#[allow(clippy::print_stdout)]
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut opts = DemoOptions::new(args.output_dir.clone());
    let (device, dtype) = super::train::device_of(Some(&args.device), args.dtype.as_deref())?;
    opts.device = device;
    opts.dtype = dtype;
    opts.model_dir = args.model.clone();
    opts.question = args.question.clone();
    if let Some(s) = args.max_steps {
        opts.train.max_steps = s;
        opts.train.save_steps = opts.train.save_steps.min(s.max(1));
    }
    if let Some(p) = args.pre_seq_len {
        opts.train.pre_seq_len = p;
    }
    if let Some(lr) = args.learning_rate {
        opts.train.learning_rate = lr;
    }
    let mut train_progress = super::train::progress_handler(false);
    let eval_bar = ProgressBar::hidden();
    let report = run_demo(&opts, &mut |event| match event {
        DemoEvent::Stage(s) => {
            eval_bar.finish_and_clear();
            println!("==> {s}");
        }
        DemoEvent::Eval(done, total) => {
            if eval_bar.is_hidden() {
                eval_bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                eval_bar.set_style(
                    ProgressStyle::with_template("    generating [{bar:30}] {pos}/{len}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
            }
            eval_bar.set_length(total as u64);
            eval_bar.set_position(done as u64);
        }
        DemoEvent::Train(e) => {
            let _ = train_progress(e);
        }
    })?;
    eval_bar.finish_and_clear();
    let scores = |r: &chatglm::ptuning::eval::EvalReport| {
        format!(
            "BLEU-4 {:.2}  ROUGE-1 {:.2}  ROUGE-2 {:.2}  ROUGE-L {:.2}",
            r.bleu_4, r.rouge_1, r.rouge_2, r.rouge_l
        )
    };
    println!();
    println!("training data : {}", report.train_file.display());
    println!("model         : {}", report.model_dir.display());
    println!("before tuning : {}", scores(&report.before));
    println!("after tuning  : {}", scores(&report.after));
    println!(
        "checkpoint    : {}",
        report.training.last_checkpoint.display()
    );
    if let Some(curve) = &report.training.loss_curve {
        println!("loss curve    : {}", curve.display());
    }
    println!(
        "evaluations   : {}",
        args.output_dir.join("eval-before").display()
    );
    println!(
        "                {}",
        args.output_dir.join("eval-after").display()
    );
    println!();
    println!("问：{}", report.answer.0);
    println!("答：{}", report.answer.1);
    Ok(())
}
