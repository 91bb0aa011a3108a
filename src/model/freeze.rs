//! Freezing parts of a network for fine-tuning: the stem and the first stages, or every
//! normalisation layer.
//!
//! Both build on burn's [`Module::freeze_group`]: the selected parameters stop requiring
//! gradients, and the selected normalisation layers leave training mode, so on an autodiff
//! device they normalise with their running statistics and no longer update them (frozen
//! batch norm, as detection and re-identification fine-tuning with small batches uses).
//! Instance norms without running statistics keep normalising each sample by its own
//! statistics; their affine parameters are frozen. [`Module::unfreeze`] undoes both.

use burn::module::{Flag, Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::tensor::Tensor;

use super::densenet::DenseNetIbn;
use super::registry::IbnNet;
use super::resnet::{ResBlock, ResNetIbn};
use crate::error::{IbnError, Result};

/// The ids of every tensor parameter and training flag of the modules visited.
#[derive(Default)]
struct Ids(Vec<ParamId>);

impl ModuleVisitor for Ids {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.id);
    }

    fn visit_flag(&mut self, flag: &Param<Flag>) {
        self.0.push(flag.id);
    }
}

impl Ids {
    fn add(&mut self, module: &impl Module) -> &mut Self {
        module.visit(self);
        self
    }

    fn freeze<M: Module>(self, module: M) -> M {
        module.freeze_group(ParamGroup::from_ids(self.0))
    }
}

fn check_stages(stages: usize, available: usize) -> Result<()> {
    if stages > available {
        return Err(IbnError::InvalidInput(format!(
            "cannot freeze {stages} stages: the network has {available}"
        )));
    }
    Ok(())
}

impl ResNetIbn {
    /// Freezes the stem (`conv1`, `bn1`) and the first `stages` residual stages
    /// (`layer1` ..): no gradients for their parameters, running statistics in their norms.
    /// `freeze_stages(0)` freezes the stem only.
    ///
    /// # Errors
    /// [`IbnError::InvalidInput`] when `stages` exceeds the number of stages.
    pub fn freeze_stages(self, stages: usize) -> Result<Self> {
        check_stages(stages, self.layers.len())?;
        let mut ids = Ids::default();
        ids.add(&self.conv1).add(&self.bn1);
        for block in self.layers.iter().take(stages).flatten() {
            ids.add(block);
        }
        Ok(ids.freeze(self))
    }

    /// Freezes every normalisation layer (batch, instance and IBN layers, those of the
    /// shortcuts included) and leaves the convolutions and the classifier trainable.
    pub fn freeze_norms(self) -> Self {
        let mut ids = Ids::default();
        ids.add(&self.bn1);
        for block in self.layers.iter().flatten() {
            let downsample = match block {
                ResBlock::Basic(b) => {
                    ids.add(&b.bn1).add(&b.bn2).add(&b.post_in);
                    &b.downsample
                }
                ResBlock::Bottleneck(b) => {
                    ids.add(&b.bn1).add(&b.bn2).add(&b.bn3).add(&b.post_in);
                    &b.downsample
                }
            };
            if let Some(d) = downsample {
                ids.add(&d.bn);
            }
        }
        ids.freeze(self)
    }
}

impl DenseNetIbn {
    /// Freezes the stem (`conv0`, `norm0`) and the first `stages` dense blocks with the
    /// transition after each of them, and with the last block the final norm `norm5`, so
    /// that freezing every stage freezes every layer but the classifier.
    /// `freeze_stages(0)` freezes the stem only.
    ///
    /// # Errors
    /// [`IbnError::InvalidInput`] when `stages` exceeds the number of dense blocks.
    pub fn freeze_stages(self, stages: usize) -> Result<Self> {
        check_stages(stages, self.blocks.len())?;
        let mut ids = Ids::default();
        ids.add(&self.conv0).add(&self.norm0);
        for block in self.blocks.iter().take(stages) {
            ids.add(block);
        }
        for transition in self.transitions.iter().take(stages) {
            ids.add(transition);
        }
        if stages == self.blocks.len() {
            ids.add(&self.norm5);
        }
        Ok(ids.freeze(self))
    }

    /// Freezes every normalisation layer (`norm0`, each dense layer's `norm1` and `norm2`,
    /// the transitions' norms, `norm5`).
    pub fn freeze_norms(self) -> Self {
        let mut ids = Ids::default();
        ids.add(&self.norm0).add(&self.norm5);
        for layer in self.blocks.iter().flat_map(|b| &b.layers) {
            ids.add(&layer.norm1).add(&layer.norm2);
        }
        for transition in &self.transitions {
            ids.add(&transition.norm);
        }
        ids.freeze(self)
    }
}

impl IbnNet {
    /// Freezes the stem and the first `stages` stages; see [`ResNetIbn::freeze_stages`] and
    /// [`DenseNetIbn::freeze_stages`].
    ///
    /// # Errors
    /// [`IbnError::InvalidInput`] when `stages` exceeds the number of stages.
    pub fn freeze_stages(self, stages: usize) -> Result<Self> {
        Ok(match self {
            Self::ResNet(m) => Self::ResNet(m.freeze_stages(stages)?),
            Self::DenseNet(m) => Self::DenseNet(m.freeze_stages(stages)?),
        })
    }

    /// Freezes every normalisation layer; see [`ResNetIbn::freeze_norms`] and
    /// [`DenseNetIbn::freeze_norms`].
    pub fn freeze_norms(self) -> Self {
        match self {
            Self::ResNet(m) => Self::ResNet(m.freeze_norms()),
            Self::DenseNet(m) => Self::DenseNet(m.freeze_norms()),
        }
    }
}
