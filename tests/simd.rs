//! The crate's own CPU loops give bit-identical results at every instruction-set level they
//! are compiled for (`ibn_net::kernel::set_max_simd`): the loops neither fuse multiply-adds
//! nor reorder their sums between levels, and the direct convolution kernels (AVX2 and
//! AVX-512 only) use the same fused multiply-adds in the same order in both.
//!
//! - Forward passes of small IBN-a and IBN-b ResNets in evaluation (normalisation kernels with
//!   their epilogues, max pooling, im2col, Winograd transforms, direct convolution) and the
//!   input gradient of a training step: exactly equal at every level that has the direct
//!   kernels. Below AVX2 the convolutions they take go through Winograd or im2col instead, so
//!   there the models agree to float32 rounding (1e-4 of the largest magnitude).
//! - The loops on their own, exactly equal at every level, the baseline included: the
//!   normalisation kernel (IBN section, residual and ReLU epilogue), a Winograd convolution
//!   with its input gradient, and an im2col convolution.

#![cfg(all(any(feature = "flex", feature = "ndarray"), feature = "autodiff"))]

mod common;

use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};
use common::*;
use ibn_net::device::{available_devices, device_from_name};
use ibn_net::kernel::{Epilogue, SimdLevel, conv2d, plane_norm_with, set_max_simd, simd_level};
use ibn_net::model::{Backbone, BlockKind};

/// Output values of the two models and the input gradient of the first.
fn models(device: &Device, x: &Tensor<4>) -> Vec<Vec<f32>> {
    device.seed(3);
    let config_a = || small_resnet(BlockKind::Bottleneck, vec![1, 2, 1, 1], vec![8, 16, 24, 32]);
    let a = config_a().init(device).unwrap();
    let b = config_a().with_ibn_b().init(device).unwrap();
    let mut out = vec![values(a.forward(x.clone())), values(b.forward(x.clone()))];
    let ad = device.clone().autodiff();
    ad.seed(4);
    let a = config_a().init(&ad).unwrap();
    let x = Tensor::<4>::from_data(x.to_data(), &ad).require_grad();
    let grads = a.forward(x.clone()).sum().backward();
    out.push(values(x.grad(&grads).unwrap()));
    out
}

/// The kernels on their own: the normalisation kernel with an IBN section, a residual and a
/// ReLU; a Winograd convolution (3x3, stride 1, more than 32 output channels) and its input
/// gradient; an im2col convolution (strided 1x1).
fn kernels(device: &Device) -> Vec<Vec<f32>> {
    device.seed(5);
    let normal =
        |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), device);
    let x = normal([2, 12, 9, 11]);
    let scale = Tensor::<1>::random([12], Distribution::Normal(1.0, 0.2), device);
    let shift = Tensor::<1>::random([12], Distribution::Normal(0.0, 0.2), device);
    let norm = plane_norm_with(
        x.clone(),
        scale,
        shift,
        0..5,
        1e-5,
        Epilogue::add_relu(normal([2, 12, 9, 11])),
    );
    let w = normal([40, 12, 3, 3]);
    let same = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let winograd = conv2d(x.clone(), w.clone(), None, same.clone());
    let strided = conv2d(
        x.clone(),
        normal([7, 12, 1, 1]),
        None,
        ConvOptions::new([2, 2], [0, 0], [1, 1], 1),
    );
    let ad = device.clone().autodiff();
    let xa = Tensor::<4>::from_data(x.to_data(), &ad).require_grad();
    let wa = Tensor::<4>::from_data(w.to_data(), &ad);
    let grads = conv2d(xa.clone(), wa, None, same).sum().backward();
    let dx = xa.grad(&grads).unwrap();
    vec![values(norm), values(winograd), values(dx), values(strided)]
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// Compares each part of `ours` with `reference`: bit for bit, or to `1e-4` of the
/// reference's largest magnitude when `exact` is false.
fn compare(what: &[&str], ours: &[Vec<f32>], reference: &[Vec<f32>], exact: bool, at: &str) {
    for ((what, a), b) in what.iter().zip(ours).zip(reference) {
        assert_eq!(a.len(), b.len(), "{what} {at}: sizes");
        if exact {
            let diff = a
                .iter()
                .zip(b)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(diff, 0, "{what} {at}: {diff} values differ");
        } else {
            let scale = max_or_nan(b.iter().map(|v| v.abs())).max(f32::MIN_POSITIVE);
            let worst = max_or_nan(a.iter().zip(b).map(|(a, b)| (a - b).abs()));
            assert!(
                worst <= 1e-4 * scale,
                "{what} {at}: off by {worst} (scale {scale})"
            );
        }
    }
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
        let (model_ref, kernel_ref) = (models(&device, &x), kernels(&device));
        for level in levels.into_iter().filter(|&l| l < best) {
            set_max_simd(level);
            assert_eq!(simd_level(), level);
            let at = format!("on {name} at {level:?} against {best:?}");
            compare(
                &["IBN-a output", "IBN-b output", "input gradient"],
                &models(&device, &x),
                &model_ref,
                level >= SimdLevel::Avx2,
                &at,
            );
            compare(
                &[
                    "norm kernel",
                    "Winograd conv",
                    "Winograd input gradient",
                    "im2col conv",
                ],
                &kernels(&device),
                &kernel_ref,
                true,
                &at,
            );
        }
        set_max_simd(SimdLevel::Avx512);
    }
}
