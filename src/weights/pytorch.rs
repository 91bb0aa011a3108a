//! Loading PyTorch checkpoints (`.pth` / `.pt`: zip or legacy format, plain or wrapped).

use std::collections::HashMap;
use std::path::Path;

use burn::module::Module;
use burn::store::{ApplyError, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, PytorchStore};

use super::keymap::KeyMap;
use super::report::{LoadReport, ShapeMismatch};
use crate::error::{IbnError, Result};

/// How strictly a checkpoint must match the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strictness {
    /// Every model tensor must be in the file, with its shape, and the file must hold
    /// nothing else (as PyTorch's `load_state_dict(strict=True)`).
    #[default]
    Strict,
    /// Load what fits; the returned [`LoadReport`] lists everything else (for fine-tuning
    /// with a new head, or backbones saved without a classifier).
    NonStrict,
}

/// Prefixes that training wrappers put in front of every name.
const WRAPPER_PREFIXES: [&str; 2] = ["state_dict.", "module."];

fn strip_wrappers(mut name: &str) -> &str {
    for prefix in WRAPPER_PREFIXES {
        if let Some(rest) = name.strip_prefix(prefix) {
            name = rest;
        }
    }
    name
}

fn read_error(path: &Path, reason: impl ToString) -> IbnError {
    IbnError::CheckpointRead {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Loads a PyTorch checkpoint into `module`, translating names with `keys`.
///
/// Accepts a plain `state_dict`, a `{"state_dict": ...}` wrapper, names prefixed with
/// `module.` (DataParallel), in zip or legacy (pre-1.6) format. `num_batches_tracked` is
/// ignored. The module is returned only on success; on a strict mismatch it is dropped, so
/// a checkpoint never half-loads silently.
///
/// # Errors
/// - [`IbnError::CheckpointRead`]: the file is missing, truncated or not a PyTorch checkpoint;
/// - [`IbnError::CheckpointMismatch`] (strict only): the report of missing, unexpected and
///   mis-shaped tensors, by PyTorch name.
pub fn load_pytorch<M: Module>(
    mut module: M,
    path: impl AsRef<Path>,
    keys: &KeyMap,
    strictness: Strictness,
) -> Result<(M, LoadReport)> {
    let path = path.as_ref();
    if !path.is_file() {
        return Err(read_error(path, "no such file"));
    }
    let mut store = PytorchStore::from_file(path).map_indices_contiguous(false);
    let tensors = store.get_all_tensors().map_err(|e| read_error(path, e))?;
    if tensors.is_empty() {
        return Err(read_error(path, "the file holds no tensors"));
    }

    let mut torch_name_of: HashMap<String, String> = HashMap::new();
    let mut renamed = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let torch = strip_wrappers(name);
        if torch.ends_with("num_batches_tracked") {
            continue;
        }
        let ours = keys.to_ours(torch);
        torch_name_of.insert(ours.clone(), torch.to_string());
        let mut tensor = tensor.clone();
        tensor.name = ours;
        renamed.push(tensor);
    }

    let result = module.apply(renamed, None, Some(Box::new(PyTorchToBurnAdapter)), true);
    let torch_name = |ours: &str| {
        torch_name_of
            .get(ours)
            .cloned()
            .unwrap_or_else(|| keys.to_torch(ours))
    };

    let mut report = LoadReport {
        loaded: result.applied.iter().map(|n| torch_name(n)).collect(),
        missing: result
            .missing
            .iter()
            .map(|(n, _)| keys.to_torch(n))
            .collect(),
        unexpected: result.unused.iter().map(|n| torch_name(n)).collect(),
        mismatched: Vec::new(),
    };
    for error in &result.errors {
        match error {
            ApplyError::ShapeMismatch {
                path: p,
                expected,
                found,
            } => {
                // Shapes in PyTorch's layout: burn stores linear weights as [in, out].
                let torch_layout = |shape: &[usize]| match shape {
                    [a, b] => vec![*b, *a],
                    other => other.to_vec(),
                };
                report.mismatched.push(ShapeMismatch {
                    name: torch_name(p),
                    expected: torch_layout(expected),
                    found: torch_layout(found),
                })
            }
            ApplyError::DTypeMismatch { path: p, .. }
            | ApplyError::AdapterError { path: p, .. }
            | ApplyError::LoadError { path: p, .. } => {
                return Err(read_error(
                    path,
                    format!("tensor {}: {error}", torch_name(p)),
                ));
            }
        }
    }
    let mismatched: Vec<&str> = report.mismatched.iter().map(|m| m.name.as_str()).collect();
    report.missing.retain(|n| !mismatched.contains(&n.as_str()));
    report.loaded.sort();
    report.missing.sort();
    report.unexpected.sort();
    report.mismatched.sort_by(|a, b| a.name.cmp(&b.name));

    if strictness == Strictness::Strict && !report.is_exact() {
        return Err(IbnError::CheckpointMismatch {
            path: path.to_path_buf(),
            report,
        });
    }
    Ok((module, report))
}
