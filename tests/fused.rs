//! The single-pass evaluation paths of the instance norm and the IBN layer equal the generic
//! composed paths (split, norms, concatenation), on every backend of this build.

mod common;

use burn::tensor::{Distribution, Tensor};
use common::*;
use ibn_net::device::{available_devices, device_from_name};
use ibn_net::norm::{IbnConfig, InstanceNorm2dConfig};
use ibn_net::npy::NpyArray;

fn as_npy(t: Tensor<4>) -> NpyArray {
    npy_of(&t.into_data())
}

#[test]
fn single_pass_norms_equal_the_composed_path() {
    for name in available_devices() {
        let device = device_from_name(name).unwrap();
        device.seed(11);
        let x = Tensor::<4>::random([3, 24, 7, 9], Distribution::Normal(0.5, 2.0), &device);
        let inorm = InstanceNorm2dConfig::new(24)
            .with_affine(true)
            .init(&device);
        assert_close(
            &format!("instance norm on {name}"),
            &inorm.forward(x.clone()).into_data(),
            &as_npy(inorm.forward_composed(x.clone())),
            TOL,
        );
        for config in [
            IbnConfig::new(24),
            IbnConfig::new(24).with_ratio(0.7),
            IbnConfig::dense(24),
        ] {
            let ibn = config.init(&device).unwrap();
            let fast = ibn.forward(x.clone()).into_data();
            assert_close(
                &format!("{config:?} on {name}"),
                &fast,
                &as_npy(ibn.forward_composed(x.clone())),
                TOL,
            );
        }
    }
}
