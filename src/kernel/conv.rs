//! 2-d convolution: on the CPU backends this crate's im2col + matrix-product kernels (forward
//! and backward), Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions (output and input
//! gradient) and a direct kernel for grouped and other small convolutions (output, and
//! input gradient at stride 1); for inference on GPU (CubeCL) devices an unfolding gather
//! and one batched matrix product (see [`GpuConv`]).

use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::module::conv2d as burn_conv2d;
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{Int, Tensor, TensorData};

/// 2-d convolution with the contract of burn's `burn::tensor::module::conv2d`.
///
/// On flex and ndarray devices (with or without autodiff) it runs this crate's kernels:
/// per sample, the input is unfolded (im2col; skipped for stride-1 unpadded 1x1 kernels) and
/// multiplied by the weights read in place as `[C_out, C_in / groups * kh * kw]`, writing
/// straight into the output; the backward pass is the two matching products and a fold back
/// (col2im). Ungrouped, undilated 3x3 convolutions at stride 1 take the Winograd F(2x2, 3x3)
/// algorithm instead for the output and the input gradient (the convolution of the output
/// gradient with the flipped kernel), which needs 2.25x fewer multiplications (the transforms
/// hold only 0, ±1 and ±1/2; the result stays within float32 rounding of the direct sum; see
/// [`set_winograd`]). The output of the other convolutions with a kernel larger than 1x1, and
/// of grouped ones, with at most 1152 input values per group (`C_in / groups * kh * kw`:
/// ResNeXt's grouped 3x3, the 7x7 stems, the first strided 3x3 of a ResNet), is computed
/// directly, a tile of output channels by output positions at a time in vector registers, on
/// CPUs with AVX2 and FMA or AVX-512 (im2col elsewhere), and so is their input gradient at
/// stride 1 when Winograd does not take it. On GPU (CubeCL) devices without autodiff the
/// input is unfolded by one gather and the convolution computed as one batched matrix
/// product (see [`GpuConv`]). Other devices use burn's `conv2d`. Differentiable with respect to `x`, `weight` and `bias`.
///
/// # Shapes
/// - `x`: `[N, C_in, H, W]`
/// - `weight`: `[C_out, C_in / groups, kh, kw]`
/// - `bias`: `[C_out]`
/// - output: `[N, C_out, OH, OW]`, `OH = (H + pad_top + pad_bottom - dilation * (kh - 1) - 1)
///   / stride + 1` (same for `OW`)
///
/// # Panics
/// On every device, with a message that names the sizes: when the channels of `x` and
/// `weight` or the groups disagree, `bias` does not have `C_out` values, or the kernel does
/// not fit the padded input.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    #[cfg_attr(not(feature = "wgpu"), allow(unused_variables))]
    let out = check(&x, &weight, bias.as_ref(), &options);
    #[cfg(any(feature = "flex", feature = "ndarray"))]
    if cpu::on_cpu_backend(&x.device()) {
        return cpu::conv2d(x, weight, bias, options);
    }
    #[cfg(feature = "wgpu")]
    if gpu_conv().unfolds(options.groups) && on_cube_device_without_autodiff(&x.device()) {
        return unfold_conv2d(x, weight, bias, &options, out);
    }
    burn_conv2d(x, weight, bias, options)
}

static WINOGRAD: AtomicBool = AtomicBool::new(true);

/// Turns the Winograd path of [`conv2d`] (3x3 stride-1 convolutions on flex and ndarray:
/// output and input gradient) on (the default) or off; off, those convolutions are computed
/// as the others are (im2col and one matrix product per sample, or the direct kernel when
/// their input channels are few). Process-wide; no effect on other devices.
pub fn set_winograd(enabled: bool) {
    WINOGRAD.store(enabled, Ordering::Relaxed);
}

/// Whether the Winograd path of [`conv2d`] is on (see [`set_winograd`]).
pub fn winograd_enabled() -> bool {
    WINOGRAD.load(Ordering::Relaxed)
}

/// How [`conv2d`] computes on GPU (CubeCL) devices without autodiff (inference); chosen
/// with [`set_gpu_conv`].
///
/// burn 0.22 offers WGSL shaders (no cooperative-matrix instructions) only a direct
/// convolution for kernels larger than 1x1; in a kernel profile of resnet50_ibn_a at batch 32
/// on an NVIDIA H200 those took 80 % of the GPU time, while burn's autotuning measured its
/// matrix-product kernels 7-40x faster than the direct convolution on the model's 1x1
/// convolutions. [`GpuConv::Unfold`] therefore computes every ungrouped convolution as a
/// matrix product: one gather (`select`) of the zero-padded input planes writes the unfolded
/// input `[N, C_in * kh * kw, OH * OW]` (skipped for stride-1 unpadded 1x1 kernels, whose
/// input is that matrix already), and one batched matrix product with the weights `[groups,
/// C_out / groups, C_in / groups * kh * kw]` (kernels autotuned by burn) writes the output,
/// already in NCHW order, so the normalisation kernels that follow need no layout copies. The
/// unfolded input costs `kh * kw` times the input's memory; it is built for a run of samples
/// at a time, each run's at most 512 MiB.
///
/// Under autodiff (training) burn's `conv2d` runs whatever the setting: the gather's
/// gradient in burn is a scatter-add loop per (sample, channel), a poor fit for a GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuConv {
    /// Unfold + batched matrix product for ungrouped convolutions, burn's `conv2d` for grouped
    /// ones, whose per-group products are too small to use a GPU well (the default).
    #[default]
    Unfold,
    /// Unfold + batched matrix product for every convolution, grouped ones included.
    UnfoldGrouped,
    /// burn's `conv2d` (autotuned among its algorithms) for every convolution.
    Burn,
}

impl GpuConv {
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    fn unfolds(self, groups: usize) -> bool {
        match self {
            Self::Unfold => groups == 1,
            Self::UnfoldGrouped => true,
            Self::Burn => false,
        }
    }
}

static GPU_CONV: AtomicU8 = AtomicU8::new(0);

/// Chooses how [`conv2d`] computes on GPU (CubeCL) devices without autodiff (see
/// [`GpuConv`]; default [`GpuConv::Unfold`]). Process-wide; no effect on CPU or autodiff
/// devices.
pub fn set_gpu_conv(algorithm: GpuConv) {
    GPU_CONV.store(algorithm as u8, Ordering::Relaxed);
}

/// The algorithm [`conv2d`] uses on GPU devices (see [`set_gpu_conv`]).
pub fn gpu_conv() -> GpuConv {
    match GPU_CONV.load(Ordering::Relaxed) {
        0 => GpuConv::Unfold,
        1 => GpuConv::UnfoldGrouped,
        _ => GpuConv::Burn,
    }
}

/// Whether `device` is a CubeCL device (not an autodiff device).
#[cfg(feature = "wgpu")]
fn on_cube_device_without_autodiff(device: &burn::tensor::Device) -> bool {
    matches!(device.as_dispatch(), burn::backend::DispatchDevice::Cube(_))
}

/// Largest unfolded tensor [`unfold_conv2d`] builds at once, in values (512 MiB of float32).
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
const UNFOLD_VALUES: usize = 128 << 20;

/// [`conv2d`] as an unfolding plus one batched matrix product, from tensor operations (any
/// device, differentiable; the GPU inference path of [`conv2d`], see [`GpuConv`]). Shapes as
/// in [`conv2d`], which has checked them and found the output size `out` (`[OH, OW]`).
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
fn unfold_conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    o: &ConvOptions<2>,
    out: [usize; 2],
) -> Tensor<4> {
    unfold_conv2d_in_runs(x, weight, bias, o, out, UNFOLD_VALUES)
}

/// [`unfold_conv2d`] with runs of samples whose unfolded tensor holds at most `limit` values
/// (at least one sample per run).
fn unfold_conv2d_in_runs(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    o: &ConvOptions<2>,
    [oh, ow]: [usize; 2],
    limit: usize,
) -> Tensor<4> {
    let [n, c_in, ..] = x.dims();
    let [c_out, c_group, kh, kw] = weight.dims();
    let groups = o.groups;
    let depth = c_group * kh * kw;
    let weight = weight.reshape([1, groups, c_out / groups, depth]);
    // Samples per run: all of them when the input is the unfolded matrix already.
    let per_sample = (c_in * kh * kw * oh * ow).max(1);
    let run = if is_unfolded([kh, kw], o) {
        n
    } else {
        (limit / per_sample).clamp(1, n.max(1))
    };
    let product = |x: Tensor<4>| {
        let batch = x.dims()[0];
        let columns = unfold(x, [kh, kw], [oh, ow], o).reshape([batch, groups, depth, oh * ow]);
        weight
            .clone()
            .matmul(columns)
            .reshape([batch, c_out, oh, ow])
    };
    let y = if run >= n {
        product(x)
    } else {
        let runs = (0..n)
            .step_by(run)
            .map(|start| product(x.clone().narrow(0, start, run.min(n - start))))
            .collect();
        Tensor::cat(runs, 0)
    };
    match bias {
        Some(bias) => y + bias.reshape([1, c_out, 1, 1]),
        None => y,
    }
}

/// Whether the input `[N, C_in, H, W]` read as `[N, C_in, H * W]` is its unfolded matrix
/// (a stride-1 unpadded 1x1 kernel).
fn is_unfolded(kernel: [usize; 2], o: &ConvOptions<2>) -> bool {
    kernel == [1, 1] && o.stride == [1, 1] && o.padding == [(0, 0); 2]
}

/// The unfolded input `[N, C_in, kh * kw * OH * OW]` (per channel, the kernel taps in
/// row-major order, each with its `OH x OW` window of the zero-padded input, strided and
/// dilated): one gather (`select`) along the flattened padded planes, whose positions are
/// the same for every sample and channel.
fn unfold(x: Tensor<4>, kernel: [usize; 2], out: [usize; 2], o: &ConvOptions<2>) -> Tensor<3> {
    let [n, c, h, w] = x.dims();
    if is_unfolded(kernel, o) {
        return x.reshape([n, c, h * w]);
    }
    let [(top, bottom), (left, right)] = o.padding;
    let padded_width = w + left + right;
    let x = if o.padding == [(0, 0); 2] {
        x
    } else {
        x.pad(o.padding, PadMode::Constant(0.0))
    };
    let planes = x.reshape([n, c, (h + top + bottom) * padded_width]);
    let rows = |tap: usize, axis: usize| {
        (0..out[axis]).map(move |p| p * o.stride[axis] + tap * o.dilation[axis])
    };
    let positions: Vec<i64> = (0..kernel[0])
        .flat_map(|i| (0..kernel[1]).map(move |j| (i, j)))
        .flat_map(|(i, j)| {
            rows(i, 0).flat_map(move |y| rows(j, 1).map(move |x| (y * padded_width + x) as i64))
        })
        .collect();
    let len = positions.len();
    let indices = Tensor::<1, Int>::from_data(TensorData::new(positions, [len]), &planes.device());
    planes.select(2, indices)
}

/// Shape checks with messages that name what disagrees (every device); the output size
/// `[OH, OW]`.
fn check(
    x: &Tensor<4>,
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
    o: &ConvOptions<2>,
) -> [usize; 2] {
    let [_, c_in, h, w] = x.dims();
    let [c_out, c_group, kh, kw] = weight.dims();
    assert!(
        o.groups > 0 && c_in % o.groups == 0 && c_out % o.groups == 0,
        "conv2d: {c_in} input and {c_out} output channels are not divisible by {} groups",
        o.groups
    );
    assert_eq!(
        c_group * o.groups,
        c_in,
        "conv2d: the weight expects {} input channels, the input has {c_in}",
        c_group * o.groups
    );
    if let Some(bias) = bias {
        assert_eq!(
            bias.dims()[0],
            c_out,
            "conv2d: the bias has {} values for {c_out} output channels",
            bias.dims()[0]
        );
    }
    let (size, k) = ([h, w], [kh, kw]);
    [0, 1].map(|axis| {
        output_size(size[axis], k[axis], o, axis).unwrap_or_else(|(reach, padded)| {
            panic!("conv2d: a kernel spanning {reach} does not fit the padded input size {padded}")
        })
    })
}

/// Output size along `axis` (0: height, 1: width) of a convolution of an input `size` long
/// by a kernel `k` long with options `o`; `Err((kernel reach, padded input size))` when the
/// kernel does not fit the padded input.
pub(super) fn output_size(
    size: usize,
    k: usize,
    o: &ConvOptions<2>,
    axis: usize,
) -> Result<usize, (usize, usize)> {
    let (begin, end) = o.padding[axis];
    let padded = size + begin + end;
    let reach = o.dilation[axis] * (k.max(1) - 1) + 1;
    match padded.checked_sub(reach) {
        Some(room) => Ok(room / o.stride[axis] + 1),
        None => Err((reach, padded)),
    }
}

/// [`conv2d`] with the weights, bias and options of a burn `Conv2d` module (what
/// `Conv2d::forward` computes).
pub(crate) fn conv2d_module(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let padding = match conv.padding {
        PaddingConfig2d::Valid => [(0, 0); 2],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
        // Input-dependent padding: burn's own forward works it out.
        PaddingConfig2d::Same => return conv.forward(x),
    };
    let options = ConvOptions::new_with_padding(conv.stride, padding, conv.dilation, conv.groups);
    conv2d(
        x,
        conv.weight.val(),
        conv.bias.as_ref().map(|b| b.val()),
        options,
    )
}

#[cfg(any(feature = "flex", feature = "ndarray"))]
pub use cpu::ConvKernels;
#[cfg(any(feature = "flex", feature = "ndarray"))]
pub(super) use cpu::on_cpu_backend;

#[cfg(any(feature = "flex", feature = "ndarray"))]
mod cpu {
    // The ndarray backend is deprecated upstream and still supported here.
    #![allow(deprecated)]

    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Backend, Dispatch, DispatchDevice, backend_extension};
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Device, Tensor};

    /// The backend operations behind [`conv2d`](super::conv2d) on CPU backends.
    ///
    /// Implemented for flex and ndarray (plain Rust over `gemm`) and autodiff (hand-written
    /// backward pass). Not meant to be called directly.
    #[backend_extension(
        Flex: cfg(feature = "flex"),
        NdArray: cfg(feature = "ndarray"),
        Autodiff: cfg(feature = "autodiff")
    )]
    pub trait ConvKernels: Backend {
        /// Forward convolution: `x` `[N, C_in, H, W]`, `weight` `[C_out, C_in / groups, kh,
        /// kw]`, `bias` `[C_out]` (added when `with_bias`); `[N, C_out, OH, OW]`.
        fn conv2d_unfold(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: FloatTensor<Self>,
            with_bias: bool,
            options: ConvOptions<2>,
        ) -> FloatTensor<Self>;

        /// Gradients of the input and the weight given the output gradient `grad`:
        /// `(dx [N, C_in, H, W], dweight [C_out, C_in / groups, kh, kw])`.
        fn conv2d_unfold_backward(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            options: ConvOptions<2>,
        ) -> (FloatTensor<Self>, FloatTensor<Self>);
    }

    /// Whether `device` (or the device an autodiff device wraps) is a CPU backend with these
    /// kernels.
    pub(in crate::kernel) fn on_cpu_backend(device: &Device) -> bool {
        #[allow(unreachable_patterns)]
        match device.clone().inner().as_dispatch() {
            #[cfg(feature = "flex")]
            DispatchDevice::Flex(_) => true,
            #[cfg(feature = "ndarray")]
            DispatchDevice::NdArray(_) => true,
            _ => false,
        }
    }

    pub(super) fn conv2d(
        x: Tensor<4>,
        weight: Tensor<4>,
        bias: Option<Tensor<1>>,
        options: ConvOptions<2>,
    ) -> Tensor<4> {
        let with_bias = bias.is_some();
        // Without a bias the kernel gets an unread stand-in.
        let bias = bias.unwrap_or_else(|| Tensor::zeros([weight.dims()[0]], &weight.device()));
        Tensor::from_dispatch(<Dispatch as ConvKernels>::conv2d_unfold(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            with_bias,
            options,
        ))
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor, Tolerance};

    use super::*;

    /// The unfolded convolution against burn's, output and gradients, on the first CPU device
    /// compiled in (the GPU path is tested in `tests/conv.rs`): strides, asymmetric padding,
    /// dilation, groups, bias, and runs of one and two samples.
    #[test]
    fn unfold_conv2d_matches_burn_conv2d_in_runs() {
        let name = crate::device::available_devices()[0];
        let device = crate::device::device_from_name(name).unwrap().autodiff();
        device.seed(3);
        // (x, weight, stride, padding, dilation, groups, bias)
        #[rustfmt::skip]
        let cases = [
            ([3, 8, 7, 6], [12, 8, 1, 1], [1, 1], [(0, 0); 2], [1, 1], 1, false),
            ([3, 6, 9, 9], [10, 6, 1, 1], [2, 2], [(0, 0); 2], [1, 1], 1, false),
            ([3, 8, 7, 7], [12, 2, 3, 3], [1, 1], [(1, 1); 2], [1, 1], 4, true),
            ([2, 6, 10, 10], [4, 3, 3, 2], [2, 1], [(0, 2), (3, 1)], [2, 1], 2, true),
            ([2, 3, 15, 15], [8, 3, 7, 7], [2, 2], [(3, 3); 2], [1, 1], 1, false),
        ];
        for (xs, ws, stride, padding, dilation, groups, with_bias) in cases {
            let o = ConvOptions::new_with_padding(stride, padding, dilation, groups);
            let x = Tensor::<4>::random(xs, Distribution::Default, &device).require_grad();
            let w = Tensor::<4>::random(ws, Distribution::Default, &device).require_grad();
            let b = with_bias
                .then(|| Tensor::<1>::random([ws[0]], Distribution::Default, &device))
                .map(Tensor::require_grad);
            let out = check(&x, &w, b.as_ref(), &o);
            let expected = burn_conv2d(x.clone(), w.clone(), b.clone(), o.clone());
            let dy = Tensor::<4>::random(expected.dims(), Distribution::Default, &device);
            let grads = (expected.clone() * dy.clone()).sum().backward();
            let reference = [x.grad(&grads), w.grad(&grads)].map(|g| g.expect("a gradient"));
            let per_sample = xs[1] * ws[2] * ws[3] * expected.dims()[2] * expected.dims()[3];
            for limit in [per_sample, 2 * per_sample, usize::MAX] {
                let what = format!("x {xs:?} w {ws:?} runs of {}", limit / per_sample);
                let y = unfold_conv2d_in_runs(x.clone(), w.clone(), b.clone(), &o, out, limit);
                let tol = Tolerance::absolute(1e-4);
                y.to_data()
                    .assert_approx_eq::<f32>(&expected.to_data(), tol);
                let grads = (y * dy.clone()).sum().backward();
                for (t, r) in [x.grad(&grads), w.grad(&grads)].iter().zip(&reference) {
                    let t = t.as_ref().unwrap_or_else(|| panic!("{what}: a gradient"));
                    t.to_data().assert_approx_eq::<f32>(&r.to_data(), tol);
                }
                if let Some(b) = &b {
                    let db = b.grad(&grads).expect("a bias gradient");
                    let expected_db = dy.clone().sum_dim(0).sum_dim(2).sum_dim(3).reshape([-1]);
                    db.to_data()
                        .assert_approx_eq::<f32>(&expected_db.to_data(), tol);
                }
            }
        }
    }
}
