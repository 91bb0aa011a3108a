//! # ibn-net
//!
//! IBN-Net (Pan et al., *Two at Once: Enhancing Learning and Generalization Capacities via
//! IBN-Net*, ECCV 2018) for the [burn](https://burn.dev) deep-learning framework.
//!
//! IBN-Net mixes instance normalisation (IN) into the shallow layers of a CNN and keeps batch
//! normalisation (BN) elsewhere: IN removes per-image appearance statistics (colour, lighting,
//! style), BN keeps content discriminative. The result generalises better across appearance
//! shifts and is also more accurate.
//!
//! This crate provides
//! - PyTorch-exact building blocks: [`norm::InstanceNorm2d`], [`norm::BatchNorm2d`] (unbiased
//!   running variance, as PyTorch), the [`norm::Ibn`] layer, IBN-a / IBN-b residual blocks,
//!   squeeze-excitation and DenseNet layers ([`block`]);
//! - builders for the whole family ([`model::ResNetIbnConfig`], [`model::DenseNetIbnConfig`])
//!   and every named model of the authors' zoo ([`model::MODELS`], [`model::create_model`]);
//! - loading of the released PyTorch checkpoints with outputs equal to PyTorch's
//!   ([`weights`]);
//! - one code base for every burn device: flex, ndarray, wgpu, and autodiff for training,
//!   with fused normalisation kernels, CPU convolution kernels and hand-written backward
//!   passes ([`kernel`]).
//!
//! ```
//! use burn::tensor::{Device, Distribution, Tensor};
//! use ibn_net::block::IbnMode;
//! use ibn_net::model::{Backbone, BlockKind, ResNetIbnConfig};
//!
//! # fn main() -> ibn_net::Result<()> {
//! let device = Device::default();
//! // A small ResNet with IBN-a in the first two stages and 10 classes.
//! let model = ResNetIbnConfig::new(BlockKind::Basic, vec![1, 1, 1])
//!     .with_widths(vec![16, 32, 64])
//!     .with_stem_width(16)
//!     .with_ibn(vec![IbnMode::A, IbnMode::A, IbnMode::None])
//!     .with_num_classes(10)
//!     .init(&device)?;
//! let images = Tensor::<4>::random([2, 3, 64, 64], Distribution::Default, &device);
//! let logits = model.try_forward(images)?; // [2, 10]
//! assert_eq!(logits.dims(), [2, 10]);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod block;
pub mod device;
pub mod error;
pub mod kernel;
pub mod model;
pub mod norm;
pub mod npy;
pub mod weights;

pub use error::{IbnError, Result};
