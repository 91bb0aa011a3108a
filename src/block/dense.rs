//! DenseNet-BC building blocks with the DenseNet IBN layer.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig};
use burn::tensor::{Device, Tensor};

use super::{check_positive, conv};
use crate::error::Result;
use crate::kernel::{Epilogue, avg_pool2d_module, conv2d_module};
use crate::norm::{BatchNorm2d, BatchNorm2dConfig, IbnConfig, Norm2d};

/// Configuration of a [`DenseLayer`].
#[derive(Config, Debug)]
pub struct DenseLayerConfig {
    /// Input channels.
    pub in_channels: usize,
    /// New channels the layer produces.
    pub growth_rate: usize,
    /// Bottleneck factor: the 1x1 convolution outputs `bn_size * growth_rate` channels.
    #[config(default = 4)]
    pub bn_size: usize,
    /// Use the `[BN | IN]` IBN layer as `norm1`.
    #[config(default = false)]
    pub ibn: bool,
    /// IN share of that IBN layer.
    #[config(default = 0.4)]
    pub ibn_ratio: f64,
}

/// `norm1 -> ReLU -> conv1x1 -> norm2 -> ReLU -> conv3x3`; returns the new features only.
#[derive(Module, Debug)]
pub struct DenseLayer {
    /// `[BN | IN]` IBN layer or batch norm.
    pub norm1: Norm2d,
    /// 1x1 convolution to `bn_size * growth_rate` channels.
    pub conv1: Conv2d,
    /// Batch norm.
    pub norm2: BatchNorm2d,
    /// 3x3 convolution to `growth_rate` channels.
    pub conv2: Conv2d,
}

impl DenseLayerConfig {
    /// Builds the layer.
    ///
    /// # Errors
    /// Zero channels, or an IBN ratio that leaves a section empty.
    pub fn init(&self, device: &Device) -> Result<DenseLayer> {
        check_positive("in_channels", self.in_channels)?;
        check_positive("growth_rate", self.growth_rate)?;
        check_positive("bn_size", self.bn_size)?;
        let inner = self.bn_size * self.growth_rate;
        let norm1 = if self.ibn {
            Norm2d::Ibn(
                IbnConfig::dense(self.in_channels)
                    .with_ratio(self.ibn_ratio)
                    .init(device)
                    .map_err(|e| e.within("norm1"))?,
            )
        } else {
            Norm2d::Batch(BatchNorm2dConfig::new(self.in_channels).init(device))
        };
        Ok(DenseLayer {
            norm1,
            conv1: conv(self.in_channels, inner, 1, 1, 1, device),
            norm2: BatchNorm2dConfig::new(inner).init(device),
            conv2: conv(inner, self.growth_rate, 3, 1, 1, device),
        })
    }
}

impl DenseLayer {
    /// norm1 -> ReLU -> conv1x1 -> norm2 -> ReLU -> conv3x3: the layer's new features.
    ///
    /// # Shapes
    /// - `input`: `[N, C_in, H, W]`
    /// - output: `[N, growth_rate, H, W]` (the new features only)
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let out = self.norm1.forward_with(input, Epilogue::relu());
        let out = self.norm2.after_conv(&self.conv1, out, Epilogue::relu());
        conv2d_module(&self.conv2, out)
    }
}

/// Configuration of a [`DenseBlock`].
#[derive(Config, Debug)]
pub struct DenseBlockConfig {
    /// Number of dense layers.
    pub num_layers: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Channels each layer adds.
    pub growth_rate: usize,
    /// Bottleneck factor of each layer.
    #[config(default = 4)]
    pub bn_size: usize,
    /// Give every `ibn_every`-th layer (index 0, `ibn_every`, ...) an IBN `norm1`;
    /// `None` for no IBN in this block.
    #[config(default = "None")]
    pub ibn_every: Option<usize>,
    /// IN share of the IBN layers.
    #[config(default = 0.4)]
    pub ibn_ratio: f64,
}

/// Dense layers whose outputs are concatenated to their inputs
/// (PyTorch: `denselayer1`, `denselayer2`, ...).
#[derive(Module, Debug)]
pub struct DenseBlock {
    /// The layers, in order.
    pub layers: Vec<DenseLayer>,
}

impl DenseBlockConfig {
    /// Output channels: `in_channels + num_layers * growth_rate`.
    pub fn out_channels(&self) -> usize {
        self.in_channels + self.num_layers * self.growth_rate
    }

    /// Builds the block.
    ///
    /// # Errors
    /// See [`DenseLayerConfig::init`]; also a zero `ibn_every`.
    pub fn init(&self, device: &Device) -> Result<DenseBlock> {
        check_positive("num_layers", self.num_layers)?;
        if let Some(every) = self.ibn_every {
            check_positive("ibn_every", every)?;
        }
        let layers = (0..self.num_layers)
            .map(|i| {
                DenseLayerConfig::new(self.in_channels + i * self.growth_rate, self.growth_rate)
                    .with_bn_size(self.bn_size)
                    .with_ibn(self.ibn_every.is_some_and(|every| i % every == 0))
                    .with_ibn_ratio(self.ibn_ratio)
                    .init(device)
                    .map_err(|e| e.within(&format!("denselayer{}", i + 1)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DenseBlock { layers })
    }
}

impl DenseBlock {
    /// Runs every layer, each on the concatenation of the input and all earlier layers'
    /// features, and returns that concatenation with the last layer's features.
    ///
    /// # Shapes
    /// - `input`: `[N, C_in, H, W]`
    /// - output: `[N, C_in + num_layers * growth_rate, H, W]`
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let mut features = input;
        for layer in &self.layers {
            let new = layer.forward(features.clone());
            features = Tensor::cat(vec![features, new], 1);
        }
        features
    }
}

/// Configuration of a [`Transition`].
#[derive(Config, Debug)]
pub struct TransitionConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
}

/// `norm -> ReLU -> conv1x1 -> avgpool 2x2` (computed as `norm -> ReLU -> avgpool 2x2 ->
/// conv1x1`, the same map with 4x fewer products).
#[derive(Module, Debug)]
pub struct Transition {
    /// Batch norm.
    pub norm: BatchNorm2d,
    /// 1x1 convolution.
    pub conv: Conv2d,
    /// 2x2 average pool, stride 2.
    pub pool: AvgPool2d,
}

impl TransitionConfig {
    /// Builds the transition.
    ///
    /// # Errors
    /// Zero channels.
    pub fn init(&self, device: &Device) -> Result<Transition> {
        check_positive("in_channels", self.in_channels)?;
        check_positive("out_channels", self.out_channels)?;
        Ok(Transition {
            norm: BatchNorm2dConfig::new(self.in_channels).init(device),
            conv: conv(self.in_channels, self.out_channels, 1, 1, 1, device),
            pool: AvgPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
        })
    }
}

impl Transition {
    /// norm -> ReLU -> conv1x1 -> 2x2 average pool.
    ///
    /// # Shapes
    /// - `input`: `[N, C_in, H, W]`
    /// - output: `[N, C_out, H / 2, W / 2]`
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let out = self.norm.forward_with(input, Epilogue::relu());
        // Average pooling (unpadded) commutes with the 1x1 convolution, bias included: pooled
        // first, the convolution runs on a quarter of the positions.
        conv2d_module(&self.conv, avg_pool2d_module(&self.pool, out))
    }
}
