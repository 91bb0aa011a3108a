//! 2-d convolution: burn's on GPU backends; on the CPU backends this crate's im2col +
//! matrix-product kernels (forward and backward) and Winograd F(2x2, 3x3) for 3x3 stride-1
//! convolutions (output and input gradient).

use core::sync::atomic::{AtomicBool, Ordering};

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use burn::tensor::module::conv2d as burn_conv2d;
use burn::tensor::ops::ConvOptions;

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
/// [`set_winograd`]). Other devices use burn's `conv2d`. Differentiable with respect to `x`,
/// `weight` and `bias`.
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
        return cpu::conv2d(x, weight, bias, options);
    }
    burn_conv2d(x, weight, bias, options)
}

static WINOGRAD: AtomicBool = AtomicBool::new(true);

/// Turns the Winograd path of [`conv2d`] (3x3 stride-1 convolutions on flex and ndarray:
/// output and input gradient) on (the default) or off; off, every CPU convolution is im2col
/// and one matrix product per sample, as in PyTorch's CPU convolutions. Process-wide; no
/// effect on other devices.
pub fn set_winograd(enabled: bool) {
    WINOGRAD.store(enabled, Ordering::Relaxed);
}

/// Whether the Winograd path of [`conv2d`] is on (see [`set_winograd`]).
pub fn winograd_enabled() -> bool {
    WINOGRAD.load(Ordering::Relaxed)
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
        let (begin, end) = o.padding[axis];
        let reach = o.dilation[axis] * (k.max(1) - 1) + 1;
        assert!(
            size + begin + end >= reach,
            "conv2d: a kernel spanning {reach} does not fit the padded input size {}",
            size + begin + end
        );
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
