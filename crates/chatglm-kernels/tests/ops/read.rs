//! `start_read`: a read queued now returns the values and shape the tensor had, whatever is
//! queued after it.

use burn::tensor::{Int, Tensor, TensorData};
use chatglm_kernels::KernelBackend;

use super::{name, random, tensor};

pub(super) fn check_start_read<B: KernelBackend>(dev: &B::Device) {
    let ids: Vec<i64> = vec![7, -3, 130_000, 0, 42, 5];
    let t = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [2, 3]), dev);
    let pending = chatglm_kernels::start_read(t.clone() * 2);
    // Work queued after the read, some of it on the same values.
    let x = random(256 * 256, 77, 1.0);
    let later = chatglm_kernels::matmul(
        tensor::<B, 2>(&x, [256, 256], dev),
        tensor::<B, 2>(&x, [256, 256], dev),
    );
    let _ = t + 1;
    let data = pending.wait().unwrap();
    assert_eq!(data.shape.as_slice(), [2, 3], "{}", name::<B>());
    let got: Vec<i64> = data.convert::<i64>().into_vec().unwrap();
    let want: Vec<i64> = ids.iter().map(|v| v * 2).collect();
    assert_eq!(got, want, "{}: start_read", name::<B>());
    drop(later);
}

/// The first index of each row's largest value (its values as the backend holds them), or
/// `guard` for a row with a NaN or an infinity.
fn host_greedy(values: &[f32], vocab: usize, guard: u32) -> Vec<i64> {
    values
        .chunks(vocab)
        .map(|row| {
            if row.iter().any(|v| !v.is_finite()) {
                return guard as i64;
            }
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best as i64
        })
        .collect()
}

/// `greedy_ids` against the host and the reference ops: ties (the first wins, also across the
/// kernel's units), rows of negative values, a NaN, +inf and -inf, rows whose length is not a
/// whole number of vectors, and logits read through a transposed view.
pub(super) fn check_greedy_ids<B: KernelBackend>(dev: &B::Device) {
    const GUARD: u32 = 20_005;
    for (rows, vocab) in [(7, 4099), (3, 130_528), (9, 24)] {
        let mut v = random(rows * vocab, 91 + vocab as u64, 4.0);
        // Row 0: two equal maxima far apart; row 1: every value negative; rows 2-4: one bad
        // value each; row 5: the maximum at the last index; row 6: a tie next to each other.
        let row = |r: usize| r * vocab;
        v[row(0) + 3] = 9.0;
        v[row(0) + vocab - 2] = 9.0;
        for x in &mut v[row(1)..row(2)] {
            *x = -1.0 - x.abs();
        }
        if rows > 6 {
            v[row(2) + vocab / 2] = f32::NAN;
            v[row(3) + 1] = f32::INFINITY;
            v[row(4) + vocab - 1] = f32::NEG_INFINITY;
            v[row(5) + vocab - 1] = 11.0;
            v[row(6) + 17] = 8.5;
            v[row(6) + 18] = 8.5;
        }
        let logits = tensor::<B, 2>(&v, [rows, vocab], dev);
        // The values as the backend rounded them (float16 makes new ties).
        let held: Vec<f32> = logits
            .clone()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap();
        let want = host_greedy(&held, vocab, GUARD);
        let ids = |t: burn::tensor::Tensor<B, 1, Int>| -> Vec<i64> {
            t.into_data().convert::<i64>().into_vec().unwrap()
        };
        let got = ids(chatglm_kernels::greedy_ids(logits.clone(), GUARD));
        assert_eq!(got, want, "{}: greedy_ids {rows} x {vocab}", name::<B>());
        let reference = ids(chatglm_kernels::reference::greedy_ids(
            logits.clone(),
            GUARD,
        ));
        assert_eq!(reference, want, "{}: reference greedy_ids", name::<B>());
        // The same rows through a view with a non-unit stride along the vocabulary.
        let mut vt = vec![0.0; v.len()];
        for (i, x) in v.iter().enumerate() {
            vt[(i % vocab) * rows + i / vocab] = *x;
        }
        let view = tensor::<B, 2>(&vt, [vocab, rows], dev).transpose();
        let got = ids(chatglm_kernels::greedy_ids(view, GUARD));
        assert_eq!(got, want, "{}: greedy_ids of a view", name::<B>());
    }
}
