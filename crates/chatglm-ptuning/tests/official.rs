//! Compatibility with the official trainer's prefix checkpoints (`pytorch_model.bin` with
//! `transformer.prefix_encoder.*` plus `config.json`): import and export.

use std::path::{Path, PathBuf};

use chatglm_ptuning::checkpoint::{Checkpoint, TrainerState, save_checkpoint};
use chatglm_ptuning::run::{export_official, read_prefix_tensors};
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
        export_official(&ours, &exported).unwrap();
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
