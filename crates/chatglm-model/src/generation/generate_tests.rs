//! Tests of the decoding loop with scripted decoders.

use super::*;

/// Each row's logits favour `script[row][step]`.
struct Scripted {
    script: Vec<Vec<u32>>,
    step: usize,
    fed: Vec<Vec<u32>>,
}

impl Scripted {
    fn logits(&self) -> Vec<Vec<f32>> {
        self.script
            .iter()
            .map(|s| {
                let mut l = vec![0.0; 10];
                l[s[self.step.min(s.len() - 1)] as usize] = 1.0;
                l
            })
            .collect()
    }
}

impl Decoder for Scripted {
    fn vocab_size(&self) -> usize {
        10
    }
    fn prefill(
        &mut self,
        _prompts: &[Vec<u32>],
        _max: usize,
    ) -> Result<Vec<Vec<f32>>, GenerateError> {
        Ok(self.logits())
    }
    fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, GenerateError> {
        self.fed.push(tokens.to_vec());
        self.step += 1;
        Ok(self.logits())
    }
}

fn greedy(max_new: Option<usize>, max_length: usize, stop: Vec<u32>) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: max_new,
        max_length,
        sampling: SamplingConfig::greedy(),
        seed: None,
        stop_ids: stop,
    }
}

#[test]
fn stop_ids_end_rows_independently() {
    let mut d = Scripted {
        script: vec![vec![1, 9, 2, 2], vec![3, 4, 5, 6]],
        step: 0,
        fed: vec![],
    };
    let out = generate(
        &mut d,
        &[vec![1], vec![1, 2]],
        &greedy(Some(4), 0, vec![9]),
        |_| ControlFlow::Continue(()),
    )
    .unwrap();
    assert_eq!(out.ids, vec![vec![1, 9], vec![3, 4, 5, 6]]);
    assert_eq!(out.finish, vec![FinishReason::Stop, FinishReason::Length]);
    // A finished row keeps being fed its last token while the other row runs on.
    assert_eq!(d.fed[1][0], 9);
}

#[test]
fn max_length_counts_the_padded_prompt_and_cancel_stops() {
    let mut d = Scripted {
        script: vec![vec![1, 2, 3, 4, 5, 6]],
        step: 0,
        fed: vec![],
    };
    let out = generate(&mut d, &[vec![1, 1, 1]], &greedy(None, 5, vec![]), |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(out.ids[0], vec![1, 2]);
    let mut d = Scripted {
        script: vec![vec![1, 2, 3, 4, 5, 6]],
        step: 0,
        fed: vec![],
    };
    let mut n = 0;
    let out = generate(&mut d, &[vec![1]], &greedy(Some(6), 0, vec![]), |_| {
        n += 1;
        if n == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(out.ids[0], vec![1, 2, 3]);
    assert_eq!(out.finish[0], FinishReason::Cancelled);
}

#[test]
fn bad_prompts_are_refused() {
    let mut d = Scripted {
        script: vec![vec![1]],
        step: 0,
        fed: vec![],
    };
    let cfg = greedy(Some(1), 0, vec![]);
    assert!(matches!(
        generate(&mut d, &[vec![]], &cfg, |_| ControlFlow::Continue(())),
        Err(GenerateError::EmptyPrompt(0))
    ));
    assert!(matches!(
        generate(&mut d, &[vec![10]], &cfg, |_| ControlFlow::Continue(())),
        Err(GenerateError::BadToken { id: 10, .. })
    ));
}

fn row(prompt: Vec<u32>, max_new_tokens: usize, stop_ids: Vec<u32>) -> RowRequest {
    RowRequest {
        prompt,
        max_new_tokens,
        sampling: SamplingConfig::greedy(),
        seed: None,
        stop_ids,
    }
}

#[test]
fn rows_keep_their_own_limits_and_a_break_stops_one_row() {
    let mut d = Scripted {
        script: vec![
            vec![1, 2, 3, 4, 5, 6],
            vec![3, 4, 5, 6, 7, 8],
            vec![5, 9, 1, 1, 1, 1],
            vec![2, 2, 2, 2, 2, 2],
        ],
        step: 0,
        fed: vec![],
    };
    let rows = [
        row(vec![1], 2, vec![]),
        row(vec![1, 2], 6, vec![]),
        row(vec![1], 6, vec![9]),
        row(vec![4], 6, vec![]),
    ];
    let mut seen = vec![0usize; 4];
    let out = generate_rows(&mut d, &rows, |e| {
        seen[e.row] += 1;
        // The client of row 3 leaves after its second token.
        if e.row == 3 && seen[3] == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(
        out.ids,
        vec![vec![1, 2], vec![3, 4, 5, 6, 7, 8], vec![5, 9], vec![2, 2]]
    );
    assert_eq!(
        out.finish,
        vec![
            FinishReason::Length,
            FinishReason::Length,
            FinishReason::Stop,
            FinishReason::Cancelled
        ]
    );
    assert_eq!(seen, vec![2, 6, 2, 2], "no event after a row ended");
    // The batch ran until its longest row was done; finished rows were fed their last token.
    assert_eq!(d.fed.len(), 5);
    assert_eq!(d.fed[4], vec![2, 7, 9, 2]);
}

#[test]
fn rows_sample_with_their_own_seeds() {
    let logits = vec![vec![0.5f32; 10]; 2];
    struct Flat(Vec<Vec<f32>>);
    impl Decoder for Flat {
        fn vocab_size(&self) -> usize {
            10
        }
        fn prefill(&mut self, _: &[Vec<u32>], _: usize) -> Result<Vec<Vec<f32>>, GenerateError> {
            Ok(self.0.clone())
        }
        fn step(&mut self, _: &[u32]) -> Result<Vec<Vec<f32>>, GenerateError> {
            Ok(self.0.clone())
        }
    }
    let sampled = |seed: u64| RowRequest {
        prompt: vec![1],
        max_new_tokens: 12,
        sampling: SamplingConfig {
            temperature: 1.0,
            top_p: 1.0,
            ..SamplingConfig::default()
        },
        seed: Some(seed),
        stop_ids: vec![],
    };
    let alone = |seed| {
        generate_rows(&mut Flat(vec![logits[0].clone()]), &[sampled(seed)], |_| {
            ControlFlow::Continue(())
        })
        .unwrap()
        .ids
        .remove(0)
    };
    let together = generate_rows(&mut Flat(logits.clone()), &[sampled(7), sampled(8)], |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    // Each row draws what it would alone with its seed.
    assert_eq!(together.ids, vec![alone(7), alone(8)]);
    assert_ne!(together.ids[0], together.ids[1]);
}

/// Counts which of the decoder's methods the loop calls.
struct Counting {
    inner: Scripted,
    greedy_calls: usize,
    logits_calls: usize,
}

impl Decoder for Counting {
    fn vocab_size(&self) -> usize {
        10
    }
    fn prefill(&mut self, p: &[Vec<u32>], m: usize) -> Result<Vec<Vec<f32>>, GenerateError> {
        self.logits_calls += 1;
        self.inner.prefill(p, m)
    }
    fn step(&mut self, t: &[u32]) -> Result<Vec<Vec<f32>>, GenerateError> {
        self.logits_calls += 1;
        self.inner.step(t)
    }
    fn prefill_greedy(&mut self, p: &[Vec<u32>], m: usize) -> Result<Vec<u32>, GenerateError> {
        self.greedy_calls += 1;
        let logits = self.inner.prefill(p, m)?;
        Ok(logits.iter().map(|l| greedy_token(l)).collect())
    }
    fn step_greedy(&mut self, t: &[u32]) -> Result<Vec<u32>, GenerateError> {
        self.greedy_calls += 1;
        let logits = self.inner.step(t)?;
        Ok(logits.iter().map(|l| greedy_token(l)).collect())
    }
}

#[test]
fn greedy_decoding_asks_the_decoder_for_ids_only() {
    let run = |sampling: SamplingConfig| {
        let mut d = Counting {
            inner: Scripted {
                script: vec![vec![1, 2, 3]],
                step: 0,
                fed: vec![],
            },
            greedy_calls: 0,
            logits_calls: 0,
        };
        let config = GenerationConfig {
            sampling,
            ..greedy(Some(3), 0, vec![])
        };
        let out = generate(&mut d, &[vec![1]], &config, |_| ControlFlow::Continue(())).unwrap();
        (out.ids[0].clone(), d.greedy_calls, d.logits_calls)
    };
    assert_eq!(run(SamplingConfig::greedy()), (vec![1, 2, 3], 3, 0));
    // A repetition penalty needs the logits on the host.
    let penalised = SamplingConfig {
        repetition_penalty: 1.2,
        ..SamplingConfig::greedy()
    };
    assert_eq!(run(penalised).1, 0);
    assert_eq!(run(SamplingConfig::default()).2, 3);
}
