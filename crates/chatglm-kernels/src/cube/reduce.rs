//! Reductions over the units of one cube (whole warps of 32): each warp reduces its units with a
//! warp reduction, then every unit combines the warps' results from shared memory.

use cubecl::prelude::*;

/// Sum (or with `max`, maximum) of `value` over the cube's units, `shared` holding a slot per
/// warp; every unit gets the result.
#[cube]
fn cube_reduce(shared: &mut SharedMemory<f32>, value: f32, #[comptime] max: bool) -> f32 {
    let warps = (CUBE_DIM_X / PLANE_DIM) as usize;
    let warp_result = if max {
        plane_max(value)
    } else {
        plane_sum(value)
    };
    if UNIT_POS_PLANE == 0 {
        shared[(UNIT_POS_X / PLANE_DIM) as usize] = warp_result;
    }
    sync_cube();
    let mut result = shared[0];
    for w in 1..warps {
        let other = shared[w];
        if max {
            if other > result {
                result = other;
            }
        } else {
            result += other;
        }
    }
    sync_cube();
    result
}

/// Sum of `value` over the cube's units (see [`cube_reduce`]).
#[cube]
pub(crate) fn cube_sum(shared: &mut SharedMemory<f32>, value: f32) -> f32 {
    cube_reduce(shared, value, false)
}

/// Maximum of `value` over the cube's units (see [`cube_reduce`]).
#[cube]
pub(crate) fn cube_max(shared: &mut SharedMemory<f32>, value: f32) -> f32 {
    cube_reduce(shared, value, true)
}
