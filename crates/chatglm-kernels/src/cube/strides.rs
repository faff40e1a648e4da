//! Operand layouts passed to kernels as scalars.

use cubecl::prelude::*;

/// Three strides of an operand (in elements or vectors of its array), for kernels that take their
/// operands as plain arrays: cubecl copies a kernel's tensor shapes and strides to the GPU ahead of
/// each launch of a kernel with tensor arguments (a host-to-device copy in the stream), while
/// scalars travel in the launch's own parameters. On the H200 that copy cost 3-8 µs per GEMV of a
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
