//! ResNet, ResNeXt and SE-ResNet with IBN-a / IBN-b: one configuration for the whole family.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::features::{
    Backbone, FeatureInfo, check_indices, check_instance_norm, check_rank_channels, classifier,
    conv_out, pooled_head,
};
use crate::block::{
    BasicBlock, BasicBlockConfig, Bottleneck, BottleneckConfig, IbnMode, check_positive, conv,
};
use crate::device::on_cpu_pool;
use crate::error::{IbnError, Result};
use crate::kernel::{Epilogue, max_pool2d_module};
use crate::norm::{BatchNorm2dConfig, InstanceNorm2dConfig, Norm2d};

/// Residual block type of a ResNet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockKind {
    /// Two 3x3 convolutions, expansion 1 (ResNet-18/34).
    Basic,
    /// 1x1, 3x3 (optionally grouped), 1x1, expansion 4 (ResNet-50+, ResNeXt, SE-ResNet).
    Bottleneck,
}

impl BlockKind {
    /// Output channels per unit of stage width.
    pub fn expansion(self) -> usize {
        match self {
            Self::Basic => 1,
            Self::Bottleneck => crate::block::BOTTLENECK_EXPANSION,
        }
    }
}

/// The max-pool after the stem convolution: 3x3, stride 2, with one of two paddings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StemPool {
    /// Padding 1, output size rounded down: the authors' release and torchvision.
    #[default]
    Padded,
    /// No padding, with PyTorch's `ceil_mode` (the division of the output-size formula
    /// rounded up, so a last window may run past the input): fast-reid's backbones. The
    /// windows sit one pixel to the right of [`Padded`](Self::Padded)'s, so weights trained
    /// with one give other outputs with the other.
    Ceil,
}

impl StemPool {
    /// Padding on every side.
    fn padding(self) -> usize {
        match self {
            Self::Padded => 1,
            Self::Ceil => 0,
        }
    }

    /// Output size of the pool along an axis of `size` values (the rule of burn's pooling
    /// modules); `None` when no window fits.
    pub fn output(self, size: usize) -> Option<usize> {
        let (pad, ceil) = (self.padding(), self == Self::Ceil);
        (size + 2 * pad >= 3)
            .then(|| burn::backend::ops::conv::calculate_pool_output_size(3, 2, pad, 1, size, ceil))
    }

    fn init(self) -> MaxPool2d {
        let p = self.padding();
        MaxPool2dConfig::new([3, 3])
            .with_strides([2, 2])
            .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
            .with_ceil_mode(self == Self::Ceil)
            .init()
    }
}

/// The IBN variant of block `index` of a stage of `blocks` blocks configured as `stage`.
///
/// This is the single place where IBN placement is decided:
/// - IBN-a: every block of the stage;
/// - IBN-b: only the last block, and never the first one (as in the released code, so a
///   one-block IBN-b stage has no instance norm);
/// - none: no block.
pub fn block_ibn(stage: IbnMode, index: usize, blocks: usize) -> IbnMode {
    match stage {
        IbnMode::B if index == 0 || index + 1 < blocks => IbnMode::None,
        other => other,
    }
}

/// Configuration of a [`ResNetIbn`]: any block type, depths, widths, per-stage IBN choice,
/// cardinality, squeeze-excitation, last stride and head.
///
/// The stem is the 7x7/2 convolution, a norm (instance norm when the first stage is IBN-b,
/// batch norm otherwise), ReLU and a 3x3/2 max-pool ([`StemPool`]). Stage `i` has stride 1
/// (first), 2 (middle) or `last_stride` (last).
///
/// ```
/// use ibn_net::block::IbnMode;
/// use ibn_net::model::{BlockKind, ResNetIbnConfig};
/// // A re-ID backbone: ResNet-50-IBN-a widths, last stride 1, no classifier.
/// let config = ResNetIbnConfig::new(BlockKind::Bottleneck, vec![3, 4, 6, 3])
///     .with_last_stride(1)
///     .with_num_classes(0);
/// assert_eq!(config.ibn, vec![IbnMode::A, IbnMode::A, IbnMode::A, IbnMode::None]);
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct ResNetIbnConfig {
    /// Residual block type.
    pub block: BlockKind,
    /// Blocks per stage.
    pub layers: Vec<usize>,
    /// Width (`planes`) of each stage; a stage outputs `width * expansion` channels.
    #[config(default = "vec![64, 128, 256, 512]")]
    pub widths: Vec<usize>,
    /// Output channels of the stem convolution.
    #[config(default = 64)]
    pub stem_width: usize,
    /// IBN variant of each stage.
    #[config(default = "vec![IbnMode::A, IbnMode::A, IbnMode::A, IbnMode::None]")]
    pub ibn: Vec<IbnMode>,
    /// Share of instance-normalised channels in IBN-a layers.
    #[config(default = 0.5)]
    pub ibn_ratio: f64,
    /// Groups of the bottleneck 3x3 convolution (ResNeXt).
    #[config(default = 1)]
    pub cardinality: usize,
    /// Width per group of the bottleneck (ResNeXt; 64 for plain ResNets).
    #[config(default = 64)]
    pub base_width: usize,
    /// Squeeze-excitation reduction in every bottleneck, `None` for none.
    #[config(default = "None")]
    pub se_reduction: Option<usize>,
    /// Stride of the last stage (1 for re-identification backbones).
    #[config(default = 2)]
    pub last_stride: usize,
    /// Padding of the stem's max-pool ([`StemPool::Ceil`] for fast-reid's weights).
    #[config(default = "StemPool::Padded")]
    pub stem_pool: StemPool,
    /// Classes of the linear classifier; 0 for no classifier.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// Input channels.
    #[config(default = 3)]
    pub in_channels: usize,
}

impl ResNetIbnConfig {
    /// IBN-b placement: `[B, B, None, None, ...]`.
    pub fn with_ibn_b(self) -> Self {
        let n = self.layers.len();
        let ibn = (0..n)
            .map(|i| if i < 2 { IbnMode::B } else { IbnMode::None })
            .collect();
        self.with_ibn(ibn)
    }

    /// No IBN anywhere: the plain network, for comparisons.
    pub fn with_no_ibn(self) -> Self {
        let n = self.layers.len();
        self.with_ibn(vec![IbnMode::None; n])
    }

    /// Stride of stage `i`.
    pub fn stage_stride(&self, i: usize) -> usize {
        if i == 0 {
            1
        } else if i + 1 == self.layers.len() {
            self.last_stride
        } else {
            2
        }
    }

    /// Channels of the last feature map.
    pub fn num_features(&self) -> usize {
        self.widths.last().copied().unwrap_or(0) * self.block.expansion()
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`IbnError::InvalidConfig`] naming the first offending field.
    pub fn validate(&self) -> Result<()> {
        let n = self.layers.len();
        if n == 0 {
            return Err(IbnError::config("layers", "at least one stage is needed"));
        }
        if self.widths.len() != n {
            return Err(IbnError::config(
                "widths",
                format!(
                    "{} widths for {n} stages (the default is for 4 stages; set one width per \
                     stage with `with_widths`)",
                    self.widths.len()
                ),
            ));
        }
        if self.ibn.len() != n {
            return Err(IbnError::config(
                "ibn",
                format!(
                    "{} IBN choices for {n} stages (the default is for 4 stages; set one per \
                     stage with `with_ibn`, `with_ibn_b` or `with_no_ibn`)",
                    self.ibn.len()
                ),
            ));
        }
        for (i, (&blocks, &width)) in self.layers.iter().zip(&self.widths).enumerate() {
            check_positive(&format!("layers[{i}]"), blocks)?;
            check_positive(&format!("widths[{i}]"), width)?;
        }
        check_positive("stem_width", self.stem_width)?;
        check_positive("in_channels", self.in_channels)?;
        check_positive("last_stride", self.last_stride)?;
        check_positive("cardinality", self.cardinality)?;
        check_positive("base_width", self.base_width)?;
        if self.se_reduction == Some(0) {
            return Err(IbnError::config(
                "se_reduction",
                "must be greater than zero",
            ));
        }
        if self.block == BlockKind::Basic && (self.cardinality != 1 || self.base_width != 64) {
            return Err(IbnError::config(
                "cardinality",
                "basic blocks support only cardinality 1 and base_width 64",
            ));
        }
        if self.block == BlockKind::Basic && self.se_reduction.is_some() {
            return Err(IbnError::config(
                "se_reduction",
                "squeeze-excitation is only available with bottleneck blocks",
            ));
        }
        if self.ibn.contains(&IbnMode::A) && !(self.ibn_ratio > 0.0 && self.ibn_ratio < 1.0) {
            return Err(IbnError::config(
                "ibn_ratio",
                format!("must lie in (0, 1), got {}", self.ibn_ratio),
            ));
        }
        Ok(())
    }

    /// The configuration of block `index` of stage `stage` with `in_channels` inputs.
    fn block_config(&self, stage: usize, index: usize, in_channels: usize) -> BlockConfig {
        let stride = if index == 0 {
            self.stage_stride(stage)
        } else {
            1
        };
        let ibn = block_ibn(self.ibn[stage], index, self.layers[stage]);
        match self.block {
            BlockKind::Basic => BlockConfig::Basic(
                BasicBlockConfig::new(in_channels, self.widths[stage])
                    .with_stride(stride)
                    .with_ibn(ibn)
                    .with_ibn_ratio(self.ibn_ratio),
            ),
            BlockKind::Bottleneck => BlockConfig::Bottleneck(
                BottleneckConfig::new(in_channels, self.widths[stage])
                    .with_stride(stride)
                    .with_ibn(ibn)
                    .with_ibn_ratio(self.ibn_ratio)
                    .with_cardinality(self.cardinality)
                    .with_base_width(self.base_width)
                    .with_se_reduction(self.se_reduction),
            ),
        }
    }

    /// Builds the network (weights initialised as in IBN-Net).
    ///
    /// # Errors
    /// [`IbnError::InvalidConfig`] for an inconsistent configuration.
    pub fn init(&self, device: &Device) -> Result<ResNetIbn> {
        self.validate()?;
        let stem_norm = if self.ibn[0] == IbnMode::B {
            Norm2d::Instance(
                InstanceNorm2dConfig::new(self.stem_width)
                    .with_affine(true)
                    .init(device),
            )
        } else {
            Norm2d::Batch(BatchNorm2dConfig::new(self.stem_width).init(device))
        };
        let mut in_channels = self.stem_width;
        let mut layers = Vec::with_capacity(self.layers.len());
        for (stage, &blocks) in self.layers.iter().enumerate() {
            let mut stage_blocks = Vec::with_capacity(blocks);
            for index in 0..blocks {
                let config = self.block_config(stage, index, in_channels);
                in_channels = config.out_channels();
                stage_blocks.push(
                    config
                        .init(device)
                        .map_err(|e| e.within(&format!("layer{}.{index}", stage + 1)))?,
                );
            }
            layers.push(stage_blocks);
        }
        Ok(ResNetIbn {
            conv1: conv(self.in_channels, self.stem_width, 7, 2, 1, device),
            bn1: stem_norm,
            maxpool: self.stem_pool.init(),
            layers,
            fc: classifier(self.num_features(), self.num_classes, device),
            config: self.clone(),
        })
    }
}

enum BlockConfig {
    Basic(BasicBlockConfig),
    Bottleneck(BottleneckConfig),
}

impl BlockConfig {
    fn out_channels(&self) -> usize {
        match self {
            Self::Basic(c) => c.out_channels(),
            Self::Bottleneck(c) => c.out_channels(),
        }
    }

    fn init(&self, device: &Device) -> Result<ResBlock> {
        Ok(match self {
            Self::Basic(c) => ResBlock::Basic(c.init(device)?),
            Self::Bottleneck(c) => ResBlock::Bottleneck(c.init(device)?),
        })
    }
}

/// One residual block of either type.
// Variants are held inline: modules are built once and never moved in hot loops.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum ResBlock {
    /// Basic block.
    Basic(BasicBlock),
    /// Bottleneck block.
    Bottleneck(Bottleneck),
}

impl ResBlock {
    /// Runs the block.
    ///
    /// # Shapes
    /// - `input`: `[N, C_in, H, W]`
    /// - output: `[N, C_out, H / stride, W / stride]`
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        match self {
            Self::Basic(b) => b.forward(input),
            Self::Bottleneck(b) => b.forward(input),
        }
    }
}

/// A ResNet / ResNeXt / SE-ResNet with IBN layers; see [`ResNetIbnConfig`].
///
/// PyTorch names map as `layer{i+1}.{j}` = `layers[i][j]`, `downsample.0/1` =
/// `downsample.conv/bn`, `bn1.IN/BN` = `bn1.instance/batch`, the IBN-b `IN` = `post_in`.
#[derive(Module, Debug)]
pub struct ResNetIbn {
    /// Stem 7x7/2 convolution.
    pub conv1: Conv2d,
    /// Stem norm: instance norm for IBN-b networks, batch norm otherwise.
    pub bn1: Norm2d,
    /// Stem 3x3/2 max-pool.
    pub maxpool: MaxPool2d,
    /// Residual stages.
    pub layers: Vec<Vec<ResBlock>>,
    /// Classifier (`[N, num_features] -> [N, num_classes]`), `None` without one; replace it
    /// with [`Backbone::reset_classifier`], which keeps [`config`](Self::config) in step.
    pub fc: Option<Linear>,
    #[module(skip)]
    config: ResNetIbnConfig,
}

impl ResNetIbn {
    /// The configuration the network was built from (with the current number of classes).
    pub fn config(&self) -> &ResNetIbnConfig {
        &self.config
    }

    fn stem(&self, input: Tensor<4>) -> Tensor<4> {
        self.bn1.after_conv(&self.conv1, input, Epilogue::relu())
    }
}

impl Backbone for ResNetIbn {
    fn forward_features(&self, input: Tensor<4>) -> Tensor<4> {
        on_cpu_pool(input.dims(), &input.device(), || {
            let mut x = max_pool2d_module(&self.maxpool, self.stem(input));
            for stage in &self.layers {
                for block in stage {
                    x = block.forward(x);
                }
            }
            x
        })
    }

    fn forward_head(&self, features: Tensor<4>, pre_logits: bool) -> Tensor<2> {
        pooled_head(features, &self.fc, pre_logits)
    }

    fn forward_intermediates(&self, input: Tensor<4>, indices: &[usize]) -> Result<Vec<Tensor<4>>> {
        let deepest = check_indices(indices, self.layers.len() + 1)?;
        self.validate_input(&input.dims())?;
        let maps = on_cpu_pool(input.dims(), &input.device(), || {
            let mut maps = Vec::with_capacity(deepest + 1);
            let stem = self.stem(input);
            maps.push(stem.clone());
            let mut x = max_pool2d_module(&self.maxpool, stem);
            for stage in self.layers.iter().take(deepest) {
                for block in stage {
                    x = block.forward(x);
                }
                maps.push(x.clone());
            }
            maps
        });
        Ok(indices.iter().map(|&i| maps[i].clone()).collect())
    }

    fn feature_info(&self) -> Vec<FeatureInfo> {
        let c = &self.config;
        let mut info = vec![FeatureInfo {
            module: "bn1".into(),
            channels: c.stem_width,
            reduction: 2,
        }];
        let mut reduction = 4;
        for (i, width) in c.widths.iter().enumerate() {
            reduction *= c.stage_stride(i);
            info.push(FeatureInfo {
                module: format!("layer{}", i + 1),
                channels: width * c.block.expansion(),
                reduction,
            });
        }
        info
    }

    fn num_classes(&self) -> usize {
        // From the head itself (burn stores linear weights as [in, out]).
        self.fc.as_ref().map_or(0, |fc| fc.weight.dims()[1])
    }

    fn reset_classifier(&mut self, num_classes: usize, device: &Device) {
        self.fc = classifier(self.config.num_features(), num_classes, device);
        self.config.num_classes = num_classes;
    }

    fn validate_input(&self, dims: &[usize]) -> Result<()> {
        let c = &self.config;
        let [_, _, h, w] = check_rank_channels(dims, c.in_channels)?;
        let too_small = || {
            IbnError::InvalidInput(format!(
                "input {dims:?} is too small for the stem (7x7/2 convolution and 3x3/2 max-pool)"
            ))
        };
        let (h, w) = (
            conv_out(h, 7, 2, 3).ok_or_else(too_small)?,
            conv_out(w, 7, 2, 3).ok_or_else(too_small)?,
        );
        if c.ibn[0] == IbnMode::B {
            check_instance_norm("the stem norm `bn1`", h, w, dims)?;
        }
        let (mut h, mut w) = (
            c.stem_pool.output(h).ok_or_else(too_small)?,
            c.stem_pool.output(w).ok_or_else(too_small)?,
        );
        for (i, &blocks) in c.layers.iter().enumerate() {
            let stride = c.stage_stride(i);
            let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
            let stage = format!("layer{}", i + 1);
            for j in 0..blocks {
                // Bottleneck IBN-a normalises before the strided 3x3 convolution.
                let (bh, bw) = if j == 0 { (h, w) } else { (oh, ow) };
                match (block_ibn(c.ibn[i], j, blocks), c.block) {
                    (IbnMode::A, BlockKind::Bottleneck) => {
                        check_instance_norm(&format!("{stage}.{j}.bn1"), bh, bw, dims)?
                    }
                    (IbnMode::A, BlockKind::Basic) => {
                        check_instance_norm(&format!("{stage}.{j}.bn1"), oh, ow, dims)?
                    }
                    (IbnMode::B, _) => {
                        check_instance_norm(&format!("{stage}.{j}.IN"), oh, ow, dims)?
                    }
                    (IbnMode::None, _) => {}
                }
            }
            (h, w) = (oh, ow);
        }
        Ok(())
    }
}
