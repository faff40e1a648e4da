//! Project automation. `cargo xtask ci` runs exactly what `.ci/run` runs.

use std::process::{Command, ExitCode};

/// The checks CI runs, in order. `.ci/run` runs the same list through `cargo xtask ci`.
const CI_STEPS: &[&[&str]] = &[
    &["fmt", "--all", "--check"],
    &["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"],
    &["test", "--workspace", "--locked"],
];

fn cargo(args: &[&str]) -> bool {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    #[allow(clippy::print_stderr)]
    {
        eprintln!("xtask: cargo {}", args.join(" "));
    }
    Command::new(cargo).args(args).status().map(|s| s.success()).unwrap_or(false)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => {
            for step in CI_STEPS {
                if !cargo(step) {
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        _ => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("usage: cargo xtask ci    # fmt check, clippy -D warnings, the README's tests");
            }
            ExitCode::from(2)
        }
    }
}
