//! Inference-time folding of batch norms into the preceding convolutions.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;

use super::densenet::DenseNetIbn;
use super::registry::IbnNet;
use super::resnet::{ResBlock, ResNetIbn};
use crate::norm::{BatchNorm2d, Norm2d};

/// Folds `bn` (applied to output channels `offset..offset + C_bn` of `conv`) into `conv`:
/// `W' = s * W`, `b' = s * b + t` on those channels, with `bn(y) = s * y + t`; `bn` then
/// passes its input through.
fn fold(conv: &mut Conv2d, bn: &mut BatchNorm2d, offset: usize) {
    if bn.folded {
        return;
    }
    let weight = conv.weight.val();
    let [out, _, _, _] = weight.dims();
    let device = weight.device();
    let (scale, shift) = bn.affine_transform();
    let channels = scale.dims()[0];
    let pad = |t: Tensor<1>, fill: f32| {
        let mut parts = Vec::with_capacity(3);
        if offset > 0 {
            parts.push(Tensor::<1>::full([offset], fill, &device));
        }
        parts.push(t);
        if offset + channels < out {
            parts.push(Tensor::<1>::full([out - offset - channels], fill, &device));
        }
        Tensor::cat(parts, 0)
    };
    let (scale, shift) = (pad(scale, 1.0), pad(shift, 0.0));
    let bias = match &conv.bias {
        Some(b) => b.val() * scale.clone() + shift,
        None => shift,
    };
    conv.weight = Param::from_tensor(weight * scale.reshape([out, 1, 1, 1]));
    conv.bias = Some(Param::from_tensor(bias));
    bn.folded = true;
}

/// Folds the batch-norm part of a [`Norm2d`] (all of a batch norm, the BN section of an IBN
/// layer, nothing of an instance norm).
fn fold_norm(conv: &mut Conv2d, norm: &mut Norm2d) {
    match norm {
        Norm2d::Batch(bn) => fold(conv, bn, 0),
        Norm2d::Ibn(ibn) => {
            let offset = if ibn.instance_first {
                ibn.instance_channels()
            } else {
                0
            };
            fold(conv, &mut ibn.batch, offset)
        }
        Norm2d::Instance(_) => {}
    }
}

impl ResNetIbn {
    /// Folds every batch norm that directly follows a convolution into that convolution
    /// (including the BN section of every IBN layer), for inference. Outputs in evaluation
    /// mode are unchanged up to float32 rounding; instance norms stay as they are.
    ///
    /// Call it on an evaluation model (`model.valid()`); a folded model is not meant for
    /// training.
    pub fn fold_batch_norms(mut self) -> Self {
        fold_norm(&mut self.conv1, &mut self.bn1);
        for block in self.layers.iter_mut().flatten() {
            match block {
                ResBlock::Basic(b) => {
                    fold_norm(&mut b.conv1, &mut b.bn1);
                    fold(&mut b.conv2, &mut b.bn2, 0);
                    if let Some(d) = &mut b.downsample {
                        fold(&mut d.conv, &mut d.bn, 0);
                    }
                }
                ResBlock::Bottleneck(b) => {
                    fold_norm(&mut b.conv1, &mut b.bn1);
                    fold(&mut b.conv2, &mut b.bn2, 0);
                    fold(&mut b.conv3, &mut b.bn3, 0);
                    if let Some(d) = &mut b.downsample {
                        fold(&mut d.conv, &mut d.bn, 0);
                    }
                }
            }
        }
        self
    }
}

impl DenseNetIbn {
    /// Folds the batch norms that directly follow a convolution (`norm0` and every dense
    /// layer's `norm2`) into it, for inference. The other norms of DenseNet come before their
    /// convolution (pre-activation) and stay. See [`ResNetIbn::fold_batch_norms`].
    pub fn fold_batch_norms(mut self) -> Self {
        fold(&mut self.conv0, &mut self.norm0, 0);
        for layer in self.blocks.iter_mut().flat_map(|b| b.layers.iter_mut()) {
            fold(&mut layer.conv1, &mut layer.norm2, 0);
        }
        self
    }
}

impl IbnNet {
    /// Folds batch norms into the preceding convolutions for inference; see
    /// [`ResNetIbn::fold_batch_norms`] and [`DenseNetIbn::fold_batch_norms`].
    pub fn fold_batch_norms(self) -> Self {
        match self {
            Self::ResNet(m) => Self::ResNet(m.fold_batch_norms()),
            Self::DenseNet(m) => Self::DenseNet(m.fold_batch_norms()),
        }
    }
}
