//! Picking a burn device by name (for programs that take `--device`).

use burn::tensor::Device;

use crate::error::{IbnError, Result};

/// Names of the devices this build provides, in order of preference.
pub fn available_devices() -> Vec<&'static str> {
    let mut names = Vec::new();
    if cfg!(feature = "flex") {
        names.push("flex");
    }
    if cfg!(feature = "ndarray") {
        names.push("ndarray");
    }
    if cfg!(feature = "wgpu") {
        names.push("wgpu");
    }
    names
}

/// The device called `name`: `flex`, `ndarray` or `wgpu` (the default adapter).
///
/// `cuda` is refused with an explanation: burn 0.22's CUDA backend downloads LLVM while it
/// builds, so this crate does not offer it; `wgpu` runs on NVIDIA GPUs through Vulkan.
///
/// # Errors
/// [`IbnError::Device`] for an unknown name or a backend whose cargo feature is off.
pub fn device_from_name(name: &str) -> Result<Device> {
    // Every backend compiled in: nothing is unavailable.
    #[cfg(not(all(feature = "flex", feature = "ndarray", feature = "wgpu")))]
    let unavailable = |feature: &str| IbnError::Device {
        name: name.to_string(),
        reason: format!(
            "this build lacks the `{feature}` cargo feature (available: {})",
            available_devices().join(", ")
        ),
    };
    match name {
        "flex" => {
            #[cfg(feature = "flex")]
            return Ok(Device::flex());
            #[cfg(not(feature = "flex"))]
            return Err(unavailable("flex"));
        }
        "ndarray" => {
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            return Ok(Device::ndarray());
            #[cfg(not(feature = "ndarray"))]
            return Err(unavailable("ndarray"));
        }
        "wgpu" => {
            #[cfg(feature = "wgpu")]
            return Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice));
            #[cfg(not(feature = "wgpu"))]
            return Err(unavailable("wgpu"));
        }
        "cuda" => Err(IbnError::Device {
            name: name.to_string(),
            reason: "burn's CUDA backend is not offered by this crate (it downloads LLVM while \
                     building); use `wgpu`, which runs on NVIDIA GPUs through Vulkan"
                .to_string(),
        }),
        _ => Err(IbnError::Device {
            name: name.to_string(),
            reason: format!(
                "unknown device (available: {})",
                available_devices().join(", ")
            ),
        }),
    }
}

/// Most input positions (`N * H * W`) of a pass that [`on_cpu_pool`] moves to the pool: two
/// 224x224 images. Larger passes gain less from it (4-5 % at batch 4, none measurable for
/// a ResNet-50 at batch 8) and keep more memory: activations then come and go in the pool
/// threads' allocator arenas as well as the caller's, and each thread keeps its own
/// scratch buffers (resnet50_ibn_a at batch 4: 86 -> 130 MiB of working memory).
#[cfg(any(feature = "flex", feature = "ndarray"))]
const POOL_MAX_POSITIONS: usize = 2 * 224 * 224;

/// Runs `f`, a pass of a network over an input of shape `dims` (`[N, C, H, W]`) on `device`,
/// on a thread of the CPU backends' thread pool (rayon's global pool) when `device` is flex
/// or ndarray without autodiff, the input small (see [`POOL_MAX_POSITIONS`]) and this thread
/// not a pool thread already; else on this thread. Returns its result.
///
/// The CPU backends and this crate's kernels split each operation across the pool. From a
/// thread outside it, such as a program's main thread, every operation hands its parts to
/// the pool and sleeps until they are done, which costs a wake-up on both sides per
/// operation; from a pool thread, the caller computes a part itself (batch 1: resnet50_ibn_a
/// 53-54 -> 48-50 ms, densenet121_ibn_a 54-55 -> 45-47 ms). Not on autodiff devices:
/// training updates running statistics, which burn's `RunningState` keeps per thread, and a
/// pass that could land on any pool thread would break their sequence.
pub(crate) fn on_cpu_pool<R: Send>(
    dims: [usize; 4],
    device: &Device,
    f: impl FnOnce() -> R + Send,
) -> R {
    #[cfg(any(feature = "flex", feature = "ndarray"))]
    {
        let [n, _, h, w] = dims;
        if n * h * w <= POOL_MAX_POSITIONS
            && !device.is_autodiff()
            && rayon::current_thread_index().is_none()
            && crate::kernel::on_cpu_backend(device)
        {
            return rayon::scope(|_| f());
        }
    }
    let _ = (dims, device);
    f()
}
