//! A prompt's additive attention mask built on the device from the batch layout, under the rules
//! of [`crate::positions`] ([`BatchLayout::prompt_mask`] is the same mask on the host).
//!
//! Built on the host, the mask of a 2048-token prompt in a 3072-slot cache is 6.3 million values,
//! filled one by one, converted to half precision one by one and uploaded: about 40 ms on the
//! H200's host, ahead of every kernel of the prompt (docs/benchmarks.md, session 18). Here the
//! host sends two numbers per row, and a few elementwise kernels compare index ramps.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::device::float_dtype;
use crate::modules::attention::MASK_VALUE;
use crate::positions::BatchLayout;

/// [`BatchLayout::prompt_mask`] on `device`: `0` where a query sees a key, [`MASK_VALUE`]
/// elsewhere. Each row sees the `prefix_len` prefix slots; a real (unpadded) query sees the real
/// keys of the bidirectional context and the real keys up to its own; the slots past the prompt
/// and the padding are hidden.
///
/// # Shapes
/// - output: `[batch, 1, width, keys]`
pub fn prompt_mask<B: Backend>(
    layout: &BatchLayout,
    prefix_len: usize,
    keys: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    let (batch, width) = (layout.rows.len(), layout.width);
    let shape = [batch, 1, width, keys];
    let per_row = |value: &dyn Fn(usize) -> usize| -> Tensor<B, 4, Int> {
        let values: Vec<i64> = (0..batch).map(|i| value(i) as i64).collect();
        Tensor::<B, 4, Int>::from_data(TensorData::new(values, [batch, 1, 1, 1]), device)
            .expand(shape)
    };
    let pad = per_row(&|i| layout.pad(i));
    // Where the bidirectional part of each row ends, in padded columns.
    let context_end = per_row(&|i| layout.pad(i) + layout.rows[i].context_len);
    let query = Tensor::<B, 1, Int>::arange(0..width as i64, device)
        .reshape([1, 1, width, 1])
        .expand(shape);
    let key = Tensor::<B, 1, Int>::arange(0..keys as i64, device)
        .reshape([1, 1, 1, keys])
        .expand(shape);
    // The key's padded prompt column (negative over the prefix).
    let column = key.clone().sub_scalar(prefix_len as i64);
    let in_prefix: Tensor<B, 4, Bool> = key.lower_elem(prefix_len as i64);
    let real_key = column
        .clone()
        .greater_equal(pad.clone())
        .bool_and(column.clone().lower_elem(width as i64));
    let real_query = query.clone().greater_equal(pad);
    let seen = column
        .clone()
        .lower(context_end)
        .bool_or(column.lower_equal(query));
    let visible = in_prefix.bool_or(real_key.bool_and(real_query).bool_and(seen));
    Tensor::<B, 4>::full(shape, MASK_VALUE, (device, float_dtype::<B>())).mask_fill(visible, 0.0)
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;

    use super::*;
    use crate::positions::TEST_SPECIAL as SP;

    /// The device mask equals the host one, value for value: rows of different lengths (left
    /// padding), with and without `<sop>` (all context), with a prefix and spare cache slots.
    #[test]
    fn device_mask_equals_the_host_rules() {
        let device = Default::default();
        let prompts = [
            vec![5, 6, 7, SP.gmask, SP.bos, 9, 10],
            vec![5, SP.gmask, SP.bos],
            vec![8, 9, 10, 11, SP.gmask],
            vec![SP.bos],
        ];
        for rows in [&prompts[..1], &prompts[1..2], &prompts[..], &prompts[2..]] {
            let layout = BatchLayout::new(rows, SP);
            for (prefix_len, spare) in [(0, 0), (0, 5), (3, 0), (4, 9)] {
                let keys = prefix_len + layout.width + spare;
                let host = layout.prompt_mask(prefix_len, keys);
                let got = prompt_mask::<NdArray<f32>>(&layout, prefix_len, keys, &device);
                assert_eq!(got.dims(), [rows.len(), 1, layout.width, keys]);
                let got = got.into_data().to_vec::<f32>().unwrap();
                assert_eq!(
                    got,
                    host,
                    "{} rows, prefix {prefix_len}, {spare} spare slots",
                    rows.len()
                );
            }
        }
    }
}
