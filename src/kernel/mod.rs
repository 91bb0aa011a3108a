//! Fused normalisation kernels: the whole IBN layer, instance norm and the batch-norm
//! transform as one pass over the activations, with hand-written backward passes; and the
//! convolution every model uses, [`conv2d`] (this crate's im2col + matrix-product kernels on
//! flex and ndarray, Winograd F(2x2, 3x3) for their 3x3 stride-1 convolutions and a direct
//! kernel for grouped and other small ones; on GPU devices an unfolding kernel and one batched
//! matrix product, forward and backward, [`GpuConv`]; burn's convolution elsewhere). On flex
//! and ndarray the models' max pooling runs through a kernel of this crate too (with its own
//! backward pass in training), and the crate's CPU loops are compiled for AVX-512 and AVX2 as
//! well as the baseline, chosen at run time (`simd_level`, `set_max_simd`).
//!
//! Three primitives cover every normalisation of the crate:
//!
//! - [`plane_norm`] normalises the channels of one contiguous range with their own
//!   per-(sample, channel) statistics and applies a per-channel affine map to all channels,
//!   writing one output tensor: the IBN layer (IN section = the range, BN section = the
//!   folded running statistics), instance norm (the range is every channel) and the
//!   batch-norm transform (an empty range) in a single kernel, with no split or concatenation.
//! - [`plane_norm_train`] is the same pass in training: every channel outside the range is
//!   normalised with its batch statistics, computed inside the operation and returned for the
//!   running statistics; its backward pass is one operation too (batch norm and the IBN layer
//!   in training).
//! - [`plane_moments`] returns the per-(sample, channel) mean and biased variance of a range
//!   of channels, read in place (running statistics of instance norms, and the general case
//!   of batch-norm training).
//!
//! [`plane_norm_with`] and [`plane_norm_train`] also apply an [`Epilogue`] before writing:
//! the shortcut addition at the end of a residual block and the ReLU that follows most norms,
//! so that the models run no separate element-wise passes for them. In evaluation on flex and
//! ndarray a batch norm right after a convolution (or folded into it) needs no pass either:
//! the convolution kernels apply its per-channel transform and the epilogue as they write
//! each block of output ([`conv2d_with`]).
//!
//! All are backend extensions (burn's `#[backend_extension]`): plain-Rust multi-threaded
//! loops on flex and ndarray, CubeCL kernels with a shared-memory tree reduction on the
//! CubeCL backend (wgpu; no plane/warp operations, so software adapters run them too;
//! [`plane_norm_train`] composed from them), deferred operations under burn's kernel fusion,
//! and hand-written backward passes under autodiff. [`plane_norm_reference`],
//! [`plane_norm_train_reference`] and [`plane_moments_reference`] compute the same results
//! from generic tensor operations; tests hold the kernels to them, forward and gradients, on
//! every backend.
//!
//! ```
//! use burn::tensor::{Device, Distribution, Tensor, Tolerance};
//! use ibn_net::kernel::{plane_norm, plane_norm_reference};
//!
//! let device = Device::default();
//! let x = Tensor::<4>::random([2, 8, 5, 5], Distribution::Default, &device);
//! let scale = Tensor::<1>::random([8], Distribution::Default, &device);
//! let shift = Tensor::<1>::random([8], Distribution::Default, &device);
//! // Instance-normalise channels 0..4 (then scale and shift); scale and shift 4..8 only.
//! let fused = plane_norm(x.clone(), scale.clone(), shift.clone(), 0..4, 1e-5);
//! let composed = plane_norm_reference(x, scale, shift, 0..4, 1e-5);
//! fused
//!     .into_data()
//!     .assert_approx_eq::<f32>(&composed.into_data(), Tolerance::absolute(1e-5));
//! ```

// The ndarray backend is deprecated upstream and still supported here.
#![allow(deprecated)]

use core::ops::Range;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::tensor::Tensor;

#[cfg(any(feature = "flex", feature = "ndarray"))]
mod buffer;
mod conv;
#[cfg(any(feature = "flex", feature = "ndarray"))]
mod cpu;
#[cfg(feature = "wgpu")]
mod cube;
#[cfg(feature = "wgpu")]
mod cube_conv;
#[cfg(any(feature = "flex", feature = "ndarray"))]
mod direct;
#[cfg(feature = "autodiff")]
mod grad;
#[cfg(any(feature = "flex", feature = "ndarray"))]
mod im2col;
mod pool;
#[cfg(any(feature = "flex", feature = "ndarray"))]
mod simd;
#[cfg(any(feature = "flex", feature = "ndarray"))]
mod winograd;

#[cfg(any(feature = "flex", feature = "ndarray"))]
pub use conv::ConvFinishKernels;
#[cfg(any(feature = "flex", feature = "ndarray", feature = "wgpu"))]
pub use conv::ConvKernels;
#[cfg(any(feature = "flex", feature = "ndarray"))]
pub(crate) use conv::on_cpu_backend;
pub use conv::{
    GpuConv, conv2d, conv2d_with, gpu_conv, set_gpu_conv, set_winograd, winograd_enabled,
};
pub(crate) use conv::{conv2d_module, conv2d_module_affine, conv2d_module_with};
pub(crate) use pool::{avg_pool2d_module, max_pool2d_module};
#[cfg(any(feature = "flex", feature = "ndarray"))]
pub use simd::{SimdLevel, set_max_simd, simd_level};

#[cfg(feature = "wgpu")]
#[doc(hidden)]
pub use cube::cube_launches;
#[cfg(feature = "wgpu")]
#[doc(hidden)]
pub use cube_conv::cube_conv_launches;

/// The backend operations behind [`plane_norm`], [`plane_norm_train`] and [`plane_moments`].
///
/// Implemented for flex and ndarray (plain Rust), the CubeCL backend (kernels), burn's fusion
/// wrapper (deferred execution) and autodiff (hand-written backward passes). Not meant to be
/// called directly: use the tensor-level functions of this module.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(feature = "wgpu"),
    Fusion: cfg(feature = "wgpu"),
    Autodiff: cfg(feature = "autodiff")
)]
pub trait NormKernels: Backend {
    /// See [`plane_norm`]. `x`: `[N, C, H, W]` contiguous or not; `scale`, `shift`: `[C]`.
    /// With `relu`, ReLU is applied to the output before it is written.
    #[fusion(dtype = x, shape = x)]
    fn plane_norm(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        stat_start: usize,
        stat_end: usize,
        epsilon: f32,
        relu: bool,
    ) -> FloatTensor<Self>;

    /// [`plane_norm`](NormKernels::plane_norm) with `residual` (`[N, C, H, W]`, the shape of
    /// `x`) added to the output, then ReLU with `relu`: see [`plane_norm_with`].
    #[allow(clippy::too_many_arguments)]
    #[fusion(dtype = x, shape = x)]
    fn plane_norm_add(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        stat_start: usize,
        stat_end: usize,
        epsilon: f32,
        relu: bool,
    ) -> FloatTensor<Self>;

    /// Gradients of [`plane_norm`] given the output gradient `grad` (`[N, C, H, W]`):
    /// `(dx [N, C, H, W], dscale [C], dshift [C])`.
    #[fusion(meta = backward_meta)]
    fn plane_norm_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        stat_start: usize,
        stat_end: usize,
        epsilon: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients of [`plane_norm`](NormKernels::plane_norm) with `relu`, given its `output`
    /// and the output gradient `grad` (both `[N, C, H, W]`): ReLU's mask
    /// ([`relu_mask`](NormKernels::relu_mask)) and
    /// [`plane_norm_backward`](NormKernels::plane_norm_backward) in one, `(dx [N, C, H, W],
    /// dscale [C], dshift [C])` (on CPU backends the mask is applied plane by plane inside
    /// the backward pass, the masked gradient never written out as a tensor of its own).
    #[fusion(meta = relu_backward_meta)]
    fn plane_norm_relu_backward(
        x: FloatTensor<Self>,
        output: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        stat_start: usize,
        stat_end: usize,
        epsilon: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// See [`plane_norm_train`]: `(output [N, C, H, W], batch [2, C])`, the batch means then
    /// biased variances of the channels outside `stat_start..stat_end` (0 on those inside).
    /// `scale`, `shift`: `[C]`; `batch_epsilon` is the batch-normalised channels' epsilon.
    #[allow(clippy::too_many_arguments)]
    #[fusion(meta = train_meta)]
    fn plane_norm_train(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        stat_start: usize,
        stat_end: usize,
        epsilon: f32,
        batch_epsilon: f32,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// [`plane_norm_train`](NormKernels::plane_norm_train) with `residual` (`[N, C, H, W]`)
    /// added to the output before ReLU.
    #[allow(clippy::too_many_arguments)]
    #[fusion(meta = train_add_meta)]
    fn plane_norm_train_add(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        stat_start: usize,
        stat_end: usize,
        epsilon: f32,
        batch_epsilon: f32,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients of [`plane_norm_train`](NormKernels::plane_norm_train) given the output
    /// gradient `grad` and the forward's batch statistics `batch` (`[2, C]`): `(dx [N, C, H,
    /// W], dscale [C], dshift [C])`. With `relu`, `grad` is first masked by ReLU's `output`
    /// (`[N, C, H, W]`); without, `output` is not read.
    #[allow(clippy::too_many_arguments)]
    #[fusion(meta = train_backward_meta)]
    fn plane_norm_train_backward(
        x: FloatTensor<Self>,
        output: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        batch: FloatTensor<Self>,
        stat_start: usize,
        stat_end: usize,
        epsilon: f32,
        batch_epsilon: f32,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// ReLU's input gradient given its `output`: `grad` where `output > 0` (or is NaN), else
    /// 0; both `[N, C, H, W]`, of one shape. For the backward passes of the kernels that apply
    /// ReLU (burn's `relu_backward`, in one vectorised pass on CPU backends).
    #[fusion(dtype = grad, shape = grad)]
    fn relu_mask(output: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;

    /// See [`plane_moments`]: `[2, N, end - start]`, means then biased variances of the
    /// channels `start..end`.
    #[fusion(dtype = x, shape = moments_shape(x, start, end))]
    fn plane_moments(x: FloatTensor<Self>, start: usize, end: usize) -> FloatTensor<Self>;

    /// Input gradient of [`plane_moments`]: `x` `[N, C, H, W]`, its `moments` and their
    /// gradient `grad` (`[2, N, end - start]`); zero outside the channels `start..end`.
    #[fusion(dtype = x, shape = x)]
    fn plane_moments_backward(
        x: FloatTensor<Self>,
        moments: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        start: usize,
        end: usize,
    ) -> FloatTensor<Self>;
}

/// Output shape of [`NormKernels::plane_moments`]: `[2, N, end - start]`.
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
fn moments_shape(x: &burn::tensor::Shape, start: &usize, end: &usize) -> burn::tensor::Shape {
    burn::tensor::Shape::new([2, x[0], end - start])
}

#[cfg(feature = "wgpu")]
type Spec = burn::backend::fusion::custom::TensorSpec;

/// Output metadata of [`NormKernels::plane_norm_backward`] under kernel fusion.
#[cfg(feature = "wgpu")]
fn backward_meta(
    x: &Spec,
    _grad: &Spec,
    scale: &Spec,
    _start: &usize,
    _end: &usize,
    _epsilon: &f32,
) -> (Spec, Spec, Spec) {
    (x.clone(), scale.clone(), scale.clone())
}

/// Output metadata of [`NormKernels::plane_norm_relu_backward`] under kernel fusion.
#[cfg(feature = "wgpu")]
fn relu_backward_meta(
    x: &Spec,
    _output: &Spec,
    grad: &Spec,
    scale: &Spec,
    start: &usize,
    end: &usize,
    epsilon: &f32,
) -> (Spec, Spec, Spec) {
    backward_meta(x, grad, scale, start, end, epsilon)
}

/// Output metadata of [`NormKernels::plane_norm_train`]: the input's, and `[2, C]`.
#[cfg(feature = "wgpu")]
#[allow(clippy::too_many_arguments)]
fn train_meta(
    x: &Spec,
    scale: &Spec,
    _shift: &Spec,
    _start: &usize,
    _end: &usize,
    _epsilon: &f32,
    _batch_epsilon: &f32,
    _relu: &bool,
) -> (Spec, Spec) {
    let c = scale.shape[0];
    (
        x.clone(),
        Spec::new(burn::tensor::Shape::new([2, c]), x.dtype),
    )
}

/// Output metadata of [`NormKernels::plane_norm_train_add`].
#[cfg(feature = "wgpu")]
#[allow(clippy::too_many_arguments)]
fn train_add_meta(
    x: &Spec,
    _residual: &Spec,
    scale: &Spec,
    shift: &Spec,
    start: &usize,
    end: &usize,
    epsilon: &f32,
    batch_epsilon: &f32,
    relu: &bool,
) -> (Spec, Spec) {
    train_meta(x, scale, shift, start, end, epsilon, batch_epsilon, relu)
}

/// Output metadata of [`NormKernels::plane_norm_train_backward`].
#[cfg(feature = "wgpu")]
#[allow(clippy::too_many_arguments)]
fn train_backward_meta(
    x: &Spec,
    _output: &Spec,
    _grad: &Spec,
    scale: &Spec,
    _batch: &Spec,
    _start: &usize,
    _end: &usize,
    _epsilon: &f32,
    _batch_epsilon: &f32,
    _relu: &bool,
) -> (Spec, Spec, Spec) {
    (x.clone(), scale.clone(), scale.clone())
}

/// Normalises `x` plane by plane and writes one output tensor.
///
/// For every sample `n` and channel `c`, with `mean` and biased `var` taken over the
/// `H x W` values of plane `(n, c)`:
/// - channels in `stats`: `y = (x - mean) / sqrt(var + epsilon) * scale[c] + shift[c]`;
/// - other channels: `y = x * scale[c] + shift[c]`.
///
/// Differentiable with respect to `x`, `scale` and `shift` on autodiff devices. See
/// [`plane_norm_with`] for the same pass followed by a residual addition and ReLU.
///
/// # Shapes
/// - `x`: `[N, C, H, W]`; `scale`, `shift`: `[C]`
/// - output: `[N, C, H, W]`
///
/// # Panics
/// When `scale` or `shift` do not have `C` values or `stats` is not within `0..=C`.
pub fn plane_norm(
    x: Tensor<4>,
    scale: Tensor<1>,
    shift: Tensor<1>,
    stats: Range<usize>,
    epsilon: f64,
) -> Tensor<4> {
    plane_norm_with(x, scale, shift, stats, epsilon, Epilogue::default())
}

/// What a normalisation pass does to each value after the per-channel affine map and before
/// writing it: add the matching value of `residual`, if any, then apply ReLU if `relu`.
///
/// Residual blocks end with `relu(norm(x) + shortcut)` and most norms are followed by
/// ReLU: done inside the kernel, that saves one or two passes over the activations and
/// their intermediate tensors.
#[derive(Clone, Debug, Default)]
pub struct Epilogue {
    /// Added to the output; `[N, C, H, W]`, the shape of the input.
    pub residual: Option<Tensor<4>>,
    /// ReLU last (`max(y, 0)`; NaN stays NaN, as in PyTorch).
    pub relu: bool,
}

impl Epilogue {
    /// ReLU only.
    pub fn relu() -> Self {
        Self {
            residual: None,
            relu: true,
        }
    }

    /// Adds `residual`, then ReLU: the end of a residual block.
    pub fn add_relu(residual: Tensor<4>) -> Self {
        Self {
            residual: Some(residual),
            relu: true,
        }
    }

    /// Whether the epilogue leaves the values as they are.
    pub fn is_identity(&self) -> bool {
        self.residual.is_none() && !self.relu
    }

    /// Applies the epilogue to `y` `[N, C, H, W]` with generic tensor operations.
    ///
    /// # Panics
    /// When the residual's shape differs from `y`'s.
    pub fn apply(self, y: Tensor<4>) -> Tensor<4> {
        let y = match self.residual {
            Some(residual) => {
                check_residual(&y, &residual);
                y + residual
            }
            None => y,
        };
        if self.relu {
            burn::tensor::activation::relu(y)
        } else {
            y
        }
    }
}

/// [`plane_norm`] followed by `epilogue` in the same pass: `y = relu(norm(x) + residual)`,
/// each part as the epilogue asks.
///
/// Differentiable with respect to `x`, `scale`, `shift` and the residual on autodiff devices.
///
/// # Shapes
/// - `x`: `[N, C, H, W]`; `scale`, `shift`: `[C]`; the residual: `[N, C, H, W]`
/// - output: `[N, C, H, W]`
///
/// # Panics
/// As [`plane_norm`], and when the residual's shape differs from `x`'s.
pub fn plane_norm_with(
    x: Tensor<4>,
    scale: Tensor<1>,
    shift: Tensor<1>,
    stats: Range<usize>,
    epsilon: f64,
    epilogue: Epilogue,
) -> Tensor<4> {
    check_plane_norm(&x, &scale, &shift, &stats);
    let Epilogue { residual, relu } = epilogue;
    let out = match residual {
        None => <Dispatch as NormKernels>::plane_norm(
            x.into_dispatch(),
            scale.into_dispatch(),
            shift.into_dispatch(),
            stats.start,
            stats.end,
            epsilon as f32,
            relu,
        ),
        Some(residual) => {
            check_residual(&x, &residual);
            <Dispatch as NormKernels>::plane_norm_add(
                x.into_dispatch(),
                residual.into_dispatch(),
                scale.into_dispatch(),
                shift.into_dispatch(),
                stats.start,
                stats.end,
                epsilon as f32,
                relu,
            )
        }
    };
    Tensor::from_dispatch(out)
}

/// Training-mode normalisation in one pass: the channels in `stats` normalised with their
/// own per-(sample, channel) statistics (instance norm), every other channel with its batch
/// statistics, the mean and biased variance over `N x H x W` (batch norm in training, with
/// `batch_epsilon`); then `* scale + shift` and `epilogue`. The IBN layer and batch norm in
/// training, the batch statistics never materialised as a separate autodiff graph: on
/// autodiff devices one backward step computes the gradients of the whole normalisation
/// (`dx = scale * r * (g - mean(g) - xhat * mean(g * xhat))` per channel, `r = 1 /
/// sqrt(var + epsilon)`), on CPU backends reading each channel's planes from cache the
/// second time.
///
/// Returns the output and the batch mean and biased variance of each channel, 0 on the
/// channels in `stats` (for running statistics; not differentiable).
///
/// Differentiable with respect to `x`, `scale`, `shift` and the residual on autodiff devices.
///
/// # Shapes
/// - `x`: `[N, C, H, W]`; `scale`, `shift`: `[C]`; the residual: `[N, C, H, W]`
/// - output: `([N, C, H, W], [C], [C])`
///
/// # Panics
/// As [`plane_norm_with`].
pub fn plane_norm_train(
    x: Tensor<4>,
    scale: Tensor<1>,
    shift: Tensor<1>,
    stats: Range<usize>,
    (epsilon, batch_epsilon): (f64, f64),
    epilogue: Epilogue,
) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    check_plane_norm(&x, &scale, &shift, &stats);
    let Epilogue { residual, relu } = epilogue;
    let (eps, batch_eps) = (epsilon as f32, batch_epsilon as f32);
    let (out, batch) = match residual {
        None => <Dispatch as NormKernels>::plane_norm_train(
            x.into_dispatch(),
            scale.into_dispatch(),
            shift.into_dispatch(),
            stats.start,
            stats.end,
            eps,
            batch_eps,
            relu,
        ),
        Some(residual) => {
            check_residual(&x, &residual);
            <Dispatch as NormKernels>::plane_norm_train_add(
                x.into_dispatch(),
                residual.into_dispatch(),
                scale.into_dispatch(),
                shift.into_dispatch(),
                stats.start,
                stats.end,
                eps,
                batch_eps,
                relu,
            )
        }
    };
    let batch: Tensor<2> = Tensor::from_dispatch(batch);
    let c = batch.dims()[1];
    let mean = batch.clone().narrow(0, 0, 1).reshape([c]);
    let var = batch.narrow(0, 1, 1).reshape([c]);
    (Tensor::from_dispatch(out), mean, var)
}

/// [`plane_norm_train`] from generic tensor operations: batch statistics by `var_mean_bias`,
/// folded into the scale and shift of [`plane_norm_with_reference`]. Differentiable through
/// the statistics with burn's autodiff; the reference the kernel is tested against.
///
/// # Shapes
/// As [`plane_norm_train`].
pub fn plane_norm_train_reference(
    x: Tensor<4>,
    scale: Tensor<1>,
    shift: Tensor<1>,
    stats: Range<usize>,
    (epsilon, batch_epsilon): (f64, f64),
    epilogue: Epilogue,
) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    check_plane_norm(&x, &scale, &shift, &stats);
    let [n, c, h, w] = x.dims();
    let device = x.device();
    let per_channel = x.clone().swap_dims(0, 1).reshape([c, n * h * w]);
    let (var, mean) = per_channel.var_mean_bias(1);
    let (mean, var) = (mean.reshape([c]), var.reshape([c]));
    // 1 on the batch-normalised channels, 0 on those in `stats`.
    let batch: Vec<f32> = (0..c).map(|ch| f32::from(!stats.contains(&ch))).collect();
    let batch = Tensor::<1>::from_floats(batch.as_slice(), &device);
    let keep = batch.clone().neg().add_scalar(1.0);
    let r = var.clone().add_scalar(batch_epsilon).sqrt().recip();
    let folded_scale = scale.clone() * (r * batch.clone() + keep);
    let folded_shift = shift - mean.clone() * folded_scale.clone() * batch.clone();
    let out = plane_norm_with_reference(x, folded_scale, folded_shift, stats, epsilon, epilogue);
    (out, mean.detach() * batch.clone(), var.detach() * batch)
}

/// Per-(sample, channel) mean and biased variance over `H x W` of the channels in
/// `channels`, each `[N, K]` with `K = channels.len()`. The input is read in place (no copy of
/// the channel range).
///
/// Differentiable with respect to `x` on autodiff devices.
///
/// # Shapes
/// - `x`: `[N, C, H, W]`
/// - output: `([N, K], [N, K])`
///
/// # Panics
/// When `channels` is not within `0..=C`.
pub fn plane_moments(x: Tensor<4>, channels: Range<usize>) -> (Tensor<2>, Tensor<2>) {
    check_range("plane_moments", x.dims()[1], &channels);
    if channels.is_empty() {
        return empty_moments(&x);
    }
    let moments: Tensor<3> = Tensor::from_dispatch(<Dispatch as NormKernels>::plane_moments(
        x.into_dispatch(),
        channels.start,
        channels.end,
    ));
    split_moments(moments)
}

/// [`plane_norm`] from generic tensor operations (split, normalise, concatenate): the
/// reference the kernels are tested against; runs on any backend.
///
/// # Shapes
/// As [`plane_norm`].
pub fn plane_norm_reference(
    x: Tensor<4>,
    scale: Tensor<1>,
    shift: Tensor<1>,
    stats: Range<usize>,
    epsilon: f64,
) -> Tensor<4> {
    check_plane_norm(&x, &scale, &shift, &stats);
    let [n, c, h, w] = x.dims();
    let mut parts = Vec::with_capacity(3);
    let affine = |x: Tensor<4>, range: Range<usize>| {
        let len = range.len();
        x * scale.clone().slice(range.clone()).reshape([1, len, 1, 1])
            + shift.clone().slice(range).reshape([1, len, 1, 1])
    };
    if stats.start > 0 {
        parts.push(affine(x.clone().narrow(1, 0, stats.start), 0..stats.start));
    }
    if !stats.is_empty() {
        let section = x.clone().narrow(1, stats.start, stats.len());
        let flat = section.reshape([n, stats.len(), h * w]);
        let (var, mean) = flat.clone().var_mean_bias(2);
        let normed = (flat - mean) / var.add_scalar(epsilon).sqrt();
        parts.push(affine(
            normed.reshape([n, stats.len(), h, w]),
            stats.clone(),
        ));
    }
    if stats.end < c {
        parts.push(affine(x.narrow(1, stats.end, c - stats.end), stats.end..c));
    }
    Tensor::cat(parts, 1)
}

/// [`plane_norm_with`] from generic tensor operations: [`plane_norm_reference`], then
/// [`Epilogue::apply`].
///
/// # Shapes
/// As [`plane_norm_with`].
pub fn plane_norm_with_reference(
    x: Tensor<4>,
    scale: Tensor<1>,
    shift: Tensor<1>,
    stats: Range<usize>,
    epsilon: f64,
    epilogue: Epilogue,
) -> Tensor<4> {
    epilogue.apply(plane_norm_reference(x, scale, shift, stats, epsilon))
}

/// [`plane_moments`] from generic tensor operations.
///
/// # Shapes
/// As [`plane_moments`].
pub fn plane_moments_reference(x: Tensor<4>, channels: Range<usize>) -> (Tensor<2>, Tensor<2>) {
    check_range("plane_moments", x.dims()[1], &channels);
    if channels.is_empty() {
        return empty_moments(&x);
    }
    let [n, _, h, w] = x.dims();
    let k = channels.len();
    let section = x.narrow(1, channels.start, k);
    let (var, mean) = section.reshape([n, k, h * w]).var_mean_bias(2);
    (mean.reshape([n, k]), var.reshape([n, k]))
}

fn empty_moments(x: &Tensor<4>) -> (Tensor<2>, Tensor<2>) {
    let n = x.dims()[0];
    let device = x.device();
    (
        Tensor::zeros([n, 0], &device),
        Tensor::zeros([n, 0], &device),
    )
}

fn split_moments(moments: Tensor<3>) -> (Tensor<2>, Tensor<2>) {
    let [_, n, c] = moments.dims();
    let mean = moments.clone().narrow(0, 0, 1).reshape([n, c]);
    let var = moments.narrow(0, 1, 1).reshape([n, c]);
    (mean, var)
}

fn check_plane_norm(x: &Tensor<4>, scale: &Tensor<1>, shift: &Tensor<1>, stats: &Range<usize>) {
    let c = x.dims()[1];
    assert!(
        scale.dims()[0] == c && shift.dims()[0] == c,
        "plane_norm: scale and shift need {c} values (the channels of x), got {} and {}",
        scale.dims()[0],
        shift.dims()[0]
    );
    check_range("plane_norm", c, stats);
}

fn check_residual(x: &Tensor<4>, residual: &Tensor<4>) {
    assert!(
        residual.dims() == x.dims(),
        "plane_norm: the residual's shape {:?} differs from the input's {:?}",
        residual.dims(),
        x.dims()
    );
}

fn check_range(op: &str, channels: usize, range: &Range<usize>) {
    assert!(
        range.start <= range.end && range.end <= channels,
        "{op}: channel range {range:?} is not within the {channels} channels"
    );
}

/// `[N, C, H, W]` of a 4-d shape.
fn dims4(shape: &burn::tensor::Shape) -> [usize; 4] {
    assert_eq!(
        shape.num_dims(),
        4,
        "normalisation kernels take [N, C, H, W] tensors"
    );
    [shape[0], shape[1], shape[2], shape[3]]
}

/// Input gradient of the moments from generic backend operations:
/// `dx = gmean / M + gvar * 2 (x - mean) / M` on the channels `start..end` (`M = H * W`),
/// zero elsewhere.
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
fn moments_backward_generic<B: Backend>(
    x: FloatTensor<B>,
    moments: FloatTensor<B>,
    grad: FloatTensor<B>,
    start: usize,
    end: usize,
) -> FloatTensor<B> {
    use burn::backend::TensorMetadata;
    use burn::tensor::Slice;
    let shape = x.shape();
    let [n, _, h, w] = dims4(&shape);
    let (k, m) = (end - start, (h * w) as f64);
    let (device, dtype) = (x.device(), x.dtype());
    let plane = |t: FloatTensor<B>, i: usize| {
        let t = B::float_slice(t, &[Slice::from(i..i + 1)]);
        B::float_reshape(t, burn::tensor::Shape::new([n, k, 1, 1]))
    };
    let mean = plane(moments, 0);
    let g_mean = plane(grad.clone(), 0);
    let g_var = plane(grad, 1);
    let channels = [Slice::from(0..n), Slice::from(start..end)];
    let section = B::float_slice(x, &channels);
    let centered = B::float_sub(section, mean);
    let from_var = B::float_mul(centered, B::float_mul_scalar(g_var, (2.0 / m).into()));
    let dx = B::float_add(from_var, B::float_div_scalar(g_mean, m.into()));
    let zeros = B::float_zeros(shape, &device, dtype.into());
    B::float_slice_assign(zeros, &channels, dx)
}

/// `[C]` with 1 on the channels outside `start..end` (batch-normalised in training), 0 inside.
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
fn batch_channel_mask<B: Backend>(
    c: usize,
    (start, end): (usize, usize),
    device: &B::Device,
    dtype: burn::tensor::DType,
) -> FloatTensor<B> {
    let values: Vec<f32> = (0..c)
        .map(|ch| f32::from(ch < start || ch >= end))
        .collect();
    let data = burn::tensor::TensorData::new(values, [c]).convert_dtype(dtype);
    B::float_from_data(data, device)
}

/// The per-channel factors of a training norm on generic operations: `mask` (1 on the
/// channels outside `start..end`, batch-normalised), `keep = 1 - mask`, `r = 1 / sqrt(var +
/// batch_epsilon)` and the folded scale, `scale * r` on the batch channels and `scale` on the
/// others; all `[C]`.
struct BatchFactors<B: Backend> {
    mask: FloatTensor<B>,
    keep: FloatTensor<B>,
    r: FloatTensor<B>,
    folded_scale: FloatTensor<B>,
}

#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
impl<B: Backend> BatchFactors<B> {
    fn new(
        scale: FloatTensor<B>,
        var: FloatTensor<B>,
        stats: (usize, usize),
        batch_epsilon: f32,
    ) -> Self {
        use burn::backend::TensorMetadata;
        let (device, dtype, c) = (scale.device(), scale.dtype(), scale.shape()[0]);
        let mask = batch_channel_mask::<B>(c, stats, &device, dtype);
        let keep = B::float_add_scalar(B::float_neg(mask.clone()), 1.0.into());
        let r = B::float_recip(B::float_sqrt(B::float_add_scalar(
            var,
            batch_epsilon.into(),
        )));
        let factor = B::float_add(B::float_mul(r.clone(), mask.clone()), keep.clone());
        let folded_scale = B::float_mul(scale, factor);
        Self {
            mask,
            keep,
            r,
            folded_scale,
        }
    }
}

/// [`NormKernels::plane_norm_train`] (and `_add` with `residual`) from the backend's other
/// kernels: [`NormKernels::plane_moments`] of the batch-normalised channels, batch statistics
/// by generic operations, folded into the scale and shift of one [`NormKernels::plane_norm`]
/// pass.
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
fn norm_train_generic<B: NormKernels>(
    x: FloatTensor<B>,
    residual: Option<FloatTensor<B>>,
    scale: FloatTensor<B>,
    shift: FloatTensor<B>,
    (start, end): (usize, usize),
    (epsilon, batch_epsilon): (f32, f32),
    relu: bool,
) -> (FloatTensor<B>, FloatTensor<B>) {
    use burn::backend::TensorMetadata;
    use burn::tensor::{Shape, Slice};
    let [n, c, _, _] = dims4(&x.shape());
    let (device, dtype) = (x.device(), x.dtype());
    // The batch-normalised channels: one range when the per-plane ones are at one end, else
    // every channel (the others are masked out below).
    let batch = match (start, end) {
        (0, end) if end > 0 => end..c,
        (start, end) if end == c && start < end => 0..start,
        _ => 0..c,
    };
    let k = batch.len();
    let (mean, var) = if k == 0 {
        let zeros = B::float_zeros(Shape::new([c]), &device, dtype.into());
        (zeros.clone(), zeros)
    } else {
        let moments = B::plane_moments(x.clone(), batch.start, batch.end);
        let take = |i: usize| {
            let t = B::float_slice(moments.clone(), &[Slice::from(i..i + 1)]);
            B::float_reshape(t, Shape::new([n, k]))
        };
        let (means, vars) = (take(0), take(1));
        // Law of total variance over the samples' planes.
        let mean = B::float_mean_dim(means.clone(), 0);
        let centred = B::float_sub(means, mean.clone());
        let spread = B::float_mul(centred.clone(), centred);
        let var = B::float_mean_dim(B::float_add(vars, spread), 0);
        // Onto all `C` channels, zero outside the range.
        let embed = |t: FloatTensor<B>| {
            let zeros = B::float_zeros(Shape::new([c]), &device, dtype.into());
            let t = B::float_reshape(t, Shape::new([k]));
            B::float_slice_assign(zeros, &[Slice::from(batch.clone())], t)
        };
        (embed(mean), embed(var))
    };
    let BatchFactors {
        mask, folded_scale, ..
    } = BatchFactors::<B>::new(scale, var.clone(), (start, end), batch_epsilon);
    let offset = B::float_mul(
        B::float_mul(mean.clone(), folded_scale.clone()),
        mask.clone(),
    );
    let folded_shift = B::float_sub(shift, offset);
    let out = match residual {
        None => B::plane_norm(x, folded_scale, folded_shift, start, end, epsilon, relu),
        Some(r) => B::plane_norm_add(x, r, folded_scale, folded_shift, start, end, epsilon, relu),
    };
    let row =
        |t: FloatTensor<B>| B::float_reshape(B::float_mul(t, mask.clone()), Shape::new([1, c]));
    let batch = B::float_cat(vec![row(mean), row(var)], 0);
    (out, batch)
}

/// [`NormKernels::plane_norm_train_backward`] from the backend's other kernels: ReLU's mask,
/// [`NormKernels::plane_norm_backward`] with the folded scale, and the batch statistics'
/// share of the input gradient, `a + b * x` per channel, by generic operations.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
fn norm_train_backward_generic<B: NormKernels>(
    x: FloatTensor<B>,
    output: FloatTensor<B>,
    grad: FloatTensor<B>,
    scale: FloatTensor<B>,
    batch: FloatTensor<B>,
    (start, end): (usize, usize),
    (epsilon, batch_epsilon): (f32, f32),
    relu: bool,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    use burn::backend::TensorMetadata;
    use burn::tensor::{Shape, Slice};
    let [n, c, h, w] = dims4(&x.shape());
    let count = (n * h * w) as f64;
    let grad = if relu {
        B::relu_mask(output, grad)
    } else {
        grad
    };
    let take = |i: usize| {
        let t = B::float_slice(batch.clone(), &[Slice::from(i..i + 1)]);
        B::float_reshape(t, Shape::new([c]))
    };
    let (mean, var) = (take(0), take(1));
    let BatchFactors {
        mask,
        keep,
        r,
        folded_scale,
    } = BatchFactors::<B>::new(scale.clone(), var, (start, end), batch_epsilon);
    // On the batch channels: dscale = sum(g x), dshift = sum(g), dx = g * folded scale.
    let (dx, dscale, dshift) =
        B::plane_norm_backward(x.clone(), grad, folded_scale.clone(), start, end, epsilon);
    // sum(g (x - mean)); the weight's gradient is that times r.
    let centred = B::float_sub(dscale.clone(), B::float_mul(mean.clone(), dshift.clone()));
    let dweight = B::float_mul(centred.clone(), r.clone());
    let dscale = B::float_add(
        B::float_mul(dweight, mask.clone()),
        B::float_mul(dscale, keep),
    );
    // dx += b x + a with b = -scale r^3 sum(g (x - mean)) / count, a = -folded scale
    // sum(g) / count - b mean: zero on the channels with their own statistics.
    let r3 = B::float_mul(B::float_mul(r.clone(), r.clone()), r);
    let b = B::float_mul(B::float_mul(scale, r3), centred);
    let b = B::float_mul(B::float_mul_scalar(b, (-1.0 / count).into()), mask.clone());
    let a = B::float_mul(B::float_mul(folded_scale, dshift.clone()), mask);
    let a = B::float_sub(
        B::float_mul_scalar(a, (-1.0 / count).into()),
        B::float_mul(b.clone(), mean),
    );
    let column = |t: FloatTensor<B>| B::float_reshape(t, Shape::new([1, c, 1, 1]));
    let dx = B::float_add(dx, B::float_add(B::float_mul(x, column(b)), column(a)));
    (dx, dscale, dshift)
}
