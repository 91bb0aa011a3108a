//! Training through autodiff: a few SGD steps lower the loss of a tiny IBN network on a fixed
//! batch, on every backend of this build.
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
