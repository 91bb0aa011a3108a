//! Training through autodiff: a few SGD steps lower the loss of a tiny IBN network on a fixed
//! batch, on every backend of this build; with wgpu, the parameter gradients of a small network
//! there equal the CPU's.
#![cfg(feature = "autodiff")]

mod common;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use common::*;
use ibn_net::device::{available_devices, device_from_name};
use ibn_net::model::{Backbone, BlockKind, NetConfig, ResNetIbnConfig};

fn losses(config: NetConfig, device: &Device, steps: usize) -> Vec<f32> {
    let device = device.clone().autodiff();
    device.seed(7);
    let mut model = config.init(&device).unwrap();
    let x = Tensor::<4>::random([8, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let labels =
        Tensor::<1, Int>::from_data(TensorData::from([0i64, 1, 2, 3, 0, 1, 2, 3]), &device);
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optim = SgdConfig::new().init();
    let mut history = Vec::new();
    for _ in 0..steps {
        let loss = loss_fn.forward(model.forward(x.clone()), labels.clone());
        history.push(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(0.05, model, grads);
    }
    // The trained model still runs in evaluation mode.
    let eval = model.valid().forward(x.inner());
    assert!(eval.into_data().iter::<f32>().all(f32::is_finite));
    history
}

fn tiny(block: BlockKind) -> ResNetIbnConfig {
    small_resnet(block, vec![1, 1, 1, 1], vec![8, 8, 16, 16]).with_num_classes(4)
}

#[test]
fn sgd_lowers_the_loss_on_every_backend() {
    for name in available_devices() {
        let device = device_from_name(name).unwrap();
        let configs = [
            ("ibn-a", NetConfig::ResNet(tiny(BlockKind::Basic))),
            (
                "ibn-b",
                NetConfig::ResNet(tiny(BlockKind::Bottleneck).with_ibn_b()),
            ),
        ];
        for (label, config) in configs {
            let history = losses(config, &device, 6);
            println!("{name} {label}: {history:?}");
            assert!(
                history.iter().all(|l| l.is_finite()),
                "{name} {label}: {history:?}"
            );
            assert!(
                history.last().unwrap() < &(history[0] * 0.8),
                "{name} {label}: loss did not fall by 20%: {history:?}"
            );
        }
    }
}

/// The gradient of every parameter of a small IBN-a bottleneck network in training mode
/// (7x7 stem, strided and 1x1 convolutions, IBN, instance and batch norms with batch
/// statistics, the classifier) on wgpu (the unfold/fold convolution kernels and the norm
/// kernels' backward passes) against the first CPU backend, same weights and batch.
/// Tolerance: 1e-3 of each parameter gradient's largest magnitude on the CPU.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_gradients_match_the_cpu() {
    use burn::module::{ModuleVisitor, Param};
    use burn::tensor::Gradients;

    struct Collect<'a>(&'a Gradients, Vec<Vec<f32>>);
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = param.val().grad(self.0) {
                self.1.push(grad.into_data().iter::<f32>().collect());
            }
        }
    }

    let cpu = device_from_name(available_devices()[0]).unwrap().autodiff();
    let gpu = device_from_name("wgpu").unwrap().autodiff();
    cpu.seed(5);
    let config = NetConfig::ResNet(tiny(BlockKind::Bottleneck));
    let model = config.init(&cpu).unwrap();
    let x = Tensor::<4>::random([4, 3, 32, 32], Distribution::Normal(0.0, 1.0), &cpu);
    let labels = TensorData::from([0i64, 1, 2, 3]);
    let gradients = |device: &Device| {
        let model = model.clone().fork(device);
        let x = Tensor::<4>::from_data(x.to_data(), device);
        let labels = Tensor::<1, Int>::from_data(labels.clone(), device);
        let loss = CrossEntropyLossConfig::new()
            .init(device)
            .forward(model.forward(x), labels);
        let grads = loss.backward();
        let mut collect = Collect(&grads, Vec::new());
        model.visit(&mut collect);
        collect.1
    };
    let (expected, ours) = (gradients(&cpu), gradients(&gpu));
    assert!(
        expected.len() > 20,
        "{} parameter gradients",
        expected.len()
    );
    assert_eq!(ours.len(), expected.len(), "parameters with a gradient");
    for (i, (ours, expected)) in ours.iter().zip(&expected).enumerate() {
        assert_eq!(ours.len(), expected.len(), "parameter {i}: length");
        let scale = max_or_nan(expected.iter().map(|v| v.abs()));
        let err = max_or_nan(ours.iter().zip(expected).map(|(a, b)| (a - b).abs()));
        assert!(
            err <= 1e-3 * scale,
            "parameter {i} ({} values): max error {err:e}, largest gradient {scale:e}",
            expected.len()
        );
    }
}

#[test]
#[should_panic(expected = "needs more than one value per channel, got 1")]
fn batch_norm_training_on_one_value_per_channel_panics_as_pytorch_raises() {
    // PyTorch: "Expected more than 1 value per channel when training".
    let device = cpu().autodiff();
    let bn = ibn_net::norm::BatchNorm2dConfig::new(4).init(&device);
    let x = Tensor::<4>::random([1, 4, 1, 1], Distribution::Default, &device);
    let _ = bn.forward(x);
}

/// Whether each listed parameter received a gradient from `loss`.
fn has_grad(
    grads: &burn::tensor::Gradients,
    params: &[&burn::module::Param<Tensor<4>>],
) -> Vec<bool> {
    params.iter().map(|p| p.grad(grads).is_some()).collect()
}

#[test]
fn frozen_norms_use_their_running_statistics_and_get_no_gradient() {
    use ibn_net::block::IbnMode;
    use ibn_net::model::{DenseNetIbnConfig, IbnNet, ResBlock};
    use ibn_net::norm::Norm2d;

    let device = cpu().autodiff();
    device.seed(3);
    let x = Tensor::<4>::random([4, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let bottleneck = small_resnet(BlockKind::Bottleneck, vec![2, 1, 1, 1], vec![8, 8, 16, 16]);
    let configs = [
        // IBN-b: instance norms in the stem and after layer1's second block.
        NetConfig::ResNet(
            small_resnet(BlockKind::Basic, vec![2, 1, 1, 1], vec![8, 8, 16, 16])
                .with_num_classes(4)
                .with_ibn_b(),
        ),
        NetConfig::ResNet(bottleneck.with_ibn(vec![
            IbnMode::A,
            IbnMode::B,
            IbnMode::None,
            IbnMode::None,
        ])),
        NetConfig::DenseNet(
            DenseNetIbnConfig::new(vec![2, 2])
                .with_growth_rate(4)
                .with_num_init_features(8)
                .with_ibn(vec![true, false])
                .with_num_classes(3),
        ),
    ];
    for config in configs {
        let model = config.init(&device).unwrap();
        // Running statistics away from their initial values, so that using them shows.
        let model = {
            let _ = model.forward(x.clone() * 2.0 + 1.0);
            model
        };
        let frozen = model.freeze_norms();
        let before = frozen.valid().forward(x.clone().inner());
        let out = frozen.forward(x.clone());
        // Training-mode forward of the frozen model = evaluation mode (float32 rounding).
        let diff = (out.clone().inner() - before.clone())
            .abs()
            .max()
            .into_scalar::<f32>();
        let scale = before.clone().abs().max().into_scalar::<f32>();
        assert!(diff <= 1e-5 * scale, "{diff} vs scale {scale}");
        // ... and did not move the running statistics.
        let after = frozen.valid().forward(x.clone().inner());
        assert_eq!(
            after.into_data().try_to_vec::<f32>().unwrap(),
            before.into_data().try_to_vec::<f32>().unwrap()
        );
        let grads = out.sum().backward();
        match &frozen {
            IbnNet::ResNet(m) => {
                let Norm2d::Batch(bn1) = &m.bn1 else {
                    // IBN-b stem: an instance norm.
                    let Norm2d::Instance(stem) = &m.bn1 else {
                        panic!("stem norm")
                    };
                    assert!(stem.weight.as_ref().unwrap().grad(&grads).is_none());
                    assert!(m.conv1.weight.grad(&grads).is_some());
                    let ResBlock::Basic(b) = &m.layers[0][1] else {
                        panic!("block")
                    };
                    let post_in = b.post_in.as_ref().expect("IBN-b instance norm");
                    assert!(post_in.weight.as_ref().unwrap().grad(&grads).is_none());
                    assert!(b.conv2.weight.grad(&grads).is_some());
                    continue;
                };
                assert!(bn1.weight.grad(&grads).is_none());
                let ResBlock::Bottleneck(b) = &m.layers[0][0] else {
                    panic!("block")
                };
                let Norm2d::Ibn(ibn) = &b.bn1 else {
                    panic!("IBN-a bn1")
                };
                assert!(ibn.batch.weight.grad(&grads).is_none());
                assert!(ibn.instance.weight.as_ref().unwrap().grad(&grads).is_none());
                assert!(b.bn3.bias.grad(&grads).is_none());
                assert!(
                    b.downsample
                        .as_ref()
                        .unwrap()
                        .bn
                        .weight
                        .grad(&grads)
                        .is_none()
                );
                assert_eq!(
                    has_grad(&grads, &[&m.conv1.weight, &b.conv2.weight]),
                    [true, true]
                );
                assert!(m.fc.as_ref().unwrap().weight.grad(&grads).is_some());
            }
            IbnNet::DenseNet(m) => {
                assert!(m.norm0.weight.grad(&grads).is_none());
                assert!(m.transitions[0].norm.weight.grad(&grads).is_none());
                assert!(m.blocks[1].layers[1].norm2.bias.grad(&grads).is_none());
                assert_eq!(
                    has_grad(&grads, &[&m.conv0.weight, &m.transitions[0].conv.weight]),
                    [true, true]
                );
            }
        }
    }
}

#[test]
fn frozen_stages_stop_learning_and_the_rest_does_not() {
    use ibn_net::model::{DenseNetIbnConfig, IbnNet, ResBlock};

    let device = cpu().autodiff();
    device.seed(5);
    let x = Tensor::<4>::random([4, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let model = NetConfig::ResNet(tiny(BlockKind::Basic))
        .init(&device)
        .unwrap();
    assert!(matches!(
        model.clone().freeze_stages(5),
        Err(ibn_net::IbnError::InvalidInput(_))
    ));
    let frozen = model.freeze_stages(2).unwrap();
    let IbnNet::ResNet(m) = &frozen else {
        unreachable!()
    };
    let running = |stage: usize| {
        let ResBlock::Basic(b) = &m.layers[stage][0] else {
            unreachable!()
        };
        b.bn2
            .running_var
            .value_sync()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    let (frozen_var, trained_var) = (running(1), running(2));
    let grads = frozen.forward(x.clone()).sum().backward();
    // Stages 1-2 (layer1, layer2) and the stem: no gradients, running statistics kept.
    let conv = |stage: usize| {
        let ResBlock::Basic(b) = &m.layers[stage][0] else {
            unreachable!()
        };
        b.conv1.weight.clone()
    };
    assert_eq!(
        has_grad(
            &grads,
            &[&m.conv1.weight, &conv(0), &conv(1), &conv(2), &conv(3)]
        ),
        [false, false, false, true, true]
    );
    assert_eq!(running(1), frozen_var);
    assert_ne!(running(2), trained_var);

    let dense = NetConfig::DenseNet(
        DenseNetIbnConfig::new(vec![1, 1, 1])
            .with_ibn(vec![true, false, false])
            .with_growth_rate(4)
            .with_num_init_features(8)
            .with_num_classes(3),
    )
    .init(&device)
    .unwrap()
    .freeze_stages(1)
    .unwrap();
    let IbnNet::DenseNet(d) = &dense else {
        unreachable!()
    };
    let grads = dense.forward(x).sum().backward();
    assert_eq!(
        has_grad(
            &grads,
            &[
                &d.conv0.weight,
                &d.blocks[0].layers[0].conv2.weight,
                &d.transitions[0].conv.weight,
                &d.blocks[1].layers[0].conv2.weight,
                &d.transitions[1].conv.weight,
            ]
        ),
        [false, false, false, true, true]
    );
}

#[test]
#[should_panic(expected = "instance normalisation needs more than one spatial value")]
fn instance_norm_on_one_spatial_value_panics_as_pytorch_raises() {
    // PyTorch: "Expected more than 1 spatial element when training".
    let device = cpu();
    let ibn = ibn_net::norm::IbnConfig::new(8).init(&device).unwrap();
    let x = Tensor::<4>::random([4, 8, 1, 1], Distribution::Default, &device);
    let _ = ibn.forward(x);
}
