// One-row decode products on CUDA C kernels of `row_gemv`'s design (a warp per weight row,
// 16-byte loads, float32 sums, a warp reduction), timed the way the bench's `--products` times
// the engine's kernels: the same product 50 times untimed, then 50 times between two events, so
// the two sets of figures can be set side by side (docs/benchmarks.md, session 23).
//
// Variants, each a template of the same kernel:
//   cs:     streaming loads (ld.global.cs), as benches/gpu/pdl_chain.cu;
//   plain:  ordinary loads (ld.global, through L1);
//   nc:     read-only loads (ld.global.nc), as `const __restrict__` pointers often compile to;
//   w4/w16: 4 or 16 warps (weight rows) per cube instead of 8;
//   u8:     8 loads in flight per unit instead of 16.
// Every variant's output must equal the first one's bitwise (same order of additions).
//
// Build and run on the GPU machine: nvcc -O3 -arch=sm_90 -o /tmp/rg benches/gpu/row_gemv.cu
// && /tmp/rg
#include "common.cuh"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

enum Load { CS, PLAIN, NC };

template <Load L>
__device__ __forceinline__ uint4 load(const uint4* p) {
  if (L == CS) return __ldcs(p);
  if (L == NC) return __ldg(p);
  uint4 v;
  asm volatile("ld.global.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// y[n] = W[n, k] x[k]; blockDim (32, WARPS); k a multiple of 32 * 8 * CHUNK.
template <Load L, int WARPS, int CHUNK>
__global__ void __launch_bounds__(32 * WARPS) gemv(const half* __restrict__ w,
                                                   const half* __restrict__ x,
                                                   half* __restrict__ y, int n, int k) {
  int row = blockIdx.x * WARPS + threadIdx.y;
  int lane = threadIdx.x;
  if (row >= n) row = n - 1;
  const int kv = k / 8;
  const uint4* wr = reinterpret_cast<const uint4*>(w) + (size_t)row * kv;
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  float acc = 0.f;
#pragma unroll 1
  for (int c = 0; c < kv; c += 32 * CHUNK) {
    uint4 buf[CHUNK];
#pragma unroll
    for (int i = 0; i < CHUNK; i++) buf[i] = load<L>(wr + c + i * 32 + lane);
#pragma unroll
    for (int i = 0; i < CHUNK; i++) acc += dot8(buf[i], xv[c + i * 32 + lane]);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0 && blockIdx.x * WARPS + threadIdx.y < n) y[row] = __float2half(acc);
}

typedef void (*Kernel)(const half*, const half*, half*, int, int);

struct Variant {
  const char* name;
  Kernel k;
  int warps;
};

int main() {
  const Variant variants[] = {
      {"cs", gemv<CS, 8, 16>, 8},        {"plain", gemv<PLAIN, 8, 16>, 8},
      {"nc", gemv<NC, 8, 16>, 8},        {"cs_w4", gemv<CS, 4, 16>, 4},
      {"cs_w16", gemv<CS, 16, 16>, 16},  {"cs_u8", gemv<CS, 8, 8>, 8},
      {"plain_u8", gemv<PLAIN, 8, 8>, 8},
  };
  struct Shape {
    const char* name;
    int n, k;
  } shapes[] = {{"query_key_value", 12288, 4096},
                {"dense", 4096, 4096},
                {"dense_h_to_4h", 16384, 4096},
                {"dense_4h_to_h", 4096, 16384},
                {"lm_head", 130528, 4096}};
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  const int reps = 50;
  printf("{\n");
  for (int si = 0; si < 5; si++) {
    const Shape& sh = shapes[si];
    half *w, *x, *y;
    CK(cudaMalloc(&w, sizeof(half) * (size_t)sh.n * sh.k));
    CK(cudaMalloc(&x, sizeof(half) * sh.k));
    CK(cudaMalloc(&y, sizeof(half) * sh.n));
    fill<<<1024, 256, 0, s>>>(w, (size_t)sh.n * sh.k, 17 + si, 0.03f);
    fill<<<8, 256, 0, s>>>(x, sh.k, 5, 1.f);
    CK(cudaStreamSynchronize(s));
    std::vector<half> first(sh.n), got(sh.n);
    printf("  \"%s\": {", sh.name);
    for (size_t vi = 0; vi < sizeof(variants) / sizeof(variants[0]); vi++) {
      const Variant& v = variants[vi];
      dim3 grid((sh.n + v.warps - 1) / v.warps), block(32, v.warps);
      for (int r = 0; r < reps; r++) v.k<<<grid, block, 0, s>>>(w, x, y, sh.n, sh.k);
      CK(cudaEventRecord(a, s));
      for (int r = 0; r < reps; r++) v.k<<<grid, block, 0, s>>>(w, x, y, sh.n, sh.k);
      CK(cudaEventRecord(b, s));
      CK(cudaEventSynchronize(b));
      float ms = 0.f;
      CK(cudaEventElapsedTime(&ms, a, b));
      CK(cudaMemcpy(got.data(), y, sizeof(half) * sh.n, cudaMemcpyDeviceToHost));
      if (vi == 0) first = got;
      bool same = memcmp(first.data(), got.data(), sizeof(half) * sh.n) == 0;
      double us = 1e3 * ms / reps;
      printf("%s\"%s\": {\"us\": %.2f, \"weight_gb_per_s\": %.0f, \"same\": %s}",
             vi ? ", " : "", v.name, us, 2.0 * sh.n * sh.k / us / 1e3, same ? "true" : "false");
    }
    printf("}%s\n", si < 4 ? "," : "");
    CK(cudaFree(w));
    CK(cudaFree(x));
    CK(cudaFree(y));
  }
  printf("}\n");
  return 0;
}
