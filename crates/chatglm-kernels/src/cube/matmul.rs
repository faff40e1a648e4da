//! Matrix product that keeps float32 in float32.
//!
//! burn's autotuned matmul also tries tensor-core kernels, and cubek runs those on float32 inputs by
//! rounding them to TF32 (10-bit mantissa). That measured 6.4e-3 away from the float32 reference on
//! the tiny ChatGLM fixture. Here float32 goes to cubek's register-tiled unit kernel (float32
//! multiply-add, no tensor cores), or the naive kernel for layouts it rejects; half precision
//! keeps burn's autotuned path.
//!
//! Before either, products of 1 to 8 half-precision rows against a matrix with contiguous
//! columns (decoding up to 8 sequences: the linear layers and lm_head) go to the tensor-core GEMV
//! ([`super::mma_gemv`], which hands one row to [`super::row_gemv`]), other one-row ones to
//! [`super::gemv`], and products of at least [`cublas::MIN_ROWS`] rows on CUDA go to cuBLAS
//! ([`super::cublas`]): in float32 without TF32, in half precision with float32 accumulation.
//! Without cuBLAS, products of up to [`gemv::MAX_ROWS`] rows take the GEMV kernel too.

use burn::tensor::DType;
use burn::tensor::ops::FloatTensorOps;
use burn_cubecl::kernel::matmul::init_matmul_output;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems};
use cubek::matmul::launch::Strategy;
use cubek::matmul::routines::{
    BlueprintStrategy, TileSizeSelection, simple_unit::SimpleUnitSelectionArgs,
};
use cubek::std::InputBinding;

use super::{cublas, gemv, mma_gemv};

/// [`cublas::matmul`] when `R` is the CUDA runtime, else [`cublas::matmul_relaid`] (half
/// precision, an operand copied to a layout cuBLAS takes).
fn cublas_matmul<R: CubeRuntime>(
    lhs: &CubeTensor<R>,
    rhs: &CubeTensor<R>,
) -> Option<CubeTensor<R>> {
    let (lhs, rhs) = (super::as_cuda(lhs)?, super::as_cuda(rhs)?);
    super::from_cuda(cublas::matmul(lhs, rhs).or_else(|| cublas::matmul_relaid(lhs, rhs))?)
}

/// Rows of the left operand (`m`).
pub(crate) fn rows<R: CubeRuntime>(lhs: &CubeTensor<R>) -> usize {
    let shape = lhs.meta.shape();
    let d = shape.num_dims();
    if d < 2 { 1 } else { shape[d - 2] }
}

pub(crate) fn matmul<R, F, I, BT>(lhs: CubeTensor<R>, rhs: CubeTensor<R>) -> CubeTensor<R>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    // 1 to 8 rows in half precision: the one-row or tensor-core GEMV. One row otherwise: the GEMV
    // kernel.
    // More: cuBLAS, or the GEMV kernel (up to 8 rows) without it.
    if let Some(out) = mma_gemv::product(&lhs, &rhs, None) {
        return out;
    }
    if rows(&lhs) == 1
        && let Some(out) = gemv::product(&lhs, &rhs, None)
    {
        return out;
    }
    if let Some(out) = cublas_matmul(&lhs, &rhs) {
        return out;
    }
    if let Some(out) = gemv::product(&lhs, &rhs, None) {
        return out;
    }
    if lhs.dtype != DType::F32 || rhs.dtype != DType::F32 {
        return CubeBackend::<R, F, I, BT>::float_matmul(lhs, rhs);
    }
    let out = init_matmul_output(&lhs, &rhs, DType::F32);
    let strategies = [
        Strategy::SimpleUnit(BlueprintStrategy::Inferred(SimpleUnitSelectionArgs {
            tile_size: TileSizeSelection::MaxTileSize,
        })),
        Strategy::Naive,
    ];
    let mut last_error = None;
    for strategy in &strategies {
        let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems {
            lhs: DType::F32.into(),
            rhs: DType::F32.into(),
            out: DType::F32.into(),
        });
        let result = cubek::matmul::launch::launch_ref(
            strategy,
            &out.client,
            InputBinding::new(lhs.clone().binding(), DType::F32.into()),
            InputBinding::new(rhs.clone().binding(), DType::F32.into()),
            out.clone().binding(),
            &mut dtypes,
        );
        match result {
            Ok(()) => return out,
            Err(err) => last_error = Some(err),
        }
    }
    // Both kernels refused the problem (not expected for dense float32 tensors): fall back to
    // burn's own matmul rather than fail.
    if let Some(err) = last_error {
        tracing::warn!("float32 matmul kernels refused the problem ({err:?}); using burn's matmul");
    }
    CubeBackend::<R, F, I, BT>::float_matmul(lhs, rhs)
}
