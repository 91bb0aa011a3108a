//! Squeeze-excitation.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::{Device, Tensor};

use super::check_positive;
use crate::error::{IbnError, Result};

/// Configuration of a [`SqueezeExcitation`] unit.
#[derive(Config, Debug)]
pub struct SqueezeExcitationConfig {
    /// Channels `C`.
    pub channels: usize,
    /// Reduction of the hidden layer: `C / reduction` units.
    #[config(default = 16)]
    pub reduction: usize,
}

/// `x * sigmoid(fc2(relu(fc1(avgpool(x)))))`, both linear layers without bias
/// (PyTorch: `se.fc.0`, `se.fc.2`).
#[derive(Module, Debug)]
pub struct SqueezeExcitation {
    /// `C -> C / reduction`.
    pub fc1: Linear,
    /// `C / reduction -> C`.
    pub fc2: Linear,
}

impl SqueezeExcitationConfig {
    /// Builds the unit.
    ///
    /// # Errors
    /// When `channels / reduction` is zero.
    pub fn init(&self, device: &Device) -> Result<SqueezeExcitation> {
        check_positive("reduction", self.reduction)?;
        let hidden = self.channels / self.reduction;
        if hidden == 0 {
            return Err(IbnError::config(
                "reduction",
                format!(
                    "{} channels / reduction {} leaves no hidden unit",
                    self.channels, self.reduction
                ),
            ));
        }
        Ok(SqueezeExcitation {
            fc1: LinearConfig::new(self.channels, hidden)
                .with_bias(false)
                .init(device),
            fc2: LinearConfig::new(hidden, self.channels)
                .with_bias(false)
                .init(device),
        })
    }
}

impl SqueezeExcitation {
    /// Scales each channel of `input` by a gate computed from its global average.
    ///
    /// # Shapes
    /// - `input`: `[N, C, H, W]`
    /// - output: `[N, C, H, W]`
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let [n, c, h, w] = input.dims();
        let squeezed = input
            .clone()
            .reshape([n, c, h * w])
            .mean_dim(2)
            .reshape([n, c]);
        let scale = sigmoid(self.fc2.forward(relu(self.fc1.forward(squeezed))));
        input * scale.reshape([n, c, 1, 1])
    }
}
