//! Checkpoint import (PyTorch) and saving/loading in burn's formats.

mod keymap;
mod pytorch;
mod report;
mod store;

pub use keymap::{DENSENET_KEYS, IBN_KEYS, IDENTITY_KEYS, KeyMap, KeyRule, RESNET_KEYS};
pub use pytorch::{Strictness, load_pytorch};
pub use report::{LoadReport, ShapeMismatch};
pub use store::{TensorEntry, load_file, named_tensors, num_parameters, save_file};
