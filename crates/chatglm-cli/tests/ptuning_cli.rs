//! `chatglm train` / `eval` / `demo` end to end on the embedded demo model (CPU).

use std::path::Path;
use std::process::Command;

fn chatglm(args: &[&str], cache: &Path, envs: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatglm"));
    cmd.args(args).env("CHATGLM_CACHE_DIR", cache);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const ROWS: &[(&str, &str)] = &[
    ("请记住你是智能助手小白白", "好的，我记住了"),
    ("你是谁?", "我是一个智能助手小白白，我可以回答您的问题。"),
    ("请优先根据我们的聊天记录来回答问题", "好的，我明白了"),
];

fn write_train_file(path: &Path) {
    let mut text = String::new();
    for (q, a) in ROWS {
        text.push_str(&serde_json::json!({"q": q, "a": a}).to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// `chatglm train` on `data` into `out` with the official flag names: pre_seq_len 4, lengths
/// 16 / 24, `batch` rows per step, `steps` steps, a log line per step, lr 0.1, JSON output.
fn train_args(data: &str, out: &str, batch: usize, steps: usize) -> Vec<String> {
    let (batch, steps) = (batch.to_string(), steps.to_string());
    [
        "train",
        "--train_file",
        data,
        "--prompt_column",
        "q",
        "--response_column",
        "a",
        "--pre_seq_len",
        "4",
        "--max_source_length",
        "16",
        "--max_target_length",
        "24",
        "--per_device_train_batch_size",
        &batch,
        "--gradient_accumulation_steps",
        "1",
        "--max_steps",
        &steps,
        "--logging_steps",
        "1",
        "--learning_rate",
        "0.1",
        "--output_dir",
        out,
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn complete_checkpoints(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    v.sort();
    v
}

#[test]
fn killed_during_save_leaves_complete_checkpoints_and_resume_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let data = tmp.path().join("train.json");
    write_train_file(&data);
    let data_s = data.to_str().unwrap();
    // The official flag names (snake_case), as pasted from train.sh.
    let common = |out: &str| -> Vec<String> {
        let mut args = train_args(data_s, out, 2, 4);
        args.extend(["--save_steps", "2", "--do_train"].map(String::from));
        args
    };
    let killed = tmp.path().join("killed");
    let args = common(killed.to_str().unwrap());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, _) = chatglm(&argv, &cache, &[("CHATGLM_PTUNING_ABORT_DURING_SAVE", "4")]);
    assert!(
        !ok,
        "the process should have been aborted during the save of step 4"
    );
    assert_eq!(complete_checkpoints(&killed), vec!["checkpoint-2"]);
    let leftovers: Vec<_> = std::fs::read_dir(&killed)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".checkpoint-4"))
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "the interrupted save stays hidden under a temp name"
    );

    // Resume with kebab-case flags and `latest`.
    let mut resume = args.clone();
    resume.extend(["--resume-from-checkpoint".to_string(), "latest".to_string()]);
    let argv: Vec<&str> = resume.iter().map(String::as_str).collect();
    let (ok, stdout, stderr) = chatglm(&argv, &cache, &[]);
    assert!(ok, "{stderr}");
    let steps: Vec<u64> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["step"].as_u64())
        .collect();
    assert_eq!(steps, vec![3, 4], "the resumed run logs steps 3 and 4 only");
    assert_eq!(
        complete_checkpoints(&killed),
        vec!["checkpoint-2", "checkpoint-4"]
    );
    assert!(
        !std::fs::read_dir(&killed)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".checkpoint-")),
        "temporary folders are cleaned on start"
    );
    let png = std::fs::read(killed.join("loss_curve.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let log = std::fs::read_to_string(killed.join("train_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 4);

    // The same run without interruption, settings from a TOML file.
    let straight = tmp.path().join("straight");
    let toml = tmp.path().join("train.toml");
    std::fs::write(
        &toml,
        format!(
            "train_file = {:?}\nprompt_column = \"q\"\nresponse_column = \"a\"\npre_seq_len = 4\n\
             max_source_length = 16\nmax_target_length = 24\nper_device_train_batch_size = 2\n\
             gradient_accumulation_steps = 1\nmax_steps = 4\nlogging_steps = 1\nsave_steps = 2\n\
             learning_rate = 0.5\noutput_dir = {:?}\n",
            data_s,
            straight.to_str().unwrap()
        ),
    )
    .unwrap();
    let (ok, stdout, stderr) = chatglm(
        &[
            "train",
            "--config",
            toml.to_str().unwrap(),
            "--learning-rate",
            "0.1",
        ],
        &cache,
        &[],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("checkpoint-4"), "{stdout}");
    let a = std::fs::read(straight.join("checkpoint-4/model.safetensors")).unwrap();
    let b = std::fs::read(killed.join("checkpoint-4/model.safetensors")).unwrap();
    assert_eq!(
        a, b,
        "killed + resumed run must equal the straight run bit for bit"
    );

    // Evaluate with the trained prefix: the reference's two files.
    let eval_dir = tmp.path().join("eval");
    let (ok, _, stderr) = chatglm(
        &[
            "eval",
            "--test_file",
            data_s,
            "--prompt_column",
            "q",
            "--response_column",
            "a",
            "--prefix",
            straight.join("checkpoint-4").to_str().unwrap(),
            "--greedy",
            "--max_source_length",
            "16",
            "--max_target_length",
            "24",
            "--output_dir",
            eval_dir.to_str().unwrap(),
        ],
        &cache,
        &[],
    );
    assert!(ok, "{stderr}");
    let preds = std::fs::read_to_string(eval_dir.join("generated_predictions.txt")).unwrap();
    assert_eq!(preds.lines().count(), ROWS.len());
    for line in preds.lines() {
        assert!(line.starts_with("{\"labels\": \""), "{line}");
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["predict"].is_string());
    }
    let res: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(eval_dir.join("predict_results.json")).unwrap(),
    )
    .unwrap();
    for k in [
        "predict_bleu-4",
        "predict_rouge-1",
        "predict_rouge-2",
        "predict_rouge-l",
        "predict_runtime",
        "predict_samples_per_second",
    ] {
        assert!(res[k].is_number(), "{k} missing in {res}");
    }
    assert_eq!(res["predict_samples"], 3);
}

#[test]
fn shortened_demo_runs_the_whole_workflow() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let (ok, stdout, stderr) = chatglm(
        &[
            "demo",
            "--output-dir",
            out.to_str().unwrap(),
            "--max-steps",
            "3",
        ],
        &tmp.path().join("cache"),
        &[],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("问：你是谁?"), "{stdout}");
    assert!(stdout.contains("loss curve"), "{stdout}");
    let train = std::fs::read_to_string(out.join("data/train.json")).unwrap();
    assert_eq!(train.lines().count(), 5);
    assert!(out.join("ptuning/checkpoint-3/model.safetensors").is_file());
    assert!(out.join("ptuning/loss_curve.png").is_file());
    for d in ["eval-before", "eval-after"] {
        let p = std::fs::read_to_string(out.join(d).join("generated_predictions.txt")).unwrap();
        assert_eq!(p.lines().count(), 5);
        assert!(out.join(d).join("predict_results.json").is_file());
    }
}

/// `(step, loss)` of the JSON log lines `chatglm train --json` prints.
fn logged_losses(stdout: &str) -> Vec<(u64, f64)> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_u64()?, v["loss"].as_f64()?)))
        .collect()
}

fn prefix_tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let ck = chatglm::checkpoint::Checkpoint::open(path).unwrap();
    let mut names: Vec<String> = ck.names().iter().map(|n| n.to_string()).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let (values, _) = ck.to_f32(&n).unwrap();
            (n, values)
        })
        .collect()
}

fn logits(prefix: Option<&Path>, out: &Path, cache: &Path) -> Vec<f32> {
    let out_s = out.to_str().unwrap();
    let mut args = vec![
        "logits",
        "--ids",
        "1495,1598,1592,3001,3004",
        "--out",
        out_s,
    ];
    if let Some(p) = prefix {
        args.extend(["--prefix", p.to_str().unwrap()]);
    }
    let (ok, _, stderr) = chatglm(&args, cache, &[]);
    assert!(ok, "{stderr}");
    let ck = chatglm::checkpoint::Checkpoint::open(out).unwrap();
    ck.to_f32("logits").unwrap().0
}

#[test]
fn export_to_the_official_layout_and_train_from_a_prefix_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let data = tmp.path().join("train.json");
    write_train_file(&data);
    let train = |out: &Path, extra: &[&str]| -> (bool, String, String) {
        // Kebab-case data flags (shared with eval), snake_case training flags.
        let mut args: Vec<&str> = "train --prompt-column q --response-column a \
             --max-source-length 16 --max-target-length 24 --per_device_train_batch_size 3 \
             --gradient_accumulation_steps 1 --logging_steps 1 --json"
            .split_whitespace()
            .collect();
        args.extend(["--train_file", data.to_str().unwrap()]);
        args.extend(["--output_dir", out.to_str().unwrap()]);
        args.extend_from_slice(extra);
        chatglm(&args, &cache, &[])
    };

    // A short run from a random prefix.
    let scratch = tmp.path().join("scratch");
    let (ok, stdout, stderr) = train(
        &scratch,
        &[
            "--pre_seq_len",
            "4",
            "--max_steps",
            "4",
            "--learning_rate",
            "0.1",
        ],
    );
    assert!(ok, "{stderr}");
    let scratch_losses = logged_losses(&stdout);
    assert_eq!(scratch_losses.len(), 4);
    let ckpt = scratch.join("checkpoint-4");
    let trained = prefix_tensors(&ckpt.join("model.safetensors"));

    // Export it to the official layout.
    let official = tmp.path().join("exported/official-ckpt");
    let ckpt_s = ckpt.to_str().unwrap();
    let official_s = official.to_str().unwrap();
    let (ok, stdout, stderr) = chatglm(
        &["export", "--checkpoint", ckpt_s, "--out", official_s],
        &cache,
        &[],
    );
    assert!(ok, "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["pre_seq_len"], 4);
    assert_eq!(summary["prefix_projection"], false);
    let mut files: Vec<String> = std::fs::read_dir(&official)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["config.json", "pytorch_model.bin"]);
    let bin = official.join("pytorch_model.bin");
    assert_eq!(
        &std::fs::read(&bin).unwrap()[..4],
        b"PK\x03\x04",
        "a torch.save zip"
    );
    let exported = prefix_tensors(&bin);
    assert_eq!(
        exported.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["transformer.prefix_encoder.embedding.weight"]
    );
    assert_eq!(
        exported, trained,
        "the official file holds the same weights"
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(official.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["pre_seq_len"], 4);
    assert_eq!(config["prefix_projection"], false);
    assert_eq!(config["num_layers"], 2, "the base model's config is kept");
    let leftovers = std::fs::read_dir(tmp.path().join("exported"))
        .unwrap()
        .count();
    assert_eq!(leftovers, 1, "no temporary folder beside the export");

    // The exported folder is the same prefix for the model: identical logits.
    let with_ours = logits(Some(&ckpt), &tmp.path().join("a.safetensors"), &cache);
    let with_official = logits(Some(&official), &tmp.path().join("b.safetensors"), &cache);
    let without = logits(None, &tmp.path().join("c.safetensors"), &cache);
    assert_eq!(with_ours, with_official);
    assert_ne!(with_ours, without, "the prefix changes the logits");

    // No silent overwrite; --force replaces; a training output folder gets a hint.
    let (ok, _, stderr) = chatglm(
        &["export", "--checkpoint", ckpt_s, "--out", official_s],
        &cache,
        &[],
    );
    assert!(!ok);
    assert!(
        stderr.contains("not empty") && stderr.contains("--force"),
        "{stderr}"
    );
    let (ok, _, stderr) = chatglm(
        &[
            "export",
            "--checkpoint",
            ckpt_s,
            "--out",
            official_s,
            "--force",
        ],
        &cache,
        &[],
    );
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = chatglm(
        &[
            "export",
            "--checkpoint",
            scratch.to_str().unwrap(),
            "--out",
            tmp.path().join("x").to_str().unwrap(),
        ],
        &cache,
        &[],
    );
    assert!(!ok);
    assert!(stderr.contains("checkpoint-4"), "{stderr}");

    // Training from the trained prefix (pre_seq_len taken from it), learning rate 0: step 1
    // sees the same batch and dropout as the random start, with a lower loss, and the prefix
    // stays the checkpoint's. A fresh run: its own log and step count.
    let ckpt_arg = ckpt.to_str().unwrap();
    let from_ours = tmp.path().join("from-ours");
    let (ok, stdout, stderr) = train(
        &from_ours,
        &[
            "--ptuning_checkpoint",
            ckpt_arg,
            "--max_steps",
            "1",
            "--learning_rate",
            "0",
        ],
    );
    assert!(ok, "{stderr}");
    let from_losses = logged_losses(&stdout);
    assert_eq!(from_losses.len(), 1);
    assert!(
        from_losses[0].1 < scratch_losses[0].1,
        "step 1 from the checkpoint {from_losses:?} vs from scratch {scratch_losses:?}"
    );
    assert_eq!(
        prefix_tensors(&from_ours.join("checkpoint-1/model.safetensors")),
        trained
    );
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(from_ours.join("checkpoint-1/trainer_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["global_step"], 1);

    // The official layout works the same (kebab-case flag).
    let from_official = tmp.path().join("from-official");
    let (ok, stdout, stderr) = train(
        &from_official,
        &[
            "--ptuning-checkpoint",
            official_s,
            "--max_steps",
            "1",
            "--learning_rate",
            "0",
        ],
    );
    assert!(ok, "{stderr}");
    assert_eq!(logged_losses(&stdout), from_losses);
    assert_eq!(
        prefix_tensors(&from_official.join("checkpoint-1/model.safetensors")),
        trained
    );

    // Flags that contradict the checkpoint are refused, naming both.
    let (ok, _, stderr) = train(
        &tmp.path().join("bad"),
        &["--ptuning_checkpoint", ckpt_arg, "--pre_seq_len", "8"],
    );
    assert!(!ok);
    assert!(
        stderr.contains("pre_seq_len = 8") && stderr.contains("checkpoint-4"),
        "{stderr}"
    );
    let (ok, _, stderr) = train(
        &tmp.path().join("bad"),
        &["--ptuning_checkpoint", ckpt_arg, "--prefix_projection"],
    );
    assert!(!ok);
    assert!(stderr.contains("prefix_projection = true"), "{stderr}");
}

/// `--gradient_checkpointing` (block recompute) trains what the plain backward trains.
#[test]
fn gradient_checkpointing_flag_trains_the_same_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let data = tmp.path().join("train.json");
    write_train_file(&data);
    let run = |out: &str, extra: &[&str]| {
        let out = tmp.path().join(out);
        let mut args = train_args(data.to_str().unwrap(), out.to_str().unwrap(), 3, 3);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, stdout, stderr) = chatglm(&args, &cache, &[]);
        assert!(ok, "{stderr}");
        (
            logged_losses(&stdout),
            prefix_tensors(&out.join("checkpoint-3/model.safetensors")),
        )
    };
    let (plain_loss, plain) = run("plain", &[]);
    let (ckpt_loss, ckpt) = run("recompute", &["--gradient_checkpointing"]);
    // train.sh's spelling, and switching it off again.
    let (pasted_loss, _) = run("pasted", &["--gradient_checkpointing", "True"]);
    assert_eq!(pasted_loss, ckpt_loss);
    let (off_loss, _) = run("off", &["--gradient_checkpointing", "false"]);
    assert_eq!(off_loss, plain_loss);
    assert_eq!(plain_loss.len(), 3);
    for ((s, a), (t, b)) in plain_loss.iter().zip(&ckpt_loss) {
        assert_eq!(s, t);
        assert!((a - b).abs() <= 1e-5 * a.abs(), "step {s}: {a} against {b}");
    }
    for ((name, a), (other, b)) in plain.iter().zip(&ckpt) {
        assert_eq!(name, other);
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5 * scale, "{name}: {x} against {y}");
        }
    }
}
