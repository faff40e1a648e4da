//! Operand layouts passed to kernels as scalars.

use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// Three strides of an operand (in elements or vectors of its array), for kernels that take their
/// operands as plain arrays: cubecl copies a kernel's tensor shapes and strides to the GPU ahead of
/// each launch of a kernel with tensor arguments (a host-to-device copy in the stream), while
/// scalars travel in the launch's own parameters. On the H200 that copy cost 3-5 µs per GEMV of a
/// decode step (`docs/benchmarks.md`, session 11).
#[derive(CubeType, CubeLaunch, Clone, Copy)]
pub(crate) struct Strides3 {
    pub first: u32,
    pub second: u32,
    pub third: u32,
}

#[cube]
impl Strides3 {
    /// `i * first + j * second + k * third`.
    pub fn at(&self, i: usize, j: usize, k: usize) -> usize {
        i * self.first as usize + j * self.second as usize + k * self.third as usize
    }
}

/// `v` as a kernel's 32-bit scalar. The sizes and strides passed so (in elements or vectors of one
/// layer's activations or cache) stay far below 2^32; past it, the largest value.
pub(crate) fn scalar(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// `t`'s strides over its first three dimensions in vectors of `width` elements (each a whole
/// number of them, as `widest_vector` checks).
pub(crate) fn vector_strides<R: CubeRuntime>(t: &CubeTensor<R>, width: usize) -> Strides3Launch<R> {
    let st = t.meta.strides();
    Strides3Launch::new(
        scalar(st[0] / width),
        scalar(st[1] / width),
        scalar(st[2] / width),
    )
}
