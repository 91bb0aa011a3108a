//! The surface shared by every IBN family.

use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use crate::error::{IbnError, Result};

/// A feature map a network can return from [`Backbone::forward_intermediates`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureInfo {
    /// PyTorch name of the module producing it (`layer2`, `features.denseblock3`, ...).
    pub module: String,
    /// Channels of the map.
    pub channels: usize,
    /// Total stride relative to the input: the map is about `H / reduction x W / reduction`
    /// (exactly so for sizes divisible by it; otherwise each layer's padding decides the
    /// rounding, e.g. up in the ResNets' padded strided convolutions, down in DenseNet's
    /// transitions and in the unpadded stem pool of [`StemPool::Ceil`](super::StemPool::Ceil)
    /// at odd sizes).
    pub reduction: usize,
}

/// The uniform API of every network in this crate (ResNet, ResNeXt, SE-ResNet, DenseNet), in
/// the style of timm, so switching family is a one-word change.
///
/// In evaluation on the CPU backends (devices without autodiff), passes over up to two
/// 224x224 images run on a thread of the backends' thread pool, so that the calling thread
/// does not hand over and wait for every operation.
pub trait Backbone: Sync {
    /// Logits `[N, num_classes]`, or pooled features `[N, num_features]` without a head.
    ///
    /// # Shapes
    /// - `input`: `[N, C_in, H, W]`
    fn forward(&self, input: Tensor<4>) -> Tensor<2> {
        crate::device::on_cpu_pool(input.dims(), &input.device(), || {
            self.forward_head(self.forward_features(input), false)
        })
    }

    /// The last feature map `[N, num_features, H / r, W / r]` (before pooling).
    fn forward_features(&self, input: Tensor<4>) -> Tensor<4>;

    /// Global average pooling then the classifier; with `pre_logits`, or without a
    /// classifier, the pooled features `[N, num_features]`.
    fn forward_head(&self, features: Tensor<4>, pre_logits: bool) -> Tensor<2>;

    /// The feature maps of the entries of [`feature_info`](Self::feature_info) listed in
    /// `indices` (in the order given), computing only as far as the deepest one.
    ///
    /// # Shapes
    /// - `input`: `[N, C_in, H, W]`
    /// - maps: `[N, channels, H', W']` per [`FeatureInfo`] entry
    ///
    /// # Errors
    /// [`IbnError::InvalidInput`] for an index past the last entry, or an input that
    /// [`validate_input`](Self::validate_input) rejects.
    fn forward_intermediates(&self, input: Tensor<4>, indices: &[usize]) -> Result<Vec<Tensor<4>>>;

    /// Channels and stride of every feature map [`forward_intermediates`](Self::forward_intermediates)
    /// can return, shallowest first; the last one is the output of
    /// [`forward_features`](Self::forward_features).
    fn feature_info(&self) -> Vec<FeatureInfo>;

    /// Channels of the last feature map.
    fn num_features(&self) -> usize {
        self.feature_info().last().map_or(0, |f| f.channels)
    }

    /// Classes of the classifier, 0 without one.
    fn num_classes(&self) -> usize;

    /// Replaces the classifier by a freshly initialised one with `num_classes` outputs
    /// (0 removes it).
    fn reset_classifier(&mut self, num_classes: usize, device: &Device);

    /// Checks that an input of shape `dims` (`[N, C, H, W]`) fits the network: rank, channels,
    /// and spatial size large enough for every convolution and for every instance norm
    /// (which needs more than one value per channel).
    ///
    /// # Errors
    /// [`IbnError::InvalidInput`] naming the first problem.
    fn validate_input(&self, dims: &[usize]) -> Result<()>;

    /// [`forward`](Self::forward) after [`validate_input`](Self::validate_input).
    ///
    /// # Errors
    /// See [`validate_input`](Self::validate_input).
    fn try_forward(&self, input: Tensor<4>) -> Result<Tensor<2>> {
        self.validate_input(&input.dims())?;
        Ok(self.forward(input))
    }
}

/// Global average pool, then `fc` unless `pre_logits` or there is none:
/// `[N, C, H, W] -> [N, classes]` or `[N, C]`.
pub(crate) fn pooled_head(features: Tensor<4>, fc: &Option<Linear>, pre_logits: bool) -> Tensor<2> {
    let pooled = global_pool(features);
    match (fc, pre_logits) {
        (Some(fc), false) => fc.forward(pooled),
        _ => pooled,
    }
}

/// A linear classifier with PyTorch's default initialisation, or none for 0 classes.
pub(crate) fn classifier(features: usize, classes: usize, device: &Device) -> Option<Linear> {
    (classes > 0).then(|| LinearConfig::new(features, classes).init(device))
}

/// Global average pool: `[N, C, H, W] -> [N, C]`.
pub(crate) fn global_pool(x: Tensor<4>) -> Tensor<2> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
}

/// Output size of a convolution or pool along one axis, if it is at least 1.
pub(crate) fn conv_out(size: usize, kernel: usize, stride: usize, pad: usize) -> Option<usize> {
    (size + 2 * pad).checked_sub(kernel).map(|s| s / stride + 1)
}

/// Checks the rank and channel count of an input.
pub(crate) fn check_rank_channels(dims: &[usize], channels: usize) -> Result<[usize; 4]> {
    let [n, c, h, w] = <[usize; 4]>::try_from(dims).map_err(|_| {
        IbnError::InvalidInput(format!(
            "expected a rank-4 [N, C, H, W] tensor, got shape {dims:?} (rank {})",
            dims.len()
        ))
    })?;
    if c != channels {
        return Err(IbnError::InvalidInput(format!(
            "expected {channels} input channels, got {c} (shape {dims:?})"
        )));
    }
    if n == 0 || h == 0 || w == 0 {
        return Err(IbnError::InvalidInput(format!(
            "empty input of shape {dims:?}"
        )));
    }
    Ok([n, c, h, w])
}

/// Instance norm needs more than one spatial value per channel.
pub(crate) fn check_instance_norm(where_: &str, h: usize, w: usize, dims: &[usize]) -> Result<()> {
    if h * w <= 1 {
        return Err(IbnError::InvalidInput(format!(
            "input {dims:?} is too small: {where_} instance-normalises a {h}x{w} map, which needs \
             more than one spatial value"
        )));
    }
    Ok(())
}

/// Checks that an index list only names existing feature maps.
pub(crate) fn check_indices(indices: &[usize], available: usize) -> Result<usize> {
    match indices.iter().find(|&&i| i >= available) {
        Some(i) => Err(IbnError::InvalidInput(format!(
            "feature index {i} out of range: the network has {available} feature maps (0..{available})"
        ))),
        None => Ok(indices.iter().copied().max().unwrap_or(0)),
    }
}
