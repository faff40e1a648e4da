//! The on-disk kernel and autotune caches (`chatglm_kernels::runtime`). cubecl's configuration is
//! global to the process and set once, so this file holds a single test that goes through the
//! cases in order, and the probe of a CUDA device. The CUDA half runs with `CHATGLM_TEST_DEVICE=cuda`.

use chatglm_kernels::runtime::{
    CACHE_ENV, compiled_kernels_folder, default_cache_root, use_kernel_cache,
};

fn files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| {
                let p = e.path();
                if p.is_dir() { files_under(&p) } else { 1 }
            })
            .sum()
    })
}

#[test]
fn kernel_cache_configures_cubecl_once_per_process() {
    assert!(default_cache_root().is_none_or(|d| d.ends_with("chatglm-rs/kernels")));
    // Compiled kernels go in a folder per build of the kernels' sources.
    let folder = compiled_kernels_folder();
    let fingerprint = folder.strip_prefix("ptx-").expect(&folder);
    assert!(
        fingerprint.len() == 16 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit()),
        "{folder}"
    );
    let root = tempfile::tempdir().unwrap();

    // `off` leaves cubecl's configuration alone.
    // SAFETY: this is the only test in this binary, so no other thread reads the environment.
    unsafe { std::env::set_var(CACHE_ENV, "off") };
    assert_eq!(use_kernel_cache(0, Some(root.path())), None);
    unsafe { std::env::remove_var(CACHE_ENV) };
    assert_eq!(files_under(root.path()), 0);

    let cuda = std::env::var("CHATGLM_TEST_DEVICE").is_ok_and(|v| v.eq_ignore_ascii_case("cuda"));
    if !cuda {
        // Without a GPU (or a CUDA build) there is no architecture to name the folder after.
        if cfg!(not(feature = "cuda")) {
            assert_eq!(use_kernel_cache(0, Some(root.path())), None);
        }
        return;
    }
    #[cfg(feature = "cuda")]
    {
        use burn::tensor::{DType, Tensor};
        type B = burn::backend::Cuda<f32, i32>;
        let dir = use_kernel_cache(0, Some(root.path())).expect("a CUDA device to configure");
        assert!(dir.starts_with(root.path()), "{dir:?}");
        let arch = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(arch.starts_with("sm_"), "{arch}");
        // The configuration is taken: a second call changes nothing.
        assert_eq!(use_kernel_cache(0, Some(root.path())), None);

        // The probe runs a kernel without a burn tensor, so the device's default dtypes (fixed by
        // burn at the first tensor made there, for every backend) are still free: the first
        // half-precision tensor gets float16, not a probe's float32.
        chatglm_kernels::runtime::probe_cuda(0).expect("a probe on CUDA device 0");
        let dev = burn::backend::cuda::CudaDevice::new(0);
        let h = Tensor::<burn::backend::Cuda<burn::tensor::f16, i32>, 1>::zeros([1], &dev);
        assert_eq!(h.dtype(), DType::F16);
        let a = Tensor::<B, 2>::ones([64, 64], (&dev, DType::F32));
        let s = chatglm_kernels::matmul(a.clone(), a).sum().into_scalar();
        assert_eq!(s, 64.0 * 64.0 * 64.0);
        let compiled = dir.join(&folder);
        assert!(
            files_under(&compiled) > 0,
            "no compiled kernel cached under {compiled:?}"
        );
    }
}
