//! `start_read`: a read queued now returns the values and shape the tensor had, whatever is
//! queued after it.

use burn::tensor::{Int, Tensor, TensorData};
use chatglm_kernels::KernelBackend;

use super::{name, random, tensor};

pub(super) fn check_start_read<B: KernelBackend>(dev: &B::Device) {
    let ids: Vec<i64> = vec![7, -3, 130_000, 0, 42, 5];
    let t = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [2, 3]), dev);
    let pending = chatglm_kernels::start_read(t.clone() * 2);
    // Work queued after the read, some of it on the same values.
    let x = random(256 * 256, 77, 1.0);
    let later = chatglm_kernels::matmul(
        tensor::<B, 2>(&x, [256, 256], dev),
        tensor::<B, 2>(&x, [256, 256], dev),
    );
    let _ = t + 1;
    let data = pending.wait().unwrap();
    assert_eq!(data.shape.as_slice(), [2, 3], "{}", name::<B>());
    let got: Vec<i64> = data.convert::<i64>().into_vec().unwrap();
    let want: Vec<i64> = ids.iter().map(|v| v * 2).collect();
    assert_eq!(got, want, "{}: start_read", name::<B>());
    drop(later);
}
