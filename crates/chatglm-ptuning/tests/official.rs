//! Compatibility with the official trainer's prefix checkpoints (`pytorch_model.bin` with
//! `transformer.prefix_encoder.*` plus `config.json`): import and export.

use std::path::{Path, PathBuf};

use chatglm_ptuning::checkpoint::{Checkpoint, TrainerState, save_checkpoint};
use chatglm_ptuning::run::{ExportOptions, export_official, read_prefix_tensors};
use chatglm_ptuning::store::load_safetensors;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-glm6b")
}

#[test]
fn official_checkpoints_import_and_our_export_round_trips() {
    for variant in ["noproj", "proj"] {
        let official = dir().join(format!("ptuning-checkpoint-official-{variant}"));
        let imported = read_prefix_tensors(&official).unwrap();
        let want = load_safetensors(&dir().join(format!("prefix_{variant}.safetensors"))).unwrap();
        assert_eq!(
            imported, want,
            "{variant}: official pytorch_model.bin differs"
        );

        // Save as our checkpoint, export to the official layout, read it back.
        let tmp = tempfile::tempdir().unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(official.join("config.json")).unwrap())
                .unwrap();
        let ck = Checkpoint {
            prefix: imported.clone(),
            optimizer: Default::default(),
            state: TrainerState {
                global_step: 1,
                max_steps: 1,
                samples_seen: 1,
                seed: 42,
                epoch: 1.0,
                log_history: vec![],
                pending_loss: (0.0, 0),
                pending_tokens: 0,
                fingerprint: serde_json::Value::Null,
            },
            config: config.clone(),
        };
        let ours = save_checkpoint(tmp.path(), 1, &ck).unwrap();
        let exported = tmp.path().join("official");
        let summary = export_official(&ours, &exported, &ExportOptions::default()).unwrap();
        assert_eq!(summary.prefix_projection, variant == "proj");
        let bin = std::fs::read(exported.join("pytorch_model.bin")).unwrap();
        assert_eq!(&bin[..4], b"PK\x03\x04", "a torch.save zip");
        assert_eq!(read_prefix_tensors(&exported).unwrap(), want);
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(exported.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["pre_seq_len"], config["pre_seq_len"]);
        assert_eq!(cfg["prefix_projection"], variant == "proj");
    }
}

fn our_checkpoint(out: &Path, variant: &str) -> PathBuf {
    let official = dir().join(format!("ptuning-checkpoint-official-{variant}"));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(official.join("config.json")).unwrap())
            .unwrap();
    let ck = Checkpoint {
        prefix: read_prefix_tensors(&official).unwrap(),
        optimizer: Default::default(),
        state: TrainerState {
            global_step: 2,
            max_steps: 2,
            samples_seen: 2,
            seed: 42,
            epoch: 1.0,
            log_history: vec![],
            pending_loss: (0.0, 0),
            pending_tokens: 0,
            fingerprint: serde_json::Value::Null,
        },
        config,
    };
    save_checkpoint(out, 2, &ck).unwrap()
}

#[test]
fn export_is_atomic_refuses_to_overwrite_and_explains_bad_sources() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("run");
    let ours = our_checkpoint(&runs, "proj");
    let want = read_prefix_tensors(&ours).unwrap();
    let exports = tmp.path().join("exports");
    let out = exports.join("official");
    let opts = ExportOptions::default();
    export_official(&ours, &out, &opts).unwrap();
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&out), ["config.json", "pytorch_model.bin"]);
    assert_eq!(names(&exports), ["official"], "no temporary folder is left");

    // An existing non-empty folder is kept unless overwriting is asked for.
    let marker = out.join("keep.txt");
    std::fs::write(&marker, "x").unwrap();
    let err = export_official(&ours, &out, &opts).unwrap_err().to_string();
    assert!(
        err.contains("not empty") && err.contains("--force"),
        "{err}"
    );
    assert!(marker.is_file());
    let force = ExportOptions {
        overwrite: true,
        ..Default::default()
    };
    export_official(&ours, &out, &force).unwrap();
    assert!(!marker.exists(), "the folder is replaced as a whole");
    assert_eq!(read_prefix_tensors(&out).unwrap(), want);
    assert_eq!(names(&exports), ["official"]);
    // An empty folder is simply filled.
    let empty = exports.join("empty");
    std::fs::create_dir(&empty).unwrap();
    export_official(&ours, &empty, &opts).unwrap();
    assert_eq!(read_prefix_tensors(&empty).unwrap(), want);

    // The base model is checked when given.
    let fits = ExportOptions {
        base_model: Some(dir()),
        ..Default::default()
    };
    export_official(&ours, &exports.join("checked"), &fits).unwrap();
    let other_base = tmp.path().join("other-base");
    std::fs::create_dir(&other_base).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("config.json")).unwrap()).unwrap();
    cfg["num_layers"] = 3.into();
    std::fs::write(other_base.join("config.json"), cfg.to_string()).unwrap();
    let err = export_official(
        &ours,
        &exports.join("x"),
        &ExportOptions {
            base_model: Some(other_base.clone()),
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("2 layers") && err.contains("3 layers") && err.contains("other-base"),
        "{err}"
    );

    // Sources that are not a checkpoint folder get an explanation.
    for (source, needle) in [
        (runs.clone(), "checkpoint-2"),
        (out.clone(), "already in the official layout"),
        (tmp.path().join("nope"), "no such checkpoint folder"),
        (exports.clone(), "model.safetensors"),
    ] {
        let err = export_official(&source, &exports.join("y"), &opts)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{source:?}: {err}");
    }
    assert!(!exports.join("x").exists() && !exports.join("y").exists());

    // A prefix that does not match its config is refused.
    let cfg_path = ours.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["pre_seq_len"] = 9.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = export_official(&ours, &exports.join("z"), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("embedding.weight") && err.contains("pre_seq_len 9"),
        "{err}"
    );
}
