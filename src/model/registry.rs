//! The released model zoo: every named model, its configuration and metadata.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::densenet::{DenseNetIbn, DenseNetIbnConfig};
use super::features::{Backbone, FeatureInfo};
use super::resnet::{BlockKind, ResNetIbn, ResNetIbnConfig};
use crate::error::{IbnError, Result};
use crate::weights::{DENSENET_KEYS, KeyMap, LoadReport, RESNET_KEYS, Strictness, load_pytorch};
use std::path::Path;

/// ImageNet mean of the released weights' preprocessing (RGB, `[0, 1]` input).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation of the released weights' preprocessing.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Network family of a named model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// ResNet with basic or bottleneck blocks.
    ResNet,
    /// ResNeXt 32x4d.
    ResNeXt,
    /// SE-ResNet.
    SeResNet,
    /// DenseNet-BC.
    DenseNet,
}

/// Configuration of any network of the crate.
#[derive(Clone, Debug, PartialEq)]
pub enum NetConfig {
    /// ResNet, ResNeXt or SE-ResNet.
    ResNet(ResNetIbnConfig),
    /// DenseNet.
    DenseNet(DenseNetIbnConfig),
}

impl NetConfig {
    /// Builds the network.
    ///
    /// # Errors
    /// [`IbnError::InvalidConfig`] for an inconsistent configuration.
    pub fn init(&self, device: &Device) -> Result<IbnNet> {
        Ok(match self {
            Self::ResNet(c) => IbnNet::ResNet(c.init(device)?),
            Self::DenseNet(c) => IbnNet::DenseNet(c.init(device)?),
        })
    }
}

/// A named model of the released zoo and everything needed to use its weights.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// Name, e.g. `resnet50_ibn_a`.
    pub name: &'static str,
    /// Family.
    pub family: Family,
    /// Input size `[C, H, W]` of the released weights.
    pub input_size: [usize; 3],
    /// Resize of the shorter side before the centre crop.
    pub resize: usize,
    /// Normalisation mean (RGB).
    pub mean: [f32; 3],
    /// Normalisation standard deviation (RGB).
    pub std: [f32; 3],
    /// File name of the released checkpoint, when one was released.
    pub weights: Option<&'static str>,
    /// Reported ImageNet top-1 / top-5 error (%), when reported.
    pub imagenet_error: Option<(f32, f32)>,
    config: fn() -> NetConfig,
}

impl ModelInfo {
    /// The model's configuration (1000 classes).
    pub fn config(&self) -> NetConfig {
        (self.config)()
    }

    /// Builds the model with freshly initialised weights.
    ///
    /// # Errors
    /// Never for the registered models; see [`NetConfig::init`].
    pub fn init(&self, device: &Device) -> Result<IbnNet> {
        self.config().init(device)
    }

    /// Where the released checkpoint can be downloaded (the authors' v1.0 release), when one
    /// was released.
    ///
    /// ```
    /// let info = ibn_net::model::model_info("resnet50_ibn_a")?;
    /// assert_eq!(
    ///     info.weights_url().as_deref(),
    ///     Some("https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet50_ibn_a-d9d0bb7b.pth")
    /// );
    /// # Ok::<(), ibn_net::IbnError>(())
    /// ```
    pub fn weights_url(&self) -> Option<String> {
        self.weights.map(|file| format!("{RELEASE_URL}{file}"))
    }
}

/// Where the released checkpoints are published: the file names of [`ModelInfo::weights`]
/// under it.
pub const RELEASE_URL: &str = "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/";

fn resnet(block: BlockKind, layers: [usize; 4]) -> ResNetIbnConfig {
    ResNetIbnConfig::new(block, layers.to_vec())
}

macro_rules! zoo {
    ($( $name:ident: $family:ident, $weights:expr, $err:expr, $config:expr; )*) => {
        /// Every named model of the released zoo, in the order of the release.
        pub const MODELS: &[ModelInfo] = &[$(
            ModelInfo {
                name: stringify!($name),
                family: Family::$family,
                input_size: [3, 224, 224],
                resize: 256,
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
                weights: $weights,
                imagenet_error: $err,
                config: { fn config() -> NetConfig { $config } config },
            },
        )*];

        $(
            #[doc = concat!("`", stringify!($name), "` of the released zoo, 1000 classes, fresh weights.")]
            ///
            /// # Panics
            /// Never: the configuration is fixed and valid.
            pub fn $name(device: &Device) -> IbnNet {
                let config: NetConfig = $config;
                config.init(device).expect("the zoo configurations are valid")
            }
        )*
    };
}

use BlockKind::{Basic, Bottleneck};

zoo! {
    resnet18_ibn_a: ResNet, Some("resnet18_ibn_a-2f571257.pth"), Some((29.17, 10.24)),
        NetConfig::ResNet(resnet(Basic, [2, 2, 2, 2]));
    resnet34_ibn_a: ResNet, Some("resnet34_ibn_a-94bc1577.pth"), Some((25.78, 8.19)),
        NetConfig::ResNet(resnet(Basic, [3, 4, 6, 3]));
    resnet50_ibn_a: ResNet, Some("resnet50_ibn_a-d9d0bb7b.pth"), Some((22.54, 6.32)),
        NetConfig::ResNet(resnet(Bottleneck, [3, 4, 6, 3]));
    resnet101_ibn_a: ResNet, Some("resnet101_ibn_a-59ea0ac6.pth"), Some((21.39, 5.59)),
        NetConfig::ResNet(resnet(Bottleneck, [3, 4, 23, 3]));
    resnet152_ibn_a: ResNet, None, None,
        NetConfig::ResNet(resnet(Bottleneck, [3, 8, 36, 3]));
    resnet18_ibn_b: ResNet, Some("resnet18_ibn_b-bc2f3c11.pth"), None,
        NetConfig::ResNet(resnet(Basic, [2, 2, 2, 2]).with_ibn_b());
    resnet34_ibn_b: ResNet, Some("resnet34_ibn_b-04134c37.pth"), None,
        NetConfig::ResNet(resnet(Basic, [3, 4, 6, 3]).with_ibn_b());
    resnet50_ibn_b: ResNet, Some("resnet50_ibn_b-9ca61e85.pth"), None,
        NetConfig::ResNet(resnet(Bottleneck, [3, 4, 6, 3]).with_ibn_b());
    resnet101_ibn_b: ResNet, Some("resnet101_ibn_b-c55f6dba.pth"), None,
        NetConfig::ResNet(resnet(Bottleneck, [3, 4, 23, 3]).with_ibn_b());
    resnet152_ibn_b: ResNet, None, None,
        NetConfig::ResNet(resnet(Bottleneck, [3, 8, 36, 3]).with_ibn_b());
    resnext50_ibn_a: ResNeXt, None, None,
        NetConfig::ResNet(resnet(Bottleneck, [3, 4, 6, 3]).with_cardinality(32).with_base_width(4));
    resnext101_ibn_a: ResNeXt, Some("resnext101_ibn_a-6ace051d.pth"), Some((20.88, 5.42)),
        NetConfig::ResNet(resnet(Bottleneck, [3, 4, 23, 3]).with_cardinality(32).with_base_width(4));
    resnext152_ibn_a: ResNeXt, None, None,
        NetConfig::ResNet(resnet(Bottleneck, [3, 8, 36, 3]).with_cardinality(32).with_base_width(4));
    se_resnet50_ibn_a: SeResNet, None, None,
        NetConfig::ResNet(resnet(Bottleneck, [3, 4, 6, 3]).with_se_reduction(Some(16)));
    se_resnet101_ibn_a: SeResNet, Some("se_resnet101_ibn_a-fabed4e2.pth"), Some((21.25, 5.51)),
        NetConfig::ResNet(resnet(Bottleneck, [3, 4, 23, 3]).with_se_reduction(Some(16)));
    se_resnet152_ibn_a: SeResNet, None, None,
        NetConfig::ResNet(resnet(Bottleneck, [3, 8, 36, 3]).with_se_reduction(Some(16)));
    densenet121_ibn_a: DenseNet, Some("densenet121_ibn_a-e4af5cc1.pth"), Some((24.47, 7.25)),
        NetConfig::DenseNet(DenseNetIbnConfig::new(vec![6, 12, 24, 16]));
    densenet169_ibn_a: DenseNet, Some("densenet169_ibn_a-9f32c161.pth"), Some((23.25, 6.51)),
        NetConfig::DenseNet(DenseNetIbnConfig::new(vec![6, 12, 32, 32]));
    densenet201_ibn_a: DenseNet, None, None,
        NetConfig::DenseNet(DenseNetIbnConfig::new(vec![6, 12, 48, 32]));
    densenet161_ibn_a: DenseNet, None, None,
        NetConfig::DenseNet(
            DenseNetIbnConfig::new(vec![6, 12, 36, 24]).with_growth_rate(48).with_num_init_features(96)
        );
}

/// Names of every registered model.
pub fn model_names() -> Vec<&'static str> {
    MODELS.iter().map(|m| m.name).collect()
}

/// Metadata of a named model.
///
/// # Errors
/// [`IbnError::UnknownModel`] listing the known names.
pub fn model_info(name: &str) -> Result<&'static ModelInfo> {
    MODELS
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| IbnError::UnknownModel {
            name: name.to_string(),
            known: model_names().join(", "),
        })
}

/// Builds a named model with fresh weights.
///
/// # Errors
/// [`IbnError::UnknownModel`] listing the known names.
pub fn create_model(name: &str, device: &Device) -> Result<IbnNet> {
    model_info(name)?.init(device)
}

/// Any network of the crate; what the registry builds.
// Variants are held inline: modules are built once and never moved in hot loops.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum IbnNet {
    /// ResNet, ResNeXt or SE-ResNet.
    ResNet(ResNetIbn),
    /// DenseNet.
    DenseNet(DenseNetIbn),
}

impl IbnNet {
    /// The configuration of the network (with its current number of classes).
    pub fn config(&self) -> NetConfig {
        match self {
            Self::ResNet(m) => NetConfig::ResNet(m.config().clone()),
            Self::DenseNet(m) => NetConfig::DenseNet(m.config().clone()),
        }
    }

    /// The PyTorch name table of the network's family.
    pub fn keys(&self) -> &'static KeyMap {
        match self {
            Self::ResNet(_) => &RESNET_KEYS,
            Self::DenseNet(_) => &DENSENET_KEYS,
        }
    }

    /// Loads a PyTorch checkpoint (a released `.pth`, or one trained with the authors' code,
    /// fast-reid or reid-strong-baseline) into this network; see [`load_pytorch`].
    ///
    /// # Errors
    /// See [`load_pytorch`].
    pub fn load_pytorch(
        self,
        path: impl AsRef<Path>,
        strictness: Strictness,
    ) -> Result<(Self, LoadReport)> {
        let keys = self.keys();
        load_pytorch(self, path, keys, strictness)
    }

    /// Builds the named model and loads a PyTorch checkpoint into it, strictly.
    ///
    /// ```no_run
    /// use burn::tensor::Device;
    /// use ibn_net::model::IbnNet;
    /// let model = IbnNet::from_pytorch("resnet50_ibn_a", "resnet50_ibn_a-d9d0bb7b.pth", &Device::default())?;
    /// # Ok::<(), ibn_net::IbnError>(())
    /// ```
    ///
    /// # Errors
    /// [`IbnError::UnknownModel`], or see [`load_pytorch`].
    pub fn from_pytorch(name: &str, path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Ok(create_model(name, device)?
            .load_pytorch(path, Strictness::Strict)?
            .0)
    }

    fn backbone(&self) -> &dyn Backbone {
        match self {
            Self::ResNet(m) => m,
            Self::DenseNet(m) => m,
        }
    }
}

impl Backbone for IbnNet {
    fn forward_features(&self, input: Tensor<4>) -> Tensor<4> {
        self.backbone().forward_features(input)
    }

    fn forward_head(&self, features: Tensor<4>, pre_logits: bool) -> Tensor<2> {
        self.backbone().forward_head(features, pre_logits)
    }

    fn forward_intermediates(&self, input: Tensor<4>, indices: &[usize]) -> Result<Vec<Tensor<4>>> {
        self.backbone().forward_intermediates(input, indices)
    }

    fn feature_info(&self) -> Vec<FeatureInfo> {
        self.backbone().feature_info()
    }

    fn num_classes(&self) -> usize {
        self.backbone().num_classes()
    }

    fn reset_classifier(&mut self, num_classes: usize, device: &Device) {
        match self {
            Self::ResNet(m) => m.reset_classifier(num_classes, device),
            Self::DenseNet(m) => m.reset_classifier(num_classes, device),
        }
    }

    fn validate_input(&self, dims: &[usize]) -> Result<()> {
        self.backbone().validate_input(dims)
    }
}
