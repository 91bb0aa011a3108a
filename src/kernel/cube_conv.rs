//! [`conv2d`](super::conv2d) on the CubeCL backend: the input unfolded by a kernel of this
//! crate and one batched matrix product (burn's, autotuned) per run of samples; the backward
//! pass is the two matching products and a fold of the input gradient's columns back onto
//! the input (col2im, a gather: one unit per input value sums the columns that read it, so
//! no atomics).
//!
//! The unfolded input of samples `n` holds, per input channel `c` and kernel tap `t` (row
//! `c * kh * kw + t`), the `OH x OW` window of the zero-padded input that tap reads (strided
//! and dilated). The forward pass and the input gradient lay it out `[N, C_in * kh * kw, OH *
//! OW]` (read as `[N, groups, C_in / groups * kh * kw, OH * OW]`: one product per sample and
//! group); the weight gradient `[C_in * kh * kw, N * OH * OW]`, so that one product per group
//! sums over the samples.

use core::sync::atomic::{AtomicUsize, Ordering};

use burn::backend::TensorMetadata;
use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Shape, Slice};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::client::Client;
use cubecl::prelude::*;

use super::conv::{ConvKernels, output_size};
use super::cube::empty_like;
use super::dims4;

static LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// Number of unfold and fold kernels launched on CubeCL devices since the program started
/// (lets tests check that the convolution kernels, not burn's convolution, ran).
pub fn cube_conv_launches() -> usize {
    LAUNCHES.load(Ordering::Relaxed)
}

/// Largest unfolded input built at once, in values (128 Mi values, 512 MiB of float32):
/// longer batches are computed in runs of samples. A variable so that tests can take the
/// runs with small inputs; the result does not depend on it.
static UNFOLD_VALUES: AtomicUsize = AtomicUsize::new(128 << 20);

/// The sizes of one convolution.
#[derive(Clone, Debug)]
struct Geometry {
    batch: usize,
    c_in: usize,
    size: [usize; 2],
    c_out: usize,
    kernel: [usize; 2],
    out: [usize; 2],
    options: ConvOptions<2>,
}

impl Geometry {
    fn new(x: &Shape, weight: &Shape, options: &ConvOptions<2>) -> Self {
        let [batch, c_in, h, w] = dims4(x);
        let [c_out, _, kh, kw] = dims4(weight);
        let [size, kernel] = [[h, w], [kh, kw]];
        let out = [0, 1].map(|axis| {
            output_size(size[axis], kernel[axis], options, axis)
                .expect("conv2d checked that the kernel fits")
        });
        Self {
            batch,
            c_in,
            size,
            c_out,
            kernel,
            out,
            options: options.clone(),
        }
    }

    /// `[N, C_out, OH, OW]`.
    fn output_shape(&self) -> Shape {
        Shape::new([self.batch, self.c_out, self.out[0], self.out[1]])
    }

    fn taps(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }

    /// Values per group and output position: `C_in / groups * kh * kw`.
    fn depth(&self) -> usize {
        self.c_in / self.options.groups * self.taps()
    }

    fn positions(&self) -> usize {
        self.out[0] * self.out[1]
    }

    /// Whether the input read as `[N, C_in, H * W]` is its unfolded matrix already (a
    /// stride-1 unpadded 1x1 kernel).
    fn is_unfolded(&self) -> bool {
        let o = &self.options;
        self.kernel == [1, 1] && o.stride == [1, 1] && o.padding == [(0, 0); 2]
    }

    /// `(first sample, samples)` of each run whose unfolded input fits [`UNFOLD_VALUES`]
    /// (at least one sample per run).
    fn runs(&self) -> impl Iterator<Item = (usize, usize)> {
        let per_sample = (self.c_in * self.taps() * self.positions()).max(1);
        let limit = UNFOLD_VALUES.load(Ordering::Relaxed);
        let run = (limit / per_sample).clamp(1, self.batch.max(1));
        let n = self.batch;
        (0..n)
            .step_by(run)
            .map(move |start| (start, run.min(n - start)))
    }
}

/// The output shape `[N, C_out, OH, OW]` of a convolution of `x` `[N, C_in, H, W]` by
/// `weight` `[C_out, C_in / groups, kh, kw]` (sizes checked by [`conv2d`](super::conv2d)).
pub(super) fn output_shape(x: &Shape, weight: &Shape, options: &ConvOptions<2>) -> Shape {
    Geometry::new(x, weight, options).output_shape()
}

/// The sizes the kernels read: channels, input `h x w`, kernel `kh x kw`, output `oh x ow`,
/// stride, dilation and the padding before the first row (`top`) and column (`left`).
#[derive(CubeType, CubeLaunch, Clone, Copy)]
struct Window {
    channels: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    stride_h: usize,
    stride_w: usize,
    dilation_h: usize,
    dilation_w: usize,
    top: usize,
    left: usize,
}

/// Writes the unfolded input: one unit per value, `(n, c, tap, oy, ox)` in row-major order
/// (`N x C x kh * kw x OH x OW` units); the value goes to `(c * kh * kw + tap) * row_stride +
/// n * sample_stride + oy * OW + ox` of `cols`. `x` is `[N, C, h, w]`, contiguous.
#[cube(launch)]
fn unfold_kernel<F: Float>(
    x: &Tensor<F>,
    cols: &mut Tensor<F>,
    g: Window,
    row_stride: usize,
    sample_stride: usize,
    #[define(F)] _dtype: ElemType,
) {
    let pos = ABSOLUTE_POS;
    if pos < cols.len() {
        let taps = g.kh * g.kw;
        let ox = pos % g.ow;
        let mut rest = pos / g.ow;
        let oy = rest % g.oh;
        rest /= g.oh;
        let tap = rest % taps;
        rest /= taps;
        let c = rest % g.channels;
        let n = rest / g.channels;
        // Row and column in the zero-padded input.
        let yp = oy * g.stride_h + (tap / g.kw) * g.dilation_h;
        let xp = ox * g.stride_w + (tap % g.kw) * g.dilation_w;
        let target = (c * taps + tap) * row_stride + n * sample_stride + oy * g.ow + ox;
        if yp >= g.top && yp < g.top + g.h && xp >= g.left && xp < g.left + g.w {
            cols[target] = x[((n * g.channels + c) * g.h + yp - g.top) * g.w + xp - g.left];
        } else {
            cols[target] = F::new(0.0_f32);
        }
    }
}

/// The input gradient `dx` (`[N, C, h, w]`) from its columns `cols` (`[N, C * kh * kw, OH *
/// OW]`, the forward pass's layout): one unit per input value `(n, c, y, x)` sums the column
/// values of every tap and output position that read it.
#[cube(launch)]
fn fold_kernel<F: Float>(
    cols: &Tensor<F>,
    dx: &mut Tensor<F>,
    g: Window,
    #[define(F)] _dtype: ElemType,
) {
    let pos = ABSOLUTE_POS;
    if pos < dx.len() {
        let x = pos % g.w;
        let mut rest = pos / g.w;
        let y = rest % g.h;
        rest /= g.h;
        let c = rest % g.channels;
        let n = rest / g.channels;
        // Row and column in the zero-padded input.
        let (yp, xp) = (y + g.top, x + g.left);
        let positions = g.oh * g.ow;
        let first_row = (n * g.channels + c) * g.kh * g.kw;
        let mut sum = F::new(0.0_f32);
        for ki in 0..g.kh {
            let reach_y = ki * g.dilation_h;
            if yp >= reach_y {
                let ty = yp - reach_y;
                let oy = ty / g.stride_h;
                if oy * g.stride_h == ty && oy < g.oh {
                    for kj in 0..g.kw {
                        let reach_x = kj * g.dilation_w;
                        if xp >= reach_x {
                            let tx = xp - reach_x;
                            let ox = tx / g.stride_w;
                            if ox * g.stride_w == tx && ox < g.ow {
                                let row = first_row + ki * g.kw + kj;
                                sum += cols[row * positions + oy * g.ow + ox];
                            }
                        }
                    }
                }
            }
        }
        dx[pos] = sum;
    }
}

impl Geometry {
    fn window(&self) -> WindowLaunch {
        let o = &self.options;
        WindowLaunch::new(
            self.c_in,
            self.size[0],
            self.size[1],
            self.kernel[0],
            self.kernel[1],
            self.out[0],
            self.out[1],
            o.stride[0],
            o.stride[1],
            o.dilation[0],
            o.dilation[1],
            o.padding[0].0,
            o.padding[1].0,
        )
    }
}

/// Cube count and dimension for one unit per value of a `total`-value output; counts the
/// launch (see [`cube_conv_launches`]).
fn unit_per_value(client: &Client, total: usize) -> (CubeCount, CubeDim) {
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
    let dim = CubeDim::new(client, total);
    (calculate_cube_count_elemwise(client, total, dim), dim)
}

/// Samples `start..start + len` of `t` (all of it when that is every sample).
fn samples(t: &CubeTensor, (start, len): (usize, usize), batch: usize) -> CubeTensor {
    if start == 0 && len == batch {
        return t.clone();
    }
    CubeBackend::float_slice(t.clone(), &[Slice::from(start..start + len)])
}

/// The unfolded input of `x` (`[n, C_in, H, W]`), as `[n, C_in * kh * kw, OH * OW]` or, with
/// `samples_inner`, `[C_in * kh * kw, n * OH * OW]`.
fn unfold(x: CubeTensor, g: &Geometry, samples_inner: bool) -> CubeTensor {
    let x = into_contiguous(x);
    let n = x.shape()[0];
    let (rows, positions) = (g.c_in * g.taps(), g.positions());
    let shape = if samples_inner {
        Shape::new([rows, n * positions])
    } else {
        Shape::new([n, rows, positions])
    };
    let cols = empty_like(&x, shape);
    let total = n * rows * positions;
    if total == 0 {
        return cols;
    }
    let (row_stride, sample_stride) = if samples_inner {
        (n * positions, positions)
    } else {
        (positions, rows * positions)
    };
    let client = x.client.clone();
    let (count, dim) = unit_per_value(&client, total);
    let dtype = dtype_to_storage_type(x.dtype);
    unfold_kernel::launch(
        &client,
        count,
        dim,
        x.into_tensor_arg(),
        cols.clone().into_tensor_arg(),
        g.window(),
        row_stride,
        sample_stride,
        dtype,
    );
    cols
}

/// The input gradient `[n, C_in, H, W]` from its columns `[n, C_in * kh * kw, OH * OW]`.
fn fold(cols: CubeTensor, g: &Geometry) -> CubeTensor {
    let cols = into_contiguous(cols);
    let n = cols.shape()[0];
    let [h, w] = g.size;
    let dx = empty_like(&cols, Shape::new([n, g.c_in, h, w]));
    let total = n * g.c_in * h * w;
    if total == 0 {
        return dx;
    }
    let client = cols.client.clone();
    let (count, dim) = unit_per_value(&client, total);
    let dtype = dtype_to_storage_type(cols.dtype);
    fold_kernel::launch(
        &client,
        count,
        dim,
        cols.into_tensor_arg(),
        dx.clone().into_tensor_arg(),
        g.window(),
        dtype,
    );
    dx
}

fn reshape(t: CubeTensor, dims: &[usize]) -> CubeTensor {
    CubeBackend::float_reshape(t, Shape::from(dims.to_vec()))
}

/// `parts` joined along the first dimension.
fn join(mut parts: Vec<CubeTensor>) -> CubeTensor {
    if parts.len() == 1 {
        return parts.remove(0);
    }
    CubeBackend::float_cat(parts, 0)
}

impl ConvKernels for CubeBackend {
    fn conv2d_unfold(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        with_bias: bool,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let g = Geometry::new(&x.shape(), &weight.shape(), &options);
        let (groups, depth, positions) = (g.options.groups, g.depth(), g.positions());
        let [oh, ow] = g.out;
        if g.batch == 0 {
            return empty_like(&x, g.output_shape());
        }
        let weight = reshape(weight, &[1, groups, g.c_out / groups, depth]);
        let outputs = g
            .runs()
            .map(|run| {
                let x = samples(&x, run, g.batch);
                let n = run.1;
                let cols = if g.is_unfolded() {
                    x
                } else {
                    unfold(x, &g, false)
                };
                let cols = reshape(cols, &[n, groups, depth, positions]);
                let y = Self::float_matmul(weight.clone(), cols);
                reshape(y, &[n, g.c_out, oh, ow])
            })
            .collect();
        let y = join(outputs);
        if with_bias {
            Self::float_add(y, reshape(bias, &[1, g.c_out, 1, 1]))
        } else {
            y
        }
    }

    fn conv2d_unfold_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let g = Geometry::new(&x.shape(), &weight.shape(), &options);
        let (groups, depth, positions) = (g.options.groups, g.depth(), g.positions());
        let c_group_out = g.c_out / groups;
        let weight_shape = weight.shape();
        if g.batch == 0 {
            let dweight = Self::float_zeros(weight_shape, &weight.device, weight.dtype.into());
            return (x, dweight);
        }
        // [1, groups, depth, C_out / groups]: the weights transposed per group.
        let weight_t =
            Self::float_swap_dims(reshape(weight, &[1, groups, c_group_out, depth]), 2, 3);
        let mut dxs = Vec::new();
        let mut dweight: Option<CubeTensor> = None;
        for run in g.runs() {
            let n = run.1;
            let grad = samples(&grad, run, g.batch);
            // Input gradient: the columns W^T dy, folded back onto the input.
            let dy = reshape(grad.clone(), &[n, groups, c_group_out, positions]);
            let dcols = Self::float_matmul(weight_t.clone(), dy);
            dxs.push(if g.is_unfolded() {
                reshape(dcols, &[n, g.c_in, g.size[0], g.size[1]])
            } else {
                fold(reshape(dcols, &[n, g.c_in * g.taps(), positions]), &g)
            });
            // Weight gradient: per group, dy [C_out / groups, n * OH * OW] times the unfolded
            // input transposed, [n * OH * OW, depth].
            let cols = unfold(samples(&x, run, g.batch), &g, true);
            let cols_t =
                Self::float_swap_dims(reshape(cols, &[groups, depth, n * positions]), 1, 2);
            let dy = Self::float_swap_dims(reshape(grad, &[n, g.c_out, positions]), 0, 1);
            let dy = reshape(into_contiguous(dy), &[groups, c_group_out, n * positions]);
            let part = Self::float_matmul(dy, cols_t);
            dweight = Some(match dweight {
                None => part,
                Some(sum) => Self::float_add(sum, part),
            });
        }
        let dweight = dweight.expect("at least one run of samples");
        (join(dxs), Self::float_reshape(dweight, weight_shape))
    }
}

#[cfg(all(test, feature = "autodiff"))]
mod tests {
    use burn::tensor::{Distribution, Tensor, Tolerance};

    use super::*;

    /// A batch computed in runs of one and two samples (a small unfolding limit) gives the
    /// output and gradients of the whole batch at once, on wgpu.
    #[test]
    fn runs_of_samples_give_the_whole_batch_result() {
        let device = crate::device::device_from_name("wgpu").unwrap().autodiff();
        device.seed(4);
        let x = Tensor::<4>::random([3, 4, 9, 9], Distribution::Default, &device).require_grad();
        let w = Tensor::<4>::random([6, 4, 3, 3], Distribution::Default, &device).require_grad();
        let b = Tensor::<1>::random([6], Distribution::Default, &device).require_grad();
        let options = ConvOptions::new([2, 2], [1, 1], [1, 1], 1);
        // Unfolded values per sample: 4 channels x 9 taps x 5 x 5 positions.
        let per_sample = 4 * 9 * 5 * 5;
        let run = |limit: usize| {
            let default = UNFOLD_VALUES.swap(limit, Ordering::Relaxed);
            let y = super::super::conv2d(x.clone(), w.clone(), Some(b.clone()), options.clone());
            let grads = (y.clone() * y.clone()).sum().backward();
            // Read back before the limit is restored: fusion runs the kernels lazily.
            let dx = x.grad(&grads).expect("an input gradient").into_data();
            let dw = w.grad(&grads).expect("a weight gradient").into_data();
            let result = [y.into_data(), dx, dw];
            UNFOLD_VALUES.store(default, Ordering::Relaxed);
            result
        };
        let whole = run(usize::MAX);
        for samples in [1, 2] {
            for (part, expected) in run(samples * per_sample).iter().zip(&whole) {
                part.assert_approx_eq::<f32>(expected, Tolerance::rel_abs(1e-5, 1e-5));
            }
        }
    }

    /// An empty batch gives an empty output and a zero weight gradient.
    #[test]
    fn an_empty_batch_gives_empty_results() {
        let device = crate::device::device_from_name("wgpu").unwrap().autodiff();
        let x = Tensor::<4>::zeros([0, 4, 9, 9], &device).require_grad();
        let w = Tensor::<4>::ones([6, 4, 3, 3], &device).require_grad();
        let options = ConvOptions::new([2, 2], [1, 1], [1, 1], 1);
        let y = super::super::conv2d(x.clone(), w.clone(), None, options);
        assert_eq!(y.dims(), [0, 6, 5, 5]);
        let grads = y.sum().backward();
        let dw = w.grad(&grads).expect("a weight gradient");
        assert_eq!(dw.dims(), [6, 4, 3, 3]);
        assert!(dw.into_data().iter::<f32>().all(|v| v == 0.0));
    }
}
