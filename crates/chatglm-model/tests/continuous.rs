//! Continuous batching (`SlotDecoder`, `generate_continuous`) on the tiny ChatGLM-6B: requests
//! that start while others run, in fewer rows than requests, get the greedy tokens they get
//! alone; a request stopped by its client frees its row for the next one.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::ops::ControlFlow;

use burn::backend::NdArray;
use chatglm_model::config::GlmConfig;
use chatglm_model::generation::generate::CachedDecoder;
use chatglm_model::glm::GlmModel;
use chatglm_model::prefix::PrefixKv;
use chatglm_model::{
    FinishReason, GenerateError, GenerationConfig, RowFeed, RowRequest, SamplingConfig,
    SlotDecoder, generate, generate_continuous,
};
use common::{cases, ids, load, load_prefix, special};

type B = NdArray<f32>;

/// Hands out requests in order (request `late` only once request 0 has two tokens) and
/// records what comes back.
struct Feed {
    waiting: VecDeque<(u64, RowRequest)>,
    late: Option<(u64, RowRequest)>,
    /// Stop request `key` after this many tokens.
    stop_after: Option<(u64, usize)>,
    tokens: BTreeMap<u64, Vec<u32>>,
    finished: BTreeMap<u64, (Vec<u32>, FinishReason)>,
    /// Requests running at once, at most.
    peak: usize,
}

impl RowFeed for Feed {
    fn next_rows(&mut self, max: usize) -> Vec<(u64, RowRequest)> {
        if self.tokens.get(&0).is_some_and(|t| t.len() >= 2)
            && let Some(late) = self.late.take()
        {
            self.waiting.push_back(late);
        }
        let n = max.min(self.waiting.len());
        let rows: Vec<_> = self.waiting.drain(..n).collect();
        let running = self.tokens.len() + rows.len() - self.finished.len();
        self.peak = self.peak.max(running);
        rows
    }

    fn on_token(&mut self, key: u64, token: u32) -> ControlFlow<()> {
        let t = self.tokens.entry(key).or_default();
        t.push(token);
        match self.stop_after {
            Some((k, n)) if k == key && t.len() == n => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    }

    fn on_finish(&mut self, key: u64, ids: Vec<u32>, finish: FinishReason) {
        self.finished.insert(key, (ids, finish));
    }

    fn on_error(&mut self, key: u64, error: GenerateError) {
        panic!("request {key} failed: {error}");
    }
}

fn greedy(prompt: Vec<u32>, max_new_tokens: usize) -> RowRequest {
    RowRequest {
        prompt,
        max_new_tokens,
        sampling: SamplingConfig::greedy(),
        seed: None,
        stop_ids: Vec::new(),
    }
}

/// The first `n` greedy tokens of `prompt` alone, through the static decoder.
fn solo_greedy(
    model: &GlmModel<B>,
    cfg: &GlmConfig,
    prefix: Option<&PrefixKv<B>>,
    prompt: &[u32],
    n: usize,
) -> Vec<u32> {
    let mut d = CachedDecoder::new(
        model,
        prefix,
        special(cfg),
        cfg.pad_token_id,
        &Default::default(),
    );
    let config = GenerationConfig {
        max_new_tokens: Some(n),
        sampling: SamplingConfig::greedy(),
        ..GenerationConfig::default()
    };
    generate(&mut d, &[prompt.to_vec()], &config, |_| {
        ControlFlow::Continue(())
    })
    .unwrap()
    .ids
    .remove(0)
}

impl Feed {
    fn new(waiting: Vec<(u64, RowRequest)>, late: Option<(u64, RowRequest)>) -> Self {
        Self {
            waiting: waiting.into(),
            late,
            stop_after: None,
            tokens: BTreeMap::new(),
            finished: BTreeMap::new(),
            peak: 0,
        }
    }

    /// Serves the feed on `slots` rows of `model` and returns it.
    fn run(
        mut self,
        model: &GlmModel<B>,
        cfg: &GlmConfig,
        prefix: Option<&PrefixKv<B>>,
        slots: usize,
    ) -> Self {
        let device = Default::default();
        let mut decoder = SlotDecoder::new(
            model,
            prefix,
            slots,
            1,
            special(cfg),
            cfg.pad_token_id,
            &device,
        );
        generate_continuous(&mut decoder, &mut self).unwrap();
        assert!(decoder.is_idle());
        self
    }
}

#[test]
fn requests_joining_a_running_batch_get_their_solo_tokens() {
    let device = Default::default();
    let (cfg, model) = load::<B>("tiny-glm6b", &device);
    let prompts: Vec<Vec<u32>> = cases()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| ids(&c["input_ids"]))
        .take(4)
        .collect();
    assert_eq!(prompts.len(), 4, "four fixture prompts");
    let limits = [7usize, 3, 9, 5];
    for variant in ["base", "prefix_noproj"] {
        let prefix = load_prefix::<B>(variant, &cfg, &device);
        let kv = prefix.as_ref().map(|p| p.forward(1));
        let solo: Vec<Vec<u32>> = prompts
            .iter()
            .zip(limits)
            .map(|(p, n)| solo_greedy(&model, &cfg, kv.as_ref(), p, n))
            .collect();

        // Two rows for four requests; request 3 arrives once request 0 has two tokens, and
        // request 1's client stops it after two tokens.
        let mut feed = Feed::new(
            (0..3)
                .map(|i| (i as u64, greedy(prompts[i].clone(), limits[i])))
                .collect(),
            Some((3, greedy(prompts[3].clone(), limits[3]))),
        );
        feed.stop_after = Some((1, 2));
        let feed = feed.run(&model, &cfg, kv.as_ref(), 2);
        assert_eq!(feed.peak, 2, "{variant}: never more requests than rows");
        assert_eq!(feed.finished.len(), 4, "{variant}: every request ended");
        for (key, want) in solo.iter().enumerate() {
            let (got, finish) = &feed.finished[&(key as u64)];
            if key == 1 {
                assert_eq!(
                    got,
                    &want[..2],
                    "{variant}: request 1 until its client left"
                );
                assert_eq!(*finish, FinishReason::Cancelled);
            } else {
                assert_eq!(got, want, "{variant}: request {key}");
                assert_eq!(*finish, FinishReason::Length);
            }
            assert_eq!(&feed.tokens[&(key as u64)], got, "streamed = returned");
        }
    }
}

/// A batch mixing a greedy row and a sampling row reads logits back (no device argmax): the
/// greedy row still gets its solo tokens, and the sampled row is reproducible from its seed.
#[test]
fn greedy_and_sampled_rows_share_a_batch() {
    let device = Default::default();
    let (cfg, model) = load::<B>("tiny-glm6b", &device);
    let prompt = |i: usize| ids(&cases()["cases"][i]["input_ids"]);
    let solo = solo_greedy(&model, &cfg, None, &prompt(0), 6);
    let sampled = RowRequest {
        sampling: SamplingConfig {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            ..SamplingConfig::default()
        },
        seed: Some(11),
        ..greedy(prompt(1), 6)
    };
    let run = || {
        Feed::new(vec![(0, greedy(prompt(0), 6)), (1, sampled.clone())], None)
            .run(&model, &cfg, None, 2)
            .finished
    };
    let first = run();
    assert_eq!(first[&0].0, solo, "the greedy row's tokens");
    assert_eq!(first[&1].0.len(), 6);
    assert_eq!(
        run()[&1],
        first[&1],
        "the same seed samples the same tokens"
    );
}

/// A long request arriving while another runs grows the cache (256 -> 512 slots): the running
/// row keeps its keys and values, and both get their solo tokens.
#[test]
fn the_cache_grows_under_a_running_row() {
    let device = Default::default();
    let (cfg, model) = load::<B>("tiny-glm6b", &device);
    let prompt = |i: usize| ids(&cases()["cases"][i]["input_ids"]);
    let (short, long) = (12, 260);
    let feed = Feed::new(
        vec![(0, greedy(prompt(0), short))],
        Some((1, greedy(prompt(1), long))),
    )
    .run(&model, &cfg, None, 2);
    assert!(
        prompt(1).len() + long > 256,
        "the long request needs more than the first bucket"
    );
    assert_eq!(feed.peak, 2, "the rows ran together");
    assert_eq!(
        feed.finished[&0].0,
        solo_greedy(&model, &cfg, None, &prompt(0), short)
    );
    assert_eq!(
        feed.finished[&1].0,
        solo_greedy(&model, &cfg, None, &prompt(1), long)
    );
}
