//! InstanceNorm with PyTorch `InstanceNorm2d` semantics.

use core::ops::Range;

use burn::config::Config;
use burn::module::{Flag, Module, Param, RunningState};
use burn::nn::Initializer;
use burn::tensor::{Device, Tensor};

use crate::kernel::{Epilogue, plane_norm_with};

/// Configuration of an [`InstanceNorm2d`]. Defaults follow PyTorch's `InstanceNorm2d`
/// (`affine = false`, `track_running_stats = false`); IBN-Net uses affine instance norms
/// without running statistics.
#[derive(Config, Debug)]
pub struct InstanceNorm2dConfig {
    /// Number of channels `C`.
    pub num_features: usize,
    /// Added to the variance for numerical stability.
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// Weight of the current batch in the running-statistics update.
    #[config(default = 0.1)]
    pub momentum: f64,
    /// Learn a per-channel scale and shift.
    #[config(default = false)]
    pub affine: bool,
    /// Keep running statistics (used in evaluation instead of the per-sample ones).
    #[config(default = false)]
    pub track_running_stats: bool,
}

/// Instance normalisation exactly as PyTorch's `InstanceNorm2d`.
///
/// Each sample and channel is normalised over its `H x W` values with the biased variance:
/// `(x - mean) / sqrt(var + eps)`, then scaled and shifted when `affine`.
/// With `track_running_stats`, training updates running statistics (the batch average of the
/// per-instance means and unbiased variances, momentum rule as PyTorch) and evaluation uses
/// them; without it, per-sample statistics are used in training and evaluation alike.
///
/// Tensors are named as in PyTorch (`weight`, `bias`, `running_mean`, `running_var`).
#[derive(Module, Debug)]
pub struct InstanceNorm2d {
    /// Scale `γ`, shape `[C]` (only when affine).
    pub weight: Option<Param<Tensor<1>>>,
    /// Shift `β`, shape `[C]` (only when affine).
    pub bias: Option<Param<Tensor<1>>>,
    /// Running mean, shape `[C]` (only with running statistics).
    pub running_mean: Option<RunningState<Tensor<1>>>,
    /// Running variance, shape `[C]` (only with running statistics).
    pub running_var: Option<RunningState<Tensor<1>>>,
    /// Whether this layer takes the training path on autodiff devices.
    pub training: Param<Flag>,
    /// Number of channels.
    pub num_features: usize,
    /// Running-statistics momentum.
    pub momentum: f64,
    /// Numerical-stability constant.
    pub epsilon: f64,
}

impl InstanceNorm2dConfig {
    /// Builds the layer: weight 1, bias 0, running mean 0, running variance 1.
    pub fn init(&self, device: &Device) -> InstanceNorm2d {
        let n = self.num_features;
        let (weight, bias) = if self.affine {
            (
                Some(Initializer::Ones.init([n], device)),
                Some(Initializer::Zeros.init([n], device)),
            )
        } else {
            (None, None)
        };
        let (running_mean, running_var) = if self.track_running_stats {
            (
                Some(RunningState::new(Tensor::zeros([n], device))),
                Some(RunningState::new(Tensor::ones([n], device))),
            )
        } else {
            (None, None)
        };
        InstanceNorm2d {
            weight,
            bias,
            running_mean,
            running_var,
            training: Param::from_bool(true),
            num_features: n,
            momentum: self.momentum,
            epsilon: self.epsilon,
        }
    }
}

impl InstanceNorm2d {
    /// Scale and shift `[C]`: the affine parameters, or 1 and 0 without them.
    fn gamma_beta(&self, device: &Device) -> (Tensor<1>, Tensor<1>) {
        let c = self.num_features;
        let gamma = self
            .weight
            .as_ref()
            .map_or_else(|| Tensor::ones([c], device), |p| p.val());
        let beta = self
            .bias
            .as_ref()
            .map_or_else(|| Tensor::zeros([c], device), |p| p.val());
        (gamma, beta)
    }

    /// Batch norm over the `[1, N*C, H, W]` view: every (sample, channel) plane normalised
    /// over its own `H x W` values in one differentiable op. Returns the output and the
    /// per-instance means and biased variances, `[N*C]`.
    fn instance_batch_norm(&self, input: Tensor<4>) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
        let [n, c, h, w] = input.dims();
        let (gamma, beta) = self.gamma_beta(&input.device());
        let tile = |t: Tensor<1>| t.unsqueeze_dim::<2>(0).repeat_dim(0, n).reshape([n * c]);
        let out = burn::tensor::module::batch_norm_train(
            input.reshape([1, n * c, h, w]),
            tile(gamma),
            tile(beta),
            self.epsilon,
        );
        (out.output.reshape([n, c, h, w]), out.mean, out.variance)
    }

    /// Whether `input` gets training-mode behaviour (running-statistics updates; running
    /// statistics not used): on autodiff devices, unless the layer is `valid()`.
    fn is_training_for(&self, input: &Tensor<4>) -> bool {
        input.device().is_autodiff() && self.training.is_enabled()
    }

    /// The generic composed path, the reference for [`forward`](Self::forward): per-sample
    /// statistics through a batch norm over the `[1, N*C, H, W]` view (burn's
    /// `batch_norm_train`), running statistics through burn's `batch_norm`. Updates the
    /// running statistics in training alike.
    ///
    /// # Shapes
    /// - `input`: `[N, C, H, W]`
    /// - output: `[N, C, H, W]`
    pub fn forward_composed(&self, input: Tensor<4>) -> Tensor<4> {
        let [n, c, h, w] = input.dims();
        let device = input.device();
        let training = self.is_training_for(&input);
        if let (Some(mean), Some(var), false) = (&self.running_mean, &self.running_var, training) {
            let (gamma, beta) = self.gamma_beta(&device);
            return burn::tensor::module::batch_norm(
                input,
                gamma,
                beta,
                mean.value().to_device(&device),
                var.value().to_device(&device),
                self.epsilon,
            );
        }
        let (output, batch_mean, batch_var) = self.instance_batch_norm(input);
        if let (Some(running_mean), Some(running_var), true) =
            (&self.running_mean, &self.running_var, training)
        {
            let per_channel = |t: Tensor<1>| t.reshape([n, c]).mean_dim(0).reshape([c]);
            super::update_running_stats(
                (running_mean, running_var),
                per_channel(batch_mean.detach()),
                per_channel(batch_var.detach()),
                h * w,
                self.momentum,
            );
        }
        output
    }

    /// Per-channel `(scale, shift)` `[C]` and the channels normalised with per-sample
    /// statistics such that [`kernel::plane_norm`](crate::kernel::plane_norm) computes this
    /// layer; updates the running statistics in training.
    ///
    /// # Panics
    /// When the statistics are per sample and a plane holds one value (PyTorch raises
    /// "Expected more than 1 spatial element" there; `validate_input` reports it).
    pub(crate) fn plan_for(&self, input: &Tensor<4>) -> (Tensor<1>, Tensor<1>, Range<usize>) {
        let [_, c, h, w] = input.dims();
        let device = input.device();
        let training = self.is_training_for(input);
        let per_sample = training || self.running_mean.is_none() || self.running_var.is_none();
        assert!(
            !per_sample || h * w > 1,
            "instance normalisation needs more than one spatial value per channel, got a \
             {h}x{w} map (`Backbone::validate_input` and `try_forward` report this as an error)"
        );
        let (gamma, beta) = self.gamma_beta(&device);
        match (&self.running_mean, &self.running_var) {
            (Some(mean), Some(var)) if !training => {
                let (scale, shift) = super::normalising_affine(
                    gamma,
                    beta,
                    mean.value().to_device(&device),
                    var.value().to_device(&device),
                    self.epsilon,
                );
                (scale, shift, 0..0)
            }
            (Some(running_mean), Some(running_var)) => {
                // The batch average of the per-instance statistics.
                let (mean, var) = crate::kernel::plane_moments(input.clone().detach(), 0..c);
                super::update_running_stats(
                    (running_mean, running_var),
                    mean.mean_dim(0).reshape([c]),
                    var.mean_dim(0).reshape([c]),
                    h * w,
                    self.momentum,
                );
                (gamma, beta, 0..c)
            }
            _ => (gamma, beta, 0..c),
        }
    }

    /// Normalises `input` in one pass ([`kernel::plane_norm`](crate::kernel::plane_norm)).
    ///
    /// # Shapes
    /// - `input`: `[N, C, H, W]` with `H * W > 1` when per-sample statistics are used
    /// - output: `[N, C, H, W]`
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        self.forward_with(input, Epilogue::default())
    }

    /// [`forward`](Self::forward) followed by `epilogue` (residual addition, ReLU) in the same
    /// pass ([`kernel::plane_norm_with`](crate::kernel::plane_norm_with)).
    ///
    /// # Shapes
    /// - `input`: `[N, C, H, W]`; the epilogue's residual: `[N, C, H, W]`
    /// - output: `[N, C, H, W]`
    pub fn forward_with(&self, input: Tensor<4>, epilogue: Epilogue) -> Tensor<4> {
        let (scale, shift, stats) = self.plan_for(&input);
        plane_norm_with(input, scale, shift, stats, self.epsilon, epilogue)
    }
}
