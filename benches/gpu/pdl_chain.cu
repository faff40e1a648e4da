// What programmatic dependent launch (PDL) would buy a decode step's products, measured outside
// burn: cubecl 0.10 launches every kernel with a plain cuLaunchKernel, so none of the engine's
// kernels can start before the previous one has finished (docs/benchmarks.md, session 22).
//
// A chain of ChatGLM-6B's four decode products per layer (qkv 12288x4096, dense 4096x4096,
// h->4h 16384x4096, 4h->h 4096x16384, half precision, one row), 28 layers with their own
// weights (11.3 GB, so nothing stays in L2), each product fed the previous one's output. One
// GEMV kernel (a warp per weight row, 16-byte streaming loads, float32 sums) launched four ways:
//   plain: cudaLaunchKernelEx without attributes (what cubecl does);
//   pdl:   with cudaLaunchAttributeProgrammaticStreamSerialization; the kernel issues its first
//          weight loads, lets its dependents launch (griddepcontrol.launch_dependents), then waits
//          for the previous kernel (griddepcontrol.wait) before it reads its input;
//   plain+attn / pdl+attn: the same with a small kernel between qkv and dense standing in for the
//          decode attention (32 cubes reading 128 KB each, launched plainly and not triggering
//          its dependents early, as a cubecl kernel would be).
// The chain's final output must be bitwise the same in every mode (PDL must not let a product
// read its input early). Prints microseconds per layer, the mean over timed repetitions.
//
// Build and run on the GPU machine: nvcc -O3 -arch=sm_90 -o /tmp/pdl benches/gpu/pdl_chain.cu
// && /tmp/pdl
#include "common.cuh"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

constexpr int WARPS = 8;    // weight rows per cube, a warp each
constexpr int CHUNK = 16;   // 16-byte loads in flight per unit
constexpr int LAYERS = 28;
constexpr int H = 4096, H3 = 3 * 4096, H4 = 4 * 4096;

// y[n] = W[n, K] x[K]; blockDim (32, WARPS).
template <int K>
__global__ void __launch_bounds__(256) gemv(const half* __restrict__ w,
                                            const half* __restrict__ x,
                                            half* __restrict__ y, int n) {
  constexpr int PER_LANE = K / (32 * 8);
  int row = blockIdx.x * WARPS + threadIdx.y;
  int lane = threadIdx.x;
  if (row >= n) row = n - 1;
  const uint4* wr = reinterpret_cast<const uint4*>(w + (size_t)row * K);
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  uint4 buf[CHUNK];
#pragma unroll
  for (int i = 0; i < CHUNK; i++) buf[i] = __ldcs(wr + i * 32 + lane);
  // No-ops unless launched with the PDL attribute.
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  asm volatile("griddepcontrol.wait;" ::: "memory");
  float acc = 0.f;
#pragma unroll 1
  for (int c = 0; c < PER_LANE; c += CHUNK) {
    if (c > 0) {
#pragma unroll
      for (int i = 0; i < CHUNK; i++) buf[i] = __ldcs(wr + (c + i) * 32 + lane);
    }
#pragma unroll
    for (int i = 0; i < CHUNK; i++) acc += dot8(buf[i], xv[(c + i) * 32 + lane]);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0 && blockIdx.x * WARPS + threadIdx.y < n) y[row] = __float2half(acc);
}

// Stand-in for decode attention: 32 cubes of 512 units, each reading 128 KB of `kv` and adding
// one value of `x` to its slice of `y` (4096 outputs in all). Never triggers its dependents.
__global__ void __launch_bounds__(512) attn(const half* __restrict__ kv,
                                            const half* __restrict__ x,
                                            half* __restrict__ y) {
  const uint4* base = reinterpret_cast<const uint4*>(kv) + (size_t)blockIdx.x * 8192;
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 16; i++) {
    uint4 v = __ldcs(base + i * 512 + threadIdx.x);
    s += __half2float(reinterpret_cast<const half*>(&v)[0]);
  }
  __shared__ float red[512];
  red[threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.x < 128) {
    int o = blockIdx.x * 128 + threadIdx.x;
    float t = red[threadIdx.x] + red[threadIdx.x + 128] + red[threadIdx.x + 256] +
              red[threadIdx.x + 384];
    y[o] = __float2half(__half2float(x[o]) + 1e-6f * t);
  }
}

template <typename Kern, typename... Args>
void launch(bool pdl, Kern k, dim3 grid, dim3 block, cudaStream_t s, Args... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  CK(cudaLaunchKernelEx(&cfg, k, args...));
}

struct Layer {
  half *qkv, *dense, *h4h, *h4h_out;
};

int main() {
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  std::vector<Layer> layers(LAYERS);
  for (int l = 0; l < LAYERS; l++) {
    CK(cudaMalloc(&layers[l].qkv, sizeof(half) * (size_t)H3 * H));
    CK(cudaMalloc(&layers[l].dense, sizeof(half) * (size_t)H * H));
    CK(cudaMalloc(&layers[l].h4h, sizeof(half) * (size_t)H4 * H));
    CK(cudaMalloc(&layers[l].h4h_out, sizeof(half) * (size_t)H * H4));
    fill<<<1024, 256, 0, s>>>(layers[l].qkv, (size_t)H3 * H, 4 * l + 1, 0.03f);
    fill<<<1024, 256, 0, s>>>(layers[l].dense, (size_t)H * H, 4 * l + 2, 0.03f);
    fill<<<1024, 256, 0, s>>>(layers[l].h4h, (size_t)H4 * H, 4 * l + 3, 0.03f);
    fill<<<1024, 256, 0, s>>>(layers[l].h4h_out, (size_t)H * H4, 4 * l + 4, 0.015f);
  }
  half *x, *y_qkv, *y_attn, *y_dense, *y_h, *kv;
  CK(cudaMalloc(&x, sizeof(half) * H));
  CK(cudaMalloc(&y_qkv, sizeof(half) * H3));
  CK(cudaMalloc(&y_attn, sizeof(half) * H));
  CK(cudaMalloc(&y_dense, sizeof(half) * H));
  CK(cudaMalloc(&y_h, sizeof(half) * H4));
  size_t kv_elems = (size_t)LAYERS * 32 * 8192 * 8;
  CK(cudaMalloc(&kv, sizeof(half) * kv_elems));
  fill<<<1024, 256, 0, s>>>(kv, kv_elems, 99, 1.f);
  CK(cudaStreamSynchronize(s));

  const dim3 warp_block(32, WARPS);
  auto step = [&](bool pdl, bool with_attn) {
    fill<<<4, 256, 0, s>>>(x, H, 7, 1.f);  // the same input every repetition
    for (int l = 0; l < LAYERS; l++) {
      const Layer& L = layers[l];
      launch(pdl, gemv<H>, dim3(H3 / WARPS), warp_block, s, (const half*)L.qkv, (const half*)x,
             y_qkv, H3);
      const half* dense_in = y_qkv;
      if (with_attn) {
        launch(false, attn, dim3(32), dim3(512), s, (const half*)(kv + (size_t)l * 32 * 8192 * 8),
               (const half*)y_qkv, y_attn);
        dense_in = y_attn;
      }
      launch(pdl, gemv<H>, dim3(H / WARPS), warp_block, s, (const half*)L.dense, dense_in, y_dense,
             H);
      launch(pdl, gemv<H>, dim3(H4 / WARPS), warp_block, s, (const half*)L.h4h,
             (const half*)y_dense, y_h, H4);
      launch(pdl, gemv<H4>, dim3(H / WARPS), warp_block, s, (const half*)L.h4h_out,
             (const half*)y_h, x, H);
    }
  };
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  const char* names[4] = {"plain", "pdl", "plain+attn", "pdl+attn"};
  std::vector<half> first[2];
  for (int round = 0; round < 3; round++) {
    for (int mode = 0; mode < 4; mode++) {
      bool pdl = mode % 2 == 1, with_attn = mode >= 2;
      step(pdl, with_attn);  // warm-up
      CK(cudaStreamSynchronize(s));
      const int reps = 20;
      CK(cudaEventRecord(a, s));
      for (int r = 0; r < reps; r++) step(pdl, with_attn);
      CK(cudaEventRecord(b, s));
      CK(cudaEventSynchronize(b));
      float ms = 0.f;
      CK(cudaEventElapsedTime(&ms, a, b));
      std::vector<half> out(H);
      CK(cudaMemcpy(out.data(), x, sizeof(half) * H, cudaMemcpyDeviceToHost));
      const char* same = "";
      if (round == 0 && !pdl) first[with_attn] = out;
      if (!first[with_attn].empty())
        same = memcmp(out.data(), first[with_attn].data(), sizeof(half) * H) == 0
                   ? "output same as plain"
                   : "OUTPUT DIFFERS FROM PLAIN";
      printf("round %d %-10s %8.2f us per layer (%.3f ms per step of %d layers) %s\n", round,
             names[mode], 1000.f * ms / reps / LAYERS, ms / reps, LAYERS, same);
    }
  }
  // Each product alone, 28 in a row (each layer's weight), plain and PDL: µs per product.
  const char* kinds[4] = {"qkv", "dense", "h->4h", "4h->h"};
  for (int kind = 0; kind < 4; kind++) {
    for (int pdl = 0; pdl < 2; pdl++) {
      auto run = [&]() {
        for (int l = 0; l < LAYERS; l++) {
          const Layer& L = layers[l];
          if (kind == 0)
            launch(pdl, gemv<H>, dim3(H3 / WARPS), warp_block, s, (const half*)L.qkv,
                   (const half*)x, y_qkv, H3);
          if (kind == 1)
            launch(pdl, gemv<H>, dim3(H / WARPS), warp_block, s, (const half*)L.dense,
                   (const half*)x, y_dense, H);
          if (kind == 2)
            launch(pdl, gemv<H>, dim3(H4 / WARPS), warp_block, s, (const half*)L.h4h,
                   (const half*)x, y_h, H4);
          if (kind == 3)
            launch(pdl, gemv<H4>, dim3(H / WARPS), warp_block, s, (const half*)L.h4h_out,
                   (const half*)y_h, y_dense, H);
        }
      };
      run();
      CK(cudaStreamSynchronize(s));
      const int reps = 20;
      CK(cudaEventRecord(a, s));
      for (int r = 0; r < reps; r++) run();
      CK(cudaEventRecord(b, s));
      CK(cudaEventSynchronize(b));
      float ms = 0.f;
      CK(cudaEventElapsedTime(&ms, a, b));
      printf("%-6s alone, %-5s %8.2f us per product\n", kinds[kind], pdl ? "pdl" : "plain",
             1000.f * ms / reps / LAYERS);
    }
  }
  return 0;
}
