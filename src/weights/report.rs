//! What a checkpoint load matched, and what it did not.

use std::fmt;

use burn::store::{ApplyError, ApplyResult};

/// The outcome of loading a checkpoint, by PyTorch tensor name (by module path for the files
/// of [`load_file`](super::load_file)).
///
/// A strict load succeeds only when [`LoadReport::is_exact`]; a non-strict load returns this
/// report so the caller sees what was left at its initial value (and fails with it when not
/// one tensor fit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadReport {
    /// Tensors copied into the model.
    pub loaded: Vec<String>,
    /// Tensors the model has and the file lacks (left as initialised).
    pub missing: Vec<String>,
    /// Tensors the file has and the model lacks (ignored).
    pub unexpected: Vec<String>,
    /// Tensors present on both sides with different shapes (left as initialised).
    pub mismatched: Vec<ShapeMismatch>,
    /// The prefix the file puts in front of the model's names (removed before matching;
    /// empty for a plain `state_dict`), e.g. `module.` or fast-reid's `model.backbone.`. The
    /// other lists name tensors under it without it, and the file's other tensors in full.
    pub prefix: String,
}

/// A tensor whose shape in the file differs from the model's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// PyTorch name (module path for the files of [`load_file`](super::load_file)).
    pub name: String,
    /// Shape in the model (PyTorch's layout for PyTorch checkpoints: linear weights
    /// `[out, in]`; burn's for [`load_file`](super::load_file): `[in, out]`).
    pub expected: Vec<usize>,
    /// Shape in the file, in the same layout.
    pub found: Vec<usize>,
}

impl LoadReport {
    /// The report of what burn's `apply` did, each model path reported as `name(path)`, and
    /// shapes in PyTorch's layout (linear weights `[out, in]`) when `torch_layout`. Lists are
    /// sorted; a tensor with the wrong shape is reported as mis-shaped only, not missing.
    ///
    /// # Errors
    /// The message of a tensor that could not be read or converted at all.
    pub(crate) fn from_apply(
        result: &ApplyResult,
        name: impl Fn(&str) -> String,
        torch_layout: bool,
    ) -> Result<Self, String> {
        let mut report = LoadReport {
            loaded: result.applied.iter().map(|n| name(n)).collect(),
            missing: result.missing.iter().map(|(n, _)| name(n)).collect(),
            unexpected: result.unused.iter().map(|n| name(n)).collect(),
            mismatched: Vec::new(),
            prefix: String::new(),
        };
        // burn stores linear weights as [in, out].
        let layout = |shape: &[usize]| match shape {
            [a, b] if torch_layout => vec![*b, *a],
            other => other.to_vec(),
        };
        for error in &result.errors {
            match error {
                ApplyError::ShapeMismatch {
                    path,
                    expected,
                    found,
                } => report.mismatched.push(ShapeMismatch {
                    name: name(path),
                    expected: layout(expected),
                    found: layout(found),
                }),
                ApplyError::DTypeMismatch { path, .. }
                | ApplyError::AdapterError { path, .. }
                | ApplyError::LoadError { path, .. } => {
                    return Err(format!("tensor {}: {error}", name(path)));
                }
            }
        }
        let mismatched: Vec<&str> = report.mismatched.iter().map(|m| m.name.as_str()).collect();
        report.missing.retain(|n| !mismatched.contains(&n.as_str()));
        report.loaded.sort();
        report.missing.sort();
        report.unexpected.sort();
        report.mismatched.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(report)
    }

    /// `true` when every model tensor was loaded and the file had nothing else.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

impl LoadReport {
    /// One line: the counts, and the first problem of each kind.
    pub fn summary(&self) -> String {
        let mut parts = vec![format!("{} loaded", self.loaded.len())];
        if !self.prefix.is_empty() {
            parts[0] += &format!(" (names under `{}`)", self.prefix);
        }
        if let Some(first) = self.missing.first() {
            parts.push(format!("{} missing (e.g. {first})", self.missing.len()));
        }
        if let Some(first) = self.unexpected.first() {
            parts.push(format!(
                "{} unexpected (e.g. {first})",
                self.unexpected.len()
            ));
        }
        if let Some(m) = self.mismatched.first() {
            parts.push(format!(
                "{} mis-shaped (e.g. {}: model {:?}, file {:?})",
                self.mismatched.len(),
                m.name,
                m.expected,
                m.found
            ));
        }
        parts.join(", ")
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  loaded: {} tensors", self.loaded.len())?;
        if !self.prefix.is_empty() {
            writeln!(
                f,
                "  the model's names are under `{}` in the file",
                self.prefix
            )?;
        }
        let list = |f: &mut fmt::Formatter<'_>, title: &str, names: &[String]| -> fmt::Result {
            if !names.is_empty() {
                writeln!(f, "  {title} ({}): {}", names.len(), names.join(", "))?;
            }
            Ok(())
        };
        list(f, "missing in the file", &self.missing)?;
        list(f, "unexpected in the file", &self.unexpected)?;
        if !self.mismatched.is_empty() {
            writeln!(f, "  mis-shaped ({}):", self.mismatched.len())?;
            for m in &self.mismatched {
                writeln!(
                    f,
                    "    {}: model {:?}, file {:?}",
                    m.name, m.expected, m.found
                )?;
            }
        }
        Ok(())
    }
}
