//! How a row-major burn matrix product maps onto one cuBLAS (strided batched) GEMM call, without
//! copying any operand.
//!
//! cuBLAS is column-major. A row-major `C[m, n] = A[m, k] B[k, n]` is the column-major
//! `C^T = B^T A^T`, so cuBLAS gets `B` as its first operand and `A` as its second, with its `m`
//! and `n` swapped. A row-major matrix with unit column stride is, read column-major, its own
//! transpose (`N`, leading dimension = row stride); one with unit row stride (a transposed view,
//! such as the `[out, in]` weights seen as `[in, out]`) is read with `T`, leading dimension =
//! column stride.

/// One operand as cuBLAS reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Operand {
    /// Read with `CUBLAS_OP_T`.
    pub trans: bool,
    /// Leading dimension, in elements.
    pub ld: i64,
    /// Elements between consecutive matrices of the batch (0: one matrix broadcast).
    pub batch_stride: i64,
}

/// A whole call: `C = A B` for row-major `A: [batch.., m, k]`, `B: [batch.., k, n]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct GemmPlan {
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub batch: i32,
    /// cuBLAS's first operand: the row-major `B`.
    pub first: Operand,
    /// cuBLAS's second operand: the row-major `A`.
    pub second: Operand,
    /// The output's row stride and batch stride (its column stride must be 1).
    pub out: Operand,
}

/// The smallest `m` (rows of the left operand) sent to cuBLAS. One row (decoding a single
/// sequence) stays on the GEMV kernel (`super::super::gemv`), which needs no stream handoff;
/// batch decoding (2 rows and more), every prefill bucket and every training GEMM go to cuBLAS,
/// whose small-`m` kernels read the weights once at several times the speed of the GEMV
/// kernel's 8-row form (`docs/benchmarks.md`).
pub(crate) const MIN_ROWS: usize = 2;

impl GemmPlan {
    /// The plan for `lhs x rhs` given their shapes and element strides, or `None` when the
    /// product is too small for cuBLAS to pay off ([`MIN_ROWS`]), its batch dimensions broadcast
    /// in a way one strided-batched call cannot express, a matrix has no unit stride, or a size
    /// does not fit cuBLAS's 32-bit arguments. `out_strides` are those of the contiguous output
    /// the caller allocated (`[batch.., m, n]`).
    pub(crate) fn new(
        lhs: (&[usize], &[usize]),
        rhs: (&[usize], &[usize]),
        out_strides: &[usize],
    ) -> Option<Self> {
        let (ls, rs) = (lhs.0, rhs.0);
        let d = ls.len();
        if d < 2 || rs.len() != d || lhs.1.len() != d || rhs.1.len() != d || out_strides.len() != d
        {
            return None;
        }
        let (m, k, n) = (ls[d - 2], ls[d - 1], rs[d - 1]);
        if rs[d - 2] != k || m < MIN_ROWS || k == 0 || n == 0 {
            return None;
        }
        let batch_dims: Vec<usize> = (0..d - 2).map(|i| ls[i].max(rs[i])).collect();
        let batch: usize = batch_dims.iter().product();
        if batch == 0 {
            return None;
        }
        let out_shape: Vec<usize> = batch_dims.iter().copied().chain([m, n]).collect();
        let second = operand(lhs.0, lhs.1, &batch_dims)?;
        let first = operand(rhs.0, rhs.1, &batch_dims)?;
        let out = operand(&out_shape, out_strides, &batch_dims)?;
        if out.trans {
            return None;
        }
        let int = |v: usize| i32::try_from(v).ok();
        let plan = Self {
            m: int(n)?,
            n: int(m)?,
            k: int(k)?,
            batch: int(batch)?,
            first,
            second,
            out,
        };
        [first.ld, second.ld, out.ld]
            .iter()
            .all(|&ld| i32::try_from(ld).is_ok())
            .then_some(plan)
    }
}

/// Element strides of a contiguous row-major tensor of `shape`.
pub(crate) fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// A row-major `[batch.., rows, cols]` tensor (shape, strides) as a cuBLAS operand of a product
/// whose batch dimensions are `batch_dims`: either the tensor has exactly those (collapsible to
/// one stride) or it has none to speak of (all 1, broadcast with stride 0).
fn operand(shape: &[usize], strides: &[usize], batch_dims: &[usize]) -> Option<Operand> {
    let d = shape.len();
    let (rows, cols) = (shape[d - 2], shape[d - 1]);
    let (sr, sc) = (strides[d - 2], strides[d - 1]);
    let (trans, ld) = if sc == 1 || cols == 1 {
        (false, if rows > 1 { sr } else { cols })
    } else if sr == 1 || rows == 1 {
        (true, if cols > 1 { sc } else { rows })
    } else {
        return None;
    };
    // cuBLAS requires the leading dimension to cover the stored matrix's first dimension.
    let min_ld = if trans { rows } else { cols };
    if ld < min_ld.max(1) {
        return None;
    }
    let batch_stride = batch_stride(&shape[..d - 2], &strides[..d - 2], batch_dims)?;
    Some(Operand {
        trans,
        ld: i64::try_from(ld).ok()?,
        batch_stride,
    })
}

/// One stride for all batch dimensions: 0 for a tensor broadcast over all of them, else the
/// stride of the innermost non-unit dimension, provided the outer ones are packed over it.
fn batch_stride(shape: &[usize], strides: &[usize], batch_dims: &[usize]) -> Option<i64> {
    if shape.iter().all(|&s| s == 1) {
        return Some(0);
    }
    if shape != batch_dims {
        return None;
    }
    let mut expected: Option<usize> = None;
    let mut innermost = 0;
    for (&size, &stride) in shape.iter().zip(strides).rev() {
        if size == 1 {
            continue;
        }
        match expected {
            None => innermost = stride,
            Some(e) if e != stride => return None,
            Some(_) => {}
        }
        expected = Some(stride * size);
    }
    i64::try_from(innermost).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::contiguous_strides as contiguous;

    #[test]
    fn a_linear_layer_reads_the_out_in_weight_transposed() {
        // x [64, 4096] x (W [12288, 4096]).T
        let x = [64, 4096];
        let wt = [4096, 12288];
        let out = contiguous(&[64, 12288]);
        let plan = GemmPlan::new((&x, &contiguous(&x)), (&wt, &[1, 4096]), &out).unwrap();
        assert_eq!((plan.m, plan.n, plan.k, plan.batch), (12288, 64, 4096, 1));
        let first = Operand {
            trans: true,
            ld: 4096,
            batch_stride: 0,
        };
        let second = Operand {
            trans: false,
            ld: 4096,
            batch_stride: 0,
        };
        assert_eq!((plan.first, plan.second), (first, second));
        assert_eq!(plan.out.ld, 12288);
    }

    #[test]
    fn attention_scores_batch_over_heads_with_transposed_keys() {
        // q [2, 32, 128, 128] x keys [2, 32, 128(d), 256(k)] stored as [2, 32, 256, 128].
        let q = [2, 32, 128, 128];
        let k = [2, 32, 128, 256];
        let k_strides = [32 * 256 * 128, 256 * 128, 1, 128];
        let out = contiguous(&[2, 32, 128, 256]);
        let plan = GemmPlan::new((&q, &contiguous(&q)), (&k, &k_strides), &out).unwrap();
        assert_eq!((plan.m, plan.n, plan.k, plan.batch), (256, 128, 128, 64));
        assert!(plan.first.trans && !plan.second.trans);
        assert_eq!(plan.first.batch_stride, 256 * 128);
        assert_eq!(plan.second.batch_stride, 128 * 128);
        assert_eq!(plan.out.batch_stride, 128 * 256);
    }

    #[test]
    fn pitched_rows_and_broadcast_weights_are_expressed_without_copies() {
        // Rows padded to 72 elements; the weight shared by every batch entry (stride 0).
        let x = [3, 40, 64];
        let x_strides = [40 * 72, 72, 1];
        let w = [1, 64, 16];
        let plan = GemmPlan::new(
            (&x, &x_strides),
            (&w, &contiguous(&w)),
            &contiguous(&[3, 40, 16]),
        )
        .unwrap();
        assert_eq!(plan.second.ld, 72);
        assert_eq!(plan.second.batch_stride, 40 * 72);
        assert_eq!(plan.first.batch_stride, 0);
        assert_eq!(plan.batch, 3);
    }

    #[test]
    fn products_cublas_cannot_express_stay_with_burn() {
        let c = contiguous;
        // One row (decoding one sequence: the GEMV kernel's); two rows already go to cuBLAS.
        assert!(
            GemmPlan::new(
                (&[1, 64], &c(&[1, 64])),
                (&[64, 16], &c(&[64, 16])),
                &c(&[1, 16])
            )
            .is_none()
        );
        assert!(
            GemmPlan::new(
                (&[2, 64], &c(&[2, 64])),
                (&[64, 16], &c(&[64, 16])),
                &c(&[2, 16])
            )
            .is_some()
        );
        // Neither stride of the left matrix is 1.
        assert!(
            GemmPlan::new(
                (&[40, 64], &[128, 2]),
                (&[64, 16], &c(&[64, 16])),
                &c(&[40, 16])
            )
            .is_none()
        );
        // Partial broadcast: [2, 1] against [2, 3] batch dimensions.
        assert!(
            GemmPlan::new(
                (&[2, 1, 40, 8], &c(&[2, 1, 40, 8])),
                (&[2, 3, 8, 4], &c(&[2, 3, 8, 4])),
                &c(&[2, 3, 40, 4])
            )
            .is_none()
        );
        // Batch dimensions that do not collapse to one stride (a narrowed head dimension).
        assert!(
            GemmPlan::new(
                (&[2, 3, 40, 8], &[4 * 320, 320, 8, 1]),
                (&[2, 3, 8, 4], &c(&[2, 3, 8, 4])),
                &c(&[2, 3, 40, 4])
            )
            .is_none()
        );
        // Mismatched inner dimensions.
        assert!(
            GemmPlan::new(
                (&[40, 8], &c(&[40, 8])),
                (&[9, 4], &c(&[9, 4])),
                &c(&[40, 4])
            )
            .is_none()
        );
    }
}
