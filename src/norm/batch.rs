//! BatchNorm with PyTorch `BatchNorm2d` semantics and PyTorch parameter names.

use burn::config::Config;
use burn::module::{Flag, Module, Param, RunningState};
use burn::nn::Initializer;
use burn::tensor::{Device, Tensor};

use burn::nn::conv::Conv2d;

use crate::kernel::{
    Epilogue, conv2d_module, conv2d_module_affine, conv2d_module_with, plane_norm_train,
    plane_norm_with,
};

/// Configuration of a [`BatchNorm2d`].
#[derive(Config, Debug)]
pub struct BatchNorm2dConfig {
    /// Number of channels `C`.
    pub num_features: usize,
    /// Added to the variance for numerical stability.
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// Weight of the current batch in the running-statistics update.
    #[config(default = 0.1)]
    pub momentum: f64,
}

/// Batch normalisation exactly as PyTorch's `BatchNorm2d` (affine, running statistics).
///
/// Differences from `burn::nn::BatchNorm`, both deliberate:
/// - the running variance is updated with the *unbiased* batch variance (`n / (n - 1)`), as
///   PyTorch does, so running statistics trained here equal PyTorch's;
/// - tensors are named as in PyTorch (`weight`, `bias`, `running_mean`, `running_var`), so
///   checkpoints map onto it without renaming.
///
/// Training behaviour (batch statistics and running-statistics update) is used when the input
/// lives on an autodiff device and the module is in training mode (see
/// [`Module::valid`](burn::module::Module::valid)); otherwise the running statistics are used.
#[derive(Module, Debug)]
pub struct BatchNorm2d {
    /// Scale `γ`, shape `[C]`.
    pub weight: Param<Tensor<1>>,
    /// Shift `β`, shape `[C]`.
    pub bias: Param<Tensor<1>>,
    /// Running mean, shape `[C]`.
    pub running_mean: RunningState<Tensor<1>>,
    /// Running (unbiased) variance, shape `[C]`.
    pub running_var: RunningState<Tensor<1>>,
    /// Whether this layer takes the training path on autodiff devices.
    pub training: Param<Flag>,
    /// Running-statistics momentum.
    pub momentum: f64,
    /// Numerical-stability constant.
    pub epsilon: f64,
    /// Set by [`fold_batch_norms`](crate::model::IbnNet::fold_batch_norms) once the layer has
    /// been folded into the preceding convolution: the layer then passes its input through.
    pub folded: bool,
}

impl BatchNorm2dConfig {
    /// Builds the layer: weight 1, bias 0, running mean 0, running variance 1.
    pub fn init(&self, device: &Device) -> BatchNorm2d {
        let n = self.num_features;
        BatchNorm2d {
            weight: Initializer::Ones.init([n], device),
            bias: Initializer::Zeros.init([n], device),
            running_mean: RunningState::new(Tensor::zeros([n], device)),
            running_var: RunningState::new(Tensor::ones([n], device)),
            training: Param::from_bool(true),
            momentum: self.momentum,
            epsilon: self.epsilon,
            folded: false,
        }
    }
}

impl BatchNorm2d {
    /// Number of channels.
    pub fn num_features(&self) -> usize {
        self.weight.shape().dims::<1>()[0]
    }

    /// Whether a forward on `input` takes the training path.
    pub fn is_training_for(&self, input: &Tensor<4>) -> bool {
        input.device().is_autodiff() && self.training.is_enabled()
    }

    /// Normalises `input` in one pass ([`kernel::plane_norm`](crate::kernel::plane_norm)):
    /// with the running statistics, or in training with the batch statistics
    /// ([`kernel::plane_norm_train`](crate::kernel::plane_norm_train)), updating the running
    /// ones.
    ///
    /// # Shapes
    /// - `input`: `[N, C, H, W]`
    /// - output: `[N, C, H, W]`
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        self.forward_with(input, Epilogue::default())
    }

    /// [`forward`](Self::forward) followed by `epilogue` (residual addition, ReLU) in the same
    /// pass ([`kernel::plane_norm_with`](crate::kernel::plane_norm_with)); a folded layer
    /// applies only the epilogue.
    ///
    /// # Shapes
    /// - `input`: `[N, C, H, W]`; the epilogue's residual: `[N, C, H, W]`
    /// - output: `[N, C, H, W]`
    pub fn forward_with(&self, input: Tensor<4>, epilogue: Epilogue) -> Tensor<4> {
        if self.folded && epilogue.is_identity() {
            return input;
        }
        if self.trains_on(&input) {
            // Batch statistics, normalisation and epilogue as one autodiff operation.
            let [n, _, h, w] = input.dims();
            let (weight, bias) = (self.weight.val(), self.bias.val());
            let epsilons = (self.epsilon, self.epsilon);
            let (out, mean, var) = plane_norm_train(input, weight, bias, 0..0, epsilons, epilogue);
            self.update_running(mean, var, n * h * w);
            return out;
        }
        let c = self.num_features();
        let (scale, shift) = self.transform_for(&input, 0..c);
        plane_norm_with(input, scale, shift, 0..0, self.epsilon, epilogue)
    }

    /// `forward_with(conv(input), epilogue)`. In evaluation on flex and ndarray, and once this
    /// norm is folded into `conv` ([`fold_batch_norms`](crate::model::ResNetIbn::fold_batch_norms)),
    /// the convolution's kernels apply the transform and the epilogue as they write
    /// ([`kernel::conv2d_with`](crate::kernel::conv2d_with)), which saves this layer's pass.
    pub(crate) fn after_conv(
        &self,
        conv: &Conv2d,
        input: Tensor<4>,
        epilogue: Epilogue,
    ) -> Tensor<4> {
        if self.folded {
            return conv2d_module_with(conv, input, epilogue);
        }
        if self.is_training_for(&input) {
            return self.forward_with(conv2d_module(conv, input), epilogue);
        }
        // In evaluation the transform is per channel: the kernels apply it as they write.
        conv2d_module_affine(
            conv,
            input,
            |device| self.running_transform(device),
            epilogue,
            |input, epilogue| self.forward_with(conv2d_module(conv, input), epilogue),
        )
    }

    /// Whether a forward on `input` normalises with batch statistics (training, not folded).
    pub(crate) fn trains_on(&self, input: &Tensor<4>) -> bool {
        !self.folded && self.is_training_for(input)
    }

    /// Blends the batch statistics `mean`, biased `var` (`[C]`, over `count` values per
    /// channel) into the running statistics.
    pub(crate) fn update_running(&self, mean: Tensor<1>, var: Tensor<1>, count: usize) {
        let running = (&self.running_mean, &self.running_var);
        super::update_running_stats(running, mean, var, count, self.momentum);
    }

    /// The generic composed path (burn's `batch_norm` / `batch_norm_train`), the reference
    /// for [`forward`](Self::forward). Updates the running statistics in training alike.
    ///
    /// # Shapes
    /// - `input`: `[N, C, H, W]`
    /// - output: `[N, C, H, W]`
    pub fn forward_composed(&self, input: Tensor<4>) -> Tensor<4> {
        if self.folded {
            return input;
        }
        if self.is_training_for(&input) {
            return self.forward_train(input);
        }
        let device = input.device();
        burn::tensor::module::batch_norm(
            input,
            self.weight.val(),
            self.bias.val(),
            self.running_mean.value().to_device(&device),
            self.running_var.value().to_device(&device),
            self.epsilon,
        )
    }

    /// Per-channel `(scale, shift)` `[C]` such that this layer maps the channels `channels`
    /// of `input` to `input * scale + shift`: from the running statistics, or in training
    /// from the batch statistics of those channels (differentiable; the running statistics
    /// are updated). A folded layer gives the identity. Training normally goes through
    /// [`plane_norm_train`] instead; this serves an IBN layer whose IN section alone is out
    /// of training mode.
    pub(crate) fn transform_for(
        &self,
        input: &Tensor<4>,
        channels: core::ops::Range<usize>,
    ) -> (Tensor<1>, Tensor<1>) {
        let c = self.num_features();
        if self.folded {
            let device = input.device();
            return (Tensor::ones([c], &device), Tensor::zeros([c], &device));
        }
        if !self.is_training_for(input) {
            return self.running_transform(&input.device());
        }
        let [n, _, h, w] = input.dims();
        let (plane_mean, plane_var) = crate::kernel::plane_moments(input.clone(), channels);
        // Batch statistics from the per-plane ones (law of total variance, no cancellation).
        let mean = plane_mean.clone().mean_dim(0);
        let spread = (plane_mean - mean.clone()).powi_scalar(2);
        let var = (plane_var + spread).mean_dim(0).reshape([c]);
        let mean = mean.reshape([c]);
        self.update_running(mean.clone(), var.clone(), n * h * w);
        super::normalising_affine(self.weight.val(), self.bias.val(), mean, var, self.epsilon)
    }

    /// Per-channel `(scale, shift)` of the evaluation transform `y = scale * x + shift`.
    pub fn affine_transform(&self) -> (Tensor<1>, Tensor<1>) {
        super::normalising_affine(
            self.weight.val(),
            self.bias.val(),
            self.running_mean.value(),
            self.running_var.value(),
            self.epsilon,
        )
    }

    /// [`affine_transform`](Self::affine_transform) on `device`.
    fn running_transform(&self, device: &Device) -> (Tensor<1>, Tensor<1>) {
        let (scale, shift) = self.affine_transform();
        (scale.to_device(device), shift.to_device(device))
    }

    fn forward_train(&self, input: Tensor<4>) -> Tensor<4> {
        let [n, _, h, w] = input.dims();
        let out = burn::tensor::module::batch_norm_train(
            input,
            self.weight.val(),
            self.bias.val(),
            self.epsilon,
        );
        self.update_running(out.mean, out.variance, n * h * w);
        out.output
    }
}
