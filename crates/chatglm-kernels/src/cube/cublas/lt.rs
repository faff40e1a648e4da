//! Half-precision GEMMs through cuBLASLt, with the algorithm chosen once per shape.
//!
//! A `cublasGemmStridedBatchedEx` call takes 45-56 us of host time on the H200's host, on
//! cubecl's device runner, which bounds a short prompt (docs/benchmarks.md). Here each
//! [`GemmPlan`] gets its cuBLASLt descriptors, layouts and heuristic's first algorithm once; a
//! call is then one `cublasLtMatmul`. Where cuBLASLt has no algorithm for a plan (or is
//! absent, or `CHATGLM_CUBLASLT=off`) the caller keeps the cuBLAS call.
//!
//! A plan may also add a bias and apply GELU to the float32 result before it is rounded
//! (`CUBLASLT_EPILOGUE_GELU_BIAS`, the h->4h projection's activation). cuBLAS has no such call,
//! so the caller asks first ([`Lt::takes`]) and keeps its own kernel where cuBLASLt declines.

use std::collections::HashMap;
use std::ffi::c_void;

use cudarc::cublas::sys::cudaDataType as CublasType;
use cudarc::cublaslt::sys as lt;
use cudarc::driver::result as cu;

use super::GemmError;
use super::layout::{GemmPlan, Operand};

/// Workspace of the chosen algorithms (cuBLAS's own default on Hopper).
const WORKSPACE: usize = 32 << 20;

/// Whether cuBLASLt may be used: not switched off, and the library loads.
pub(super) fn enabled() -> bool {
    let off = std::env::var("CHATGLM_CUBLASLT").is_ok_and(|v| v.eq_ignore_ascii_case("off"));
    // SAFETY: only tries to open the shared library.
    !off && unsafe { lt::is_culib_present() }
}

/// One plan's descriptors and algorithm (never freed: plans are few and live with the lane).
struct LtPlan {
    desc: lt::cublasLtMatmulDesc_t,
    first: lt::cublasLtMatrixLayout_t,
    second: lt::cublasLtMatrixLayout_t,
    out: lt::cublasLtMatrixLayout_t,
    algo: lt::cublasLtMatmulAlgo_t,
}

/// A cuBLASLt handle, its workspace and the plans seen so far (`None`: no algorithm).
pub(super) struct Lt {
    handle: lt::cublasLtHandle_t,
    workspace: u64,
    plans: HashMap<(GemmPlan, bool, bool), Option<LtPlan>>,
}

fn checked(s: lt::cublasStatus_t, call: &'static str) -> Result<(), GemmError> {
    if s == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(GemmError::Status {
            call,
            status: format!("{s:?}"),
        })
    }
}

impl Lt {
    /// A handle and its workspace, in the current context.
    pub(super) fn new() -> Result<Self, GemmError> {
        let mut handle = std::ptr::null_mut();
        // SAFETY: plain cuBLASLt and driver calls; both live for the life of the process.
        unsafe {
            checked(lt::cublasLtCreate(&mut handle), "cublasLtCreate")?;
            let workspace = cu::malloc_sync(WORKSPACE).map_err(GemmError::driver("workspace"))?;
            Ok(Self {
                handle,
                workspace,
                plans: HashMap::new(),
            })
        }
    }

    /// The descriptors of `plan` for half (`bf16: false`) or bfloat16 data, with the bias and
    /// GELU epilogue or without, made on first use; `None` where cuBLASLt has no algorithm.
    fn plan(&mut self, plan: &GemmPlan, bf16: bool, gelu_bias: bool) -> Option<&LtPlan> {
        let handle = self.handle;
        self.plans
            .entry((*plan, bf16, gelu_bias))
            .or_insert_with(|| {
                // SAFETY: descriptors created here from plain sizes; a failure leaves `None`.
                unsafe { make_plan(handle, plan, bf16, gelu_bias) }
                    .inspect_err(|e| {
                        tracing::debug!(
                            "cuBLASLt declines {plan:?} (GELU epilogue: {gelu_bias}): {e}"
                        )
                    })
                    .ok()
            })
            .as_ref()
    }

    /// Whether [`Lt::gemm`] takes `plan` on `data` with the bias and GELU epilogue.
    pub(super) fn takes_gelu_bias(&mut self, plan: &GemmPlan, data: CublasType) -> bool {
        half_kind(data).is_some_and(|bf16| self.plan(plan, bf16, true).is_some())
    }

    /// Queues `plan` on `stream`: `Some` with the call's result, or `None` when cuBLASLt has no
    /// algorithm for it (or `data` is not half precision) and the caller should use cuBLAS.
    /// `ptrs`: cuBLAS's first operand, second operand, output. `gelu_bias`: the address of a
    /// bias of one value per output column (burn's), added to the float32 product before GELU
    /// and the rounding.
    pub(super) fn gemm(
        &mut self,
        plan: &GemmPlan,
        data: CublasType,
        ptrs: [u64; 3],
        gelu_bias: Option<u64>,
        stream: *mut c_void,
    ) -> Option<Result<(), GemmError>> {
        let handle = self.handle;
        let (workspace, bf16) = (self.workspace, half_kind(data)?);
        let entry = self.plan(plan, bf16, gelu_bias.is_some())?;
        if let Some(bias) = gelu_bias {
            let attr = lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER;
            // SAFETY: the plan's own descriptor; the attribute is a device pointer.
            if let Err(e) = unsafe { set_desc(entry.desc, attr, &bias, "bias pointer") } {
                return Some(Err(e));
            }
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        let [first, second, out] = ptrs;
        // SAFETY: the pointers are live buffers of the sizes the plan describes (see the caller),
        // the workspace is ours, and the descriptors match the plan.
        let status = unsafe {
            lt::cublasLtMatmul(
                handle,
                entry.desc,
                (&alpha as *const f32).cast(),
                first as *const c_void,
                entry.first,
                second as *const c_void,
                entry.second,
                (&beta as *const f32).cast(),
                out as *const c_void,
                entry.out,
                out as *mut c_void,
                entry.out,
                &entry.algo,
                workspace as *mut c_void,
                WORKSPACE,
                stream.cast(),
            )
        };
        Some(checked(status, "cublasLtMatmul"))
    }
}

/// `Some(bf16)` for the half-precision data types cuBLASLt plans are made for.
fn half_kind(data: CublasType) -> Option<bool> {
    match data {
        CublasType::CUDA_R_16F => Some(false),
        CublasType::CUDA_R_16BF => Some(true),
        _ => None,
    }
}

/// Sets a matmul descriptor's attribute to `value` (of the type the attribute documents).
///
/// # Safety
/// `desc` must be a live descriptor and `T` the attribute's documented type.
unsafe fn set_desc<T>(
    desc: lt::cublasLtMatmulDesc_t,
    attr: lt::cublasLtMatmulDescAttributes_t,
    value: &T,
    what: &'static str,
) -> Result<(), GemmError> {
    let size = std::mem::size_of::<T>();
    // SAFETY: as the caller promises; cuBLASLt copies `size` bytes from `value`.
    let status =
        unsafe { lt::cublasLtMatmulDescSetAttribute(desc, attr, (value as *const T).cast(), size) };
    checked(status, what)
}

/// A column-major layout of `rows x cols` with `op`'s leading dimension and batch stride.
unsafe fn layout(
    ty: lt::cudaDataType,
    rows: i32,
    cols: i32,
    op: &Operand,
    batch: i32,
) -> Result<lt::cublasLtMatrixLayout_t, GemmError> {
    let mut l = std::ptr::null_mut();
    // SAFETY: a new layout, attributes of the documented types.
    unsafe {
        checked(
            lt::cublasLtMatrixLayoutCreate(&mut l, ty, rows as u64, cols as u64, op.ld),
            "layout",
        )?;
        if batch > 1 {
            let attr = |a, v: *const c_void, n| {
                checked(lt::cublasLtMatrixLayoutSetAttribute(l, a, v, n), "batch")
            };
            attr(
                lt::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                (&batch as *const i32).cast(),
                4,
            )?;
            attr(
                lt::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                (&op.batch_stride as *const i64).cast(),
                8,
            )?;
        }
    }
    Ok(l)
}

/// Descriptors, layouts and the heuristic's first algorithm for `plan` (with the bias and GELU
/// epilogue where `gelu_bias`; the bias pointer is set per call).
unsafe fn make_plan(
    handle: lt::cublasLtHandle_t,
    plan: &GemmPlan,
    bf16: bool,
    gelu_bias: bool,
) -> Result<LtPlan, GemmError> {
    let ty = if bf16 {
        lt::cudaDataType::CUDA_R_16BF
    } else {
        lt::cudaDataType::CUDA_R_16F
    };
    // SAFETY: new descriptors; attributes of the documented types (int32 operations, uint64
    // workspace size).
    unsafe {
        let mut desc = std::ptr::null_mut();
        checked(
            lt::cublasLtMatmulDescCreate(
                &mut desc,
                lt::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                lt::cudaDataType::CUDA_R_32F,
            ),
            "matmul descriptor",
        )?;
        let op = |t: bool| i32::from(t); // CUBLAS_OP_N = 0, CUBLAS_OP_T = 1
        for (attr, value) in [
            (
                lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                op(plan.first.trans),
            ),
            (
                lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                op(plan.second.trans),
            ),
        ] {
            set_desc(desc, attr, &value, "transpose")?;
        }
        if gelu_bias {
            let epilogue = lt::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS as u32;
            let attr = lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE;
            set_desc(desc, attr, &epilogue, "epilogue")?;
        }
        let (m, n, k) = (plan.m, plan.n, plan.k);
        let first = if plan.first.trans { (k, m) } else { (m, k) };
        let second = if plan.second.trans { (n, k) } else { (k, n) };
        let first = layout(ty, first.0, first.1, &plan.first, plan.batch)?;
        let second = layout(ty, second.0, second.1, &plan.second, plan.batch)?;
        let out = layout(ty, m, n, &plan.out, plan.batch)?;
        let mut pref = std::ptr::null_mut();
        checked(lt::cublasLtMatmulPreferenceCreate(&mut pref), "preference")?;
        let size = WORKSPACE as u64;
        checked(
            lt::cublasLtMatmulPreferenceSetAttribute(
                pref,
                lt::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&size as *const u64).cast(),
                8,
            ),
            "workspace preference",
        )?;
        let mut result = std::mem::MaybeUninit::<lt::cublasLtMatmulHeuristicResult_t>::zeroed();
        let mut found = 0;
        checked(
            lt::cublasLtMatmulAlgoGetHeuristic(
                handle,
                desc,
                first,
                second,
                out,
                out,
                pref,
                1,
                result.as_mut_ptr(),
                &mut found,
            ),
            "heuristic",
        )?;
        let _ = lt::cublasLtMatmulPreferenceDestroy(pref);
        if found < 1 {
            return Err(GemmError::Unavailable("no algorithm"));
        }
        let result = result.assume_init();
        checked(result.state, "algorithm")?;
        Ok(LtPlan {
            desc,
            first,
            second,
            out,
            algo: result.algo,
        })
    }
}
