//! The three-convolution residual block of ResNet-50+, ResNeXt and SE-ResNet.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Tensor};

use super::{
    Downsample, IbnMode, Residual, SqueezeExcitation, SqueezeExcitationConfig, check_positive,
    conv, first_norm, post_norm,
};
use crate::error::{IbnError, Result};
use crate::kernel::Epilogue;
use crate::norm::{BatchNorm2d, BatchNorm2dConfig, InstanceNorm2d, Norm2d};

/// Output channels per `planes` of a bottleneck.
pub const BOTTLENECK_EXPANSION: usize = 4;

/// Configuration of a [`Bottleneck`].
#[derive(Config, Debug)]
pub struct BottleneckConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Stage width; the block outputs `4 * planes` channels.
    pub planes: usize,
    /// Stride of the 3x3 convolution.
    #[config(default = 1)]
    pub stride: usize,
    /// IBN variant.
    #[config(default = "IbnMode::None")]
    pub ibn: IbnMode,
    /// IN share of the IBN layer (IBN-a only).
    #[config(default = 0.5)]
    pub ibn_ratio: f64,
    /// Groups of the 3x3 convolution (ResNeXt cardinality).
    #[config(default = 1)]
    pub cardinality: usize,
    /// Width per group (ResNeXt `base_width`; 64 gives a plain ResNet bottleneck).
    #[config(default = 64)]
    pub base_width: usize,
    /// Squeeze-excitation reduction; `None` for no SE unit.
    #[config(default = "None")]
    pub se_reduction: Option<usize>,
}

impl BottleneckConfig {
    /// Inner width `floor(planes * base_width / 64) * cardinality`.
    pub fn width(&self) -> usize {
        self.planes * self.base_width / 64 * self.cardinality
    }

    /// Output channels of the block.
    pub fn out_channels(&self) -> usize {
        self.planes * BOTTLENECK_EXPANSION
    }

    /// Builds the block.
    ///
    /// # Errors
    /// Zero channels, stride, cardinality or inner width; an IBN ratio that leaves a section
    /// empty; an SE reduction larger than the output width.
    pub fn init(&self, device: &Device) -> Result<Bottleneck> {
        check_positive("in_channels", self.in_channels)?;
        check_positive("planes", self.planes)?;
        check_positive("stride", self.stride)?;
        check_positive("cardinality", self.cardinality)?;
        check_positive("base_width", self.base_width)?;
        let width = self.width();
        if width == 0 {
            return Err(IbnError::config(
                "base_width",
                format!(
                    "planes {} * base_width {} / 64 rounds down to 0 channels per group",
                    self.planes, self.base_width
                ),
            ));
        }
        let out = self.out_channels();
        let se = match self.se_reduction {
            Some(reduction) => Some(
                SqueezeExcitationConfig::new(out)
                    .with_reduction(reduction)
                    .init(device)
                    .map_err(|e| e.within("se"))?,
            ),
            None => None,
        };
        Ok(Bottleneck {
            conv1: conv(self.in_channels, width, 1, 1, 1, device),
            bn1: first_norm(width, self.ibn, self.ibn_ratio, device)?,
            conv2: conv(width, width, 3, self.stride, self.cardinality, device),
            bn2: BatchNorm2dConfig::new(width).init(device),
            conv3: conv(width, out, 1, 1, 1, device),
            bn3: BatchNorm2dConfig::new(out).init(device),
            se,
            downsample: Downsample::needed(self.in_channels, out, self.stride, device),
            post_in: post_norm(out, self.ibn, device),
        })
    }
}

/// `conv1x1 -> bn1 -> ReLU -> conv3x3(stride, groups) -> bn2 -> ReLU -> conv1x1 -> bn3
/// -> [SE] -> add -> [IN] -> ReLU`.
#[derive(Module, Debug)]
pub struct Bottleneck {
    /// 1x1 reduction.
    pub conv1: Conv2d,
    /// IBN layer (IBN-a) or batch norm.
    pub bn1: Norm2d,
    /// 3x3 (grouped) convolution, carries the stride.
    pub conv2: Conv2d,
    /// Batch norm.
    pub bn2: BatchNorm2d,
    /// 1x1 expansion to `4 * planes`.
    pub conv3: Conv2d,
    /// Batch norm.
    pub bn3: BatchNorm2d,
    /// Squeeze-excitation on the output of `bn3`, before the add.
    pub se: Option<SqueezeExcitation>,
    /// Projection shortcut when stride or width change.
    pub downsample: Option<Downsample>,
    /// IBN-b instance norm on the residual sum (`IN` in PyTorch).
    pub post_in: Option<InstanceNorm2d>,
}

impl Bottleneck {
    /// conv1x1 -> bn1 -> ReLU -> conv3x3 -> bn2 -> ReLU -> conv1x1 -> bn3 -> (SE) -> add the
    /// shortcut -> (IBN-b: IN) -> ReLU.
    ///
    /// # Shapes
    /// - `input`: `[N, C_in, H, W]`
    /// - output: `[N, 4 * planes, ceil(H / stride), ceil(W / stride)]`
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let out = self
            .bn1
            .after_conv(&self.conv1, input.clone(), Epilogue::relu());
        let out = self.bn2.after_conv(&self.conv2, out, Epilogue::relu());
        let residual = Residual {
            se: self.se.as_ref(),
            downsample: self.downsample.as_ref(),
            post: self.post_in.as_ref(),
        };
        residual.finish(|e| self.bn3.after_conv(&self.conv3, out, e), input)
    }
}
