//! 2-d convolution: on the CPU backends this crate's im2col + matrix-product kernels (forward
//! and backward), Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions (output and input
//! gradient) and a direct kernel for grouped and other small convolutions (output, and
//! input gradient at stride 1); on GPU (CubeCL) devices an unfolding kernel and one batched
//! matrix product, forward and backward (see [`GpuConv`]).

use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

#[cfg(any(feature = "flex", feature = "ndarray", feature = "wgpu"))]
use burn::backend::{Backend, Dispatch, backend_extension, tensor::FloatTensor};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use burn::tensor::module::conv2d as burn_conv2d;
use burn::tensor::ops::ConvOptions;

use super::Epilogue;

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
/// stride 1 when Winograd does not take it. On GPU (CubeCL) devices the input is unfolded by
/// a kernel of this crate and the convolution computed as one batched matrix product, its
/// backward pass as two products and a fold (see [`GpuConv`]). Other devices use burn's
/// `conv2d`. Differentiable with respect to `x`, `weight` and `bias`.
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
    check(&x, &weight, bias.as_ref(), &options);
    #[cfg(any(feature = "flex", feature = "ndarray"))]
    if cpu::on_cpu_backend(&x.device()) {
        return conv2d_kernels(x, weight, bias, options);
    }
    #[cfg(feature = "wgpu")]
    if gpu_conv().unfolds(options.groups) && on_cube_device(&x.device()) {
        return conv2d_kernels(x, weight, bias, options);
    }
    burn_conv2d(x, weight, bias, options)
}

/// [`conv2d`] followed by `epilogue`: `relu(conv2d(x, weight, bias) + residual)`, each part as
/// the epilogue asks. The models call it where a convolution ends a residual block or is
/// followed by ReLU (with the batch norm in between applied by the same kernels in
/// evaluation, or folded into the weights by
/// [`ResNetIbn::fold_batch_norms`](crate::model::ResNetIbn::fold_batch_norms)).
///
/// On flex and ndarray devices without autodiff the convolution kernels add the bias and the
/// residual and apply ReLU as they write each block of output values, while those are still
/// in cache: no further passes over the output and no intermediate tensor. Elsewhere (GPU
/// devices, autodiff) it is `epilogue.apply(conv2d(x, weight, bias, options))`.
///
/// # Shapes
/// As [`conv2d`]; the epilogue's residual: `[N, C_out, OH, OW]`, the output's.
///
/// # Panics
/// As [`conv2d`], and when the residual's shape differs from the output's.
pub fn conv2d_with(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
    epilogue: Epilogue,
) -> Tensor<4> {
    if epilogue.is_identity() {
        return conv2d(x, weight, bias, options);
    }
    check(&x, &weight, bias.as_ref(), &options);
    check_residual(&x, &weight, &options, &epilogue);
    #[cfg(any(feature = "flex", feature = "ndarray"))]
    if finishes_in_kernels(&x) {
        return cpu::conv2d_finish(x, weight, (None, bias), options, epilogue);
    }
    epilogue.apply(conv2d(x, weight, bias, options))
}

/// Panics with a message naming both shapes when the epilogue's residual does not have the
/// shape of the convolution's output.
fn check_residual(x: &Tensor<4>, weight: &Tensor<4>, options: &ConvOptions<2>, e: &Epilogue) {
    if let Some(residual) = &e.residual {
        let [n, _, h, w] = x.dims();
        let [c_out, _, kh, kw] = weight.dims();
        let size = |s, k, axis| output_size(s, k, options, axis).expect("checked");
        let out = [n, c_out, size(h, kh, 0), size(w, kw, 1)];
        assert!(
            residual.dims() == out,
            "conv2d_with: the residual's shape {:?} differs from the output's {out:?}",
            residual.dims()
        );
    }
}

/// Whether the convolution kernels apply epilogues (and affine maps) to `x`'s output
/// themselves: on flex and ndarray, without autodiff.
fn finishes_in_kernels(x: &Tensor<4>) -> bool {
    #[cfg(any(feature = "flex", feature = "ndarray"))]
    return cpu::on_cpu_backend(&x.device()) && !x.device().is_autodiff();
    #[cfg(not(any(feature = "flex", feature = "ndarray")))]
    {
        let _ = x;
        false
    }
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

/// How [`conv2d`] computes on GPU (CubeCL) devices, in inference and under autodiff;
/// chosen with [`set_gpu_conv`].
///
/// burn 0.22 offers WGSL shaders (no cooperative-matrix instructions) only a direct
/// convolution for kernels larger than 1x1; in a kernel profile of resnet50_ibn_a at batch 32
/// on an NVIDIA H200 those took 80 % of the GPU time, while burn's autotuning measured its
/// matrix-product kernels 7-40x faster than the direct convolution on the model's 1x1
/// convolutions. [`GpuConv::Unfold`] therefore computes every ungrouped convolution as a
/// matrix product: a kernel of this crate writes the unfolded input `[N, C_in * kh * kw,
/// OH * OW]` (per input channel and kernel tap, the window of the zero-padded input it
/// reads; skipped for stride-1 unpadded 1x1 kernels, whose input is that matrix already),
/// and one batched matrix product with the weights `[groups, C_out / groups, C_in /
/// groups * kh * kw]` (kernels autotuned by burn) writes the output, already in NCHW order,
/// so the normalisation kernels that follow need no layout copies. The unfolded input costs
/// `kh * kw` times the input's memory; it is built for a run of samples at a time, each
/// run's at most 512 MiB.
///
/// Under autodiff the backward pass is computed the same way: the weight gradient as one
/// product per group of the output gradient with the unfolded input (recomputed, samples
/// laid side by side so that the product sums over them), the input gradient as the product
/// of the transposed weights with the output gradient, folded back onto the input by a
/// second kernel (one unit per input value gathers the values that read it: no atomics).
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

/// Chooses how [`conv2d`] computes on GPU (CubeCL) devices, with or without autodiff (see
/// [`GpuConv`]; default [`GpuConv::Unfold`]). Process-wide; no effect on CPU devices.
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

/// Whether `device` (or the device an autodiff device wraps) is a CubeCL device.
#[cfg(feature = "wgpu")]
fn on_cube_device(device: &burn::tensor::Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        burn::backend::DispatchDevice::Cube(_)
    )
}

/// Shape checks with messages that name what disagrees (every device).
fn check(x: &Tensor<4>, weight: &Tensor<4>, bias: Option<&Tensor<1>>, o: &ConvOptions<2>) {
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
    for (axis, (size, k)) in [(h, kh), (w, kw)].into_iter().enumerate() {
        if let Err((reach, padded)) = output_size(size, k, o, axis) {
            panic!("conv2d: a kernel spanning {reach} does not fit the padded input size {padded}")
        }
    }
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
    conv2d_module_with(conv, x, Epilogue::default())
}

/// The options of a burn `Conv2d` module; `None` for input-dependent padding (`Same`), which
/// burn's own forward works out.
fn module_options(conv: &Conv2d) -> Option<ConvOptions<2>> {
    let padding = match conv.padding {
        PaddingConfig2d::Valid => [(0, 0); 2],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
        PaddingConfig2d::Same => return None,
    };
    let options = ConvOptions::new_with_padding(conv.stride, padding, conv.dilation, conv.groups);
    Some(options)
}

/// [`conv2d_with`] with the weights, bias and options of a burn `Conv2d` module.
pub(crate) fn conv2d_module_with(conv: &Conv2d, x: Tensor<4>, epilogue: Epilogue) -> Tensor<4> {
    let Some(options) = module_options(conv) else {
        return epilogue.apply(conv.forward(x));
    };
    let bias = conv.bias.as_ref().map(|b| b.val());
    conv2d_with(x, conv.weight.val(), bias, options, epilogue)
}

/// `conv(x) * scale + shift` per output channel followed by `epilogue`, in the convolution
/// kernels (a batch norm in evaluation applied as the convolution writes, without folding it
/// into the weights), with `(scale, shift)` `[C_out]` from `affine` on `x`'s device. Where the
/// kernels do not do that (see [`finishes_in_kernels`]; also input-dependent padding),
/// `otherwise(x, epilogue)` instead, without calling `affine`.
pub(crate) fn conv2d_module_affine(
    conv: &Conv2d,
    x: Tensor<4>,
    affine: impl FnOnce(&burn::tensor::Device) -> (Tensor<1>, Tensor<1>),
    epilogue: Epilogue,
    otherwise: impl FnOnce(Tensor<4>, Epilogue) -> Tensor<4>,
) -> Tensor<4> {
    let options = match module_options(conv) {
        Some(options) if finishes_in_kernels(&x) => options,
        _ => return otherwise(x, epilogue),
    };
    let weight = conv.weight.val();
    check(&x, &weight, None, &options);
    check_residual(&x, &weight, &options, &epilogue);
    let (scale, shift) = affine(&x.device());
    // (y + b) * scale + shift = y * scale + (b * scale + shift).
    let shift = match &conv.bias {
        Some(b) => b.val() * scale.clone() + shift,
        None => shift,
    };
    #[cfg(any(feature = "flex", feature = "ndarray"))]
    return cpu::conv2d_finish(x, weight, (Some(scale), Some(shift)), options, epilogue);
    #[cfg(not(any(feature = "flex", feature = "ndarray")))]
    {
        let _ = (x, weight, scale, shift, epilogue);
        unreachable!("finishes_in_kernels is false without the CPU backends")
    }
}

#[cfg(any(feature = "flex", feature = "ndarray"))]
pub use cpu::ConvFinishKernels;
#[cfg(any(feature = "flex", feature = "ndarray"))]
pub(crate) use cpu::on_cpu_backend;

/// The backend operations behind [`conv2d`] on the CPU backends and, with the `wgpu`
/// feature, on CubeCL devices.
///
/// Implemented for flex and ndarray (plain Rust over `gemm`), the CubeCL backend (unfolding
/// kernels and burn's matrix products), burn's fusion wrapper (deferred execution) and
/// autodiff (hand-written backward pass). Not meant to be called directly.
#[cfg(any(feature = "flex", feature = "ndarray", feature = "wgpu"))]
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(feature = "wgpu"),
    Fusion: cfg(feature = "wgpu"),
    Autodiff: cfg(feature = "autodiff")
)]
pub trait ConvKernels: Backend {
    /// Forward convolution: `x` `[N, C_in, H, W]`, `weight` `[C_out, C_in / groups, kh,
    /// kw]`, `bias` `[C_out]` (added when `with_bias`); `[N, C_out, OH, OW]`.
    #[fusion(meta = forward_meta)]
    fn conv2d_unfold(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        with_bias: bool,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// Gradients of the input and the weight given the output gradient `grad`:
    /// `(dx [N, C_in, H, W], dweight [C_out, C_in / groups, kh, kw])`.
    #[fusion(meta = backward_meta)]
    fn conv2d_unfold_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

#[cfg(feature = "wgpu")]
type Spec = burn::backend::fusion::custom::TensorSpec;

/// Output metadata of [`ConvKernels::conv2d_unfold`] under kernel fusion.
#[cfg(feature = "wgpu")]
fn forward_meta(
    x: &Spec,
    weight: &Spec,
    _bias: &Spec,
    _with_bias: &bool,
    options: &ConvOptions<2>,
) -> Spec {
    let shape = super::cube_conv::output_shape(&x.shape, &weight.shape, options);
    Spec::new(shape, x.dtype)
}

/// Output metadata of [`ConvKernels::conv2d_unfold_backward`] under kernel fusion.
#[cfg(feature = "wgpu")]
fn backward_meta(x: &Spec, weight: &Spec, _grad: &Spec, _options: &ConvOptions<2>) -> (Spec, Spec) {
    (x.clone(), weight.clone())
}

/// [`conv2d`] through [`ConvKernels`] (shapes checked by the caller).
#[cfg(any(feature = "flex", feature = "ndarray", feature = "wgpu"))]
fn conv2d_kernels(
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

#[cfg(any(feature = "flex", feature = "ndarray"))]
mod cpu {
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Backend, Dispatch, DispatchDevice, backend_extension};
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Device, Tensor};

    use super::super::Epilogue;

    /// The backend operation behind [`conv2d_with`](super::conv2d_with) on the CPU backends
    /// in inference. Not meant to be called directly.
    #[backend_extension(
        Flex: cfg(feature = "flex"),
        NdArray: cfg(feature = "ndarray")
    )]
    pub trait ConvFinishKernels: Backend {
        /// [`ConvKernels::conv2d_unfold`](super::ConvKernels::conv2d_unfold) that also
        /// multiplies by `scale` (`[C_out]`, when `with_scale`) before the bias, adds
        /// `residual` (`[N, C_out, OH, OW]`, when `with_residual`) and then applies ReLU
        /// (when `relu`) as it writes the output.
        #[allow(clippy::too_many_arguments)]
        fn conv2d_finish(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            scale: FloatTensor<Self>,
            with_scale: bool,
            bias: FloatTensor<Self>,
            with_bias: bool,
            residual: FloatTensor<Self>,
            with_residual: bool,
            relu: bool,
            options: ConvOptions<2>,
        ) -> FloatTensor<Self>;
    }

    /// [`conv2d_with`](super::conv2d_with) through [`ConvFinishKernels`], the output first
    /// multiplied by `scale` `[C_out]` when given (shapes checked by the caller).
    pub(super) fn conv2d_finish(
        x: Tensor<4>,
        weight: Tensor<4>,
        (scale, bias): (Option<Tensor<1>>, Option<Tensor<1>>),
        options: ConvOptions<2>,
        epilogue: Epilogue,
    ) -> Tensor<4> {
        let device = x.device();
        let (with_scale, with_bias) = (scale.is_some(), bias.is_some());
        let with_residual = epilogue.residual.is_some();
        // Unread stand-ins for what is not there.
        let stand_in = || Tensor::<1>::zeros([1], &device);
        let (scale, bias) = (
            scale.unwrap_or_else(stand_in),
            bias.unwrap_or_else(stand_in),
        );
        let residual = epilogue
            .residual
            .unwrap_or_else(|| Tensor::zeros([1, 1, 1, 1], &device));
        Tensor::from_dispatch(<Dispatch as ConvFinishKernels>::conv2d_finish(
            x.into_dispatch(),
            weight.into_dispatch(),
            scale.into_dispatch(),
            with_scale,
            bias.into_dispatch(),
            with_bias,
            residual.into_dispatch(),
            with_residual,
            epilogue.relu,
            options,
        ))
    }

    /// Whether `device` (or the device an autodiff device wraps) is a CPU backend with these
    /// kernels.
    pub(crate) fn on_cpu_backend(device: &Device) -> bool {
        #[allow(unreachable_patterns)]
        match device.clone().inner().as_dispatch() {
            #[cfg(feature = "flex")]
            DispatchDevice::Flex(_) => true,
            #[cfg(feature = "ndarray")]
            DispatchDevice::NdArray(_) => true,
            _ => false,
        }
    }
}
