//! Parity with the original Python ChatGLM-6B on the tiny fixtures: full logits, greedy ids,
//! cached decoding against recomputation, P-Tuning v2 prefixes from official checkpoints, the
//! sharded `.bin` layout, and left-padded batches against single runs.

mod common;

use std::ops::ControlFlow;

use chatglm_model::generation::generate::CachedDecoder;
use chatglm_model::{GenerationConfig, SamplingConfig, generate};
use common::*;

fn greedy(n: usize) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: Some(n),
        sampling: SamplingConfig::greedy(),
        ..Default::default()
    }
}

fn all_cases<B: chatglm_model::KernelBackend>(device: &B::Device, tol: f32) {
    let cases = cases();
    let n_new = cases["n_new_tokens"].as_u64().unwrap() as usize;
    let (cfg, model) = load::<B>("tiny-glm6b", device);
    for case in cases["cases"].as_array().unwrap() {
        let variant = case["variant"].as_str().unwrap();
        let name = case["name"].as_str().unwrap();
        let what = format!("{variant}/{name}");
        let input = ids(&case["input_ids"]);
        let prefix = load_prefix::<B>(variant, &cfg, device);

        // Full logits of the prompt.
        let got = full_logits(&cfg, &model, prefix.as_ref(), &input, device);
        let (want, shape) = reference(&format!("{variant}/{name}/logits"));
        assert_eq!(shape, vec![input.len(), cfg.vocab_size]);
        assert_close(&got, &want, tol, &format!("{what} logits"));

        // Greedy generation with the KV cache.
        let kv = prefix.as_ref().map(|p| p.forward(1));
        let mut decoder =
            CachedDecoder::new(&model, kv.as_ref(), special(&cfg), cfg.pad_token_id, device);
        let mut streamed = Vec::new();
        let out = generate(
            &mut decoder,
            std::slice::from_ref(&input),
            &greedy(n_new),
            |e| {
                streamed.push(e.token);
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        assert_eq!(
            out.ids[0],
            ids(&case["greedy_new_ids"]),
            "{what} greedy ids"
        );
        assert_eq!(streamed, out.ids[0], "{what} streamed ids");

        // The whole prompt + continuation recomputed without a cache matches the reference.
        let full: Vec<u32> = input.iter().chain(&out.ids[0]).copied().collect();
        let got = full_logits(&cfg, &model, prefix.as_ref(), &full, device);
        let (want, _) = reference(&format!("{variant}/{name}/logits_prompt_plus_generation"));
        assert_close(
            &got,
            &want,
            tol,
            &format!("{what} prompt+generation logits"),
        );
    }
}

#[test]
fn logits_and_greedy_ids_match_the_original() {
    on_backends!(all_cases);
}

/// Cached step logits equal the rows of an uncached forward over the same tokens.
fn cached_equals_recomputation<B: chatglm_model::KernelBackend>(device: &B::Device, tol: f32) {
    let (cfg, model) = load::<B>("tiny-glm6b", device);
    for variant in ["base", "prefix_proj"] {
        let prefix = load_prefix::<B>(variant, &cfg, device);
        let kv = prefix.as_ref().map(|p| p.forward(1));
        let prompt = vec![7, 8, 9, 10, cfg.gmask_token_id, cfg.bos_token_id];
        let feed = [11u32, 12, 13, 14, 15, 16];
        let mut decoder =
            CachedDecoder::new(&model, kv.as_ref(), special(&cfg), cfg.pad_token_id, device);
        use chatglm_model::Decoder;
        let mut rows = vec![
            decoder
                .prefill(std::slice::from_ref(&prompt), feed.len())
                .unwrap()
                .remove(0),
        ];
        for t in feed {
            rows.push(decoder.step(&[t]).unwrap().remove(0));
        }
        let full: Vec<u32> = prompt.iter().chain(&feed).copied().collect();
        let reference = full_logits(&cfg, &model, prefix.as_ref(), &full, device);
        let v = cfg.vocab_size;
        for (i, row) in rows.iter().enumerate() {
            let pos = prompt.len() - 1 + i;
            assert_close(
                row,
                &reference[pos * v..(pos + 1) * v],
                tol,
                &format!("{variant} step {i}"),
            );
        }
    }
}

#[test]
fn cached_decoding_equals_recomputation() {
    on_backends!(cached_equals_recomputation);
}

/// A left-padded batch of two gives the same tokens and logits as two single runs.
fn batch_equals_single<B: chatglm_model::KernelBackend>(device: &B::Device, tol: f32) {
    let cases = cases();
    let (cfg, model) = load::<B>("tiny-glm6b", device);
    for variant in ["base", "prefix_noproj"] {
        let prompts: Vec<Vec<u32>> = cases["cases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["variant"] == variant)
            .map(|c| ids(&c["input_ids"]))
            .collect();
        assert_eq!(prompts.len(), 2);
        let prefix = load_prefix::<B>(variant, &cfg, device);
        let run = |batch: &[Vec<u32>]| {
            let kv = prefix.as_ref().map(|p| p.forward(batch.len()));
            let mut decoder =
                CachedDecoder::new(&model, kv.as_ref(), special(&cfg), cfg.pad_token_id, device);
            use chatglm_model::Decoder;
            let first = decoder.prefill(batch, 1).unwrap();
            let mut decoder =
                CachedDecoder::new(&model, kv.as_ref(), special(&cfg), cfg.pad_token_id, device);
            let out = generate(&mut decoder, batch, &greedy(12), |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
            (first, out.ids)
        };
        let (batch_first, batch_ids) = run(&prompts);
        let backend = B::name(device);
        for (i, p) in prompts.iter().enumerate() {
            let (first, ids) = run(std::slice::from_ref(p));
            assert_close(
                &batch_first[i],
                &first[0],
                tol,
                &format!("{backend}: {variant} row {i} prefill logits"),
            );
            assert_eq!(batch_ids[i], ids[0], "{backend}: {variant} row {i} ids");
        }
    }
}

#[test]
fn left_padded_batch_equals_single_runs() {
    on_backends!(batch_equals_single);
}

/// The sharded PyTorch `.bin` layout of the same weights gives the same logits.
fn bin_checkpoint<B: chatglm_model::KernelBackend>(device: &B::Device, tol: f32) {
    let cases = cases();
    let (cfg, model) = load::<B>("tiny-glm6b-bin", device);
    for case in cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["variant"] == "base")
    {
        let name = case["name"].as_str().unwrap();
        let input = ids(&case["input_ids"]);
        let got = full_logits(&cfg, &model, None, &input, device);
        let (want, _) = reference(&format!("base/{name}/logits"));
        assert_close(&got, &want, tol, &format!("bin {name}"));
    }
}

#[test]
fn sharded_bin_checkpoint_matches() {
    on_backends!(bin_checkpoint);
}

#[test]
fn prefix_safetensors_equal_official_checkpoints() {
    let device = Default::default();
    let (cfg, model) = load::<Cpu>("tiny-glm6b", &device);
    let cases = cases();
    for (variant, file) in [
        ("prefix_noproj", "prefix_noproj.safetensors"),
        ("prefix_proj", "prefix_proj.safetensors"),
    ] {
        let case = cases["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["variant"] == variant)
            .unwrap();
        let input = ids(&case["input_ids"]);
        let official = load_prefix::<Cpu>(variant, &cfg, &device).unwrap();
        // The loose safetensors file has no config.json beside it: the layout is inferred.
        let loose = chatglm_model::PrefixEncoder::<Cpu>::load(
            &fixture(&format!("tiny-glm6b/{file}")),
            &cfg,
            &device,
        )
        .unwrap();
        assert_eq!(loose.trans.is_some(), variant == "prefix_proj");
        let a = full_logits(&cfg, &model, Some(&official), &input, &device);
        let b = full_logits(&cfg, &model, Some(&loose), &input, &device);
        assert_close(&a, &b, 1e-6, variant);
    }
}

#[test]
fn rotary_frequencies_equal_the_checkpoint_buffer() {
    let ckpt = chatglm_checkpoint::Checkpoint::open(fixture("tiny-glm6b")).unwrap();
    let (buf, _) = ckpt
        .to_f32("transformer.layers.0.attention.rotary_emb.inv_freq")
        .unwrap();
    assert_eq!(chatglm_model::modules::rotary::inv_freq(8), buf);
}

/// A long prompt's rotary tables, which the device puts together from the per-id rows and the
/// ids, hold the host's rows bit for bit (float32): query half scaled, key half as is.
fn long_rotary_tables<B: chatglm_model::KernelBackend>(device: &B::Device, _tol: f32) {
    use chatglm_model::modules::rotary::{Rope, host_tables};
    use chatglm_model::positions::PositionIds;
    let (batch, seq, head_dim) = (2, 300, 128);
    let n = batch * seq;
    let positions = PositionIds {
        batch,
        seq,
        position: (0..n as i64).map(|i| i % seq as i64).collect(),
        block: (0..n as i64)
            .map(|i| (i % seq as i64 - 250).max(0))
            .collect(),
    };
    let rope = Rope::<B>::new(&positions, head_dim, device);
    let (cos, sin) = host_tables(&positions, head_dim);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let qk = |t: &[f32]| -> Vec<u32> {
        t.chunks(head_dim)
            .flat_map(|row| row.iter().map(|v| v * scale).chain(row.iter().copied()))
            .map(f32::to_bits)
            .collect()
    };
    for (what, got, want) in [("cos", rope.cos, qk(&cos)), ("sin", rope.sin, qk(&sin))] {
        assert_eq!(got.dims(), [batch, 1, seq, 2 * head_dim]);
        let got: Vec<u32> = got
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect();
        assert!(
            got == want,
            "{what}: the device's tables differ from the host's rows"
        );
    }
}

#[test]
fn long_prompt_rotary_tables_equal_the_host_rows() {
    on_backends!(long_rotary_tables);
}
