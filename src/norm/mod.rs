//! Normalisation layers: PyTorch-exact batch and instance norms, the IBN layer, and the
//! [`Norm2d`] switch the blocks are built from.

mod batch;
mod ibn;
mod instance;

pub use batch::{BatchNorm2d, BatchNorm2dConfig};
pub use ibn::{Ibn, IbnConfig, IbnOrder};
pub use instance::{InstanceNorm2d, InstanceNorm2dConfig};

use burn::module::Module;
use burn::tensor::Tensor;

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
        match self {
            Self::Batch(n) => n.forward(input),
            Self::Instance(n) => n.forward(input),
            Self::Ibn(n) => n.forward(input),
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
