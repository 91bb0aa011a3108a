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
    if cfg!(feature = "cuda") {
        names.push("cuda");
    }
    names
}

/// The device called `name`: `flex`, `ndarray`, `wgpu` (the default adapter) or `cuda` (GPU 0).
///
/// # Errors
/// [`IbnError::Device`] for an unknown name or a backend whose cargo feature is off.
pub fn device_from_name(name: &str) -> Result<Device> {
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
        "cuda" => {
            #[cfg(feature = "cuda")]
            return Ok(Device::cuda(0));
            #[cfg(not(feature = "cuda"))]
            return Err(unavailable("cuda"));
        }
        _ => Err(IbnError::Device {
            name: name.to_string(),
            reason: format!(
                "unknown device (available: {})",
                available_devices().join(", ")
            ),
        }),
    }
}
