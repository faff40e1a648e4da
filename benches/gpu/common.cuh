// Helpers shared by the CUDA C measurement programs in this folder (built there with nvcc).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CK(x)                                                                   \
  do {                                                                          \
    cudaError_t e_ = (x);                                                       \
    if (e_ != cudaSuccess) {                                                    \
      printf("%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));        \
      exit(1);                                                                  \
    }                                                                           \
  } while (0)

// Dot product of two vectors of 8 halves, in float32.
__device__ __forceinline__ float dot8(uint4 a, uint4 b) {
  const half2* p = reinterpret_cast<const half2*>(&a);
  const half2* q = reinterpret_cast<const half2*>(&b);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 u = __half22float2(p[i]), v = __half22float2(q[i]);
    s += u.x * v.x + u.y * v.y;
  }
  return s;
}

// Fills `p` with pseudo-random values in [-scale, scale) from `seed`.
__global__ void fill(half* p, size_t n, unsigned seed, float scale) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    unsigned h = (unsigned)i * 2654435761u ^ seed;
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    p[i] = __float2half(scale * ((h & 0xffff) / 32768.f - 1.f));
  }
}
