//! Saving and loading in burn's own format (burnpack) and safetensors, and tensor listings.

use std::path::Path;

use burn::module::Module;
use burn::store::{BurnToPyTorchAdapter, BurnpackStore, ModuleSnapshot, SafetensorsStore};

use super::keymap::KeyMap;
use super::report::LoadReport;
use crate::error::{IbnError, Result};

/// One tensor of a module, by PyTorch name and PyTorch shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// PyTorch name.
    pub name: String,
    /// PyTorch shape (linear weights `[out, in]`).
    pub shape: Vec<usize>,
    /// `true` for parameters, `false` for buffers (running statistics).
    pub is_parameter: bool,
}

/// Running statistics are buffers, everything else is a parameter (as in PyTorch).
fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

/// Every tensor of `module` with its PyTorch name and shape, in module order.
pub fn named_tensors<M: Module>(module: &M, keys: &KeyMap) -> Vec<TensorEntry> {
    module
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), true)
        .into_iter()
        .map(|t| {
            let name = keys.to_torch(&t.name);
            let is_parameter = !is_buffer(&name);
            TensorEntry {
                name,
                shape: t.shape.to_vec(),
                is_parameter,
            }
        })
        .collect()
}

/// Number of parameters (running statistics excluded), as PyTorch counts them.
pub fn num_parameters<M: Module>(module: &M) -> usize {
    module
        .collect(None, None, true)
        .iter()
        .filter(|t| !is_buffer(&t.name))
        .map(|t| t.shape.iter().product::<usize>())
        .sum()
}

fn is_safetensors(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors")
}

/// Saves every tensor of `module` (running statistics included) to `path`: safetensors when
/// the extension is `.safetensors`, burnpack otherwise.
///
/// # Errors
/// [`IbnError::Save`] when the file cannot be written.
pub fn save_file<M: Module>(module: &M, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let error = |e: &dyn std::fmt::Display| IbnError::Save {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    if is_safetensors(path) {
        let mut store = SafetensorsStore::from_file(path);
        module.save_into(&mut store).map_err(|e| error(&e))
    } else {
        let mut store = BurnpackStore::from_file(path)
            .overwrite(true)
            .auto_extension(false);
        module.save_into(&mut store).map_err(|e| error(&e))
    }
}

/// Loads a file written by [`save_file`] into `module`, strictly: every tensor must be
/// present with its shape, and the file must hold nothing else.
///
/// # Errors
/// - [`IbnError::CheckpointRead`] when the file is missing or unreadable;
/// - [`IbnError::CheckpointMismatch`] when it does not match the module: the report names
///   every missing, unexpected and mis-shaped tensor by its module path.
pub fn load_file<M: Module>(mut module: M, path: impl AsRef<Path>) -> Result<M> {
    let path = path.as_ref();
    let error = |e: &dyn std::fmt::Display| IbnError::CheckpointRead {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    if !path.is_file() {
        return Err(error(&"no such file"));
    }
    // Partial and unvalidated, so that every mismatch comes back in the result and is
    // reported together.
    let result = if is_safetensors(path) {
        let mut store = SafetensorsStore::from_file(path)
            .allow_partial(true)
            .validate(false);
        module.load_from(&mut store).map_err(|e| error(&e))?
    } else {
        let mut store = BurnpackStore::from_file(path)
            .allow_partial(true)
            .validate(false)
            .auto_extension(false);
        module.load_from(&mut store).map_err(|e| error(&e))?
    };
    let report = LoadReport::from_apply(&result, str::to_string, false).map_err(|e| error(&e))?;
    if !report.is_exact() {
        return Err(IbnError::CheckpointMismatch {
            path: path.to_path_buf(),
            report: Box::new(report),
        });
    }
    Ok(module)
}
