//! The IBN layer: instance norm on one channel section, batch norm on the other.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{BatchNorm2d, BatchNorm2dConfig, InstanceNorm2d, InstanceNorm2dConfig};
use crate::error::{IbnError, Result};
use crate::kernel::{Epilogue, plane_norm_train, plane_norm_with};

/// Which section comes first along the channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IbnOrder {
    /// `[IN | BN]`, with `floor(planes * ratio)` IN channels (ResNet family).
    InFirst,
    /// `[BN | IN]`, with `floor(planes * (1 - ratio))` BN channels (DenseNet).
    BnFirst,
}

/// Configuration of an [`Ibn`] layer.
#[derive(Config, Debug)]
pub struct IbnConfig {
    /// Number of channels `C`.
    pub planes: usize,
    /// Share of instance-normalised channels, in `(0, 1)`.
    #[config(default = 0.5)]
    pub ratio: f64,
    /// Channel order of the two sections.
    #[config(default = "IbnOrder::InFirst")]
    pub order: IbnOrder,
}

impl IbnConfig {
    /// The DenseNet-IBN layer: `[BN | IN]` with ratio 0.4, as in the released DenseNets.
    pub fn dense(planes: usize) -> Self {
        Self::new(planes)
            .with_ratio(0.4)
            .with_order(IbnOrder::BnFirst)
    }

    /// Sizes of the two sections as `(instance_channels, batch_channels)`.
    ///
    /// # Errors
    /// When `ratio` is not in `(0, 1)` or a section would be empty.
    pub fn sections(&self) -> Result<(usize, usize)> {
        if !(self.ratio > 0.0 && self.ratio < 1.0) {
            return Err(IbnError::config(
                "ratio",
                format!("must lie in (0, 1), got {}", self.ratio),
            ));
        }
        let planes = self.planes;
        // Same float arithmetic as the released code: int(planes * ratio) and
        // int(planes * (1 - ratio)).
        let (instance, batch) = match self.order {
            IbnOrder::InFirst => {
                let half = (planes as f64 * self.ratio).floor() as usize;
                (half, planes.saturating_sub(half))
            }
            IbnOrder::BnFirst => {
                let half = (planes as f64 * (1.0 - self.ratio)).floor() as usize;
                (planes.saturating_sub(half), half)
            }
        };
        if instance == 0 || batch == 0 {
            return Err(IbnError::config(
                "ratio",
                format!(
                    "ratio {} on {planes} channels leaves {instance} IN and {batch} BN channels; \
                     both sections must be non-empty",
                    self.ratio
                ),
            ));
        }
        Ok((instance, batch))
    }

    /// Builds the layer.
    ///
    /// # Errors
    /// See [`IbnConfig::sections`].
    pub fn init(&self, device: &Device) -> Result<Ibn> {
        let (instance, batch) = self.sections()?;
        Ok(Ibn {
            instance: InstanceNorm2dConfig::new(instance)
                .with_affine(true)
                .init(device),
            batch: BatchNorm2dConfig::new(batch).init(device),
            instance_first: self.order == IbnOrder::InFirst,
        })
    }
}

/// Instance-batch normalisation (IBN-Net's IBN layer).
///
/// The channels are split explicitly into two sections; one goes through an affine
/// [`InstanceNorm2d`] (no running statistics), the other through a [`BatchNorm2d`], and the
/// results are concatenated in the same order. PyTorch names: `IN.*` and `BN.*`.
#[derive(Module, Debug)]
pub struct Ibn {
    /// The instance-normalised section (`IN` in PyTorch).
    pub instance: InstanceNorm2d,
    /// The batch-normalised section (`BN` in PyTorch).
    pub batch: BatchNorm2d,
    /// `true` for `[IN | BN]`, `false` for `[BN | IN]`.
    pub instance_first: bool,
}

impl Ibn {
    /// Number of instance-normalised channels.
    pub fn instance_channels(&self) -> usize {
        self.instance.num_features
    }

    /// Number of batch-normalised channels.
    pub fn batch_channels(&self) -> usize {
        self.batch.num_features()
    }

    /// Normalises `input` in one pass ([`kernel::plane_norm`](crate::kernel::plane_norm)):
    /// the IN section with per-(sample, channel) statistics (in evaluation, with its running
    /// statistics if it was given any, as PyTorch's `InstanceNorm2d`), the BN section with its
    /// running statistics (or, in training, its batch statistics:
    /// [`kernel::plane_norm_train`](crate::kernel::plane_norm_train)), one output tensor, no
    /// split or concatenation of the activations.
    ///
    /// # Shapes
    /// - `input`: `[N, C, H, W]` with `C = instance_channels + batch_channels`
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
        let (ci, cb) = (self.instance_channels(), self.batch_channels());
        let (in_start, bn_start) = if self.instance_first {
            (0, ci)
        } else {
            (cb, 0)
        };
        // The IN section's own statistics (or, for an IN given running statistics, none).
        let (in_scale, in_shift, in_stats) = self
            .instance
            .plan_for(&input.clone().narrow(1, in_start, ci));
        let order = |a: Tensor<1>, b: Tensor<1>| {
            let parts = if self.instance_first { [a, b] } else { [b, a] };
            Tensor::cat(parts.to_vec(), 0)
        };
        // In training (the IN section with its own statistics) the whole layer is one
        // autodiff operation, batch statistics included.
        if in_stats.len() == ci && self.batch.trains_on(&input) {
            let [n, _, h, w] = input.dims();
            let scale = order(in_scale, self.batch.weight.val());
            let shift = order(in_shift, self.batch.bias.val());
            let epsilons = (self.instance.epsilon, self.batch.epsilon);
            let stats = in_start..in_start + ci;
            let (out, mean, var) = plane_norm_train(input, scale, shift, stats, epsilons, epilogue);
            let section = |t: Tensor<1>| t.narrow(0, bn_start, cb);
            self.batch
                .update_running(section(mean), section(var), n * h * w);
            return out;
        }
        let (bn_scale, bn_shift) = self.batch.transform_for(&input, bn_start..bn_start + cb);
        let (scale, shift) = (order(in_scale, bn_scale), order(in_shift, bn_shift));
        plane_norm_with(
            input,
            scale,
            shift,
            in_start..in_start + in_stats.len(),
            self.instance.epsilon,
            epilogue,
        )
    }

    /// The generic composed path: split, [`InstanceNorm2d`] and [`BatchNorm2d`] on the two
    /// sections, concatenate. The reference for [`forward`](Self::forward).
    ///
    /// # Shapes
    /// - `input`: `[N, C, H, W]`
    /// - output: `[N, C, H, W]`
    pub fn forward_composed(&self, input: Tensor<4>) -> Tensor<4> {
        let ci = self.instance_channels();
        let cb = self.batch_channels();
        if self.instance_first {
            let a = input.clone().narrow(1, 0, ci);
            let b = input.narrow(1, ci, cb);
            Tensor::cat(
                vec![
                    self.instance.forward_composed(a),
                    self.batch.forward_composed(b),
                ],
                1,
            )
        } else {
            let a = input.clone().narrow(1, 0, cb);
            let b = input.narrow(1, cb, ci);
            Tensor::cat(
                vec![
                    self.batch.forward_composed(a),
                    self.instance.forward_composed(b),
                ],
                1,
            )
        }
    }
}
