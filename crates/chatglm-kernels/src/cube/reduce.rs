//! Reductions over the units of one cube: through shared memory (a power of two of units), or
//! per warp first (whole warps of 32).

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

/// Sum of `value` over the cube's units (whole warps, `shared` holding a slot per warp); every
/// unit gets the total. Each warp sums its units with a warp reduction, then every unit adds the
/// warps' sums.
#[cube]
pub(crate) fn cube_sum(shared: &mut SharedMemory<f32>, value: f32) -> f32 {
    let warps = (CUBE_DIM_X / PLANE_DIM) as usize;
    let warp_total = plane_sum(value);
    if UNIT_POS_PLANE == 0 {
        shared[(UNIT_POS_X / PLANE_DIM) as usize] = warp_total;
    }
    sync_cube();
    let mut total = 0.0f32;
    for w in 0..warps {
        total += shared[w];
    }
    sync_cube();
    total
}

/// Maximum of `value` over the cube's units (as [`cube_sum`]).
#[cube]
pub(crate) fn cube_max(shared: &mut SharedMemory<f32>, value: f32) -> f32 {
    let warps = (CUBE_DIM_X / PLANE_DIM) as usize;
    let warp_max = plane_max(value);
    if UNIT_POS_PLANE == 0 {
        shared[(UNIT_POS_X / PLANE_DIM) as usize] = warp_max;
    }
    sync_cube();
    let mut max = shared[0];
    for w in 1..warps {
        let other = shared[w];
        if other > max {
            max = other;
        }
    }
    sync_cube();
    max
}
