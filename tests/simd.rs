//! The crate's own CPU loops give bit-identical results at every instruction-set level they
//! are compiled for (`ibn_net::kernel::set_max_simd`): forward passes of small IBN-a and
//! IBN-b ResNets in evaluation (normalisation kernels with their epilogues, max pooling,
//! im2col, Winograd transforms, direct convolution) and the input gradient of a training step.
//! Exact equality: the loops neither fuse multiply-adds nor reorder their sums between levels.
//! The direct convolution kernels (the stems and strided 3x3 convolutions here) exist for
//! AVX2 and AVX-512, with the same fused multiply-adds in the same order; at the baseline
//! those convolutions take im2col, whose matrix product accumulates these models' short sums
//! (at most 288 terms) in that same order, so the bits agree there too.

#![cfg(all(any(feature = "flex", feature = "ndarray"), feature = "autodiff"))]

mod common;

use burn::tensor::{Device, Distribution, Tensor};
use common::*;
use ibn_net::device::{available_devices, device_from_name};
use ibn_net::kernel::{SimdLevel, set_max_simd, simd_level};
use ibn_net::model::{Backbone, BlockKind};

/// Output values of the two models and the input gradient of the first, as bits.
fn run(device: &Device, x: &Tensor<4>) -> Vec<Vec<u32>> {
    device.seed(3);
    let config_a = || small_resnet(BlockKind::Bottleneck, vec![1, 2, 1, 1], vec![8, 16, 24, 32]);
    let a = config_a().init(device).unwrap();
    let b = config_a().with_ibn_b().init(device).unwrap();
    let bits = |t: Tensor<2>| {
        let v = t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        v.into_iter().map(f32::to_bits).collect::<Vec<_>>()
    };
    let mut out = vec![bits(a.forward(x.clone())), bits(b.forward(x.clone()))];
    let ad = device.clone().autodiff();
    ad.seed(4);
    let a = config_a().init(&ad).unwrap();
    let x = Tensor::<4>::from_data(x.to_data(), &ad).require_grad();
    let grads = a.forward(x.clone()).sum().backward();
    let dx = x.grad(&grads).unwrap();
    out.push(bits(dx.reshape([1, -1])));
    out
}

#[test]
fn every_simd_level_gives_the_same_bits() {
    let levels = [SimdLevel::Avx512, SimdLevel::Avx2, SimdLevel::Baseline];
    for name in available_devices().into_iter().filter(|n| *n != "wgpu") {
        let device = device_from_name(name).unwrap();
        device.seed(1);
        let x = Tensor::<4>::random([2, 3, 64, 64], Distribution::Normal(0.0, 1.0), &device);
        set_max_simd(SimdLevel::Avx512);
        let best = simd_level();
        let reference = run(&device, &x);
        for level in levels.into_iter().filter(|&l| l < best) {
            set_max_simd(level);
            assert_eq!(simd_level(), level);
            let ours = run(&device, &x);
            for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
                let what = ["IBN-a output", "IBN-b output", "input gradient"][i];
                let diff = a.iter().zip(b).filter(|(a, b)| a != b).count();
                assert_eq!(
                    diff, 0,
                    "{what} on {name}: {diff} values differ at {level:?} from {best:?}"
                );
            }
        }
        set_max_simd(SimdLevel::Avx512);
    }
}
