//! `chatglm chat`: a minimal terminal chat (`clear` empties the history, `stop` exits).

use std::io::{BufRead, Write};
use std::ops::ControlFlow;

use chatglm::model::SamplingConfig;

use super::generate::ModelOpts;

/// Arguments of `chatglm chat`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelOpts,
    /// Longest prompt + answer, as the original `max_length`.
    #[arg(long, default_value_t = 2048)]
    pub max_length: usize,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 0.7)]
    pub top_p: f32,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.95)]
    pub temperature: f32,
    /// RNG seed.
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Runs `chatglm chat`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let engine = args.model.load()?;
    engine.tokenizer()?;
    let sampling = SamplingConfig {
        top_p: args.top_p,
        temperature: args.temperature,
        ..SamplingConfig::default()
    };
    let mut config = engine.generation_config(sampling);
    config.max_length = args.max_length;
    config.seed = args.seed;
    let mut history = Vec::new();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    println!("ChatGLM-6B: type a message; `clear` empties the history, `stop` exits.");
    loop {
        print!("\n用户：");
        stdout.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let query = line.trim();
        match query {
            "" => continue,
            "stop" => break,
            "clear" => {
                history.clear();
                println!("(history cleared)");
                continue;
            }
            _ => {}
        }
        print!("\nChatGLM-6B：");
        stdout.flush()?;
        let mut shown = 0usize;
        let (response, new_history) = engine.stream_chat(query, &history, &config, |text| {
            // Print what is new; process_response only rewrites punctuation near the end.
            if let Some(delta) = text.get(shown..) {
                print!("{delta}");
                let _ = std::io::stdout().flush();
                shown = text.len();
            }
            ControlFlow::Continue(())
        })?;
        if let Some(rest) = response.get(shown..) {
            print!("{rest}");
        }
        println!();
        history = new_history;
    }
    Ok(())
}
