//! 2-d max pooling: this crate's kernel on CPU devices (with its own backward pass on their
//! autodiff devices), burn's elsewhere; 2-d average pooling over power-of-two windows as a
//! depthwise convolution on the same devices in evaluation.
//!
//! burn-flex pools every output value on its own, computing the index of the maximum (also
//! when it is not wanted) and the valid part of the window with divisions: the stem's pooling
//! of a ResNet took about 6 % of a batch-8 forward pass. The kernel here pools each plane in
//! two separable passes over contiguous rows (the maximum along each input row's windows, then
//! across the window's rows), without indices. Its backward pass finds each window's maximum
//! again from the input and the output and adds the output gradient there, as burn's does
//! with the indices it keeps (8 bytes per output value).

use burn::nn::pool::{AvgPool2d, MaxPool2d};
use burn::tensor::Tensor;

/// What `pool.forward(x)` computes (burn's `MaxPool2d`): on flex and ndarray devices (with
/// autodiff or not), without padding or with symmetric explicit padding of at most half the
/// window, by this crate's kernel; otherwise by burn's.
///
/// # Shapes
/// - `x`: `[N, C, H, W]`
/// - output: `[N, C, OH, OW]`, `OH = (H + 2 * pad - dilation * (k - 1) - 1) / stride + 1`,
///   rounded up with `ceil_mode` (less a last window that would start past the input and its
///   leading padding, as PyTorch)
pub(crate) fn max_pool2d_module(pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    #[cfg(any(feature = "flex", feature = "ndarray"))]
    if let Some([top, left, bottom, right]) = match pool.padding {
        burn::nn::PaddingConfig2d::Explicit(top, left, bottom, right) => {
            Some([top, left, bottom, right])
        }
        burn::nn::PaddingConfig2d::Valid => Some([0; 4]),
        _ => None,
    } {
        let [_, _, h, w] = x.dims();
        let g = PoolGeometry {
            input: [h, w],
            kernel: pool.kernel_size,
            stride: pool.stride,
            padding: [top, left],
            dilation: pool.dilation,
            ceil: pool.ceil_mode,
        };
        let fits = (0..2).all(|a| {
            g.kernel[a] > 0
                && 2 * g.padding[a] <= g.window(a)
                && g.input[a] + 2 * g.padding[a] >= g.window(a)
        });
        let device = x.device();
        if top == bottom && left == right && fits && super::conv::on_cpu_backend(&device) {
            return cpu::max_pool2d(x, g.kernel, g.stride, g.padding, g.dilation, g.ceil);
        }
    }
    pool.forward(x)
}

/// What `pool.forward(x)` computes (burn's `AvgPool2d`): on flex and ndarray devices without
/// autodiff, on CPUs with the direct convolution kernels (AVX2 or AVX-512), for unpadded
/// windows of a power-of-two size (`1 / (kh * kw)` is then an exact scale) that fit the
/// input, as a depthwise convolution with weights `1 / (kh * kw)` through the crate's direct
/// kernel, equal to burn's sum-then-divide bit for bit; otherwise by burn's.
///
/// # Shapes
/// - `x`: `[N, C, H, W]`
/// - output: `[N, C, OH, OW]`, `OH = (H - kh) / stride + 1`
pub(crate) fn avg_pool2d_module(pool: &AvgPool2d, x: Tensor<4>) -> Tensor<4> {
    #[cfg(any(feature = "flex", feature = "ndarray"))]
    {
        use burn::nn::PaddingConfig2d;
        use burn::tensor::ops::ConvOptions;

        let [_, c, h, w] = x.dims();
        let [kh, kw] = pool.kernel_size;
        let unpadded = matches!(
            pool.padding,
            PaddingConfig2d::Valid | PaddingConfig2d::Explicit(0, 0, 0, 0)
        );
        let device = x.device();
        if unpadded
            && !pool.ceil_mode
            && (kh * kw).is_power_of_two()
            && (1..=h).contains(&kh)
            && (1..=w).contains(&kw)
            && c > 0
            && super::direct::available()
            && !device.is_autodiff()
            && super::conv::on_cpu_backend(&device)
        {
            let weight = Tensor::full([c, 1, kh, kw], 1.0 / (kh * kw) as f32, &device);
            let options = ConvOptions::new(pool.stride, [0, 0], [1, 1], c);
            return super::conv::conv2d(x, weight, None, options);
        }
    }
    pool.forward(x)
}

#[cfg(any(feature = "flex", feature = "ndarray"))]
pub(super) mod cpu {
    // The ndarray backend is deprecated upstream and still supported here.
    #![allow(deprecated)]

    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Backend, Dispatch, backend_extension};
    use burn::tensor::Tensor;

    /// The backend operations behind the CPU path of `max_pool2d_module`. Not meant to be
    /// called directly.
    #[backend_extension(
        Flex: cfg(feature = "flex"),
        NdArray: cfg(feature = "ndarray"),
        Autodiff: cfg(feature = "autodiff")
    )]
    pub trait PoolKernels: Backend {
        /// Max pooling of `x` `[N, C, H, W]` with windows `kernel`, `stride`, symmetric
        /// `padding` and `dilation` (per axis), the output size rounded up when `ceil`;
        /// `[N, C, OH, OW]`.
        fn max_pool2d_planes(
            x: FloatTensor<Self>,
            kernel: [usize; 2],
            stride: [usize; 2],
            padding: [usize; 2],
            dilation: [usize; 2],
            ceil: bool,
        ) -> FloatTensor<Self>;

        /// Input gradient `[N, C, H, W]` of [`max_pool2d_planes`](Self::max_pool2d_planes)
        /// of `x`, given its `output` and the output gradient `grad` (`[N, C, OH, OW]`): each
        /// output value's gradient added at its window's maximum, the first one in row-major
        /// order (the last one when it is NaN), as burn's max pooling with indices chooses.
        #[allow(clippy::too_many_arguments)]
        #[cfg_attr(not(feature = "autodiff"), allow(dead_code))]
        fn max_pool2d_planes_backward(
            x: FloatTensor<Self>,
            output: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            kernel: [usize; 2],
            stride: [usize; 2],
            padding: [usize; 2],
            dilation: [usize; 2],
            ceil: bool,
        ) -> FloatTensor<Self>;
    }

    pub(super) fn max_pool2d(
        x: Tensor<4>,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        ceil: bool,
    ) -> Tensor<4> {
        Tensor::from_dispatch(<Dispatch as PoolKernels>::max_pool2d_planes(
            x.into_dispatch(),
            kernel,
            stride,
            padding,
            dilation,
            ceil,
        ))
    }
}

/// Geometry of one max pooling, per axis `[height, width]`.
#[cfg(any(feature = "flex", feature = "ndarray"))]
#[derive(Clone, Copy, Debug)]
pub(super) struct PoolGeometry {
    pub input: [usize; 2],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    /// Output size rounded up (`ceil_mode`) rather than down.
    pub ceil: bool,
}

#[cfg(any(feature = "flex", feature = "ndarray"))]
impl PoolGeometry {
    /// Span of a window along `axis` (`1 + dilation * (kernel - 1)`; `kernel > 0`).
    pub fn window(&self, axis: usize) -> usize {
        self.dilation[axis] * (self.kernel[axis] - 1) + 1
    }

    /// Output size per axis, by burn's rule for its pooling modules (PyTorch's; in ceil mode
    /// less a last window that would start in the trailing padding).
    pub fn output(&self) -> [usize; 2] {
        core::array::from_fn(|a| {
            burn::backend::ops::conv::calculate_pool_output_size(
                self.kernel[a],
                self.stride[a],
                self.padding[a],
                self.dilation[a],
                self.input[a],
                self.ceil,
            )
        })
    }
}

/// The larger of `a` and `b`, NaN if either is (NaN wins, as in burn and PyTorch).
#[cfg(any(feature = "flex", feature = "ndarray"))]
#[inline(always)]
fn max_nan(a: f32, b: f32) -> f32 {
    if b > a || b.is_nan() { b } else { a }
}

/// Max pooling of contiguous `[N, C, H, W]` values; `[N, C, OH, OW]`.
#[cfg(any(feature = "flex", feature = "ndarray"))]
pub(super) fn max_pool_planes(x: &[f32], planes: usize, g: &PoolGeometry) -> Vec<f32> {
    use rayon::prelude::*;

    use super::buffer::{assume_init, uninit};

    let [h, w] = g.input;
    let [oh, ow] = g.output();
    let mut out = uninit(planes * oh * ow);
    if oh * ow == 0 {
        // SAFETY: empty.
        return unsafe { assume_init(out) };
    }
    out.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(h * w))
        .for_each_init(
            || vec![0.0f32; h * ow],
            |rows, (out, plane)| pool_plane(plane, rows, out, g),
        );
    // SAFETY: `out` holds `planes` planes of `OH * OW` values, `x` as many of `H * W`
    // (checked by the caller), and `pool_columns` writes every value of each.
    unsafe { assume_init(out) }
}

/// Input gradient of [`max_pool_planes`]: `x` `[planes, H, W]`, its pooled `output` and the
/// output gradient `grad` (both `[planes, OH, OW]`), contiguous; `[planes, H, W]`.
#[cfg(any(feature = "flex", feature = "ndarray"))]
#[cfg_attr(not(feature = "autodiff"), allow(dead_code))]
pub(super) fn max_pool_backward_planes(
    x: &[f32],
    output: &[f32],
    grad: &[f32],
    planes: usize,
    g: &PoolGeometry,
) -> Vec<f32> {
    use rayon::prelude::*;

    let [h, w] = g.input;
    let [oh, ow] = g.output();
    assert!(
        x.len() == planes * h * w && output.len() == planes * oh * ow && grad.len() == output.len(),
        "max pooling backward: input, output and gradient sizes"
    );
    if oh * ow == 0 || h * w == 0 {
        return vec![0.0f32; planes * h * w];
    }
    // Zeroed inside each task rather than allocated zeroed: fresh zeroed memory maps the
    // kernel's shared zero page on the first read, and the first write after it then costs
    // a copy-on-write fault that flushes every thread's TLB (~3 % of a training step).
    let mut dx = super::buffer::uninit(planes * h * w);
    dx.par_chunks_mut(h * w)
        .zip(x.par_chunks(h * w))
        .zip(output.par_chunks(oh * ow).zip(grad.par_chunks(oh * ow)))
        .for_each(|((dx, x), (y, dy))| {
            dx.fill(core::mem::MaybeUninit::new(0.0));
            // SAFETY: every element was just written.
            let dx = unsafe { super::buffer::assume_init_mut(dx) };
            unpool_plane(x, y, dy, dx, g)
        });
    // SAFETY: the tasks cover every plane, and each zeroed its plane in full.
    unsafe { super::buffer::assume_init(dx) }
}

/// One plane of [`max_pool_backward_planes`]: adds `dy` `[OH, OW]` onto `dx` `[H, W]` at the
/// maximum of each window of `x` `[H, W]`, found as the first value equal to the window's
/// output `y` (a maximum has no rounding), or for a NaN output the window's last NaN.
#[cfg(any(feature = "flex", feature = "ndarray"))]
#[cfg_attr(not(feature = "autodiff"), allow(dead_code))]
#[inline(always)]
fn unpool_plane_body(x: &[f32], y: &[f32], dy: &[f32], dx: &mut [f32], g: &PoolGeometry) {
    let [h, w] = g.input;
    let ow = g.output()[1];
    // Per output row and column: the input index of the window's first tap inside the plane
    // and the number of taps inside it (the taps are `dilation` apart).
    let spans = |axis: usize, size: usize, outputs: usize| -> Vec<(usize, usize)> {
        (0..outputs)
            .map(|o| {
                let mut inside = (0..g.kernel[axis]).filter_map(|i| {
                    (o * g.stride[axis] + i * g.dilation[axis])
                        .checked_sub(g.padding[axis])
                        .filter(|&v| v < size)
                });
                let first = inside.next();
                first.map_or((0, 0), |first| (first, 1 + inside.count()))
            })
            .collect()
    };
    let rows = spans(0, h, g.output()[0]);
    let cols = spans(1, w, ow);
    let [dr, dc] = [g.dilation[0] * w, g.dilation[1]];
    for (oy, &(iy, ny)) in rows.iter().enumerate() {
        for (ox, &(ix, nx)) in cols.iter().enumerate() {
            let o = oy * ow + ox;
            let m = y[o];
            let first = iy * w + ix;
            let mut taps = (0..ny).flat_map(|a| (0..nx).map(move |b| first + a * dr + b * dc));
            let at = if m.is_nan() {
                taps.rfind(|&i| x[i].is_nan())
            } else {
                taps.find(|&i| x[i] == m)
            };
            if let Some(at) = at {
                dx[at] += dy[o];
            }
        }
    }
}

#[cfg(any(feature = "flex", feature = "ndarray"))]
super::simd::multiversion! {
    #[cfg_attr(not(feature = "autodiff"), allow(dead_code))]
    fn unpool_plane(x: &[f32], y: &[f32], dy: &[f32], dx: &mut [f32], g: &PoolGeometry)
        => unpool_plane_body
}

/// One plane: `plane` `[H, W]` pooled into `out` `[OH, OW]` through `rows` `[H, OW]`.
#[cfg(any(feature = "flex", feature = "ndarray"))]
#[inline(always)]
fn pool_plane_body(
    plane: &[f32],
    rows: &mut [f32],
    out: &mut [core::mem::MaybeUninit<f32>],
    g: &PoolGeometry,
) {
    pool_rows(plane, rows, g);
    pool_columns(rows, out, g);
}

#[cfg(any(feature = "flex", feature = "ndarray"))]
super::simd::multiversion! {
    fn pool_plane(
        plane: &[f32],
        rows: &mut [f32],
        out: &mut [core::mem::MaybeUninit<f32>],
        g: &PoolGeometry,
    ) => pool_plane_body
}

/// `rows [H, OW]`: the maximum of every window along each input row of `plane` `[H, W]`
/// (minus infinity where a window lies wholly in the padding).
#[cfg(any(feature = "flex", feature = "ndarray"))]
#[inline(always)]
fn pool_rows(plane: &[f32], rows: &mut [f32], g: &PoolGeometry) {
    let w = g.input[1];
    let ow = g.output()[1];
    let (k, s, p, d) = (g.kernel[1], g.stride[1], g.padding[1], g.dilation[1]);
    // Windows `lo..hi` lie inside the row: `ox * s >= p` and `ox * s - p + span <= w`.
    let lo = p.div_ceil(s).min(ow);
    let span = g.window(1);
    let hi = if w + p >= span {
        ((w + p - span) / s + 1).clamp(lo, ow)
    } else {
        lo
    };
    for (src, dst) in plane.chunks_exact(w).zip(rows.chunks_exact_mut(ow)) {
        let edge = |ox: usize| {
            (0..k).fold(f32::NEG_INFINITY, |m, j| {
                match (ox * s + j * d).checked_sub(p) {
                    Some(ix) if ix < w => max_nan(m, src[ix]),
                    _ => m,
                }
            })
        };
        for ox in (0..lo).chain(hi..ow) {
            dst[ox] = edge(ox);
        }
        for (ox, v) in dst[lo..hi].iter_mut().enumerate() {
            let start = (lo + ox) * s - p;
            *v = src[start..start + span]
                .iter()
                .step_by(d)
                .fold(f32::NEG_INFINITY, |m, &x| max_nan(m, x));
        }
    }
}

/// `out [OH, OW]`: the maximum over each window's rows of `rows` `[H, OW]`.
#[cfg(any(feature = "flex", feature = "ndarray"))]
#[inline(always)]
fn pool_columns(rows: &[f32], out: &mut [core::mem::MaybeUninit<f32>], g: &PoolGeometry) {
    let h = g.input[0];
    let ow = g.output()[1];
    let (k, s, p, d) = (g.kernel[0], g.stride[0], g.padding[0], g.dilation[0]);
    for (oy, dst) in out.chunks_exact_mut(ow).enumerate() {
        // Window rows inside the plane; at least one when `2 * padding <= window`.
        let mut taps = (0..k).filter_map(|i| (oy * s + i * d).checked_sub(p).filter(|&iy| iy < h));
        let Some(first) = taps.next() else {
            dst.fill(core::mem::MaybeUninit::new(f32::NEG_INFINITY));
            continue;
        };
        dst.write_copy_of_slice(&rows[first * ow..(first + 1) * ow]);
        // SAFETY: written just above.
        let dst = unsafe { super::buffer::assume_init_mut(dst) };
        for iy in taps {
            for (m, &x) in dst.iter_mut().zip(&rows[iy * ow..(iy + 1) * ow]) {
                *m = max_nan(*m, x);
            }
        }
    }
}

#[cfg(all(test, any(feature = "flex", feature = "ndarray")))]
mod tests {
    use burn::nn::PaddingConfig2d;
    use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
    use burn::tensor::{Device, Distribution, Tensor, TensorData};

    use super::{PoolGeometry, max_nan};
    use crate::device::{available_devices, device_from_name};

    /// The values of `t` as bits, so that NaN compares equal to NaN.
    fn bits(t: Tensor<4>) -> Vec<u32> {
        let v = t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        v.into_iter()
            .map(|x| if x.is_nan() { u32::MAX } else { x.to_bits() })
            .collect()
    }

    /// Max pooling straight from its definition, window by window (NaN wins, as in PyTorch).
    fn direct(x: &[f32], planes: usize, g: &PoolGeometry) -> Vec<f32> {
        let ([h, w], [oh, ow]) = (g.input, g.output());
        let mut out = Vec::new();
        for plane in x.chunks(h * w).take(planes) {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut m = f32::NEG_INFINITY;
                    for i in 0..g.kernel[0] {
                        for j in 0..g.kernel[1] {
                            let iy = (oy * g.stride[0] + i * g.dilation[0]) as isize
                                - g.padding[0] as isize;
                            let ix = (ox * g.stride[1] + j * g.dilation[1]) as isize
                                - g.padding[1] as isize;
                            if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                                m = max_nan(m, plane[iy as usize * w + ix as usize]);
                            }
                        }
                    }
                    out.push(m);
                }
            }
        }
        out
    }

    /// The kernel equals the direct definition exactly (a maximum has no rounding), NaN
    /// included, and burn's `MaxPool2d` on inputs without NaN (burn's ndarray backend does not
    /// propagate NaN).
    /// Max pooling cases: `(input [H, W], kernel, stride, padding, dilation, ceil_mode)`.
    type Case = (
        [usize; 2],
        [usize; 2],
        [usize; 2],
        [usize; 2],
        [usize; 2],
        bool,
    );

    const CASES: [Case; 13] = [
        ([112, 112], [3, 3], [2, 2], [1, 1], [1, 1], false),
        ([13, 9], [3, 3], [2, 2], [1, 1], [1, 1], false),
        ([8, 8], [2, 2], [2, 2], [0, 0], [1, 1], false),
        ([7, 9], [3, 3], [1, 1], [1, 1], [1, 1], false),
        ([9, 11], [3, 3], [2, 3], [2, 2], [2, 2], false),
        ([6, 10], [3, 2], [2, 1], [1, 1], [1, 1], false),
        ([5, 5], [5, 5], [1, 1], [2, 2], [1, 1], false),
        ([1, 1], [1, 1], [1, 1], [0, 0], [1, 1], false),
        ([4, 17], [1, 3], [1, 4], [0, 1], [1, 1], false),
        // Ceil mode: fast-reid's stem (no padding), odd and even sizes, with padding (where
        // a last window starting in the trailing padding is dropped), strides above 2.
        ([112, 112], [3, 3], [2, 2], [0, 0], [1, 1], true),
        ([33, 30], [3, 3], [2, 2], [0, 0], [1, 1], true),
        ([13, 10], [3, 3], [2, 2], [1, 1], [1, 1], true),
        ([11, 14], [2, 3], [3, 4], [1, 1], [1, 1], true),
    ];

    /// The geometry of a case, burn's pooling module for it and a description.
    fn case(
        (input, kernel, stride, padding, dilation, ceil): Case,
    ) -> (PoolGeometry, MaxPool2d, String) {
        let g = PoolGeometry {
            input,
            kernel,
            stride,
            padding,
            dilation,
            ceil,
        };
        let pool = MaxPool2dConfig::new(kernel)
            .with_strides(stride)
            .with_padding(PaddingConfig2d::Explicit(
                padding[0], padding[1], padding[0], padding[1],
            ))
            .with_dilation(dilation)
            .with_ceil_mode(ceil)
            .init();
        let what = format!(
            "max pool {input:?} kernel {kernel:?} stride {stride:?} padding {padding:?} \
             dilation {dilation:?} ceil {ceil}"
        );
        (g, pool, what)
    }

    #[test]
    fn max_pool_equals_the_definition_and_burn() {
        for name in available_devices() {
            let device: Device = device_from_name(name).unwrap();
            if !super::super::conv::on_cpu_backend(&device) {
                continue;
            }
            for c in CASES {
                let (g, pool, what) = case(c);
                let (input, kernel, stride, padding, dilation, ceil) = c;
                let what = format!("{what} on {name}");
                let shape = [2, 3, input[0], input[1]];
                let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
                let fast = |x: &Tensor<4>| {
                    super::cpu::max_pool2d(x.clone(), kernel, stride, padding, dilation, ceil)
                };
                assert_eq!(bits(fast(&x)), bits(pool.forward(x.clone())), "{what}");
                assert_eq!(
                    bits(super::max_pool2d_module(&pool, x.clone())),
                    bits(pool.forward(x.clone())),
                    "max_pool2d_module, {what}"
                );
                // A NaN in the first plane, a plane of equal values (ties) in the second.
                let mut values = x.to_data().try_to_vec::<f32>().unwrap();
                let plane = input[0] * input[1];
                values[plane / 2] = f32::NAN;
                values[plane..2 * plane].fill(0.25);
                let expected = direct(&values, 6, &g);
                let x = Tensor::<4>::from_data(TensorData::new(values, shape), &device);
                let out = fast(&x);
                let [oh, ow] = g.output();
                assert_eq!(out.dims(), [2, 3, oh, ow], "shape, {what}");
                let expected =
                    Tensor::<4>::from_data(TensorData::new(expected, out.dims()), &device);
                assert_eq!(
                    bits(out),
                    bits(expected.clone()),
                    "with NaN and ties, {what}"
                );
                // Unpadded windows configured as `Valid` (the default padding) take the
                // kernel too: the NaN propagates, which burn's ndarray pooling does not do.
                if padding == [0, 0] {
                    let valid = MaxPool2dConfig::new(kernel)
                        .with_strides(stride)
                        .with_dilation(dilation)
                        .with_ceil_mode(ceil)
                        .init();
                    assert_eq!(
                        bits(super::max_pool2d_module(&valid, x.clone())),
                        bits(expected),
                        "`Valid` padding, with NaN, {what}"
                    );
                }
            }
        }
    }

    /// Max pooling's input gradient straight from its definition: each output's gradient
    /// added at its window's first maximum (a later value only when larger, or NaN: the last
    /// NaN), as burn's max pooling with indices.
    #[cfg(feature = "autodiff")]
    fn direct_grad(x: &[f32], dy: &[f32], planes: usize, g: &PoolGeometry) -> Vec<f32> {
        let ([h, w], [oh, ow]) = (g.input, g.output());
        let mut dx = vec![0.0f32; x.len()];
        for p in 0..planes {
            let (plane, grad) = (&x[p * h * w..], &dy[p * oh * ow..]);
            for (oy, ox) in (0..oh).flat_map(|oy| (0..ow).map(move |ox| (oy, ox))) {
                let mut best: Option<(f32, usize)> = None;
                for (i, j) in (0..g.kernel[0]).flat_map(|i| (0..g.kernel[1]).map(move |j| (i, j))) {
                    let iy =
                        (oy * g.stride[0] + i * g.dilation[0]) as isize - g.padding[0] as isize;
                    let ix =
                        (ox * g.stride[1] + j * g.dilation[1]) as isize - g.padding[1] as isize;
                    if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                        let at = iy as usize * w + ix as usize;
                        let v = plane[at];
                        if best.is_none_or(|(m, _)| v > m || v.is_nan()) {
                            best = Some((v, at));
                        }
                    }
                }
                if let Some((_, at)) = best {
                    dx[p * h * w + at] += grad[oy * ow + ox];
                }
            }
        }
        dx
    }

    /// The kernel's backward pass on the CPU autodiff devices gives burn's input gradient bit
    /// for bit, on ReLU'd inputs (ties at zero) with a constant plane, and the direct
    /// definition's with a NaN.
    #[cfg(feature = "autodiff")]
    #[test]
    fn max_pool_gradient_equals_burn_and_the_definition() {
        for name in available_devices() {
            let device: Device = device_from_name(name).unwrap();
            if !super::super::conv::on_cpu_backend(&device) {
                continue;
            }
            let device = device.autodiff();
            for c in CASES {
                let (g, pool, what) = case(c);
                let what = format!("{what} on {name} (autodiff)");
                let [oh, ow] = g.output();
                let (shape, plane) = ([2, 3, c.0[0], c.0[1]], c.0[0] * c.0[1]);
                let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
                let mut values = burn::tensor::activation::relu(x)
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap();
                values[plane..2 * plane].fill(0.25);
                let dy = Tensor::<4>::random([2, 3, oh, ow], Distribution::Default, &device);
                let grad = |values: &[f32], ours: bool| {
                    let x =
                        Tensor::<4>::from_data(TensorData::new(values.to_vec(), shape), &device)
                            .require_grad();
                    let y = if ours {
                        super::max_pool2d_module(&pool, x.clone())
                    } else {
                        pool.forward(x.clone())
                    };
                    let grads = (y * dy.clone()).sum().backward();
                    x.grad(&grads).expect("input gradient")
                };
                assert_eq!(
                    bits(grad(&values, true)),
                    bits(grad(&values, false)),
                    "{what}"
                );
                // Two NaNs side by side: windows holding both route to the second.
                values[plane / 2] = f32::NAN;
                values[(plane / 2 + 1).min(plane - 1)] = f32::NAN;
                let dy_values = dy.to_data().try_to_vec::<f32>().unwrap();
                let expected = direct_grad(&values, &dy_values, 6, &g);
                let expected = Tensor::<4>::from_data(TensorData::new(expected, shape), &device);
                assert_eq!(
                    bits(grad(&values, true)),
                    bits(expected),
                    "with NaN, {what}"
                );
            }
        }
    }

    /// Average pooling over power-of-two windows as a depthwise convolution equals burn's
    /// `AvgPool2d` bit for bit (scaling by a power of two is exact, and the direct kernel
    /// sums a window's values in burn's order); other windows and padded pools are burn's
    /// own. On the CPU devices.
    #[test]
    fn avg_pool_equals_burn() {
        use burn::nn::pool::AvgPool2dConfig;

        // (input [H, W], kernel, stride, padding)
        type Case = ([usize; 2], [usize; 2], [usize; 2], usize);
        let cases: [Case; 6] = [
            ([56, 56], [2, 2], [2, 2], 0),
            ([13, 9], [2, 2], [2, 2], 0),
            ([7, 10], [4, 2], [1, 3], 0),
            ([2, 2], [2, 2], [2, 2], 0),
            ([9, 9], [3, 3], [2, 2], 0),
            ([8, 8], [2, 2], [2, 2], 1),
        ];
        for name in available_devices() {
            let device: Device = device_from_name(name).unwrap();
            if !super::super::conv::on_cpu_backend(&device) {
                continue;
            }
            for (input, kernel, stride, padding) in cases {
                let what = format!(
                    "avg pool {input:?} kernel {kernel:?} stride {stride:?} padding {padding} \
                     on {name}"
                );
                let x = Tensor::<4>::random(
                    [2, 5, input[0], input[1]],
                    Distribution::Normal(0.0, 1.0),
                    &device,
                );
                let pool = AvgPool2dConfig::new(kernel)
                    .with_strides(stride)
                    .with_padding(PaddingConfig2d::Explicit(
                        padding, padding, padding, padding,
                    ))
                    .init();
                assert_eq!(
                    bits(super::avg_pool2d_module(&pool, x.clone())),
                    bits(pool.forward(x.clone())),
                    "{what}"
                );
            }
        }
    }
}
