//! Shared helpers of the integration tests: fixture loading and comparison.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::module::Module;
use burn::store::ModuleSnapshot;
use burn::tensor::{Device, Tensor, TensorData};
use ibn_net::block::{
    BasicBlock, BasicBlockConfig, Bottleneck, BottleneckConfig, DenseLayer, DenseLayerConfig,
    IbnMode, Transition, TransitionConfig,
};
use ibn_net::device::device_from_name;
use ibn_net::model::{
    Backbone, BlockKind, DenseNetIbnConfig, IbnNet, NetConfig, ResNetIbnConfig, StemPool,
};
use ibn_net::norm::{Ibn, IbnConfig, InstanceNorm2d, InstanceNorm2dConfig};
use ibn_net::npy::NpyArray;
use ibn_net::weights::{
    DENSENET_KEYS, IBN_KEYS, IDENTITY_KEYS, KeyMap, RESNET_KEYS, Strictness, load_pytorch,
};

/// Relative tolerance of every PyTorch comparison: max |ours - torch| <= TOL * max |torch|.
pub const TOL: f32 = 1e-5;

/// The checkout the test data is read from: `CARGO_MANIFEST_DIR` at run time (cargo sets it;
/// `scripts/gpu_check.sh` sets it for packed test binaries run elsewhere), else the checkout
/// the test was built from.
pub fn checkout() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

/// `tests/fixtures/<name>` of [`checkout`].
pub fn fixture(name: &str) -> PathBuf {
    checkout().join("tests/fixtures").join(name)
}

/// The CPU device the tests run on: flex, or ndarray in builds without flex.
pub fn cpu() -> Device {
    let name = if cfg!(feature = "flex") {
        "flex"
    } else {
        "ndarray"
    };
    device_from_name(name).expect("the tests need the flex or ndarray feature")
}

pub fn tensor_from_npy(path: &str, device: &Device) -> Tensor<4> {
    let array = NpyArray::read(fixture(path)).unwrap();
    let shape: [usize; 4] = array.shape.clone().try_into().expect("rank-4 input");
    Tensor::from_data(TensorData::new(array.data, shape), device)
}

/// `data` as an [`NpyArray`], to serve as the reference of [`assert_close`].
pub fn npy_of(data: &TensorData) -> NpyArray {
    NpyArray {
        shape: data.shape().to_vec(),
        data: data.try_to_vec::<f32>().unwrap(),
    }
}

/// The largest of `values`, or NaN when any is NaN (`f32::max` would skip it).
pub fn max_or_nan(values: impl IntoIterator<Item = f32>) -> f32 {
    values.into_iter().fold(0f32, |m, v| {
        if m.is_nan() || v.is_nan() {
            f32::NAN
        } else {
            m.max(v)
        }
    })
}

/// Max abs difference relative to max |reference|; panics with context over `tol`, and on any
/// NaN on either side (which fails every comparison).
pub fn assert_close(what: &str, ours: &TensorData, reference: &NpyArray, tol: f32) -> f32 {
    assert_eq!(ours.shape().to_vec(), reference.shape, "{what}: shape");
    let ours = ours.try_to_vec::<f32>().unwrap();
    assert_eq!(ours.len(), reference.data.len(), "{what}: length");
    let scale = max_or_nan(reference.data.iter().map(|v| v.abs())).max(1e-12);
    let err = max_or_nan(ours.iter().zip(&reference.data).map(|(a, b)| (a - b).abs()));
    let rel = err / scale;
    assert!(
        rel <= tol,
        "{what}: max abs error {err:e} = {rel:e} of the output scale {scale} (tolerance {tol:e})"
    );
    rel
}

pub fn small_resnet(block: BlockKind, layers: Vec<usize>, widths: Vec<usize>) -> ResNetIbnConfig {
    ResNetIbnConfig::new(block, layers)
        .with_widths(widths)
        .with_stem_width(8)
        .with_num_classes(10)
}

/// The configuration of each network fixture (mirrors scripts/make_fixtures.py).
pub fn net_config(name: &str) -> NetConfig {
    use BlockKind::*;
    let narrow = || vec![8, 16, 24, 32];
    let basic = narrow;
    NetConfig::ResNet(match name {
        "net_resnet_basic_a" => small_resnet(Basic, vec![2, 1, 1, 1], basic()),
        "net_resnet_basic_b" => small_resnet(Basic, vec![2, 1, 1, 1], basic()).with_ibn_b(),
        "net_resnet_bottleneck_a" => small_resnet(Bottleneck, vec![2, 1, 1, 1], narrow()),
        "net_resnet_bottleneck_b" => {
            small_resnet(Bottleneck, vec![2, 2, 1, 1], narrow()).with_ibn_b()
        }
        "net_resnext_a" => small_resnet(Bottleneck, vec![1, 1, 1, 1], narrow())
            .with_cardinality(4)
            .with_base_width(16),
        "net_se_resnet_a" => {
            small_resnet(Bottleneck, vec![1, 1, 1, 1], narrow()).with_se_reduction(Some(4))
        }
        "net_reid_a" => small_resnet(Basic, vec![1, 1, 1, 1], basic())
            .with_num_classes(0)
            .with_last_stride(1),
        "net_fastreid_a" => small_resnet(Basic, vec![1, 1, 1, 1], basic())
            .with_num_classes(0)
            .with_last_stride(1)
            .with_stem_pool(StemPool::Ceil),
        "net_densenet_a" => {
            return NetConfig::DenseNet(
                DenseNetIbnConfig::new(vec![4, 2, 2, 2])
                    .with_growth_rate(8)
                    .with_num_init_features(16)
                    .with_num_classes(10),
            );
        }
        other => panic!("no network fixture {other}"),
    })
}

pub fn net_keys(net: &IbnNet) -> &'static KeyMap {
    match net {
        IbnNet::ResNet(_) => &RESNET_KEYS,
        IbnNet::DenseNet(_) => &DENSENET_KEYS,
    }
}

/// Any module a fixture covers.
#[allow(clippy::large_enum_variant)]
pub enum Case {
    In(InstanceNorm2d),
    Ibn(Ibn),
    Basic(BasicBlock),
    Bottleneck(Bottleneck),
    Dense(DenseLayer),
    Transition(Transition),
    Net(IbnNet, bool),
}

fn load<M: Module>(module: M, file: &str, keys: &KeyMap) -> M {
    let (module, report) = load_pytorch(module, fixture(file), keys, Strictness::Strict)
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    assert!(report.is_exact(), "{file}: {report}");
    module
}

macro_rules! each_case {
    ($case:expr, $m:ident => $body:expr) => {
        match $case {
            Case::In($m) => $body,
            Case::Ibn($m) => $body,
            Case::Basic($m) => $body,
            Case::Bottleneck($m) => $body,
            Case::Dense($m) => $body,
            Case::Transition($m) => $body,
            Case::Net($m, _) => $body,
        }
    };
}

impl Case {
    /// Builds the module of fixture `name` on `device` and loads `file` into it.
    pub fn load(name: &str, file: &str, device: &Device) -> Case {
        use IbnMode::*;
        let d = device;
        match name {
            "in_affine" => Case::In(load(
                InstanceNorm2dConfig::new(6).with_affine(true).init(d),
                file,
                &IDENTITY_KEYS,
            )),
            "in_running" => Case::In(load(
                InstanceNorm2dConfig::new(6)
                    .with_affine(true)
                    .with_track_running_stats(true)
                    .init(d),
                file,
                &IDENTITY_KEYS,
            )),
            "ibn_half" => Case::Ibn(load(IbnConfig::new(12).init(d).unwrap(), file, &IBN_KEYS)),
            "ibn_r07" => Case::Ibn(load(
                IbnConfig::new(10).with_ratio(0.7).init(d).unwrap(),
                file,
                &IBN_KEYS,
            )),
            "dense_ibn" => Case::Ibn(load(IbnConfig::dense(16).init(d).unwrap(), file, &IBN_KEYS)),
            "basic_a" => Case::Basic(load(
                BasicBlockConfig::new(8, 16)
                    .with_stride(2)
                    .with_ibn(A)
                    .init(d)
                    .unwrap(),
                file,
                &RESNET_KEYS,
            )),
            "basic_b" => Case::Basic(load(
                BasicBlockConfig::new(16, 16).with_ibn(B).init(d).unwrap(),
                file,
                &RESNET_KEYS,
            )),
            "bottleneck_a" => Case::Bottleneck(load(
                BottleneckConfig::new(16, 8)
                    .with_stride(2)
                    .with_ibn(A)
                    .init(d)
                    .unwrap(),
                file,
                &RESNET_KEYS,
            )),
            "bottleneck_b" => Case::Bottleneck(load(
                BottleneckConfig::new(32, 8).with_ibn(B).init(d).unwrap(),
                file,
                &RESNET_KEYS,
            )),
            "resnext_a" => Case::Bottleneck(load(
                BottleneckConfig::new(16, 8)
                    .with_stride(2)
                    .with_ibn(A)
                    .with_cardinality(4)
                    .with_base_width(16)
                    .init(d)
                    .unwrap(),
                file,
                &RESNET_KEYS,
            )),
            "se_a" => Case::Bottleneck(load(
                BottleneckConfig::new(32, 8)
                    .with_ibn(A)
                    .with_se_reduction(Some(4))
                    .init(d)
                    .unwrap(),
                file,
                &RESNET_KEYS,
            )),
            "dense_layer" => Case::Dense(load(
                DenseLayerConfig::new(16, 8).with_ibn(true).init(d).unwrap(),
                file,
                &DENSENET_KEYS,
            )),
            "transition" => Case::Transition(load(
                TransitionConfig::new(16, 8).init(d).unwrap(),
                file,
                &IDENTITY_KEYS,
            )),
            net => {
                let model = net_config(net).init(d).unwrap();
                let keys = net_keys(&model);
                let model = load(model, file, keys);
                let headless = model.num_classes() == 0;
                Case::Net(model, headless)
            }
        }
    }

    /// Runs the module; returns the output data.
    pub fn forward(&self, x: Tensor<4>) -> TensorData {
        match self {
            Case::In(m) => m.forward(x).into_data(),
            Case::Ibn(m) => m.forward(x).into_data(),
            Case::Basic(m) => m.forward(x).into_data(),
            Case::Bottleneck(m) => m.forward(x).into_data(),
            Case::Dense(m) => m.forward(x).into_data(),
            Case::Transition(m) => m.forward(x).into_data(),
            Case::Net(m, true) => m.forward_features(x).into_data(),
            Case::Net(m, false) => m.forward(x).into_data(),
        }
    }

    /// Every tensor (parameters and synchronised running statistics) by module path.
    pub fn tensors(&self) -> Vec<(String, TensorData)> {
        each_case!(self, m => {
            m.valid()
                .collect(None, None, true)
                .into_iter()
                .map(|t| {
                    let data = burn::store::bridge::to_data(&t).unwrap();
                    (t.name.clone(), data)
                })
                .collect()
        })
    }
}

/// Every fixture case, in the order of scripts/make_fixtures.py.
pub const CASES: &[&str] = &[
    "in_affine",
    "in_running",
    "ibn_half",
    "ibn_r07",
    "dense_ibn",
    "basic_a",
    "basic_b",
    "bottleneck_a",
    "bottleneck_b",
    "resnext_a",
    "se_a",
    "dense_layer",
    "transition",
    "net_resnet_basic_a",
    "net_resnet_basic_b",
    "net_resnet_bottleneck_a",
    "net_resnet_bottleneck_b",
    "net_resnext_a",
    "net_se_resnet_a",
    "net_densenet_a",
    "net_reid_a",
    "net_fastreid_a",
];
