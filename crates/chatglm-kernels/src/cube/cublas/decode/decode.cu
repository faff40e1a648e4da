// The decode step's products (1 to 8 rows against a half-precision matrix with contiguous
// columns) of `cube/row_gemv.rs` and `cube/mma_gemv.rs`, and its LayerNorm of
// `cube/layer_norm.rs`, in CUDA C for NVRTC: the same arithmetic in the same order (so the same
// bits), plus what CubeCL cannot express (see `mod.rs`): streaming loads for the one-row GEMV's
// weight and programmatic dependent launch. No headers: conversions, loads and the MMA are PTX,
// so NVRTC needs no CUDA include path.

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

struct alignas(16) Vec {
  u32 a, b, c, d;
};

// The weight: read once per token, so streamed (evict first) rather than kept in L1 or L2.
__device__ __forceinline__ Vec load_weight(const Vec* p) {
  Vec v;
  asm volatile("ld.global.cs.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.a), "=r"(v.b), "=r"(v.c), "=r"(v.d)
               : "l"(p));
  return v;
}

// A weight read by 64-byte pieces of each row, as the tensor-core GEMV reads it: through the
// read-only path (streaming loads, evicted first from L2, read these slower: the other half of a
// 128-byte line comes from another warp).
__device__ __forceinline__ Vec load_weight_piece(const Vec* p) {
  Vec v;
  asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.a), "=r"(v.b), "=r"(v.c), "=r"(v.d)
               : "l"(p));
  return v;
}

// The input row: written by the previous kernel, read by every warp (through L1).
__device__ __forceinline__ Vec load_input(const Vec* p) {
  Vec v;
  asm volatile("ld.global.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.a), "=r"(v.b), "=r"(v.c), "=r"(v.d)
               : "l"(p)
               : "memory");
  return v;
}

__device__ __forceinline__ float from_f16(u16 h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}

__device__ __forceinline__ float from_bits(u32 bits) {
  float f;
  asm("mov.b32 %0, %1;" : "=f"(f) : "r"(bits));
  return f;
}

// Element `i` (0 or 1) of a pair of half-precision values packed in `word`, in float32.
template <bool BF16>
__device__ __forceinline__ float element(u32 word, int i) {
  if (BF16) return from_bits(i == 0 ? word << 16 : word & 0xffff0000u);
  return from_f16((u16)(i == 0 ? word & 0xffffu : word >> 16));
}

template <bool BF16>
__device__ __forceinline__ u16 round_to(float f) {
  u16 h;
  if (BF16) {
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
  } else {
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  }
  return h;
}

template <bool BF16>
__device__ __forceinline__ float from_half(u16 h) {
  return BF16 ? from_bits((u32)h << 16) : from_f16(h);
}

template <bool BF16>
__device__ __forceinline__ void accumulate(float* acc, Vec w, Vec x) {
  const u32 ws[4] = {w.a, w.b, w.c, w.d};
  const u32 xs[4] = {x.a, x.b, x.c, x.d};
#pragma unroll
  for (int j = 0; j < 8; j++) {
    acc[j] += element<BF16>(ws[j / 2], j % 2) * element<BF16>(xs[j / 2], j % 2);
  }
}

// Lets the next kernel (launched with programmatic stream serialization) start, then waits until
// the previous one has finished and its writes are visible. No-ops when not launched that way.
__device__ __forceinline__ void hand_over() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// ChatGLM-6B's tanh-approximation GELU in float32, written as `cube/elementwise.rs` computes it.
__device__ __forceinline__ float gelu_tanh(float v) {
  const float a = 0.7978845834732056f * v;
  const float b = 0.044714998453855515f * v;
  const float c = b * v;
  const float d = 1.0f + c;
  const float inner = a * d;
  const float half_v = 0.5f * v;
  return half_v * (1.0f + tanhf(inner));
}

// The product rounded to the dtype, then the bias and GELU in float32 (`matmul_bias_gelu`).
template <bool BF16>
__device__ __forceinline__ float bias_gelu(float product, u16 bias) {
  return gelu_tanh(from_half<BF16>(round_to<BF16>(product)) + from_half<BF16>(bias));
}

// One row. A warp per weight row, 8 warps per cube; each unit reads the row's 16-byte vectors
// `lane`, `lane + 32`, ... (U of them in flight per pass), sums `w * x` per element in float32 (8
// accumulators), adds the 8 up in order and the warp's units with an xor reduction.
//
// `out[row * out_col] = sum_k x[k] w[row, k]` (then `gelu_tanh` of it, rounded, plus
// `bias[row * bias_step]`, when `gelu`); `kv`, `w_row` in 16-byte vectors. U loads per unit and
// pass; CHECKED: passes may reach past `kv` (those vectors count as zero).
template <bool BF16, int U, bool CHECKED>
__device__ __forceinline__ void row_gemv(const Vec* x, const Vec* w, const u16* bias, u16* out,
                                         u32 n, u32 kv, u32 w_row, u32 out_col, u32 bias_step,
                                         u32 gelu) {
  const u32 lane = threadIdx.x;
  const u32 wanted = blockIdx.x * blockDim.y + threadIdx.y;
  // A warp past `n` reads the last row again and stores nothing.
  const u32 row = wanted < n ? wanted : n - 1;
  const Vec* wr = w + (u64)row * w_row;
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  const Vec zero = {0u, 0u, 0u, 0u};
  Vec buf[U];
  u32 first = lane;
#pragma unroll
  for (int u = 0; u < U; u++) {
    const u32 v = first + u * 32;
    buf[u] = (!CHECKED || v < kv) ? load_weight(wr + v) : zero;
  }
  // The weight does not depend on earlier kernels; the input does.
  hand_over();
  while (first < kv) {
#pragma unroll
    for (int u = 0; u < U; u++) {
      const u32 v = first + u * 32;
      const Vec xv = (!CHECKED || v < kv) ? load_input(x + v) : zero;
      accumulate<BF16>(acc, buf[u], xv);
    }
    first += 32 * U;
    if (first < kv) {
#pragma unroll
      for (int u = 0; u < U; u++) {
        const u32 v = first + u * 32;
        buf[u] = (!CHECKED || v < kv) ? load_weight(wr + v) : zero;
      }
    }
  }
  float total = acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7];
#pragma unroll
  for (u32 offset = 1; offset < 32; offset *= 2) {
    total += __shfl_xor_sync(0xffffffffu, total, offset);
  }
  if (lane == 0 && wanted < n) {
    if (gelu) {
      total = bias_gelu<BF16>(total, bias[row * bias_step]);
    }
    out[row * out_col] = round_to<BF16>(total);
  }
}

// 2 to 8 rows on tensor cores (`mma.m16n8k16`, float32 accumulation), as `cube/mma_gemv.rs`
// with its default shape: a cube of 8 warps owns 16 weight rows; the warps take consecutive
// 32-wide steps of `k` (a round), U rounds per pass; in a round each unit loads the 16-byte vector
// `4 warp + quad` of weight rows `group` and `group + 8` and of the left operand's row `group`
// (zero past `rows`), which feed two MMAs (values 0-3, then 4-7: the `k` positions permuted alike
// in both operands). Cube `c` starts at round `c % rounds` (`rotate` 2), pass `c % passes` (1)
// or the first (0). The warps' partial sums meet in shared memory; one unit per output adds them
// up in warp order.
__device__ __forceinline__ void mma_f16(float* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_bf16(float* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Both MMAs of one round: `lo`, `hi` the unit's weight vectors (rows `group`, `group + 8`), `x`
// the left operand's.
template <bool BF16>
__device__ __forceinline__ void mma_round(float* acc, Vec lo, Vec hi, Vec x) {
  if (BF16) {
    mma_bf16(acc, lo.a, hi.a, lo.b, hi.b, x.a, x.b);
    mma_bf16(acc, lo.c, hi.c, lo.d, hi.d, x.c, x.d);
  } else {
    mma_f16(acc, lo.a, hi.a, lo.b, hi.b, x.a, x.b);
    mma_f16(acc, lo.c, hi.c, lo.d, hi.d, x.c, x.d);
  }
}

constexpr u32 MMA_WARPS = 8;
constexpr u32 TILE = 16;

template <bool BF16, int U, bool CHECKED>
__device__ __forceinline__ void mma_gemv(const Vec* x, const Vec* w, const u16* bias, u16* out,
                                         u32 n, u32 kv, u32 w_row, u32 x_row_step, u32 out_row,
                                         u32 out_col, u32 bias_step, u32 gelu, u32 rows,
                                         u32 rotate) {
  __shared__ float partial[MMA_WARPS * 128];
  const u32 lane = threadIdx.x, warp = threadIdx.y;
  const u32 group = lane / 4, quad = lane % 4;
  const u32 first_row = blockIdx.x * TILE;
  u32 row_lo = first_row + group, row_hi = first_row + 8 + group;
  if (row_lo >= n) row_lo = n - 1;
  if (row_hi >= n) row_hi = n - 1;
  const Vec* w_lo = w + (u64)row_lo * w_row;
  const Vec* w_hi = w + (u64)row_hi * w_row;
  const bool has_x = group < rows;
  const Vec* xr = x + (has_x ? group * x_row_step : 0u);
  const u32 rounds = (kv + MMA_WARPS * 4 - 1) / (MMA_WARPS * 4);
  const u32 passes = (rounds + U - 1) / U;
  u32 first = 0;
  if (rotate == 1) first = (blockIdx.x % passes) * U;
  if (rotate == 2) first = blockIdx.x % rounds;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  const Vec zero = {0u, 0u, 0u, 0u};
  Vec lo[U], hi[U], xs[U];
  for (u32 p = 0; p < passes; p++) {
#pragma unroll
    for (int u = 0; u < U; u++) {
      const u32 slot = p * U + u;
      const u32 v = (((slot + first) % rounds) * MMA_WARPS + warp) * 4 + quad;
      const bool inside = !CHECKED || (slot < rounds && v < kv);
      lo[u] = inside ? load_weight_piece(w_lo + v) : zero;
      hi[u] = inside ? load_weight_piece(w_hi + v) : zero;
    }
    // The weight does not depend on earlier kernels; the input does.
    if (p == 0) hand_over();
#pragma unroll
    for (int u = 0; u < U; u++) {
      const u32 slot = p * U + u;
      const u32 v = (((slot + first) % rounds) * MMA_WARPS + warp) * 4 + quad;
      const bool inside = !CHECKED || (slot < rounds && v < kv);
      xs[u] = (has_x && inside) ? load_input(xr + v) : zero;
    }
#pragma unroll
    for (int u = 0; u < U; u++) mma_round<BF16>(acc, lo[u], hi[u], xs[u]);
  }
#pragma unroll
  for (int e = 0; e < 4; e++) partial[warp * 128 + lane * 4 + e] = acc[e];
  __syncthreads();
  const u32 unit = warp * 32 + lane;
  if (unit < 128) {
    float total = 0.f;
#pragma unroll
    for (u32 wi = 0; wi < MMA_WARPS; wi++) total += partial[wi * 128 + unit];
    // Accumulator element `unit % 4` of lane `unit / 4`: row `group (+ 8)`, column `2 quad (+ 1)`.
    const u32 src = unit / 4, element = unit % 4;
    const u32 row = first_row + src / 4 + 8 * (element / 2);
    const u32 r = (src % 4) * 2 + element % 2;
    if (r < rows && row < n) {
      if (gelu) total = bias_gelu<BF16>(total, bias[row * bias_step]);
      out[r * out_row + row * out_col] = round_to<BF16>(total);
    }
  }
}

#define MMA_GEMV(NAME, BF16, CHECKED)                                                        \
  extern "C" __global__ void __launch_bounds__(256)                                         \
      NAME(const Vec* x, const Vec* w, const u16* bias, u16* out, u32 n, u32 kv, u32 w_row,  \
           u32 x_row, u32 out_row, u32 out_col, u32 bias_step, u32 gelu, u32 rows,          \
           u32 rotate) {                                                                    \
    mma_gemv<BF16, 8, CHECKED>(x, w, bias, out, n, kv, w_row, x_row, out_row, out_col,      \
                               bias_step, gelu, rows, rotate);                              \
  }

MMA_GEMV(chatglm_mma_gemv_f16, false, false)
MMA_GEMV(chatglm_mma_gemv_f16_checked, false, true)
MMA_GEMV(chatglm_mma_gemv_bf16, true, false)
MMA_GEMV(chatglm_mma_gemv_bf16_checked, true, true)

#define ROW_GEMV(NAME, BF16, U, CHECKED)                                                      \
  extern "C" __global__ void __launch_bounds__(256)                                           \
      NAME(const Vec* x, const Vec* w, const u16* bias, u16* out, u32 n, u32 kv, u32 w_row,    \
           u32 out_col, u32 bias_step, u32 gelu) {                                            \
    row_gemv<BF16, U, CHECKED>(x, w, bias, out, n, kv, w_row, out_col, bias_step, gelu);     \
  }

ROW_GEMV(chatglm_row_gemv_f16, false, 16, false)
ROW_GEMV(chatglm_row_gemv_f16_u8, false, 8, false)
ROW_GEMV(chatglm_row_gemv_f16_u4, false, 4, false)
ROW_GEMV(chatglm_row_gemv_f16_u2, false, 2, false)
ROW_GEMV(chatglm_row_gemv_f16_checked, false, 4, true)
ROW_GEMV(chatglm_row_gemv_bf16, true, 16, false)
ROW_GEMV(chatglm_row_gemv_bf16_u8, true, 8, false)
ROW_GEMV(chatglm_row_gemv_bf16_u4, true, 4, false)
ROW_GEMV(chatglm_row_gemv_bf16_u2, true, 2, false)
ROW_GEMV(chatglm_row_gemv_bf16_checked, true, 4, true)

// LayerNorm(a * alpha + b + bias) of one row per cube, as `cube/layer_norm.rs` computes it with
// 4 vectors of 8 per unit: the row in registers, the mean then the centred variance in float32,
// each a warp reduction then the warps' sums in order. HAS_B: `b` and `bias` are added (the
// residual sums of the GLM block), else neither.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (u32 offset = 1; offset < 32; offset *= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// The sum of `value` over the cube's units; `shared` holds a slot per warp.
__device__ __forceinline__ float cube_sum(float* shared, float value) {
  const float warp = warp_sum(value);
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = warp;
  __syncthreads();
  float result = shared[0];
  for (u32 w = 1; w < blockDim.x / 32; w++) result += shared[w];
  __syncthreads();
  return result;
}

constexpr int LN_PER_UNIT = 4;

template <bool BF16, bool HAS_B>
__device__ __forceinline__ void add_layer_norm(const Vec* a, const Vec* b, const Vec* bias,
                                               const Vec* gamma, const Vec* beta, Vec* out,
                                               u32 n, u32 a_row, u32 b_row, u32 out_row,
                                               float alpha, float eps) {
  __shared__ float shared[32];
  const u32 nv = n / 8, tid = threadIdx.x, step = blockDim.x, row = blockIdx.x;
  const Vec zero = {0u, 0u, 0u, 0u};
  Vec scale[LN_PER_UNIT], shift[LN_PER_UNIT], added[LN_PER_UNIT];
  // The parameters first: they do not depend on earlier kernels.
#pragma unroll
  for (int i = 0; i < LN_PER_UNIT; i++) {
    const u32 v = tid + i * step;
    scale[i] = v < nv ? load_input(gamma + v) : zero;
    shift[i] = v < nv ? load_input(beta + v) : zero;
    added[i] = (HAS_B && v < nv) ? load_input(bias + v) : zero;
  }
  hand_over();
  float vals[LN_PER_UNIT][8];
  float sum[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int i = 0; i < LN_PER_UNIT; i++) {
    const u32 v = tid + i * step;
    const Vec av = v < nv ? load_input(a + row * a_row + v) : zero;
    const Vec bv = (HAS_B && v < nv) ? load_input(b + row * b_row + v) : zero;
    const u32 aw[4] = {av.a, av.b, av.c, av.d}, bw[4] = {bv.a, bv.b, bv.c, bv.d};
    const u32 cw[4] = {added[i].a, added[i].b, added[i].c, added[i].d};
#pragma unroll
    for (int j = 0; j < 8; j++) {
      float x = 0.f;
      if (v < nv) {
        x = element<BF16>(aw[j / 2], j % 2) * alpha;
        if (HAS_B) {
          x += element<BF16>(bw[j / 2], j % 2);
          x += element<BF16>(cw[j / 2], j % 2);
        }
      }
      vals[i][j] = x;
      sum[j] += x;
    }
  }
  const float total = sum[0] + sum[1] + sum[2] + sum[3] + sum[4] + sum[5] + sum[6] + sum[7];
  const float mean = cube_sum(shared, total) / (float)n;
  float sq[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int i = 0; i < LN_PER_UNIT; i++) {
    if (tid + i * step < nv) {
#pragma unroll
      for (int j = 0; j < 8; j++) {
        const float d = vals[i][j] - mean;
        sq[j] += d * d;
      }
    }
  }
  const float sq_total = sq[0] + sq[1] + sq[2] + sq[3] + sq[4] + sq[5] + sq[6] + sq[7];
  const float var = cube_sum(shared, sq_total) / (float)n;
  const float inv = 1.0f / sqrtf(var + eps);
#pragma unroll
  for (int i = 0; i < LN_PER_UNIT; i++) {
    const u32 v = tid + i * step;
    if (v < nv) {
      const u32 gw[4] = {scale[i].a, scale[i].b, scale[i].c, scale[i].d};
      const u32 hw[4] = {shift[i].a, shift[i].b, shift[i].c, shift[i].d};
      u16 r[8];
#pragma unroll
      for (int j = 0; j < 8; j++) {
        const float g = element<BF16>(gw[j / 2], j % 2), bb = element<BF16>(hw[j / 2], j % 2);
        r[j] = round_to<BF16>((vals[i][j] - mean) * inv * g + bb);
      }
      Vec o;
      o.a = (u32)r[0] | ((u32)r[1] << 16);
      o.b = (u32)r[2] | ((u32)r[3] << 16);
      o.c = (u32)r[4] | ((u32)r[5] << 16);
      o.d = (u32)r[6] | ((u32)r[7] << 16);
      out[row * out_row + v] = o;
    }
  }
}

#define ADD_LAYER_NORM(NAME, BF16, HAS_B)                                                   \
  extern "C" __global__ void __launch_bounds__(1024)                                        \
      NAME(const Vec* a, const Vec* b, const Vec* bias, const Vec* gamma, const Vec* beta,  \
           Vec* out, u32 n, u32 a_row, u32 b_row, u32 out_row, float alpha, float eps) {   \
    add_layer_norm<BF16, HAS_B>(a, b, bias, gamma, beta, out, n, a_row, b_row, out_row,    \
                                alpha, eps);                                               \
  }

ADD_LAYER_NORM(chatglm_layer_norm_f16, false, false)
ADD_LAYER_NORM(chatglm_layer_norm_f16_residual, false, true)
ADD_LAYER_NORM(chatglm_layer_norm_bf16, true, false)
ADD_LAYER_NORM(chatglm_layer_norm_bf16_residual, true, true)
