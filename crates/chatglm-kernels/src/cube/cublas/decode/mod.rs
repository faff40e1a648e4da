//! The decode step's products and LayerNorms in CUDA C (`decode.cu`): the one-row GEMV of
//! [`crate::cube::row_gemv`], the tensor-core GEMV of [`crate::cube::mma_gemv`] (its default
//! shape) and the LayerNorm of [`crate::cube::layer_norm`] (rows of up to 4 vectors of 8 per
//! unit), the same arithmetic in the same order, compiled once per lane by NVRTC (which cubecl
//! loads anyway) and queued on cubecl's own stream from the device runner, as the GEMMs are.
//!
//! What CubeCL 0.10 cannot say, and these kernels do:
//! - programmatic dependent launch, on GPUs of compute capability 9.0 and up: each kernel is
//!   launched with programmatic stream serialization, issues the loads that do not depend on
//!   earlier kernels (weights, LayerNorm parameters), lets the next kernel launch and only then
//!   waits for the previous one's output. cubecl launches every kernel with a plain
//!   `cuLaunchKernel`, so a kernel cannot start before the previous one has ended. On the H200
//!   the one-row GEMV alone decoded one sequence 4% faster this way (256.6-256.9 against
//!   246.1-247.4 tok/s; `docs/benchmarks.md`, session 23);
//! - streaming loads of the weight (`ld.global.cs`, evicted first; CubeCL's read-only arrays
//!   compile to `ld.global.nc`): 2-7% faster per product in `benches/gpu/row_gemv.cu`, the same
//!   within the spread in the decode step (launched plainly).
//!
//! [`DecodeKernels`] (`CHATGLM_DECODE_KERNELS`) chooses: `cubecl` keeps the CubeCL kernels, `plain`
//! launches these without the attribute. They only run where the lane shares cubecl's stream: on
//! a stream of its own each kernel would need the handoff of [`super::wait`].

mod kernels;

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use super::GemmError;
use super::lane::{DecodeJob, Lanes};
use crate::DecodeKernels;
use crate::cube::as_cuda;
use burn::tensor::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::CudaRuntime;
use cubecl::server::Handle;

pub(super) use kernels::Kernels;

/// Environment variable choosing the decode step's kernels: unset or `nvrtc` for these with
/// programmatic dependent launch where the GPU has it, `plain` for these without, `cubecl` for
/// the CubeCL ones.
pub const KERNELS_ENV: &str = "CHATGLM_DECODE_KERNELS";

/// The current choice: 0 unread, then 1 + the variant's index in [`KINDS`].
static CHOICE: AtomicU8 = AtomicU8::new(0);
const KINDS: [DecodeKernels; 3] = [
    DecodeKernels::Nvrtc,
    DecodeKernels::NvrtcPlain,
    DecodeKernels::Cubecl,
];

/// The kernels decode products take: as last set by [`set_choice`], else as [`KERNELS_ENV`] says.
pub(crate) fn choice() -> DecodeKernels {
    let stored = CHOICE.load(Ordering::Relaxed);
    if stored > 0 {
        return KINDS[usize::from(stored - 1)];
    }
    let kind = match std::env::var(KERNELS_ENV) {
        Ok(v) if v.eq_ignore_ascii_case("cubecl") => DecodeKernels::Cubecl,
        Ok(v) if v.eq_ignore_ascii_case("plain") => DecodeKernels::NvrtcPlain,
        _ => DecodeKernels::Nvrtc,
    };
    set_choice(kind);
    kind
}

/// Sets the kernels of later decode products (process-wide).
pub(crate) fn set_choice(kind: DecodeKernels) {
    let index = KINDS.iter().position(|&k| k == kind).unwrap_or(0);
    CHOICE.store(index as u8 + 1, Ordering::Relaxed);
}

/// Products queued on the one-row and on the tensor-core kernel, and LayerNorms, so far in this
/// process.
static CALLS: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// See [`crate::nvrtc_gemv_calls`] and [`crate::nvrtc_layer_norm_calls`]: (one-row products,
/// tensor-core products, LayerNorms).
pub(crate) fn calls() -> (u64, u64, u64) {
    let at = |i: usize| CALLS[i].load(Ordering::Relaxed);
    (at(0), at(1), at(2))
}

/// `v` as a kernel's 32-bit parameter.
fn word(v: usize) -> Result<u32, GemmError> {
    u32::try_from(v).map_err(|_| GemmError::Unavailable("a size past 32 bits"))
}

/// Which kernel, with what it alone needs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum GemvKernel {
    /// One row: [`crate::cube::row_gemv`]'s.
    Row,
    /// 1 to 8 rows on tensor cores: [`crate::cube::mma_gemv`]'s with one tile per warp, 8 warps
    /// and 8 rounds per pass. `lhs_row`: distance between the left operand's rows in vectors;
    /// `out_row`: between the output's rows in elements; `rotate`: where cubes start along `k`
    /// (0 the first round, 1 pass `c % passes`, 2 round `c % rounds`).
    Mma {
        rows: usize,
        lhs_row: usize,
        out_row: usize,
        rotate: u32,
    },
}

/// A decode product's layout, in the kernels' terms (see `decode.cu`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GemvShape {
    pub kernel: GemvKernel,
    /// Weight rows (outputs per row).
    pub n: usize,
    /// Length of a row in 16-byte vectors.
    pub kv: usize,
    /// Distance between weight rows in vectors.
    pub rhs_row: usize,
    /// Distance between outputs in elements.
    pub out_col: usize,
    /// Distance between bias values in elements (0 without a bias).
    pub bias_step: usize,
}

/// A LayerNorm's layout: rows of `n` elements, the distances between rows of `a`, `b` and the
/// output in 16-byte vectors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerNormShape {
    pub rows: usize,
    /// Threads per cube (one row each): whole warps, each unit 4 vectors of the row at most.
    pub block: usize,
    pub n: usize,
    pub a_row: usize,
    pub b_row: usize,
    pub out_row: usize,
    pub alpha: f32,
    pub eps: f32,
    /// With `b` and the bias added to `a * alpha`.
    pub residual: bool,
}

/// One of the kernels with what it needs beyond its buffers.
#[derive(Debug, Clone, Copy)]
pub(super) enum DecodeOp {
    Gemv(GemvShape),
    LayerNorm(LayerNormShape),
}

/// [`product`] for tensors of any cube runtime: `false` (nothing queued) unless it is CUDA's.
pub(crate) fn product_on<R: CubeRuntime>(
    lhs: &CubeTensor<R>,
    rhs: &CubeTensor<R>,
    bias: Option<&CubeTensor<R>>,
    out: &CubeTensor<R>,
    shape: GemvShape,
) -> bool {
    let (Some(l), Some(r), Some(o)) = (as_cuda(lhs), as_cuda(rhs), as_cuda(out)) else {
        return false;
    };
    let b = bias.and_then(as_cuda);
    b.is_some() == bias.is_some() && product(l, r, b, o, shape)
}

/// Queues `out = lhs x rhs` (`gelu_tanh(.. + bias)` with `bias`) on a `decode.cu` kernel for
/// operands that `mma_gemv::product` checked (1 to 8 rows, half precision, 16-byte vectors along
/// `k`), or returns `false` (nothing queued) where [`submit`] does.
fn product(
    lhs: &CubeTensor<CudaRuntime>,
    rhs: &CubeTensor<CudaRuntime>,
    bias: Option<&CubeTensor<CudaRuntime>>,
    out: &CubeTensor<CudaRuntime>,
    shape: GemvShape,
) -> bool {
    let operands = vec![
        Some(lhs.handle.clone()),
        Some(rhs.handle.clone()),
        bias.map(|b| b.handle.clone()),
        Some(out.handle.clone()),
    ];
    let which = usize::from(matches!(shape.kernel, GemvKernel::Mma { .. }));
    submit(lhs, DecodeOp::Gemv(shape), operands, which)
}

/// The operands of [`layer_norm_on`]: `a`, then `b` and the bias (the residual, both or
/// neither), `gamma`, `beta`, the output.
pub(crate) type LayerNormOperands<'a, R> = (
    &'a CubeTensor<R>,
    Option<(&'a CubeTensor<R>, &'a CubeTensor<R>)>,
    &'a CubeTensor<R>,
    &'a CubeTensor<R>,
    &'a CubeTensor<R>,
);

/// Queues `out = LayerNorm(a * alpha (+ b + bias))` on `decode.cu`'s LayerNorm for operands that
/// `layer_norm::add_layer_norm` laid out (contiguous rows of 16-byte vectors, `shape.block`
/// units per row holding 4 vectors each at most), or returns `false` (nothing queued) unless `R`
/// is CUDA's and [`submit`] takes it.
pub(crate) fn layer_norm_on<R: CubeRuntime>(
    (a, residual, gamma, beta, out): LayerNormOperands<'_, R>,
    shape: LayerNormShape,
) -> bool {
    let (Some(a), Some(gamma), Some(beta), Some(out)) =
        (as_cuda(a), as_cuda(gamma), as_cuda(beta), as_cuda(out))
    else {
        return false;
    };
    let (b, bias) = match residual {
        Some((b, bias)) => match (as_cuda(b), as_cuda(bias)) {
            (Some(b), Some(bias)) => (Some(b.handle.clone()), Some(bias.handle.clone())),
            _ => return false,
        },
        None => (None, None),
    };
    let operands = vec![
        Some(a.handle.clone()),
        b,
        bias,
        Some(gamma.handle.clone()),
        Some(beta.handle.clone()),
        Some(out.handle.clone()),
    ];
    submit(a, DecodeOp::LayerNorm(shape), operands, 2)
}

/// Hands `op` on `operands` to the lane of the calling stream and counts it under `counter`, or
/// returns `false` (nothing queued) where [`choice`] is CubeCL, the dtype is not half precision
/// (`like`'s), or the lane does not take these kernels ([`Lanes::decode_ready`], asked once per
/// stream, the caller waiting for the answer).
fn submit(
    like: &CubeTensor<CudaRuntime>,
    op: DecodeOp,
    operands: Vec<Option<Handle>>,
    counter: usize,
) -> bool {
    let bf16 = match like.dtype {
        DType::F16 => false,
        DType::BF16 => true,
        _ => return false,
    };
    if choice() == DecodeKernels::Cubecl {
        return false;
    }
    let Some(runner) = super::runner(like) else {
        return false;
    };
    let ready = runner.decode.get().unwrap_or_else(|| {
        let ready = runner
            .lanes
            .submit_blocking(|lanes: &mut Lanes| lanes.decode_ready())
            .unwrap_or(false);
        runner.decode.set(Some(ready));
        ready
    });
    if !ready {
        return false;
    }
    let job = DecodeJob {
        client: like.client.clone(),
        op,
        operands,
        bf16,
        usable: runner.usable.clone(),
    };
    runner
        .lanes
        .submit(move |lanes: &mut Lanes| lanes.run_decode(job));
    runner.lanes.flush_queue();
    CALLS[counter].fetch_add(1, Ordering::Relaxed);
    true
}
