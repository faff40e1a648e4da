//! Helpers shared by the training tests: the tiny fixture model and hand-made training rows.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use chatglm_checkpoint::Checkpoint;
use chatglm_model::config::GlmConfig;
use chatglm_model::glm::GlmModel;
use chatglm_model::load::CheckpointSource;
use chatglm_ptuning::data::TrainFeature;
use chatglm_ptuning::train::{Base, freeze};

pub type Ad = Autodiff<NdArray<f32>>;

pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-glm6b")
}

/// Hand-made rows in the training layout (context, [gMASK]=291, <sop>=294, answer, <eop>=295,
/// right padding with 3 and -100 labels).
pub fn features() -> Vec<TrainFeature> {
    let rows: [(&[u32], &[u32]); 3] = [
        (&[5, 17, 42], &[30, 31, 32]),
        (&[99, 123, 7, 8], &[40, 41]),
        (&[11, 12], &[50, 51, 52, 53]),
    ];
    let width = 12;
    rows.iter()
        .map(|(ctx, ans)| {
            let mut ids: Vec<u32> = ctx.to_vec();
            ids.extend([291, 294]);
            ids.extend(ans.iter());
            ids.push(295);
            let context_length = ctx.len() + 1;
            let mut labels: Vec<i64> = vec![-100; context_length];
            labels.extend(ids[context_length..].iter().map(|&t| i64::from(t)));
            let length = ids.len();
            ids.resize(width, 3);
            labels.resize(width, -100);
            TrainFeature {
                input_ids: ids,
                labels,
                context_length,
                length,
            }
        })
        .collect()
}

/// The loop's view of `model`, with an empty `config.json`.
pub fn base<'a>(model: &'a GlmModel<Ad>, cfg: &GlmConfig) -> Base<'a, Ad> {
    Base {
        model,
        config_json: serde_json::json!({}),
        special: cfg.special_ids(),
        pad: cfg.pad_token_id,
    }
}

pub fn tiny_model() -> (GlmModel<Ad>, GlmConfig) {
    let cfg = GlmConfig::from_file(dir().join("config.json")).unwrap();
    let device = burn::backend::ndarray::NdArrayDevice::Cpu;
    let ckpt = Checkpoint::open(dir().join("model.safetensors")).unwrap();
    let model: GlmModel<Ad> =
        freeze(GlmModel::build(&cfg, &mut CheckpointSource::new(&ckpt, &device)).unwrap());
    (model, cfg)
}
