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
