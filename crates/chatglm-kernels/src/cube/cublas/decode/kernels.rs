//! The driver side of [`super`]: `decode.cu` compiled by NVRTC and loaded in a lane's context,
//! and each kernel's launch, with programmatic stream serialization where the GPU has it.

use std::ffi::{CString, c_void};

use cudarc::driver::{result as cu, sys as cusys};
use cudarc::nvrtc::safe as nvrtc;

use super::{DecodeOp, GemvKernel, GemvShape, LayerNormShape, choice, word};
use crate::DecodeKernels;
use crate::cube::cublas::GemmError;

/// The kernels' CUDA C source.
const SOURCE: &str = include_str!("decode.cu");

/// Warps per cube, as `blockDim.y`.
const WARPS: u32 = 8;
/// Weight rows per cube of the tensor-core kernel.
const TILE: u32 = 16;
/// Vectors per pass of a tensor-core cube (8 rounds of 8 warps, 4 units per row): a row whose
/// length is a multiple takes the kernel without checks.
const MMA_FULL: usize = 8 * 8 * 4;

/// The kernels' names in `decode.cu`: the one-row GEMV with 16 loads in flight per unit and pass
/// (`_u8`: 8, `_u4`: 4, `_u2`: 2; `_checked`: 4, passes cut short by `k`), the tensor-core GEMV
/// (`_checked`: rounds cut short), the LayerNorm (`_residual`: with `b` and the bias), each in
/// float16 and bfloat16.
const NAMES: [&str; 18] = [
    "chatglm_row_gemv_f16",
    "chatglm_row_gemv_f16_u8",
    "chatglm_row_gemv_f16_u4",
    "chatglm_row_gemv_f16_u2",
    "chatglm_row_gemv_f16_checked",
    "chatglm_row_gemv_bf16",
    "chatglm_row_gemv_bf16_u8",
    "chatglm_row_gemv_bf16_u4",
    "chatglm_row_gemv_bf16_u2",
    "chatglm_row_gemv_bf16_checked",
    "chatglm_mma_gemv_f16",
    "chatglm_mma_gemv_f16_checked",
    "chatglm_mma_gemv_bf16",
    "chatglm_mma_gemv_bf16_checked",
    "chatglm_layer_norm_f16",
    "chatglm_layer_norm_f16_residual",
    "chatglm_layer_norm_bf16",
    "chatglm_layer_norm_bf16_residual",
];

/// Environment variable for A/B runs: loads in flight per unit and pass of the one-row GEMV
/// (`2`, `4`, `8` or `16`) wherever a row's length allows it, instead of [`ROW_UNROLL`].
const ROW_UNROLL_ENV: &str = "CHATGLM_ROW_UNROLL";

/// Loads in flight per unit and pass of the one-row GEMV by default. Fewer loads per pass leave
/// each unit fewer registers, so more warps fit on a multiprocessor: on the H200, ChatGLM-6B
/// decoded one sequence at 264.4-264.9 tok/s with 16, 278.9-279.2 with 8, 283.1-286.7 with 4
/// and 270.9 with 2 (`docs/benchmarks.md`, session 23, calls 5-7).
const ROW_UNROLL: usize = 4;

/// Loads in flight per unit and pass of the one-row GEMV for rows of `kv` vectors (a multiple of
/// 64): [`ROW_UNROLL_ENV`] where set, else [`ROW_UNROLL`]; fewer where the length asks for it.
fn row_unroll(kv: usize) -> usize {
    static FORCED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let forced = *FORCED.get_or_init(|| {
        let v = std::env::var(ROW_UNROLL_ENV).ok()?;
        match v.trim().parse::<usize>() {
            Ok(u @ (2 | 4 | 8 | 16)) => Some(u),
            _ => {
                tracing::warn!("{ROW_UNROLL_ENV}={v} ignored: expected 2, 4, 8 or 16");
                None
            }
        }
    });
    let wanted = forced.unwrap_or(ROW_UNROLL);
    [16, 8, 4, 2]
        .into_iter()
        .find(|&u| u <= wanted && kv.is_multiple_of(32 * u))
        .unwrap_or(2)
}

/// The kernels, loaded in one context, by name ([`NAMES`]).
pub(in crate::cube::cublas) struct Kernels {
    functions: std::collections::HashMap<&'static str, cusys::CUfunction>,
    /// Whether the GPU has programmatic dependent launch.
    dependent_launch: bool,
}

impl Kernels {
    /// Compiles the source for `device`'s architecture and loads it in the current context.
    pub(in crate::cube::cublas) fn load(device: cusys::CUdevice) -> Result<Self, GemmError> {
        use cusys::CUdevice_attribute::{
            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR as MAJOR,
            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR as MINOR,
        };
        let driver = GemmError::driver;
        // SAFETY: `device` comes from `cu::device::get`.
        let (major, minor) = unsafe {
            (
                cu::device::get_attribute(device, MAJOR).map_err(driver("device attribute"))?,
                cu::device::get_attribute(device, MINOR).map_err(driver("device attribute"))?,
            )
        };
        let options = nvrtc::CompileOptions {
            options: vec![format!("--gpu-architecture=compute_{major}{minor}")],
            ..Default::default()
        };
        let ptx = nvrtc::compile_ptx_with_opts(SOURCE, options)
            .map_err(GemmError::other("compiling decode.cu"))?;
        let image = CString::new(ptx.to_src()).map_err(GemmError::other("decode.cu's PTX"))?;
        let mut functions = std::collections::HashMap::new();
        // SAFETY: `image` is NUL-terminated PTX holding these functions; the module stays loaded
        // for the life of the process, as the handles taken from it do.
        unsafe {
            let module = cu::module::load_data(image.as_ptr().cast())
                .map_err(driver("loading decode.cu"))?;
            for name in NAMES {
                let c_name = CString::new(name).map_err(GemmError::other("a kernel's name"))?;
                let function = cu::module::get_function(module, c_name)
                    .map_err(driver("a decode.cu kernel"))?;
                functions.insert(name, function);
            }
        }
        Ok(Self {
            functions,
            dependent_launch: major >= 9,
        })
    }

    /// Queues `op` on `stream`, in the current context, on the buffers at `pointers` (in the
    /// kernel's order, 0 for an absent one).
    pub(in crate::cube::cublas) fn queue(
        &self,
        stream: cusys::CUstream,
        op: DecodeOp,
        bf16: bool,
        pointers: &[u64],
    ) -> Result<(), GemmError> {
        match op {
            DecodeOp::Gemv(shape) => self.queue_gemv(stream, shape, bf16, pointers),
            DecodeOp::LayerNorm(shape) => self.queue_layer_norm(stream, shape, bf16, pointers),
        }
    }

    /// Queues `out = lhs x rhs` (`gelu_tanh(.. + bias)` with a bias). `pointers`: `lhs`, `rhs`,
    /// the bias (0 without) and `out`.
    fn queue_gemv(
        &self,
        stream: cusys::CUstream,
        shape: GemvShape,
        bf16: bool,
        pointers: &[u64],
    ) -> Result<(), GemmError> {
        let &[mut lhs, mut rhs, mut bias, mut out] = pointers else {
            return Err(GemmError::Unavailable("a product has 4 buffers"));
        };
        let mut n = word(shape.n)?;
        let mut kv = word(shape.kv)?;
        let mut rhs_row = word(shape.rhs_row)?;
        let mut out_col = word(shape.out_col)?;
        let mut bias_step = word(shape.bias_step)?;
        let mut gelu = u32::from(bias != 0);
        let whole = |multiple: usize| shape.kv.is_multiple_of(multiple);
        let (name, cubes) = match (shape.kernel, bf16) {
            (GemvKernel::Row, _) if !whole(32 * 2) => (
                if bf16 {
                    "chatglm_row_gemv_bf16_checked"
                } else {
                    "chatglm_row_gemv_f16_checked"
                },
                n.div_ceil(WARPS),
            ),
            (GemvKernel::Row, _) => (
                match (row_unroll(shape.kv), bf16) {
                    (16, false) => "chatglm_row_gemv_f16",
                    (16, true) => "chatglm_row_gemv_bf16",
                    (8, false) => "chatglm_row_gemv_f16_u8",
                    (8, true) => "chatglm_row_gemv_bf16_u8",
                    (4, false) => "chatglm_row_gemv_f16_u4",
                    (4, true) => "chatglm_row_gemv_bf16_u4",
                    (_, false) => "chatglm_row_gemv_f16_u2",
                    (_, true) => "chatglm_row_gemv_bf16_u2",
                },
                n.div_ceil(WARPS),
            ),
            (GemvKernel::Mma { .. }, _) => (
                match (whole(MMA_FULL), bf16) {
                    (true, false) => "chatglm_mma_gemv_f16",
                    (true, true) => "chatglm_mma_gemv_bf16",
                    (false, false) => "chatglm_mma_gemv_f16_checked",
                    (false, true) => "chatglm_mma_gemv_bf16_checked",
                },
                n.div_ceil(TILE),
            ),
        };
        let function = self.function(name)?;
        let (mut rows, mut lhs_row, mut out_row, mut rotate) = match shape.kernel {
            GemvKernel::Row => (1, 0, 0, 0),
            GemvKernel::Mma {
                rows,
                lhs_row,
                out_row,
                rotate,
            } => (word(rows)?, word(lhs_row)?, word(out_row)?, rotate),
        };
        let mut params: Vec<*mut c_void> = vec![
            (&raw mut lhs).cast(),
            (&raw mut rhs).cast(),
            (&raw mut bias).cast(),
            (&raw mut out).cast(),
            (&raw mut n).cast(),
            (&raw mut kv).cast(),
            (&raw mut rhs_row).cast(),
        ];
        if matches!(shape.kernel, GemvKernel::Mma { .. }) {
            params.extend([(&raw mut lhs_row).cast(), (&raw mut out_row).cast()]);
        }
        params.extend([
            (&raw mut out_col).cast(),
            (&raw mut bias_step).cast(),
            (&raw mut gelu).cast(),
        ]);
        if matches!(shape.kernel, GemvKernel::Mma { .. }) {
            params.extend([(&raw mut rows).cast(), (&raw mut rotate).cast()]);
        }
        // SAFETY: the functions take (x, w, bias, out: pointers; n, kv, w_row, [x_row, out_row,]
        // out_col, bias_step, gelu[, rows, rotate]: u32), matching `params`; the buffers are live
        // cubecl buffers of the sizes `shape` describes.
        unsafe { self.launch(stream, function, (cubes, 32, WARPS), &mut params) }
    }

    /// Queues LayerNorm(a * alpha (+ b + bias)). `pointers`: `a`, `b`, the bias (both 0 without
    /// the residual), `gamma`, `beta`, `out`.
    fn queue_layer_norm(
        &self,
        stream: cusys::CUstream,
        shape: LayerNormShape,
        bf16: bool,
        pointers: &[u64],
    ) -> Result<(), GemmError> {
        let &[mut a, mut b, mut bias, mut gamma, mut beta, mut out] = pointers else {
            return Err(GemmError::Unavailable("a LayerNorm has 6 buffers"));
        };
        let (rows, block) = (word(shape.rows)?, word(shape.block)?);
        let mut n = word(shape.n)?;
        let mut a_row = word(shape.a_row)?;
        let mut b_row = word(shape.b_row)?;
        let mut out_row = word(shape.out_row)?;
        let (mut alpha, mut eps) = (shape.alpha, shape.eps);
        let function = self.function(match (bf16, shape.residual) {
            (false, false) => "chatglm_layer_norm_f16",
            (false, true) => "chatglm_layer_norm_f16_residual",
            (true, false) => "chatglm_layer_norm_bf16",
            (true, true) => "chatglm_layer_norm_bf16_residual",
        })?;
        let mut params: [*mut c_void; 12] = [
            (&raw mut a).cast(),
            (&raw mut b).cast(),
            (&raw mut bias).cast(),
            (&raw mut gamma).cast(),
            (&raw mut beta).cast(),
            (&raw mut out).cast(),
            (&raw mut n).cast(),
            (&raw mut a_row).cast(),
            (&raw mut b_row).cast(),
            (&raw mut out_row).cast(),
            (&raw mut alpha).cast(),
            (&raw mut eps).cast(),
        ];
        // SAFETY: the functions take (a, b, bias, gamma, beta, out: pointers; n, a_row, b_row,
        // out_row: u32; alpha, eps: f32), matching `params`; the buffers are live cubecl buffers
        // of the sizes `shape` describes.
        unsafe { self.launch(stream, function, (rows, block, 1), &mut params) }
    }

    /// The kernel `name` (one of [`NAMES`]).
    fn function(&self, name: &'static str) -> Result<cusys::CUfunction, GemmError> {
        self.functions
            .get(name)
            .copied()
            .ok_or(GemmError::Unavailable("a decode.cu kernel is missing"))
    }

    /// Launches `function` on `stream` with `(cubes, units along x, units along y)`, with
    /// programmatic stream serialization where the GPU has it and [`choice`] wants it.
    ///
    /// # Safety
    /// `params` must match the function's parameters, and the buffers they point to stay
    /// allocated until the kernel has run (the job holds their handles until this returns, and
    /// cubecl does not reuse them before: the kernel is on cubecl's stream).
    unsafe fn launch(
        &self,
        stream: cusys::CUstream,
        function: cusys::CUfunction,
        (cubes, x, y): (u32, u32, u32),
        params: &mut [*mut c_void],
    ) -> Result<(), GemmError> {
        let dependent = self.dependent_launch && choice() == DecodeKernels::Nvrtc;
        // SAFETY: a zeroed launch attribute is a valid value of the C union; only the field of
        // the id set below is read.
        let mut attribute: cusys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attribute.id =
            cusys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attribute.value.programmaticStreamSerializationAllowed = 1;
        let config = cusys::CUlaunchConfig {
            gridDimX: cubes,
            gridDimY: 1,
            gridDimZ: 1,
            blockDimX: x,
            blockDimY: y,
            blockDimZ: 1,
            sharedMemBytes: 0,
            hStream: stream,
            attrs: &raw mut attribute,
            numAttrs: u32::from(dependent),
        };
        // SAFETY: as the caller promises; `config` and `attribute` outlive the call.
        unsafe {
            cusys::cuLaunchKernelEx(
                &raw const config,
                function,
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(GemmError::driver("queueing a decode.cu kernel"))
    }
}
