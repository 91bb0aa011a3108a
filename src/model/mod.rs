//! Networks: the ResNet family (ResNet, ResNeXt, SE-ResNet), DenseNet, and the registry of
//! named models.

mod densenet;
mod features;
mod fold;
mod freeze;
mod registry;
mod resnet;

pub use densenet::{DenseNetIbn, DenseNetIbnConfig};
pub use features::{Backbone, FeatureInfo};
pub use registry::*;
pub use resnet::{BlockKind, ResBlock, ResNetIbn, ResNetIbnConfig, StemPool, block_ibn};
