//! The demo workflow from the library, with the recipe adjustable through environment variables
//! (`DEMO_STEPS`, `DEMO_PRE_SEQ_LEN`, `DEMO_LR`, `DEMO_PROJECTION`) for tuning experiments:
//! `cargo run --release -p chatglm-ptuning --example demo -- OUTPUT_DIR`.

#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Instant;

use chatglm_ptuning::train::TrainEvent;
use chatglm_ptuning::workflow::{DemoEvent, DemoOptions, run_demo};

fn env<T: std::str::FromStr>(k: &str) -> Option<T> {
    std::env::var(k).ok().and_then(|v| v.parse().ok())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "chatglm-demo".into()),
    );
    let mut opts = DemoOptions::new(out);
    if let Some(s) = env("DEMO_STEPS") {
        opts.train.max_steps = s;
    }
    if let Some(p) = env("DEMO_PRE_SEQ_LEN") {
        opts.train.pre_seq_len = p;
    }
    if let Some(lr) = env("DEMO_LR") {
        opts.train.learning_rate = lr;
    }
    if let Some(p) = env("DEMO_PROJECTION") {
        opts.train.prefix_projection = p;
    }
    if let Some(v) = env("DEMO_GAIN") {
        opts.model.gain = v;
    }
    if let Some(v) = env("DEMO_EMB_STD") {
        opts.model.embedding_std = v;
    }
    if let Some(v) = env("DEMO_HIDDEN") {
        opts.model.hidden_size = v;
        opts.model.inner_hidden_size = 4 * v;
    }
    if let Some(v) = env("DEMO_DENSE_GAIN") {
        opts.model.dense_gain = v;
    }
    if let Some(v) = env("DEMO_QKV_BIAS") {
        opts.model.qkv_bias_std = v;
    }
    if let Some(v) = env("DEMO_LAYERS") {
        opts.model.num_layers = v;
    }
    if let Some(v) = env("DEMO_SRC") {
        opts.lengths.max_source_length = v;
    }
    if let Some(v) = env("DEMO_TGT") {
        opts.lengths.max_target_length = v;
    }
    opts.demo_model_dir = std::env::temp_dir()
        .join(format!("demo-model-{:?}", opts.model).replace([' ', '{', '}', ':', ','], ""));
    let t0 = Instant::now();
    let report = run_demo(&opts, &mut |e| match e {
        DemoEvent::Stage(s) => println!("[{:6.1}s] {s}", t0.elapsed().as_secs_f64()),
        DemoEvent::Train(TrainEvent::Log(l)) => println!(
            "[{:6.1}s] step {} loss {:.4} grad {:.3}",
            t0.elapsed().as_secs_f64(),
            l.step,
            l.loss,
            l.grad_norm
        ),
        _ => {}
    })?;
    println!(
        "before: bleu {:.2} rouge-l {:.2}",
        report.before.bleu_4, report.before.rouge_l
    );
    println!(
        "after:  bleu {:.2} rouge-l {:.2}",
        report.after.bleu_4, report.after.rouge_l
    );
    for p in &report.after.predictions {
        println!("  {:?} -> {:?}", p.label, p.predict);
    }
    println!("answer: {:?}", report.answer);
    println!("total {:.1}s", t0.elapsed().as_secs_f64());
    Ok(())
}
