//! Loading PyTorch checkpoints (`.pth` / `.pt`: zip or legacy format, plain or wrapped).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use burn::module::Module;
use burn::store::{ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, PytorchStore};

use super::keymap::KeyMap;
use super::report::LoadReport;
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

/// The prefix in front of the model's tensor names in a checkpoint: the `.`-terminated
/// leading part of the file's names (or none) under which the most names, with it removed,
/// are tensors of the model; of equally good ones, the shortest (then the first in
/// alphabetical order). Training code wraps the network's `state_dict` in several ways:
/// `{"state_dict": ...}`, DataParallel's `module.`, fast-reid's `{"model": ...}` around a
/// model whose backbone is `backbone.` (`model.backbone.`), reid-strong-baseline's `base.`.
///
/// A prefix is used only when it covers more than half of the model's tensors: a name deep
/// inside another architecture (`features.denseblock1.denselayer1.conv1.weight`) can end
/// in a name of the model (`conv1.weight`), and such chance matches must not pass for a
/// wrapper.
fn detect_prefix<'a>(
    names: impl Iterator<Item = &'a str>,
    model: &HashSet<String>,
    keys: &KeyMap,
) -> &'a str {
    let mut matches: HashMap<&'a str, usize> = HashMap::new();
    for name in names {
        let ends = std::iter::once(0).chain(name.match_indices('.').map(|(i, _)| i + 1));
        for end in ends {
            if model.contains(&keys.to_ours(&name[end..])) {
                *matches.entry(&name[..end]).or_default() += 1;
            }
        }
    }
    matches
        .into_iter()
        .filter(|&(prefix, count)| prefix.is_empty() || 2 * count > model.len())
        .max_by(|(a, m), (b, n)| m.cmp(n).then(b.len().cmp(&a.len())).then(b.cmp(a)))
        .map_or("", |(prefix, _)| prefix)
}

fn read_error(path: &Path, reason: impl ToString) -> IbnError {
    IbnError::CheckpointRead {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Loads a PyTorch checkpoint into `module`, translating names with `keys`.
///
/// Accepts a plain `state_dict` or one wrapped by training code, in zip or legacy (pre-1.6)
/// format: the model's names may sit under a common prefix, such as `state_dict.`,
/// DataParallel's `module.`, fast-reid's `model.backbone.` or reid-strong-baseline's `base.`,
/// which is found by matching the file's names against the model's and reported in
/// [`LoadReport::prefix`]; names outside it (a re-identification head, optimizer state) are
/// reported as unexpected. `num_batches_tracked` is ignored. The module is returned only on
/// success; on a mismatch it is dropped, so a checkpoint never half-loads silently.
///
/// # Errors
/// - [`IbnError::CheckpointRead`]: the file is missing, truncated or not a PyTorch checkpoint;
/// - [`IbnError::CheckpointMismatch`]: the report of missing, unexpected and mis-shaped
///   tensors, by PyTorch name, when the load is strict and the file does not match exactly,
///   or, strict or not, when not one tensor of the file fits the model.
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

    let model: HashSet<String> = module
        .collect(None, None, true)
        .into_iter()
        .map(|t| t.name)
        .collect();
    let kept = tensors
        .iter()
        .filter(|(name, _)| !name.ends_with("num_batches_tracked"));
    let prefix = detect_prefix(kept.clone().map(|(name, _)| name.as_str()), &model, keys);
    let mut outside = Vec::new();
    let mut torch_name_of: HashMap<String, String> = HashMap::new();
    let mut renamed = Vec::with_capacity(tensors.len());
    for (name, tensor) in kept {
        let Some(torch) = name.strip_prefix(prefix) else {
            outside.push(name.clone());
            continue;
        };
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

    let mut report =
        LoadReport::from_apply(&result, torch_name, true).map_err(|e| read_error(path, e))?;
    report.unexpected.extend(outside);
    report.unexpected.sort();
    report.prefix = prefix.to_string();

    if (strictness == Strictness::Strict && !report.is_exact()) || report.loaded.is_empty() {
        return Err(IbnError::CheckpointMismatch {
            path: path.to_path_buf(),
            report: Box::new(report),
        });
    }
    Ok((module, report))
}
