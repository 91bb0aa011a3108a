//! The kernels on the CubeCL backend (wgpu and the other CubeCL runtimes).
//!
//! One cube per (sample, channel) plane, `CUBE_COUNT = (C, N)`; its units stride over the
//! plane and reduce through shared memory with a tree of `sync_cube` barriers (no plane/warp
//! operations, which software adapters lack). Barriers sit in uniform control flow: channels
//! without statistics run the reduction loops zero times instead of skipping them.

use core::sync::atomic::{AtomicUsize, Ordering};

use burn::backend::TensorMetadata;
use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::ops::{ActivationOps, FloatTensorOps};
use burn::backend::tensor::FloatTensor;
use burn::tensor::{Shape, Slice};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::client::Client;
use cubecl::prelude::*;

use super::{NormKernels, dims4};

static LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// Number of normalisation kernels launched on CubeCL devices since the program started
/// (lets tests check that the kernels, not a fallback, ran).
pub fn cube_launches() -> usize {
    LAUNCHES.load(Ordering::Relaxed)
}

/// Sum of the cube's `acc` values (one per unit); every unit gets the total.
#[cube]
fn block_sum<F: Float>(acc: &mut Shared<[F]>) -> F {
    sync_cube();
    let unit = UNIT_POS_X as usize;
    let mut stride = CUBE_DIM_X as usize / 2;
    while stride > 0 {
        if unit < stride {
            let other = acc[unit + stride];
            acc[unit] += other;
        }
        sync_cube();
        stride /= 2;
    }
    let total = acc[0];
    sync_cube();
    total
}

/// Mean and biased variance of the plane at `base` over its first `count` values (`len`
/// values in the plane; `count` is `len` or 0).
#[cube]
fn plane_mean_var<F: Float>(
    x: &Tensor<F>,
    acc: &mut Shared<[F]>,
    base: usize,
    count: usize,
    len: usize,
) -> (F, F) {
    let unit = UNIT_POS_X as usize;
    let step = CUBE_DIM_X as usize;
    let m = F::cast_from(len as u32);
    // Summing `x - pivot` (any value of the plane) keeps float32 sums exact to the spread of
    // the values rather than to their magnitude.
    let pivot = x[base];
    let mut sum = F::new(0.0_f32);
    let mut i = unit;
    while i < count {
        sum += x[base + i] - pivot;
        i += step;
    }
    acc[unit] = sum;
    let mean = pivot + block_sum::<F>(acc) / m;
    let mut squares = F::new(0.0_f32);
    let mut j = unit;
    while j < count {
        let d = x[base + j] - mean;
        squares += d * d;
        j += step;
    }
    acc[unit] = squares;
    let var = block_sum::<F>(acc) / m;
    (mean, var)
}

/// `(mu, r)` of the plane at `base`: its mean and `1 / sqrt(var + epsilon)` when `stat`,
/// `(0, 1)` otherwise, so that `(x - mu) * r` is the normalised input or `x` itself.
#[cube]
fn plane_norm_stats<F: Float>(
    x: &Tensor<F>,
    acc: &mut Shared<[F]>,
    base: usize,
    len: usize,
    stat: bool,
    epsilon: f32,
) -> (F, F) {
    let count = select(stat, len, 0usize);
    let (mean, var) = plane_mean_var::<F>(x, acc, base, count, len);
    let one = F::new(1.0_f32);
    let r = select(stat, one / (var + F::cast_from(epsilon)).sqrt(), one);
    let mu = select(stat, mean, F::new(0.0_f32));
    (mu, r)
}

/// `(a, b)` such that `x * a + b` is the output of `plane_norm` on the plane of channel `c` at
/// `base`: normalised with its own statistics inside `stat_start..stat_end`, the affine map
/// only outside.
#[cube]
#[allow(clippy::too_many_arguments)]
fn plane_affine<F: Float>(
    x: &Tensor<F>,
    scale: &Tensor<F>,
    shift: &Tensor<F>,
    acc: &mut Shared<[F]>,
    c: usize,
    base: usize,
    len: usize,
    stat_start: u32,
    stat_end: u32,
    epsilon: f32,
) -> (F, F) {
    let stat = c >= stat_start as usize && c < stat_end as usize;
    let (mu, r) = plane_norm_stats::<F>(x, acc, base, len, stat, epsilon);
    // y = (x - mu) * r * scale + shift = x * a + b
    let a = scale[c] * r;
    (a, shift[c] - mu * a)
}

/// ReLU when `relu` (NaN stays NaN), else `v`.
#[cube]
fn activate<F: Float>(v: F, #[comptime] relu: bool) -> F {
    let mut out = v;
    if relu {
        out = select(v < F::new(0.0_f32), F::new(0.0_f32), v);
    }
    out
}

#[cube(launch)]
fn plane_norm_kernel<F: Float>(
    x: &Tensor<F>,
    scale: &Tensor<F>,
    shift: &Tensor<F>,
    out: &mut Tensor<F>,
    plane_len: u32,
    stat_start: u32,
    stat_end: u32,
    epsilon: f32,
    #[comptime] units: usize,
    #[comptime] relu: bool,
    #[define(F)] _dtype: ElemType,
) {
    let c = CUBE_POS_X as usize;
    let len = plane_len as usize;
    let base = (CUBE_POS_Y as usize * CUBE_COUNT_X as usize + c) * len;
    let mut acc = Shared::new_slice(units);
    let (a, b) = plane_affine::<F>(
        x, scale, shift, &mut acc, c, base, len, stat_start, stat_end, epsilon,
    );
    let step = CUBE_DIM_X as usize;
    let mut i = UNIT_POS_X as usize;
    while i < len {
        out[base + i] = activate::<F>(x[base + i] * a + b, relu);
        i += step;
    }
}

/// `plane_norm_kernel` with `residual` added before the activation.
#[cube(launch)]
fn plane_norm_add_kernel<F: Float>(
    x: &Tensor<F>,
    residual: &Tensor<F>,
    scale: &Tensor<F>,
    shift: &Tensor<F>,
    out: &mut Tensor<F>,
    plane_len: u32,
    stat_start: u32,
    stat_end: u32,
    epsilon: f32,
    #[comptime] units: usize,
    #[comptime] relu: bool,
    #[define(F)] _dtype: ElemType,
) {
    let c = CUBE_POS_X as usize;
    let len = plane_len as usize;
    let base = (CUBE_POS_Y as usize * CUBE_COUNT_X as usize + c) * len;
    let mut acc = Shared::new_slice(units);
    let (a, b) = plane_affine::<F>(
        x, scale, shift, &mut acc, c, base, len, stat_start, stat_end, epsilon,
    );
    let step = CUBE_DIM_X as usize;
    let mut i = UNIT_POS_X as usize;
    while i < len {
        out[base + i] = activate::<F>(x[base + i] * a + b + residual[base + i], relu);
        i += step;
    }
}

#[cube(launch)]
fn plane_norm_backward_kernel<F: Float>(
    x: &Tensor<F>,
    grad: &Tensor<F>,
    scale: &Tensor<F>,
    dx: &mut Tensor<F>,
    sums: &mut Tensor<F>,
    plane_len: u32,
    stat_start: u32,
    stat_end: u32,
    epsilon: f32,
    #[comptime] units: usize,
    #[define(F)] _dtype: ElemType,
) {
    let c = CUBE_POS_X as usize;
    let plane = CUBE_POS_Y as usize * CUBE_COUNT_X as usize + c;
    let planes = CUBE_COUNT_Y as usize * CUBE_COUNT_X as usize;
    let len = plane_len as usize;
    let base = plane * len;
    let stat = c >= stat_start as usize && c < stat_end as usize;
    let mut acc = Shared::new_slice(units);
    let mut acc_x = Shared::new_slice(units);
    // xhat = (x - mu) * r: the normalised input, or x itself for affine-only channels.
    let (mu, r) = plane_norm_stats::<F>(x, &mut acc, base, len, stat, epsilon);
    let zero = F::new(0.0_f32);

    let unit = UNIT_POS_X as usize;
    let step = CUBE_DIM_X as usize;
    let mut sum_g = zero;
    let mut sum_gx = zero;
    let mut i = unit;
    while i < len {
        let g = grad[base + i];
        sum_g += g;
        sum_gx += g * (x[base + i] - mu) * r;
        i += step;
    }
    acc[unit] = sum_g;
    acc_x[unit] = sum_gx;
    let total_g = block_sum::<F>(&mut acc);
    let total_gx = block_sum::<F>(&mut acc_x);

    // dx = scale * r * (g - mean(g) - xhat * mean(g * xhat)) with statistics, scale * g without.
    let m = F::cast_from(plane_len);
    let k = scale[c] * r;
    let mean_g = select(stat, total_g / m, zero);
    let mean_gx = select(stat, total_gx / m, zero);
    let mut j = unit;
    while j < len {
        let xhat = (x[base + j] - mu) * r;
        dx[base + j] = k * (grad[base + j] - mean_g - xhat * mean_gx);
        j += step;
    }
    if unit == 0 {
        sums[plane] = total_gx;
        sums[planes + plane] = total_g;
    }
}

/// One cube per (sample, channel of the range): `CUBE_COUNT = (K, N)`.
#[cube(launch)]
fn plane_moments_kernel<F: Float>(
    x: &Tensor<F>,
    out: &mut Tensor<F>,
    plane_len: u32,
    channels: u32,
    start: u32,
    #[comptime] units: usize,
    #[define(F)] _dtype: ElemType,
) {
    let plane = CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize;
    let planes = CUBE_COUNT_Y as usize * CUBE_COUNT_X as usize;
    let len = plane_len as usize;
    let source = CUBE_POS_Y as usize * channels as usize + start as usize + CUBE_POS_X as usize;
    let mut acc = Shared::new_slice(units);
    let (mean, var) = plane_mean_var::<F>(x, &mut acc, source * len, len, len);
    if UNIT_POS_X == 0 {
        out[plane] = mean;
        out[planes + plane] = var;
    }
}

/// Units per cube for planes of `len` values: a power of two giving each unit about eight
/// values, between 32 and 128 and within what the device allows. Small cubes keep the
/// barrier count low, which matters most on software adapters.
fn units(client: &Client, len: usize) -> u32 {
    let max = client.properties().hardware.max_units_per_cube.max(1);
    let wanted = (len.div_ceil(8).next_power_of_two() as u32).clamp(32, 128);
    let cap = max.min(wanted);
    if cap.is_power_of_two() {
        cap
    } else {
        cap.next_power_of_two() >> 1
    }
}

/// Cube count and dimension for one cube per plane of `[N, C, H, W]`; counts the launch
/// (see [`cube_launches`]).
fn grid(client: &Client, [n, c, h, w]: [usize; 4]) -> (CubeCount, CubeDim, usize) {
    let units = units(client, h * w);
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
    (
        CubeCount::Static(c as u32, n as u32, 1),
        CubeDim::new_1d(units),
        units as usize,
    )
}

/// An uninitialised tensor of `shape` on `x`'s device, in `x`'s element type.
pub(super) fn empty_like(x: &CubeTensor, shape: Shape) -> CubeTensor {
    empty_device_dtype(x.client.clone(), x.device.clone(), shape, x.dtype)
}

/// `sums [2, N, C]` reduced over the samples: `([C], [C])`.
fn per_channel(sums: CubeTensor, c: usize) -> (CubeTensor, CubeTensor) {
    let total = CubeBackend::float_sum_dim(sums, 1);
    let take = |i: usize| {
        let t = CubeBackend::float_slice(total.clone(), &[Slice::from(i..i + 1)]);
        CubeBackend::float_reshape(t, Shape::new([c]))
    };
    (take(0), take(1))
}

/// `plane_norm` (no `residual`) or `plane_norm_add`; `stats`: `(stat_start, stat_end,
/// epsilon)`.
fn launch_plane_norm(
    x: CubeTensor,
    residual: Option<CubeTensor>,
    scale: CubeTensor,
    shift: CubeTensor,
    (stat_start, stat_end, epsilon): (usize, usize, f32),
    relu: bool,
) -> CubeTensor {
    let dims = dims4(&x.shape());
    let (x, scale, shift) = (
        into_contiguous(x),
        into_contiguous(scale),
        into_contiguous(shift),
    );
    let out = empty_like(&x, x.shape());
    if out.shape().num_elements() == 0 {
        return out;
    }
    let (count, dim, units) = grid(&x.client, dims);
    let dtype = dtype_to_storage_type(x.dtype);
    let client = x.client.clone();
    let (len, start, end) = (
        (dims[2] * dims[3]) as u32,
        stat_start as u32,
        stat_end as u32,
    );
    let (x, scale, shift) = (
        x.into_tensor_arg(),
        scale.into_tensor_arg(),
        shift.into_tensor_arg(),
    );
    let y = out.clone().into_tensor_arg();
    match residual {
        None => plane_norm_kernel::launch(
            &client, count, dim, x, scale, shift, y, len, start, end, epsilon, units, relu, dtype,
        ),
        Some(residual) => plane_norm_add_kernel::launch(
            &client,
            count,
            dim,
            x,
            into_contiguous(residual).into_tensor_arg(),
            scale,
            shift,
            y,
            len,
            start,
            end,
            epsilon,
            units,
            relu,
            dtype,
        ),
    }
    out
}

impl NormKernels for CubeBackend {
    fn relu_mask(output: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as ActivationOps<Self>>::relu_backward(output, grad)
    }

    fn plane_norm(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        stat_start: usize,
        stat_end: usize,
        epsilon: f32,
        relu: bool,
    ) -> FloatTensor<Self> {
        let stats = (stat_start, stat_end, epsilon);
        launch_plane_norm(x, None, scale, shift, stats, relu)
    }

    fn plane_norm_add(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        stat_start: usize,
        stat_end: usize,
        epsilon: f32,
        relu: bool,
    ) -> FloatTensor<Self> {
        let stats = (stat_start, stat_end, epsilon);
        launch_plane_norm(x, Some(residual), scale, shift, stats, relu)
    }

    fn plane_norm_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        stat_start: usize,
        stat_end: usize,
        epsilon: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let dims = dims4(&x.shape());
        let [n, c, h, w] = dims;
        let (x, grad, scale) = (
            into_contiguous(x),
            into_contiguous(grad),
            into_contiguous(scale),
        );
        let dx = empty_like(&x, x.shape());
        let sums = empty_like(&x, Shape::new([2, n, c]));
        if dx.shape().num_elements() == 0 {
            let zeros = Self::float_zeros(Shape::new([c]), &x.device, x.dtype.into());
            return (dx, zeros.clone(), zeros);
        }
        let (count, dim, units) = grid(&x.client, dims);
        let dtype = dtype_to_storage_type(x.dtype);
        plane_norm_backward_kernel::launch(
            &x.client.clone(),
            count,
            dim,
            x.into_tensor_arg(),
            grad.into_tensor_arg(),
            scale.into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            sums.clone().into_tensor_arg(),
            (h * w) as u32,
            stat_start as u32,
            stat_end as u32,
            epsilon,
            units,
            dtype,
        );
        let (dscale, dshift) = per_channel(sums, c);
        (dx, dscale, dshift)
    }

    fn plane_norm_relu_backward(
        x: FloatTensor<Self>,
        output: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        stat_start: usize,
        stat_end: usize,
        epsilon: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let grad = Self::relu_mask(output, grad);
        Self::plane_norm_backward(x, grad, scale, stat_start, stat_end, epsilon)
    }

    fn plane_norm_train(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        stat_start: usize,
        stat_end: usize,
        epsilon: f32,
        batch_epsilon: f32,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (stats, eps) = ((stat_start, stat_end), (epsilon, batch_epsilon));
        super::norm_train_generic::<Self>(x, None, scale, shift, stats, eps, relu)
    }

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
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (stats, eps) = ((stat_start, stat_end), (epsilon, batch_epsilon));
        super::norm_train_generic::<Self>(x, Some(residual), scale, shift, stats, eps, relu)
    }

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
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (stats, eps) = ((stat_start, stat_end), (epsilon, batch_epsilon));
        super::norm_train_backward_generic::<Self>(x, output, grad, scale, batch, stats, eps, relu)
    }

    fn plane_moments(x: FloatTensor<Self>, start: usize, end: usize) -> FloatTensor<Self> {
        let [n, c, h, w] = dims4(&x.shape());
        let k = end - start;
        let x = into_contiguous(x);
        let out = empty_like(&x, Shape::new([2, n, k]));
        if n * k == 0 {
            return out;
        }
        let (count, dim, units) = grid(&x.client, [n, k, h, w]);
        let dtype = dtype_to_storage_type(x.dtype);
        plane_moments_kernel::launch(
            &x.client.clone(),
            count,
            dim,
            x.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            (h * w) as u32,
            c as u32,
            start as u32,
            units,
            dtype,
        );
        out
    }

    fn plane_moments_backward(
        x: FloatTensor<Self>,
        moments: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        start: usize,
        end: usize,
    ) -> FloatTensor<Self> {
        super::moments_backward_generic::<Self>(x, moments, grad, start, end)
    }
}
