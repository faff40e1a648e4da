//! chatglm.cpp's test data (one-layer random v1 models, hidden 32, 8 heads): final hidden
//! states over three cached steps, without and with a P-Tuning v2 prefix, and the single-op
//! linear / LayerNorm checks.

mod common;

use std::collections::HashMap;

use burn::tensor::{Tensor, TensorData};
use chatglm_model::glm::{ForwardInputs, GlmModel};
use chatglm_model::load::{LoadError, WeightSource};
use chatglm_model::modules::{LayerNorm, Linear};
use chatglm_model::positions::{BatchLayout, SpecialIds};
use chatglm_model::{GlmConfig, PrefixKv};
use common::*;

/// Little-endian reader over a `.data` file.
struct Raw {
    bytes: Vec<u8>,
    at: usize,
}

impl Raw {
    fn open(name: &str) -> Self {
        Self {
            bytes: std::fs::read(fixture(&format!("chatglm-cpp/{name}"))).unwrap(),
            at: 0,
        }
    }
    fn f32s(&mut self, n: usize) -> Vec<f32> {
        let out = self.bytes[self.at..self.at + 4 * n]
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        self.at += 4 * n;
        out
    }
    fn f16s(&mut self, n: usize) -> Vec<f32> {
        let out = self.bytes[self.at..self.at + 2 * n]
            .chunks(2)
            .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect();
        self.at += 2 * n;
        out
    }
    fn i32s(&mut self, n: usize) -> Vec<u32> {
        let out = self.bytes[self.at..self.at + 4 * n]
            .chunks(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect();
        self.at += 4 * n;
        out
    }
    fn done(&self) -> bool {
        self.at == self.bytes.len()
    }
}

/// Tensors by name, as read from the raw file.
struct MapSource<B: chatglm_model::KernelBackend> {
    map: HashMap<String, Vec<f32>>,
    device: B::Device,
}

impl<B: chatglm_model::KernelBackend> WeightSource<B> for MapSource<B> {
    fn tensor<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Tensor<B, D>, LoadError> {
        let v = self.map.remove(name).unwrap_or_else(|| panic!("no {name}"));
        Ok(Tensor::from_data(TensorData::new(v, shape), &self.device))
    }
}

const H: usize = 32;
const INNER: usize = 128;

fn config() -> GlmConfig {
    let mut cfg = GlmConfig::chatglm_6b();
    cfg.vocab_size = 5;
    cfg.hidden_size = H;
    cfg.num_layers = 1;
    cfg.num_heads = 8;
    cfg.inner_hidden_size = INNER;
    // ids [0, 1, 2]: 1 plays [gMASK] (position ids [[0,1,1],[0,0,1]]) and 2 plays <sop>.
    cfg.gmask_token_id = 1;
    cfg.bos_token_id = 2;
    cfg.mask_token_id = 99;
    cfg
}

fn read_weights(raw: &mut Raw) -> HashMap<String, Vec<f32>> {
    let l = "transformer.layers.0";
    let layout: Vec<(String, usize)> = vec![
        ("transformer.word_embeddings.weight".into(), 5 * H),
        (format!("{l}.input_layernorm.weight"), H),
        (format!("{l}.input_layernorm.bias"), H),
        (format!("{l}.attention.query_key_value.weight"), 3 * H * H),
        (format!("{l}.attention.query_key_value.bias"), 3 * H),
        (format!("{l}.attention.dense.weight"), H * H),
        (format!("{l}.attention.dense.bias"), H),
        (format!("{l}.post_attention_layernorm.weight"), H),
        (format!("{l}.post_attention_layernorm.bias"), H),
        (format!("{l}.mlp.dense_h_to_4h.weight"), INNER * H),
        (format!("{l}.mlp.dense_h_to_4h.bias"), INNER),
        (format!("{l}.mlp.dense_4h_to_h.weight"), H * INNER),
        (format!("{l}.mlp.dense_4h_to_h.bias"), H),
        ("transformer.final_layernorm.weight".into(), H),
        ("transformer.final_layernorm.bias".into(), H),
    ];
    layout.into_iter().map(|(k, n)| (k, raw.f32s(n))).collect()
}

fn run_file<B: chatglm_model::KernelBackend>(
    name: &str,
    with_prefix: bool,
    device: &B::Device,
    tol: f32,
) {
    let mut raw = Raw::open(name);
    let prefix_raw = with_prefix.then(|| raw.f16s(2 * 8 * 5 * 4));
    let cfg = config();
    let mut src = MapSource::<B> {
        map: read_weights(&mut raw),
        device: device.clone(),
    };
    let model = GlmModel::build(&cfg, &mut src).unwrap();
    let prefix: Option<PrefixKv<B>> = prefix_raw.map(|v| {
        let t = Tensor::<B, 4>::from_data(TensorData::new(v, [2, 8, 5, 4]), device);
        vec![(t.clone().narrow(0, 0, 1), t.narrow(0, 1, 1))]
    });
    let prefix_len = if with_prefix { 5 } else { 0 };
    let special = SpecialIds {
        bos: cfg.bos_token_id,
        mask: cfg.mask_token_id,
        gmask: cfg.gmask_token_id,
    };
    let mut cache = model.new_cache(1, prefix_len + 8, prefix.as_ref(), device);
    let keys = cache.capacity;
    let mut layout = None;
    for step in 0..3 {
        let n = if step == 0 { 3 } else { 1 };
        let ids = raw.i32s(n);
        let want = raw.f32s(n * H);
        let inputs = if step == 0 {
            let l = BatchLayout::new(std::slice::from_ref(&ids), special);
            let inputs = ForwardInputs::<B>::new(
                &l.padded_ids(std::slice::from_ref(&ids), 0),
                &l.prompt_positions(),
                l.prompt_mask(prefix_len, keys),
                keys,
                model.head_dim(),
                device,
            );
            layout = Some(l);
            inputs
        } else {
            let l = layout.as_ref().unwrap();
            let t: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
            ForwardInputs::<B>::new(
                &t,
                &l.step_positions(step - 1),
                l.step_mask(step - 1, prefix_len, keys),
                keys,
                model.head_dim(),
                device,
            )
        };
        let got = to_vec(model.hidden_cached(&inputs, &mut cache));
        assert_close(&got, &want, tol, &format!("{name} step {step}"));
    }
    assert!(raw.done(), "{name}: unread bytes");
}

fn glm_model<B: chatglm_model::KernelBackend>(device: &B::Device, tol: f32) {
    run_file::<B>("glm_model.data", false, device, tol.min(1e-5));
    run_file::<B>("glm_ptuning_v2_model.data", true, device, tol.min(1e-5));
}

#[test]
fn chatglm_cpp_glm_model_fixtures() {
    on_backends!(glm_model);
}

#[test]
fn chatglm_cpp_linear_and_layer_norm() {
    let device = Default::default();
    let mut raw = Raw::open("linear.data");
    let (w, b) = (raw.f32s(32 * 64), raw.f32s(32));
    let (x, y) = (raw.f32s(2 * 64), raw.f32s(2 * 32));
    let (xv, yv) = (raw.f32s(64), raw.f32s(32));
    assert!(raw.done());
    let lin = Linear::<Cpu>::new(
        Tensor::from_data(TensorData::new(w, [32, 64]), &device),
        Some(Tensor::from_data(TensorData::new(b, [32]), &device)),
    );
    let got = to_vec(lin.forward(Tensor::<Cpu, 2>::from_data(
        TensorData::new(x, [2, 64]),
        &device,
    )));
    assert_close(&got, &y, 1e-5, "linear matrix");
    let got = to_vec(lin.forward(Tensor::<Cpu, 1>::from_data(
        TensorData::new(xv, [64]),
        &device,
    )));
    assert_close(&got, &yv, 1e-5, "linear vector");

    let mut raw = Raw::open("layer_norm.data");
    let (w, b, x, y) = (
        raw.f32s(64),
        raw.f32s(64),
        raw.f32s(3 * 64),
        raw.f32s(3 * 64),
    );
    assert!(raw.done());
    let ln = LayerNorm::<Cpu>::new(
        Tensor::from_data(TensorData::new(w, [64]), &device),
        Tensor::from_data(TensorData::new(b, [64]), &device),
        1e-5,
    );
    let got = to_vec(ln.forward(Tensor::<Cpu, 3>::from_data(
        TensorData::new(x, [1, 3, 64]),
        &device,
    )));
    assert_close(&got, &y, 1e-5, "layer norm");
}
