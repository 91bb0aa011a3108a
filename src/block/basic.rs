//! The two-convolution residual block of ResNet-18/34.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Tensor};

use super::{Downsample, IbnMode, Residual, check_positive, conv, first_norm, post_norm};
use crate::error::Result;
use crate::kernel::Epilogue;
use crate::norm::{BatchNorm2d, BatchNorm2dConfig, InstanceNorm2d, Norm2d};

/// Configuration of a [`BasicBlock`].
#[derive(Config, Debug)]
pub struct BasicBlockConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels (expansion 1).
    pub planes: usize,
    /// Stride of the first 3x3 convolution.
    #[config(default = 1)]
    pub stride: usize,
    /// IBN variant.
    #[config(default = "IbnMode::None")]
    pub ibn: IbnMode,
    /// IN share of the IBN layer (IBN-a only).
    #[config(default = 0.5)]
    pub ibn_ratio: f64,
}

/// `conv3x3(stride) -> bn1 -> ReLU -> conv3x3 -> bn2 -> add -> [IN] -> ReLU`.
#[derive(Module, Debug)]
pub struct BasicBlock {
    /// First 3x3 convolution, carries the stride.
    pub conv1: Conv2d,
    /// IBN layer (IBN-a) or batch norm.
    pub bn1: Norm2d,
    /// Second 3x3 convolution.
    pub conv2: Conv2d,
    /// Batch norm.
    pub bn2: BatchNorm2d,
    /// Projection shortcut when stride or width change.
    pub downsample: Option<Downsample>,
    /// IBN-b instance norm on the residual sum (`IN` in PyTorch).
    pub post_in: Option<InstanceNorm2d>,
}

impl BasicBlockConfig {
    /// Output channels of the block.
    pub fn out_channels(&self) -> usize {
        self.planes
    }

    /// Builds the block.
    ///
    /// # Errors
    /// Zero channels or stride, or an IBN ratio that leaves a section empty.
    pub fn init(&self, device: &Device) -> Result<BasicBlock> {
        check_positive("in_channels", self.in_channels)?;
        check_positive("planes", self.planes)?;
        check_positive("stride", self.stride)?;
        let p = self.planes;
        Ok(BasicBlock {
            conv1: conv(self.in_channels, p, 3, self.stride, 1, device),
            bn1: first_norm(p, self.ibn, self.ibn_ratio, device)?,
            conv2: conv(p, p, 3, 1, 1, device),
            bn2: BatchNorm2dConfig::new(p).init(device),
            downsample: Downsample::needed(self.in_channels, p, self.stride, device),
            post_in: post_norm(p, self.ibn, device),
        })
    }
}

impl BasicBlock {
    /// conv3x3 -> bn1 -> ReLU -> conv3x3 -> bn2 -> add the shortcut -> (IBN-b: IN) -> ReLU.
    ///
    /// # Shapes
    /// - `input`: `[N, C_in, H, W]`
    /// - output: `[N, planes, ceil(H / stride), ceil(W / stride)]`
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let out = self
            .bn1
            .after_conv(&self.conv1, input.clone(), Epilogue::relu());
        let residual = Residual {
            se: None,
            downsample: self.downsample.as_ref(),
            post: self.post_in.as_ref(),
        };
        residual.finish(|e| self.bn2.after_conv(&self.conv2, out, e), input)
    }
}
