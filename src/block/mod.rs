//! Residual and dense building blocks.
//!
//! - [`BasicBlock`] and [`Bottleneck`] (grouped convolution for ResNeXt, optional
//!   [`SqueezeExcitation`]) with IBN-a (`bn1` is an [`Ibn`](crate::norm::Ibn) layer) or
//!   IBN-b (an instance norm after the residual add, before the last ReLU);
//! - [`DenseLayer`], [`DenseBlock`] and [`Transition`] of DenseNet-IBN-a.

mod basic;
mod bottleneck;
mod dense;
mod se;

pub use basic::{BasicBlock, BasicBlockConfig};
pub use bottleneck::BOTTLENECK_EXPANSION;
pub use bottleneck::{Bottleneck, BottleneckConfig};
pub use dense::{
    DenseBlock, DenseBlockConfig, DenseLayer, DenseLayerConfig, Transition, TransitionConfig,
};
pub use se::{SqueezeExcitation, SqueezeExcitationConfig};

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, PaddingConfig2d};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{IbnError, Result};
use crate::kernel::Epilogue;
use crate::norm::{BatchNorm2d, BatchNorm2dConfig, IbnConfig, InstanceNorm2d, Norm2d};

/// Which IBN variant a residual block uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IbnMode {
    /// Plain block: batch norm everywhere.
    None,
    /// IBN-a: the block's first norm (`bn1`) is an IBN layer.
    A,
    /// IBN-b: an affine instance norm on the residual sum, before the final ReLU.
    B,
}

/// A bias-free convolution initialised as in IBN-Net: `N(0, sqrt(2 / (k * k * out)))`.
pub(crate) fn conv(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
    device: &Device,
) -> Conv2d {
    let std = (2.0 / (kernel * kernel * out_channels) as f64).sqrt();
    Conv2dConfig::new([in_channels, out_channels], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(
            kernel / 2,
            kernel / 2,
            kernel / 2,
            kernel / 2,
        ))
        .with_groups(groups)
        .with_bias(false)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device)
}

/// The first norm of a residual block: an IBN layer for IBN-a, batch norm otherwise.
pub(crate) fn first_norm(
    channels: usize,
    ibn: IbnMode,
    ratio: f64,
    device: &Device,
) -> Result<Norm2d> {
    Ok(match ibn {
        IbnMode::A => Norm2d::Ibn(
            IbnConfig::new(channels)
                .with_ratio(ratio)
                .init(device)
                .map_err(|e| e.within("bn1"))?,
        ),
        _ => Norm2d::Batch(BatchNorm2dConfig::new(channels).init(device)),
    })
}

/// The IBN-b instance norm on the residual sum, or nothing.
pub(crate) fn post_norm(channels: usize, ibn: IbnMode, device: &Device) -> Option<InstanceNorm2d> {
    (ibn == IbnMode::B).then(|| {
        crate::norm::InstanceNorm2dConfig::new(channels)
            .with_affine(true)
            .init(device)
    })
}

pub(crate) fn check_positive(field: &str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(IbnError::config(field, "must be greater than zero"));
    }
    Ok(())
}

/// The projection shortcut: a strided 1x1 convolution and a batch norm
/// (PyTorch: `downsample.0`, `downsample.1`).
#[derive(Module, Debug)]
pub struct Downsample {
    /// 1x1 convolution, no bias.
    pub conv: Conv2d,
    /// Batch norm.
    pub bn: BatchNorm2d,
}

impl Downsample {
    /// Builds the shortcut when the block changes stride or width, as torchvision does.
    pub(crate) fn needed(
        in_channels: usize,
        out_channels: usize,
        stride: usize,
        device: &Device,
    ) -> Option<Self> {
        (stride != 1 || in_channels != out_channels).then(|| Self {
            conv: conv(in_channels, out_channels, 1, stride, 1, device),
            bn: BatchNorm2dConfig::new(out_channels).init(device),
        })
    }

    /// The shortcut: the strided 1x1 convolution, then batch norm.
    ///
    /// # Shapes
    /// - `input`: `[N, C_in, H, W]`
    /// - output: `[N, C_out, H / stride, W / stride]`
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        self.bn.after_conv(&self.conv, input, Epilogue::default())
    }
}

/// The end of a residual block after its last convolution:
/// `relu(post(se(norm(out)) + shortcut(identity)))`, each part where the block has it.
pub(crate) struct Residual<'a> {
    /// Squeeze-excitation after the last norm.
    pub se: Option<&'a SqueezeExcitation>,
    /// Projection shortcut (identity shortcut without it).
    pub downsample: Option<&'a Downsample>,
    /// IBN-b instance norm on the sum.
    pub post: Option<&'a InstanceNorm2d>,
}

impl Residual<'_> {
    /// Finishes the block: `last` computes the last convolution and norm followed by an
    /// epilogue (`BatchNorm2d::after_conv`), `identity` is the block's input. Without
    /// squeeze-excitation, the addition runs inside that norm's pass (or the convolution's,
    /// when the norm is folded into it), and so does ReLU without an IBN-b instance norm,
    /// which otherwise applies it in its own pass.
    pub fn finish(
        &self,
        last: impl FnOnce(Epilogue) -> Tensor<4>,
        identity: Tensor<4>,
    ) -> Tensor<4> {
        let shortcut = match self.downsample {
            Some(d) => d.forward(identity),
            None => identity,
        };
        // The addition inside the last norm's pass when no squeeze-excitation comes between
        // them, and ReLU too when no instance norm follows.
        let relu_in_norm = self.se.is_none() && self.post.is_none();
        let out = match self.se {
            None => {
                let then = Epilogue {
                    residual: Some(shortcut),
                    relu: relu_in_norm,
                };
                last(then)
            }
            Some(se) => se.forward(last(Epilogue::default())) + shortcut,
        };
        match self.post {
            Some(post) => post.forward_with(out, Epilogue::relu()),
            None if relu_in_norm => out,
            None => burn::tensor::activation::relu(out),
        }
    }
}
