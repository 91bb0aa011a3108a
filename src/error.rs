//! The crate's error type.

use std::path::PathBuf;

use crate::weights::LoadReport;

/// Everything that can go wrong when building, running or loading an IBN-Net.
///
/// Every variant names what was wrong; nothing in this crate reports a user mistake by
/// panicking deep inside burn.
#[derive(Debug, thiserror::Error)]
pub enum IbnError {
    /// A configuration value is out of range or inconsistent with another one.
    #[error("invalid configuration: {field}: {reason}")]
    InvalidConfig {
        /// The offending field, e.g. `ibn_ratio` or `widths[2]`.
        field: String,
        /// Why the value is rejected.
        reason: String,
    },

    /// An input tensor does not fit the network.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A model name that the registry does not know.
    #[error("unknown model `{name}`; known models: {known}")]
    UnknownModel {
        /// The name that was asked for.
        name: String,
        /// Every registered name, comma separated.
        known: String,
    },

    /// A checkpoint file that cannot be read at all (missing, truncated, not a checkpoint).
    #[error("cannot read checkpoint {path}: {reason}")]
    CheckpointRead {
        /// The file.
        path: PathBuf,
        /// What the reader said.
        reason: String,
    },

    /// A readable checkpoint whose tensors do not match the model.
    #[error("checkpoint {path} does not match the model:\n{report}")]
    CheckpointMismatch {
        /// The file.
        path: PathBuf,
        /// Every missing, unexpected and mis-shaped tensor, by its PyTorch name (by module
        /// path for [`load_file`](crate::weights::load_file)).
        report: Box<LoadReport>,
    },

    /// Saving a model failed.
    #[error("cannot save model to {path}: {reason}")]
    Save {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// A `.npy` file that cannot be read or written.
    #[error("npy file {path}: {reason}")]
    Npy {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// A device that this build does not provide.
    #[error("device `{name}` is not available: {reason}")]
    Device {
        /// The requested device name.
        name: String,
        /// Why it is not available (usually: the cargo feature is off).
        reason: String,
    },
}

impl IbnError {
    /// The same error, raised by the part `location` of a larger configuration: an
    /// [`InvalidConfig`](Self::InvalidConfig) field becomes `location.field`
    /// (`layer2.0.bn1.ratio`); other errors are returned unchanged.
    pub(crate) fn within(self, location: &str) -> Self {
        match self {
            Self::InvalidConfig { field, reason } => Self::InvalidConfig {
                field: format!("{location}.{field}"),
                reason,
            },
            other => other,
        }
    }

    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Result type of this crate.
pub type Result<T, E = IbnError> = std::result::Result<T, E>;
