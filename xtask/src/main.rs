//! Project automation. `cargo xtask ci` runs exactly what `.ci/run` runs.

use std::process::{Command, ExitCode};

/// One CI step: a program and its arguments, run from the workspace root.
struct Step {
    program: &'static str,
    args: &'static [&'static str],
}

/// The checks CI runs, in order: formatting, lints, the README's test command, then the serve
/// end-to-end test with real clients (the `openai` Python package and headless Chromium).
const CI_STEPS: &[Step] = &[
    Step {
        program: "cargo",
        args: &["fmt", "--all", "--check"],
    },
    Step {
        program: "cargo",
        args: &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    },
    Step {
        program: "cargo",
        args: &["test", "--workspace"],
    },
    Step {
        program: "bash",
        args: &["crates/chatglm-serve/e2e/run.sh"],
    },
];

fn run(step: &Step) -> bool {
    let program = match step.program {
        "cargo" => std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()),
        other => other.to_owned(),
    };
    #[allow(clippy::print_stderr)]
    {
        eprintln!("xtask: {} {}", step.program, step.args.join(" "));
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut command = Command::new(program);
    command.args(step.args).current_dir(&root);
    // CI builds once from a clean clone: incremental caches would only take disk (gigabytes for a
    // workspace linking burn into many test binaries), and CI's disk is small.
    command.env("CARGO_INCREMENTAL", "0");
    // `cargo test --workspace` has just built the `chatglm` binary (the CLI tests run it). The e2e
    // script reuses it instead of building it again with other dependency features, which would
    // compile and link burn a second time.
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), Into::into);
    let built = target.join("debug").join("chatglm");
    if step.program == "bash" && built.is_file() && std::env::var_os("CHATGLM_BIN").is_none() {
        command.env("CHATGLM_BIN", built);
    }
    command.status().map(|s| s.success()).unwrap_or(false)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => {
            for step in CI_STEPS {
                if !run(step) {
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        _ => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "usage: cargo xtask ci    # fmt check, clippy -D warnings, cargo test --workspace, serve e2e"
                );
            }
            ExitCode::from(2)
        }
    }
}
