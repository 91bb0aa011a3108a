//! DenseNet-BC with IBN-a.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use super::features::{
    Backbone, FeatureInfo, check_indices, check_instance_norm, check_rank_channels, classifier,
    conv_out, pooled_head,
};
use crate::block::{
    DenseBlock, DenseBlockConfig, Transition, TransitionConfig, check_positive, conv,
};
use crate::device::on_cpu_pool;
use crate::error::{IbnError, Result};
use crate::kernel::{Epilogue, max_pool2d_module};
use crate::norm::{BatchNorm2d, BatchNorm2dConfig};

/// Configuration of a [`DenseNetIbn`] (torchvision's DenseNet-BC with IBN-a).
///
/// In every dense block marked in `ibn`, the layers with index `i % ibn_every == 0` use the
/// `[BN | IN]` IBN layer as `norm1`.
#[derive(Config, Debug, PartialEq)]
pub struct DenseNetIbnConfig {
    /// Dense layers per block.
    pub block_config: Vec<usize>,
    /// Channels added by each dense layer.
    #[config(default = 32)]
    pub growth_rate: usize,
    /// Channels of the stem convolution.
    #[config(default = 64)]
    pub num_init_features: usize,
    /// Bottleneck factor of the dense layers.
    #[config(default = 4)]
    pub bn_size: usize,
    /// Whether each dense block uses IBN layers.
    #[config(default = "vec![true, true, true, false]")]
    pub ibn: Vec<bool>,
    /// IBN on every `ibn_every`-th layer of an IBN block, starting with the first.
    #[config(default = 3)]
    pub ibn_every: usize,
    /// Share of instance-normalised channels in the IBN layers.
    #[config(default = 0.4)]
    pub ibn_ratio: f64,
    /// Classes of the classifier; 0 for none.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// Input channels.
    #[config(default = 3)]
    pub in_channels: usize,
}

impl DenseNetIbnConfig {
    /// Configurations of every dense block and transition, and the final channel count.
    fn plan(&self) -> (Vec<DenseBlockConfig>, Vec<TransitionConfig>, usize) {
        let mut channels = self.num_init_features;
        let mut blocks = Vec::new();
        let mut transitions = Vec::new();
        for (i, &layers) in self.block_config.iter().enumerate() {
            let block = DenseBlockConfig::new(layers, channels, self.growth_rate)
                .with_bn_size(self.bn_size)
                .with_ibn_every(
                    self.ibn
                        .get(i)
                        .is_some_and(|&on| on)
                        .then_some(self.ibn_every),
                )
                .with_ibn_ratio(self.ibn_ratio);
            channels = block.out_channels();
            blocks.push(block);
            if i + 1 < self.block_config.len() {
                transitions.push(TransitionConfig::new(channels, channels / 2));
                channels /= 2;
            }
        }
        (blocks, transitions, channels)
    }

    /// Channels of the last feature map.
    pub fn num_features(&self) -> usize {
        self.plan().2
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`IbnError::InvalidConfig`] naming the first offending field.
    pub fn validate(&self) -> Result<()> {
        let n = self.block_config.len();
        if n == 0 {
            return Err(IbnError::config(
                "block_config",
                "at least one dense block is needed",
            ));
        }
        if self.ibn.len() != n {
            return Err(IbnError::config(
                "ibn",
                format!(
                    "{} IBN flags for {n} blocks (the default is for 4 blocks; set one flag per \
                     block with `with_ibn`)",
                    self.ibn.len()
                ),
            ));
        }
        for (i, &layers) in self.block_config.iter().enumerate() {
            check_positive(&format!("block_config[{i}]"), layers)?;
        }
        check_positive("growth_rate", self.growth_rate)?;
        check_positive("num_init_features", self.num_init_features)?;
        check_positive("bn_size", self.bn_size)?;
        check_positive("ibn_every", self.ibn_every)?;
        check_positive("in_channels", self.in_channels)?;
        if self.ibn.contains(&true) && !(self.ibn_ratio > 0.0 && self.ibn_ratio < 1.0) {
            return Err(IbnError::config(
                "ibn_ratio",
                format!("must lie in (0, 1), got {}", self.ibn_ratio),
            ));
        }
        Ok(())
    }

    /// Builds the network.
    ///
    /// # Errors
    /// [`IbnError::InvalidConfig`] for an inconsistent configuration.
    pub fn init(&self, device: &Device) -> Result<DenseNetIbn> {
        self.validate()?;
        let (blocks, transitions, channels) = self.plan();
        Ok(DenseNetIbn {
            conv0: conv(self.in_channels, self.num_init_features, 7, 2, 1, device),
            norm0: BatchNorm2dConfig::new(self.num_init_features).init(device),
            pool0: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            blocks: blocks
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    b.init(device)
                        .map_err(|e| e.within(&format!("features.denseblock{}", i + 1)))
                })
                .collect::<Result<_>>()?,
            transitions: transitions
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    t.init(device)
                        .map_err(|e| e.within(&format!("features.transition{}", i + 1)))
                })
                .collect::<Result<_>>()?,
            norm5: BatchNorm2dConfig::new(channels).init(device),
            classifier: classifier(channels, self.num_classes, device),
            config: self.clone(),
        })
    }
}

/// DenseNet-BC with IBN-a; see [`DenseNetIbnConfig`].
///
/// PyTorch names map as `features.conv0` = `conv0`, `features.denseblock{i+1}.denselayer{j+1}`
/// = `blocks[i].layers[j]`, `features.transition{i+1}` = `transitions[i]`,
/// `features.norm5` = `norm5`, `norm1.BN/IN` = `norm1.batch/instance`.
#[derive(Module, Debug)]
pub struct DenseNetIbn {
    /// Stem 7x7/2 convolution.
    pub conv0: Conv2d,
    /// Stem batch norm.
    pub norm0: BatchNorm2d,
    /// Stem 3x3/2 max-pool.
    pub pool0: MaxPool2d,
    /// Dense blocks.
    pub blocks: Vec<DenseBlock>,
    /// Transitions between dense blocks.
    pub transitions: Vec<Transition>,
    /// Final batch norm.
    pub norm5: BatchNorm2d,
    /// Classifier (`[N, num_features] -> [N, num_classes]`), `None` without one; replace it
    /// with [`Backbone::reset_classifier`], which keeps [`config`](Self::config) in step.
    pub classifier: Option<Linear>,
    #[module(skip)]
    config: DenseNetIbnConfig,
}

impl DenseNetIbn {
    /// The configuration the network was built from (with the current number of classes).
    pub fn config(&self) -> &DenseNetIbnConfig {
        &self.config
    }

    fn stem(&self, input: Tensor<4>) -> Tensor<4> {
        self.norm0.after_conv(&self.conv0, input, Epilogue::relu())
    }

    /// Runs dense blocks `0..=last`, returning the output of each (the last one through
    /// `norm5` and ReLU when it is the final block).
    fn run_blocks(&self, stem: Tensor<4>, last: usize) -> Vec<Tensor<4>> {
        let mut outs = Vec::with_capacity(last + 1);
        let mut x = max_pool2d_module(&self.pool0, stem);
        for (i, block) in self.blocks.iter().enumerate().take(last + 1) {
            if i > 0 {
                x = self.transitions[i - 1].forward(x);
            }
            x = block.forward(x);
            if i + 1 == self.blocks.len() {
                x = self.norm5.forward_with(x, Epilogue::relu());
            }
            outs.push(x.clone());
        }
        outs
    }
}

impl Backbone for DenseNetIbn {
    fn forward_features(&self, input: Tensor<4>) -> Tensor<4> {
        let last = self.blocks.len() - 1;
        on_cpu_pool(input.dims(), &input.device(), || {
            self.run_blocks(self.stem(input), last)
                .pop()
                .expect("at least one dense block")
        })
    }

    fn forward_head(&self, features: Tensor<4>, pre_logits: bool) -> Tensor<2> {
        pooled_head(features, &self.classifier, pre_logits)
    }

    fn forward_intermediates(&self, input: Tensor<4>, indices: &[usize]) -> Result<Vec<Tensor<4>>> {
        let deepest = check_indices(indices, self.blocks.len() + 1)?;
        self.validate_input(&input.dims())?;
        let maps = on_cpu_pool(input.dims(), &input.device(), || {
            let stem = self.stem(input);
            let mut maps = vec![stem.clone()];
            if deepest > 0 {
                maps.extend(self.run_blocks(stem, deepest - 1));
            }
            maps
        });
        Ok(indices.iter().map(|&i| maps[i].clone()).collect())
    }

    fn feature_info(&self) -> Vec<FeatureInfo> {
        let (blocks, _, _) = self.config.plan();
        let mut info = vec![FeatureInfo {
            module: "features.norm0".into(),
            channels: self.config.num_init_features,
            reduction: 2,
        }];
        for (i, block) in blocks.iter().enumerate() {
            let channels = block.out_channels();
            info.push(FeatureInfo {
                module: if i + 1 == blocks.len() {
                    "features.norm5".into()
                } else {
                    format!("features.denseblock{}", i + 1)
                },
                channels,
                reduction: 4 << i,
            });
        }
        info
    }

    fn num_classes(&self) -> usize {
        // From the head itself (burn stores linear weights as [in, out]).
        self.classifier.as_ref().map_or(0, |fc| fc.weight.dims()[1])
    }

    fn reset_classifier(&mut self, num_classes: usize, device: &Device) {
        self.classifier = classifier(self.config.num_features(), num_classes, device);
        self.config.num_classes = num_classes;
    }

    fn validate_input(&self, dims: &[usize]) -> Result<()> {
        let c = &self.config;
        let [_, _, h, w] = check_rank_channels(dims, c.in_channels)?;
        let too_small =
            |what: &str| IbnError::InvalidInput(format!("input {dims:?} is too small for {what}"));
        let stem = |s: usize| conv_out(s, 7, 2, 3).and_then(|s| conv_out(s, 3, 2, 1));
        let (mut h, mut w) = (
            stem(h).ok_or_else(|| too_small("the stem"))?,
            stem(w).ok_or_else(|| too_small("the stem"))?,
        );
        for (i, &has_ibn) in c.ibn.iter().enumerate() {
            if i > 0 {
                if h < 2 || w < 2 {
                    return Err(too_small(&format!(
                        "features.transition{i} (2x2 average pool)"
                    )));
                }
                (h, w) = (h / 2, w / 2);
            }
            if has_ibn {
                check_instance_norm(&format!("features.denseblock{}", i + 1), h, w, dims)?;
            }
        }
        Ok(())
    }
}
