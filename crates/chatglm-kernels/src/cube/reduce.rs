//! Reductions over the units of one cube (a power of two of them) through shared memory.

use cubecl::prelude::*;

/// Maximum of `value` over the cube's units (a power of two of them); every unit gets it.
#[cube]
pub(crate) fn block_max(shared: &mut SharedMemory<f32>, value: f32, tid: usize) -> f32 {
    shared[tid] = value;
    sync_cube();
    let mut stride = CUBE_DIM_X as usize / 2;
    while stride > 0 {
        if tid < stride {
            let other = shared[tid + stride];
            if other > shared[tid] {
                shared[tid] = other;
            }
        }
        sync_cube();
        stride /= 2;
    }
    let total = shared[0];
    sync_cube();
    total
}

/// Sum of `value` over the cube's units (a power of two of them); every unit gets the total.
#[cube]
pub(crate) fn block_sum(shared: &mut SharedMemory<f32>, value: f32, tid: usize) -> f32 {
    shared[tid] = value;
    sync_cube();
    // From a runtime value: a variable initialised from a comptime one cannot be mutated.
    let mut stride = CUBE_DIM_X as usize / 2;
    while stride > 0 {
        if tid < stride {
            let other = shared[tid + stride];
            shared[tid] += other;
        }
        sync_cube();
        stride /= 2;
    }
    let total = shared[0];
    sync_cube();
    total
}
