//! Normalisation layers: PyTorch-exact batch and instance norms, the IBN layer, and the
//! [`Norm2d`] switch the blocks are built from.

mod batch;
mod ibn;
mod instance;

pub use batch::{BatchNorm2d, BatchNorm2dConfig};
pub use ibn::{Ibn, IbnConfig, IbnOrder};
pub use instance::{InstanceNorm2d, InstanceNorm2dConfig};

use burn::module::{Module, RunningState};
use burn::tensor::Tensor;

use burn::nn::conv::Conv2d;

use crate::kernel::{Epilogue, conv2d_module};

/// Per-channel `(scale, shift)` `[C]` such that
/// `(x - mean) / sqrt(var + epsilon) * weight + bias = x * scale + shift`.
pub(crate) fn normalising_affine(
    weight: Tensor<1>,
    bias: Tensor<1>,
    mean: Tensor<1>,
    var: Tensor<1>,
    epsilon: f64,
) -> (Tensor<1>, Tensor<1>) {
    let scale = weight / var.add_scalar(epsilon).sqrt();
    let shift = bias - mean * scale.clone();
    (scale, shift)
}

/// PyTorch's running-statistics update: `running = (1 - momentum) * running + momentum * batch`,
/// with the batch variance made unbiased over `count` values per channel (`count / (count - 1)`).
///
/// # Panics
/// When `count` is 1: one value per channel has no variance to estimate (PyTorch raises
/// "Expected more than 1 value per channel when training" there).
pub(crate) fn update_running_stats(
    (running_mean, running_var): (&RunningState<Tensor<1>>, &RunningState<Tensor<1>>),
    batch_mean: Tensor<1>,
    batch_var: Tensor<1>,
    count: usize,
    momentum: f64,
) {
    assert!(
        count > 1,
        "normalisation in training mode needs more than one value per channel, got {count}: \
         train with more samples or larger inputs, or evaluate the model with `valid()`"
    );
    let device = batch_mean.device();
    let unbiased = count as f64 / (count - 1) as f64;
    let blend = |state: &RunningState<Tensor<1>>, batch: Tensor<1>, scale: f64| {
        let value = state
            .value_sync()
            .to_device(&device)
            .mul_scalar(1.0 - momentum)
            .add(batch.detach().mul_scalar(momentum * scale));
        state.update(value.detach());
    };
    blend(running_mean, batch_mean, 1.0);
    blend(running_var, batch_var, unbiased);
}

/// One of the three normalisations a block position can hold.
///
/// PyTorch checkpoints name the tensors of each variant directly under the position
/// (`bn1.weight`, or `bn1.IN.weight` / `bn1.BN.weight` for IBN).
// Variants are held inline: modules are built once and never moved in hot loops.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Norm2d {
    /// Batch norm.
    Batch(BatchNorm2d),
    /// Affine instance norm.
    Instance(InstanceNorm2d),
    /// IBN layer.
    Ibn(Ibn),
}

impl Norm2d {
    /// Normalises `input`.
    ///
    /// # Shapes
    /// - `input`: `[N, C, H, W]`
    /// - output: `[N, C, H, W]`
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        self.forward_with(input, Epilogue::default())
    }

    /// Normalises `input`, then applies `epilogue` (residual addition, ReLU) in the same pass.
    ///
    /// # Shapes
    /// - `input`: `[N, C, H, W]`; the epilogue's residual: `[N, C, H, W]`
    /// - output: `[N, C, H, W]`
    pub fn forward_with(&self, input: Tensor<4>, epilogue: Epilogue) -> Tensor<4> {
        match self {
            Self::Batch(n) => n.forward_with(input, epilogue),
            Self::Instance(n) => n.forward_with(input, epilogue),
            Self::Ibn(n) => n.forward_with(input, epilogue),
        }
    }

    /// `forward_with(conv(input), epilogue)`, the epilogue left to the convolution's kernels
    /// when this is a batch norm folded into `conv` (see [`BatchNorm2d::after_conv`]).
    pub(crate) fn after_conv(
        &self,
        conv: &Conv2d,
        input: Tensor<4>,
        epilogue: Epilogue,
    ) -> Tensor<4> {
        match self {
            Self::Batch(n) => n.after_conv(conv, input, epilogue),
            _ => self.forward_with(conv2d_module(conv, input), epilogue),
        }
    }

    /// Whether the layer normalises any channel per sample (and so needs `H * W > 1`).
    pub fn uses_instance_stats(&self) -> bool {
        match self {
            Self::Batch(_) => false,
            Self::Instance(n) => n.running_mean.is_none(),
            Self::Ibn(_) => true,
        }
    }
}
