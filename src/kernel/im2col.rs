//! 2-d convolution on CPU backends as im2col + matrix product, forward and backward, over
//! contiguous `f32` buffers in NCHW layout.
//!
//! Per sample, the input planes are unfolded into the matrix `col` `[C_in * kh * kw, OH * OW]`
//! (row `(c, i, j)` holds plane `c` shifted by kernel tap `(i, j)`), which is exactly the layout
//! of PyTorch's weights `[C_out, C_in / groups, kh, kw]` read as `[C_out, K]`: the output of
//! group `g` is `W_g [C_out / groups, K_g] x col_g [K_g, OH * OW]`, written straight into the
//! output tensor. Stride-1, unpadded 1x1 convolutions use the input itself as `col`. The
//! backward pass is two products per sample: `dW_g += dY_g x col_g^T` and
//! `dcol_g = W_g^T x dY_g`, then `dcol` is folded back onto the input planes (col2im); for
//! small output planes the weight gradient is instead one product over many samples at once
//! (their `col` and `dY` side by side), and for few output channels it is summed transposed,
//! `dW_g^T += col_g x dY_g^T` (the product then copies `dY_g` rather than the larger `col_g`).
//!
//! Large inputs are unfolded a block of output rows at a time, so `col` stays within
//! `COL_BUDGET` values whatever the image size. Work is split across samples when there are at
//! least as many samples as threads (one scratch `col` per thread, reused between calls), and
//! inside each product otherwise.

use core::mem::MaybeUninit;
use core::ops::Range;
use std::cell::RefCell;

use gemm::Parallelism;
use rayon::prelude::*;

use super::buffer::{assume_init, assume_init_mut, uninit};
use super::simd::multiversion;

/// Geometry of one 2-d convolution (padding at the start of each axis; the output size
/// already accounts for the padding at the end).
#[derive(Clone, Copy, Debug)]
pub(super) struct ConvGeometry {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
    pub out: [usize; 2],
}

/// A forward convolution: `(geometry, x, weight, finish)` to the output `[N, C_out, OH, OW]`
/// (im2col's, Winograd's and the direct kernel's `conv2d_forward`).
pub(super) type ForwardFn = fn(&ConvGeometry, &[f32], &[f32], Finish<'_>) -> Vec<f32>;

/// What a forward convolution does to its sums as it writes them: multiplies by a scale and
/// adds a bias (per output channel: a batch norm's transform, or the convolution's bias), adds
/// a residual (one value per output value), then applies ReLU, each when asked. Done by each
/// kernel where the values are still in cache, this saves the passes a batch norm, a residual
/// addition and a ReLU would otherwise take.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Finish<'a> {
    /// `[C]` for the part's `C` output channels (1 without it).
    pub scale: Option<&'a [f32]>,
    /// `[C]` for the part's `C` output channels.
    pub bias: Option<&'a [f32]>,
    /// The part's values, in the output's layout, from its first output value on.
    pub residual: Option<&'a [f32]>,
    /// ReLU last (NaN stays NaN).
    pub relu: bool,
}

/// `relu(s * a + b + r)`, each part as the const parameters ask (`a = 1`, `b = 0` for a bias
/// alone or a scale alone: `s * 1.0 + b` is `s + b` exactly).
#[inline(always)]
fn finish_value<const AFFINE: bool, const RESIDUAL: bool, const RELU: bool>(
    s: f32,
    (a, b): (f32, f32),
    r: f32,
) -> f32 {
    let mut v = s;
    if AFFINE {
        v = v * a + b;
    }
    if RESIDUAL {
        v += r;
    }
    if RELU { super::cpu::relu(v) } else { v }
}

/// `dst = relu(src * a + b + r)` ([`finish_value`]; `residual` is not read without
/// `RESIDUAL`).
#[inline(always)]
fn finish_values<const AFFINE: bool, const RESIDUAL: bool, const RELU: bool>(
    src: &[f32],
    residual: &[f32],
    b: (f32, f32),
    dst: &mut [MaybeUninit<f32>],
) {
    let f = finish_value::<AFFINE, RESIDUAL, RELU>;
    if RESIDUAL {
        for ((d, &s), &r) in dst.iter_mut().zip(src).zip(residual) {
            d.write(f(s, b, r));
        }
    } else {
        for (d, &s) in dst.iter_mut().zip(src) {
            d.write(f(s, b, 0.0));
        }
    }
}

/// [`finish_values`] in place.
#[inline(always)]
fn finish_in_place<const AFFINE: bool, const RESIDUAL: bool, const RELU: bool>(
    values: &mut [f32],
    residual: &[f32],
    b: (f32, f32),
) {
    let f = finish_value::<AFFINE, RESIDUAL, RELU>;
    if RESIDUAL {
        for (v, &r) in values.iter_mut().zip(residual) {
            *v = f(*v, b, r);
        }
    } else {
        for v in values.iter_mut() {
            *v = f(*v, b, 0.0);
        }
    }
}

/// Calls `$f::<AFFINE, RESIDUAL, RELU>($args)` for the flags of a [`Finish`].
macro_rules! with_flags {
    ($finish:expr, $f:ident($($args:expr),*)) => {{
        let affine = $finish.scale.is_some() || $finish.bias.is_some();
        match (affine, $finish.residual.is_some(), $finish.relu) {
            (false, false, false) => $f::<false, false, false>($($args),*),
            (false, false, true) => $f::<false, false, true>($($args),*),
            (false, true, false) => $f::<false, true, false>($($args),*),
            (false, true, true) => $f::<false, true, true>($($args),*),
            (true, false, false) => $f::<true, false, false>($($args),*),
            (true, false, true) => $f::<true, false, true>($($args),*),
            (true, true, false) => $f::<true, true, false>($($args),*),
            (true, true, true) => $f::<true, true, true>($($args),*),
        }
    }};
}

impl<'a> Finish<'a> {
    /// Whether it leaves the sums as they are.
    pub fn is_identity(&self) -> bool {
        self.scale.is_none() && self.bias.is_none() && self.residual.is_none() && !self.relu
    }

    /// The part for output channels `channels` (of this part's) whose values start `offset`
    /// values into this part's.
    pub fn part(&self, channels: Range<usize>, offset: usize) -> Self {
        Self {
            scale: self.scale.map(|a| &a[channels.clone()]),
            bias: self.bias.map(|b| &b[channels]),
            residual: self.residual.map(|r| &r[offset..]),
            relu: self.relu,
        }
    }

    /// The scale and bias of channel `c` (1 and 0 without them) and the residual from value
    /// `at`, `len` long (empty without one).
    #[inline(always)]
    fn terms(&self, c: usize, at: usize, len: usize) -> ((f32, f32), &'a [f32]) {
        let a = self.scale.map_or(1.0, |a| a[c]);
        let b = self.bias.map_or(0.0, |b| b[c]);
        ((a, b), self.residual.map_or(&[][..], |r| &r[at..at + len]))
    }

    /// Writes `src`, finished, to `dst`: values of channel `c` from value `at` of the part.
    #[inline(always)]
    pub fn write(&self, c: usize, at: usize, src: &[f32], dst: &mut [MaybeUninit<f32>]) {
        let (b, r) = self.terms(c, at, src.len());
        with_flags!(self, finish_values(src, r, b, dst))
    }

    /// Finishes `values` in place: values of channel `c` from value `at` of the part.
    #[inline(always)]
    pub fn apply(&self, c: usize, at: usize, values: &mut [f32]) {
        let (b, r) = self.terms(c, at, values.len());
        with_flags!(self, finish_in_place(values, r, b))
    }
}

impl ConvGeometry {
    /// Rows of `col` per group: `C_in / groups * kh * kw`.
    pub(super) fn k_group(&self) -> usize {
        self.c_in / self.groups * self.kernel[0] * self.kernel[1]
    }

    fn taps(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }

    pub(super) fn in_plane(&self) -> usize {
        self.h * self.w
    }

    pub(super) fn out_plane(&self) -> usize {
        self.out[0] * self.out[1]
    }

    /// The blocks of output rows unfolded at a time: as many rows as keep `col` within
    /// [`COL_BUDGET`] values (at least one); one block when `col` is the input itself.
    fn row_blocks(&self) -> impl Iterator<Item = Range<usize>> + use<> {
        let oh = self.out[0];
        let per_row = self.c_in * self.taps() * self.out[1];
        let block = if self.is_pointwise() {
            oh
        } else {
            (COL_BUDGET / per_row.max(1)).clamp(1, oh.max(1))
        };
        (0..oh)
            .step_by(block.max(1))
            .map(move |r| r..(r + block).min(oh))
    }

    /// Values of `col` for a block of `rows` output rows.
    fn col_len(&self, rows: usize) -> usize {
        self.c_in * self.taps() * rows * self.out[1]
    }

    /// Values of the scratch `col`: the largest block's, none when `col` is the input.
    fn scratch_len(&self) -> usize {
        if self.is_pointwise() {
            return 0;
        }
        let rows = self.row_blocks().map(|r| r.len()).max().unwrap_or(0);
        self.col_len(rows)
    }

    /// The input gradient `[N, C_in, H, W]` of this convolution given the output gradient
    /// `dy` `[N, C_out, OH, OW]`, computed by `forward` as the convolution of `dy` with the
    /// flipped kernel ([`Self::input_grad_geometry`], [`Self::flipped_weights`]). `None` when
    /// that convolution does not exist or `takes` declines it.
    pub(super) fn input_grad_by(
        &self,
        weight: &[f32],
        dy: &[f32],
        takes: fn(&ConvGeometry) -> bool,
        forward: ForwardFn,
    ) -> Option<Vec<f32>> {
        let transposed = self.input_grad_geometry().filter(takes)?;
        Some(forward(
            &transposed,
            dy,
            &self.flipped_weights(weight),
            Finish::default(),
        ))
    }

    /// The input gradient of this convolution as a convolution (stride 1 only): the output
    /// gradient `[N, C_out, OH, OW]` convolved with [`Self::flipped_weights`] at begin padding
    /// `dilation * (k - 1) - padding` gives `[N, C_in, H, W]`. `None` for other strides, or
    /// when the begin padding exceeds the kernel's reach.
    fn input_grad_geometry(&self) -> Option<ConvGeometry> {
        let reach = [0, 1].map(|a| self.dilation[a] * (self.kernel[a] - 1));
        if self.stride != [1, 1] || self.padding[0] > reach[0] || self.padding[1] > reach[1] {
            return None;
        }
        Some(ConvGeometry {
            c_in: self.c_out,
            h: self.out[0],
            w: self.out[1],
            c_out: self.c_in,
            padding: [reach[0] - self.padding[0], reach[1] - self.padding[1]],
            out: [self.h, self.w],
            ..*self
        })
    }

    /// The weights `[C_out, C_in / groups, kh, kw]` of this convolution flipped and transposed
    /// within each group, `W'[g * cig + c, k, i, j] = W[g * cog + k, c, kh - 1 - i, kw - 1 - j]`:
    /// the kernel of [`Self::input_grad_geometry`].
    fn flipped_weights(&self, weight: &[f32]) -> Vec<f32> {
        let (cig, cog, taps) = (
            self.c_in / self.groups,
            self.c_out / self.groups,
            self.taps(),
        );
        let mut flipped = uninit(weight.len());
        // One task per row `(grp, c)` of the result: its `cog` kernels of `taps` values.
        if cog * taps > 0 {
            flipped
                .par_chunks_mut(cog * taps)
                .enumerate()
                .for_each(|(row, dst)| {
                    let (grp, c) = (row / cig, row % cig);
                    for (k, dst) in dst.chunks_mut(taps).enumerate() {
                        let src = &weight[((grp * cog + k) * cig + c) * taps..][..taps];
                        for (d, &s) in dst.iter_mut().zip(src.iter().rev()) {
                            d.write(s);
                        }
                    }
                });
        }
        // SAFETY: `weight` holds `groups * cig` rows of `cog * taps` values, and each row of
        // `flipped` (the same length) is written in full above; nothing when a row is empty.
        unsafe { assume_init(flipped) }
    }

    /// `col` is the input itself: 1x1 kernel, unit stride, no padding (at the start, and at the
    /// end: the output planes are the input's).
    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1]
            && self.stride == [1, 1]
            && self.padding == [0, 0]
            && self.out == [self.h, self.w]
    }

    /// Samples per product when the weight gradient is one product over many samples
    /// ([`batched_weight_grad`]): as many as keep their unfolded inputs and output gradients
    /// (and one sample's `col`) within [`SCRATCH_KEEP`]. `None` (one product per sample) for
    /// output planes larger than [`BATCHED_PLANE`] values, when not even one sample fits, and
    /// for an empty batch.
    fn weight_grad_batch(&self) -> Option<usize> {
        let per_sample = (self.c_in * self.taps() + self.c_out) * self.out_plane();
        let room = SCRATCH_KEEP.checked_sub(self.col_len(self.out[0]))?;
        let fit = room / per_sample.max(1);
        ((1..=BATCHED_PLANE).contains(&self.out_plane()) && fit > 0 && self.batch > 0)
            .then(|| fit.min(self.batch))
    }

    /// Whether [`weight_grad_products`] sums each group's weight gradient transposed,
    /// `dW_g^T [kg, cog] = col_g [kg, k] x dY_g^T [k, cog]`. The product packs (copies
    /// transposed) its operand `col_g` in the usual orientation and `dY_g` in this one, and
    /// reads the other in place once per block of `dY_g`'s rows; transposed when `dY_g` has
    /// fewer rows than `col_g` and at most [`TRANSPOSED_WEIGHT_GRAD`] of them (the 3x3 and
    /// channel-reducing 1x1 convolutions of ResNet's first two stages).
    fn weight_grad_transposed(&self) -> bool {
        let cog = self.c_out / self.groups;
        (1..=TRANSPOSED_WEIGHT_GRAD).contains(&cog) && cog < self.k_group()
    }

    /// Number of tasks the batch is split into: one per thread when there are at least as
    /// many samples as threads, else 1 (and the work inside each sample is parallelised).
    fn tasks(&self) -> usize {
        let threads = rayon::current_num_threads();
        if threads > 1 && self.batch >= threads {
            threads
        } else {
            1
        }
    }
}

/// Most values of `col` unfolded at once (16 MiB): larger inputs go a block of rows at a time.
const COL_BUDGET: usize = 4 << 20;

/// Largest output plane (`OH * OW`) whose weight gradient is one product over many samples
/// ([`batched_weight_grad`]) rather than partial sums of one product per sample: the 7x7
/// planes of a 224x224 input's last ResNet stage, where the weights are large and the
/// activations small. (At 14x14 copying the unfolded inputs cost more than it saved: the
/// forward and backward pass of the third stage's 1x1 and 3x3 convolutions took 11-31 %
/// longer that way at batch 8.)
const BATCHED_PLANE: usize = 64;

/// Most output channels per group whose weight gradient is summed transposed
/// ([`ConvGeometry::weight_grad_transposed`]). Forward and backward pass at batch 8 (AVX-512):
/// 3x3 64 -> 64 on 56x56 planes 31 -> 23 ms, 128 -> 128 on 28x28 21.4 -> 19.5 ms, 1x1 256 -> 64
/// on 56x56 12.6 -> 10.6 ms; with 512 output channels on 7x7 planes it took 27 -> 34-43 ms, as
/// the unpacked unfolded input is then read once per 64 output channels.
const TRANSPOSED_WEIGHT_GRAD: usize = 128;

/// Largest scratch buffer kept between calls (values; 32 MiB): larger ones are freed.
const SCRATCH_KEEP: usize = 8 << 20;

thread_local! {
    /// Reused `col` buffer of the calling thread (grows, never shrinks).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Calls `f` with this thread's scratch buffer of at least `len` values (contents unspecified).
pub(super) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if len > SCRATCH_KEEP {
                return f(&mut vec![0.0; len]);
            }
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (a product waiting on rayon ran another task here).
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// A strided read-only matrix view: element `(r, c)` at `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    pub(super) fn row_major(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major `[rows, cols]` matrix.
    fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self::row_major(data, cols).t()
    }

    /// This matrix transposed.
    fn t(self) -> Self {
        Self {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    fn check(&self, rows: usize, cols: usize) {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * self.rs + (cols - 1) * self.cs;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

/// Elements of a matrix product's destination: `f32` values, or not yet written ones
/// (`MaybeUninit<f32>`), which a product may overwrite but not add to.
pub(super) trait Slot: Copy + Send + Sync {
    /// Whether the destination holds values (that a product may add to).
    const WRITTEN: bool;

    /// Zero, as a destination element.
    fn zero() -> Self;
}

impl Slot for f32 {
    const WRITTEN: bool = true;

    fn zero() -> Self {
        0.0
    }
}

impl Slot for MaybeUninit<f32> {
    const WRITTEN: bool = false;

    fn zero() -> Self {
        MaybeUninit::new(0.0)
    }
}

/// `dst [m, n] = lhs [m, k] x rhs [k, n]`, or `+=` with `accumulate` (only into written
/// values); `dst` is row-major with rows `dst_rs` apart. Every element of the `[m, n]` region
/// is written.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul<T: Slot>(
    dst: &mut [T],
    dst_rs: usize,
    (m, n, k): (usize, usize, usize),
    lhs: View,
    rhs: View,
    accumulate: bool,
    parallel: bool,
) {
    assert!(
        m == 0 || n == 0 || (n <= dst_rs && (m - 1) * dst_rs + n <= dst.len()),
        "matrix product output out of bounds"
    );
    assert!(
        T::WRITTEN || !accumulate,
        "a matrix product cannot add to unwritten values"
    );
    lhs.check(m, k);
    rhs.check(k, n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.chunks_mut(dst_rs)
                .take(m)
                .for_each(|row| row[..n].fill(T::zero()));
        }
        return;
    }
    // A parallel product with at least 32 rows per thread and no more than 8 columns per row
    // goes to the threads a block of rows each (each thread packs the whole right-hand side):
    // faster than gemm's own splitting for the narrow products of deep layers at batch 1.
    let threads = rayon::current_num_threads();
    if parallel && threads > 1 && m >= 32 * threads && n <= 8 * m && m * n * k >= 64 * 64 * 64 {
        let rows = m.div_ceil(threads).next_multiple_of(16);
        dst[..(m - 1) * dst_rs + n]
            .par_chunks_mut(rows * dst_rs)
            .enumerate()
            .for_each(|(i, dst)| {
                let first = i * rows;
                let lhs = View {
                    data: &lhs.data[first * lhs.rs..],
                    ..lhs
                };
                matmul(
                    dst,
                    dst_rs,
                    (rows.min(m - first), n, k),
                    lhs,
                    rhs,
                    accumulate,
                    false,
                );
            });
        return;
    }
    let parallelism = if parallel && m * n * k >= 64 * 64 * 64 {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: the three views were bounds-checked above for the (m, k), (k, n) and (m, n)
    // index ranges that `gemm` reads and writes; `dst` is borrowed mutably and does not
    // alias the shared inputs; `T` is `f32` or `MaybeUninit<f32>` (same layout), and `gemm`
    // reads `dst` only with `accumulate`, which was asserted to mean written values.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().cast::<f32>(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Output positions `lo..hi` along one axis whose input index
/// `o * stride + tap * dilation - pad` falls inside `0..size`.
pub(super) fn valid_range(size: usize, out: usize, stride: usize, offset: isize) -> (usize, usize) {
    // index = o * stride + offset, need 0 <= index < size.
    let lo = if offset >= 0 {
        0
    } else {
        ((-offset) as usize).div_ceil(stride)
    };
    let hi = if (size as isize) <= offset {
        0
    } else {
        ((size as isize - 1 - offset) as usize / stride + 1).min(out)
    };
    (lo.min(hi), hi)
}

/// The part of one row of the unfolded matrix (one kernel tap, one output row) that reads
/// the input plane: output columns `lo..hi` read input row `iy` from column `x0` on, every
/// `stride` columns; the other columns are padding.
struct Segment {
    iy: usize,
    lo: usize,
    hi: usize,
    x0: usize,
}

/// Visits every row of the unfolded matrix of one input plane for the output rows `rows`:
/// for kernel tap `t = (i, j)` and output row `oy`, calls `f(t, oy - rows.start, segment)`,
/// `segment` being `None` when the whole row is padding.
#[inline(always)]
fn for_each_segment(
    g: &ConvGeometry,
    rows: Range<usize>,
    mut f: impl FnMut(usize, usize, Option<Segment>),
) {
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.padding;
    let [dh, dw] = g.dilation;
    for i in 0..kh {
        let off_y = (i * dh) as isize - ph as isize;
        let (y_lo, y_hi) = valid_range(g.h, g.out[0], sh, off_y);
        for j in 0..kw {
            let off_x = (j * dw) as isize - pw as isize;
            let (lo, hi) = valid_range(g.w, g.out[1], sw, off_x);
            let t = i * kw + j;
            for oy in rows.clone() {
                let segment = (oy >= y_lo && oy < y_hi && lo < hi).then(|| Segment {
                    iy: ((oy * sh) as isize + off_y) as usize,
                    lo,
                    hi,
                    x0: ((lo * sw) as isize + off_x) as usize,
                });
                f(t, oy - rows.start, segment);
            }
        }
    }
}

/// Unfolds one input plane `[H, W]` into its `kh * kw` rows of `col`
/// (`[kh * kw, out_rows.len() * OW]`) for the output rows `out_rows`.
#[inline(always)]
fn im2col_plane_body(g: &ConvGeometry, plane: &[f32], rows: &mut [f32], out_rows: Range<usize>) {
    let ow = g.out[1];
    let n = out_rows.len() * ow;
    let sw = g.stride[1];
    for_each_segment(g, out_rows, |t, oy, segment| {
        let dst = &mut rows[t * n + oy * ow..t * n + (oy + 1) * ow];
        let Some(Segment { iy, lo, hi, x0 }) = segment else {
            dst.fill(0.0);
            return;
        };
        let src = &plane[iy * g.w..(iy + 1) * g.w];
        dst[..lo].fill(0.0);
        dst[hi..].fill(0.0);
        if sw == 1 {
            dst[lo..hi].copy_from_slice(&src[x0..x0 + (hi - lo)]);
        } else {
            for (d, s) in dst[lo..hi].iter_mut().zip(src[x0..].iter().step_by(sw)) {
                *d = *s;
            }
        }
    });
}

/// Adds the `kh * kw` rows of `dcol` belonging to one input plane (for the output rows
/// `out_rows`) onto `plane`.
#[inline(always)]
fn col2im_plane_body(g: &ConvGeometry, rows: &[f32], plane: &mut [f32], out_rows: Range<usize>) {
    let ow = g.out[1];
    let n = out_rows.len() * ow;
    let sw = g.stride[1];
    for_each_segment(g, out_rows, |t, oy, segment| {
        let Some(Segment { iy, lo, hi, x0 }) = segment else {
            return;
        };
        let src = &rows[t * n + oy * ow + lo..t * n + oy * ow + hi];
        let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
        if sw == 1 {
            for (d, s) in dst[x0..x0 + (hi - lo)].iter_mut().zip(src) {
                *d += *s;
            }
        } else {
            for (d, s) in dst[x0..].iter_mut().step_by(sw).zip(src) {
                *d += *s;
            }
        }
    });
}

multiversion! {
    fn im2col_plane(g: &ConvGeometry, plane: &[f32], rows: &mut [f32], out_rows: Range<usize>)
        => im2col_plane_body
}

multiversion! {
    fn col2im_plane(g: &ConvGeometry, rows: &[f32], plane: &mut [f32], out_rows: Range<usize>)
        => col2im_plane_body
}

/// Unfolds one sample `[C_in, H, W]` into `col` `[C_in * kh * kw, out_rows.len() * OW]` for
/// the output rows `out_rows`.
fn im2col(g: &ConvGeometry, x: &[f32], col: &mut [f32], out_rows: Range<usize>, parallel: bool) {
    let rows = g.taps() * out_rows.len() * g.out[1];
    let unfold =
        |(rows, plane): (&mut [f32], &[f32])| im2col_plane(g, plane, rows, out_rows.clone());
    if parallel {
        col.par_chunks_mut(rows)
            .zip(x.par_chunks(g.in_plane()))
            .for_each(unfold);
    } else {
        col.chunks_mut(rows)
            .zip(x.chunks(g.in_plane()))
            .for_each(unfold);
    }
}

/// `col` for the output rows `out_rows` of one sample `x`: `x` itself when pointwise, else
/// `x` unfolded into the scratch `col`.
fn unfold<'a>(
    g: &ConvGeometry,
    x: &'a [f32],
    col: &'a mut [f32],
    out_rows: Range<usize>,
    parallel: bool,
) -> &'a [f32] {
    if g.is_pointwise() {
        return x;
    }
    im2col(g, x, col, out_rows, parallel);
    col
}

/// Adds `dcol` `[C_in * kh * kw, out_rows.len() * OW]` (the output rows `out_rows`) onto one
/// sample's input gradient.
fn col2im(g: &ConvGeometry, dcol: &[f32], dx: &mut [f32], out_rows: Range<usize>, parallel: bool) {
    let rows = g.taps() * out_rows.len() * g.out[1];
    let fold = |(plane, rows): (&mut [f32], &[f32])| col2im_plane(g, rows, plane, out_rows.clone());
    if parallel {
        dx.par_chunks_mut(g.in_plane())
            .zip(dcol.par_chunks(rows))
            .for_each(fold);
    } else {
        dx.chunks_mut(g.in_plane())
            .zip(dcol.chunks(rows))
            .for_each(fold);
    }
}

/// The batch split into [`ConvGeometry::tasks`] contiguous runs of samples, each with its
/// part of `buf` (`len` values per sample).
pub(super) fn sample_runs<'a, T>(
    g: &ConvGeometry,
    mut buf: &'a mut [T],
    len: usize,
) -> Vec<(Range<usize>, &'a mut [T])> {
    let tasks = g.tasks();
    (0..tasks)
        .map(|t| {
            let run = t * g.batch / tasks..(t + 1) * g.batch / tasks;
            let (part, rest) = core::mem::take(&mut buf).split_at_mut(run.len() * len);
            buf = rest;
            (run, part)
        })
        .collect()
}

/// Calls `f(item, scratch, parallel)` for every run's `item`: the runs in parallel, each with
/// its own scratch and `parallel = false`, or a single run with `parallel = true`.
pub(super) fn run_tasks<T: Send>(
    scratch: usize,
    items: Vec<T>,
    f: impl Fn(T, &mut [f32], bool) + Sync,
) {
    if items.len() == 1 {
        let item = items.into_iter().next().expect("one run");
        with_scratch(scratch, |col| f(item, col, true));
        return;
    }
    items
        .into_par_iter()
        .for_each(|item| with_scratch(scratch, |col| f(item, col, false)));
}

/// Calls `f(group, dst_group, parallel)` for the `chunk`-sized per-group parts of `dst`:
/// with `parallel`, grouped convolutions spread the groups across threads (each product on
/// one thread) and ungrouped ones parallelise the product itself.
fn for_groups<T: Send>(
    dst: &mut [T],
    chunk: usize,
    parallel: bool,
    f: impl Fn(usize, &mut [T], bool) + Sync,
) {
    let whole = chunk * (dst.len() / chunk.max(1));
    let dst = &mut dst[..whole];
    if parallel && dst.len() > chunk && chunk > 0 {
        dst.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(grp, d)| f(grp, d, false));
    } else {
        for (grp, d) in dst.chunks_mut(chunk.max(1)).enumerate() {
            f(grp, d, parallel);
        }
    }
}

/// Forward convolution: `x` `[N, C_in, H, W]`, `weight` `[C_out, C_in / groups, kh, kw]`,
/// `finish` for the whole output (bias `[C_out]`, residual `[N, C_out, OH, OW]`), applied to
/// each block of output rows right after its product; returns `[N, C_out, OH, OW]`.
pub(super) fn conv2d_forward(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    finish: Finish<'_>,
) -> Vec<f32> {
    let (n_out, kg, ow) = (g.out_plane(), g.k_group(), g.out[1]);
    let (cog, x_len) = (g.c_out / g.groups, g.c_in * g.in_plane());
    let y_len = g.c_out * n_out;
    let mut y = uninit(g.batch * y_len);
    let items = sample_runs(g, &mut y, y_len);
    run_tasks(g.scratch_len(), items, |(samples, y_run), col, parallel| {
        for (b, yb) in samples.zip(y_run.chunks_mut(y_len.max(1))) {
            let xb = &x[b * x_len..(b + 1) * x_len];
            for rows in g.row_blocks() {
                let (start, nb) = (rows.start * ow, rows.len() * ow);
                let cols = unfold(g, xb, col, rows, parallel);
                // Y_g[:, block] = W_g [cog, kg] x col_g [kg, nb]
                for_groups(yb, cog * n_out, parallel, |grp, y, parallel| {
                    matmul(
                        &mut y[start..],
                        n_out,
                        (cog, nb, kg),
                        View::row_major(&weight[grp * cog * kg..(grp + 1) * cog * kg], kg),
                        View::row_major(&cols[grp * kg * nb..(grp + 1) * kg * nb], nb),
                        false,
                        parallel,
                    );
                });
                if !finish.is_identity() {
                    // SAFETY: the products above wrote every output channel's `rows`.
                    let yb = unsafe { assume_init_mut(yb) };
                    let finish = finish.part(0..g.c_out, b * y_len);
                    let block = |(c, plane): (usize, &mut [f32])| {
                        finish.apply(c, c * n_out + start, &mut plane[start..start + nb])
                    };
                    if parallel {
                        yb.par_chunks_mut(n_out.max(1)).enumerate().for_each(block);
                    } else {
                        yb.chunks_mut(n_out.max(1)).enumerate().for_each(block);
                    }
                }
            }
        }
    });
    // SAFETY: for every sample, the row blocks cover every output row and `for_groups` every
    // output channel, and each product writes its whole `[C_out / groups, rows * OW]` region.
    unsafe { assume_init(y) }
}

/// Backward convolution: gradients of the input `[N, C_in, H, W]` (when `input_grad`) and of
/// the weight `[C_out, C_in / groups, kh, kw]` given the output gradient `dy`
/// `[N, C_out, OH, OW]`.
pub(super) fn conv2d_backward(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    input_grad: bool,
) -> (Option<Vec<f32>>, Vec<f32>) {
    let (n_out, kg, ow) = (g.out_plane(), g.k_group(), g.out[1]);
    let (cog, x_len, y_len) = (g.c_out / g.groups, g.c_in * g.in_plane(), g.c_out * n_out);
    let w_len = g.c_out * kg;
    let dx_len = if input_grad { x_len } else { 0 };
    let pointwise = g.is_pointwise();
    // A pointwise convolution's input gradient is one product per sample that writes it
    // whole; otherwise each sample's is zeroed by its task (in parallel, just before use), as
    // col2im adds every block's contribution.
    let mut dx = uninit(g.batch * dx_len);
    // Weight gradient: for small output planes one product over many samples at a time, else
    // one partial sum per run of samples (one product per sample), added up at the end.
    let batched = g
        .weight_grad_batch()
        .map(|samples| batched_weight_grad(g, x, dy, samples));
    let mut partials = match batched {
        Some(_) => Vec::new(),
        None => vec![0.0f32; g.tasks() * w_len],
    };
    let mut partial = partials.chunks_mut(w_len.max(1));
    // Nothing is left to do per sample when the weight gradient is done and no input
    // gradient is wanted.
    let items: Vec<_> = if input_grad || batched.is_none() {
        sample_runs(g, &mut dx, dx_len)
            .into_iter()
            .map(|run| (run, partial.next()))
            .collect()
    } else {
        Vec::new()
    };
    // Scratch: the unfolded input, then (reusing it) the unfolded input gradient.
    run_tasks(
        g.scratch_len(),
        items,
        |((samples, dx_run), mut dwt), col, parallel| {
            let first = samples.start;
            for b in samples {
                let dxb = &mut dx_run[(b - first) * dx_len..(b - first + 1) * dx_len];
                if !pointwise {
                    dxb.fill(MaybeUninit::new(0.0));
                }
                let xb = &x[b * x_len..(b + 1) * x_len];
                let dyb = &dy[b * y_len..(b + 1) * y_len];
                for rows in g.row_blocks() {
                    let (start, nb) = (rows.start * ow, rows.len() * ow);
                    let accumulate = b > first || start > 0;
                    // dY_g[:, block], [cog, nb] with rows n_out apart.
                    let dy_g =
                        |grp: usize| View::row_major(&dyb[grp * cog * n_out + start..], n_out);
                    if let Some(dwt) = dwt.as_deref_mut() {
                        let cols = unfold(g, xb, col, rows.clone(), parallel);
                        weight_grad_products(g, dwt, &dy_g, cols, nb, accumulate, parallel);
                    }
                    if !input_grad {
                        continue;
                    }
                    // dcol_g [kg, nb] = W_g^T [kg, cog] x dY_g [cog, nb]; straight into dx when
                    // pointwise (one block), else folded back onto dx.
                    let shape = (cog, kg, nb);
                    if pointwise {
                        unfolded_grad(dxb, weight, &dy_g, shape, parallel);
                    } else {
                        let dcol = &mut col[..g.col_len(rows.len())];
                        unfolded_grad(dcol, weight, &dy_g, shape, parallel);
                        // SAFETY: `dxb` was zero-filled above when not pointwise.
                        col2im(g, col, unsafe { assume_init_mut(dxb) }, rows, parallel);
                    }
                }
            }
        },
    );
    let dw = batched.unwrap_or_else(|| {
        let (total, rest) = partials.split_at_mut(w_len);
        for part in rest.chunks(w_len.max(1)) {
            total.iter_mut().zip(part).for_each(|(a, b)| *a += *b);
        }
        partials.truncate(w_len);
        weight_grad_layout(g, partials)
    });
    // SAFETY: not pointwise, each sample's `dx` was zero-filled by its task; pointwise, each
    // sample's product wrote its whole `[C_in, H, W]` gradient (one block of rows, every
    // group's `[kg, nb]` region). Without an input gradient `dx` is empty.
    let dx = unsafe { assume_init(dx) };
    (input_grad.then_some(dx), dw)
}

/// The weight gradient `[C_out, kg]` of a convolution with small output planes (see
/// [`ConvGeometry::weight_grad_batch`]) as one product per group over `chunk` samples at a
/// time: their unfolded inputs side by side, `cols` `[C_in * kh * kw, chunk * OH*OW]`, and their
/// output gradients likewise, `dys` `[C_out, chunk * OH*OW]`, so that `dW_g = dY_g x col_g^T`
/// sums over the samples inside one (parallel) product. Per sample, such a layer's product
/// would read and write all of the (large) `dW` for only `OH * OW` multiply-adds per value, and
/// the per-thread partial sums would each be a zeroed `dW`; this copies the (small)
/// activations instead.
fn batched_weight_grad(g: &ConvGeometry, x: &[f32], dy: &[f32], chunk: usize) -> Vec<f32> {
    assert!(
        g.batch > 0 && chunk > 0,
        "a batched weight gradient needs samples"
    );
    let n_out = g.out_plane();
    let (x_len, y_len) = (g.c_in * g.in_plane(), g.c_out * n_out);
    let (rows, col_len) = (g.c_in * g.taps(), g.col_len(g.out[0]));
    let mut dw = uninit(g.c_out * g.k_group());
    with_scratch(col_len + (rows + g.c_out) * chunk * n_out, |buf| {
        let (col, rest) = buf.split_at_mut(col_len);
        for start in (0..g.batch).step_by(chunk) {
            let samples = start..(start + chunk).min(g.batch);
            let wide = samples.len() * n_out;
            let (cols, dys) = rest.split_at_mut(rows * wide);
            // Row `j` of sample `i`'s `[.., n_out]` matrix goes to columns `i * n_out..` of
            // row `j`.
            let place = |src: &[f32], dst: &mut [f32], i: usize| {
                for (row, dst_row) in src.chunks_exact(n_out).zip(dst.chunks_exact_mut(wide)) {
                    dst_row[i * n_out..(i + 1) * n_out].copy_from_slice(row);
                }
            };
            for (i, b) in samples.enumerate() {
                let xb = &x[b * x_len..(b + 1) * x_len];
                place(
                    &unfold(g, xb, col, 0..g.out[0], true)[..rows * n_out],
                    cols,
                    i,
                );
                place(&dy[b * y_len..(b + 1) * y_len], dys, i);
            }
            let cog = g.c_out / g.groups;
            let dy_g = |grp: usize| View::row_major(&dys[grp * cog * wide..], wide);
            if start == 0 {
                weight_grad_products(g, &mut dw, &dy_g, cols, wide, false, true);
            } else {
                // SAFETY: the first chunk's products wrote every value of `dw`.
                let dw = unsafe { assume_init_mut(&mut dw) };
                weight_grad_products(g, dw, &dy_g, cols, wide, true, true);
            }
        }
    });
    // SAFETY: the first chunk's products (there is one: the batch is not empty) wrote every
    // `[cog, kg]` (or `[kg, cog]`) block of `dw`.
    weight_grad_layout(g, unsafe { assume_init(dw) })
}

/// `dW_g [cog, kg] (+)= dY_g [cog, k] x col_g^T [k, kg]` for every group `g` (`dy_g(g)` the
/// group's output gradient over the `k` positions, `cols` `[groups * kg, k]` row-major), into
/// `dw` `[C_out, kg]`, or transposed, `[kg, cog]` per group, when
/// [`ConvGeometry::weight_grad_transposed`] ([`weight_grad_layout`] turns it back); `+=` with
/// `accumulate`.
fn weight_grad_products<'a, T: Slot>(
    g: &ConvGeometry,
    dw: &mut [T],
    dy_g: &(impl Fn(usize) -> View<'a> + Sync),
    cols: &[f32],
    k: usize,
    accumulate: bool,
    parallel: bool,
) {
    let (kg, cog) = (g.k_group(), g.c_out / g.groups);
    let transposed = g.weight_grad_transposed();
    for_groups(dw, cog * kg, parallel, |grp, dw, parallel| {
        let col_g = View::row_major(&cols[grp * kg * k..(grp + 1) * kg * k], k);
        if transposed {
            matmul(
                dw,
                cog,
                (kg, cog, k),
                col_g,
                dy_g(grp).t(),
                accumulate,
                parallel,
            );
        } else {
            matmul(
                dw,
                kg,
                (cog, kg, k),
                dy_g(grp),
                col_g.t(),
                accumulate,
                parallel,
            );
        }
    });
}

/// The weight gradient `[C_out, kg]` from what [`weight_grad_products`] summed: itself, or
/// each group's `[kg, cog]` block transposed when the products were.
fn weight_grad_layout(g: &ConvGeometry, dw: Vec<f32>) -> Vec<f32> {
    if !g.weight_grad_transposed() {
        return dw;
    }
    let (kg, cog) = (g.k_group(), g.c_out / g.groups);
    let mut out = vec![0.0f32; dw.len()];
    out.par_chunks_mut(cog * kg)
        .zip(dw.par_chunks(cog * kg))
        .for_each(|(dst, src)| {
            for (j, row) in src.chunks_exact(cog).enumerate() {
                for (i, v) in row.iter().enumerate() {
                    dst[i * kg + j] = *v;
                }
            }
        });
    out
}

/// The unfolded input gradient of one block of output rows, `dcol_g [kg, nb] =
/// W_g^T [kg, cog] x dY_g [cog, nb]` for every group `g` (`weight` `[C_out, kg]`, `dy_g(g)` the
/// group's output gradient), written whole into `dst` `[groups * kg, nb]`.
fn unfolded_grad<'a, T: Slot>(
    dst: &mut [T],
    weight: &[f32],
    dy_g: &(impl Fn(usize) -> View<'a> + Sync),
    (cog, kg, nb): (usize, usize, usize),
    parallel: bool,
) {
    for_groups(dst, kg * nb, parallel, |grp, dcol, parallel| {
        matmul(
            dcol,
            nb,
            (kg, nb, cog),
            View::transposed(&weight[grp * cog * kg..(grp + 1) * cog * kg], kg),
            dy_g(grp),
            false,
            parallel,
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 37 + seed * 11) % 101) as f32 / 50.5 - 1.0)
            .collect()
    }

    /// A 3x3 convolution with padding 1 (output planes the input's size).
    fn same_3x3(
        batch: usize,
        c_in: usize,
        c_out: usize,
        size: usize,
        groups: usize,
    ) -> ConvGeometry {
        ConvGeometry {
            batch,
            c_in,
            h: size,
            w: size,
            c_out,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
            groups,
            out: [size, size],
        }
    }

    #[test]
    fn weight_gradient_over_chunks_of_samples_matches_a_float64_sum() {
        // 5 samples of 7x7: small planes, so the batched path. Two groups of 4 output
        // channels (the products transposed), and one group of 24 output channels from 2
        // input channels (more than the 18 unfolded rows: the usual orientation).
        for (g, transposed) in [
            (same_3x3(5, 6, 8, 7, 2), true),
            (same_3x3(5, 2, 24, 7, 1), false),
        ] {
            assert_eq!(g.weight_grad_batch(), Some(5));
            assert_eq!(g.weight_grad_transposed(), transposed);
            check_weight_grad(&g);
        }
    }

    /// The weight gradient of a 3x3 convolution over 7x7 planes `g` (batched path), in one
    /// product, in chunks of 2 and 1 samples, and through `conv2d_backward`, against a float64
    /// sum (tolerance 1e-4 relative).
    fn check_weight_grad(g: &ConvGeometry) {
        let (cig, cog) = (g.c_in / g.groups, g.c_out / g.groups);
        let x = values(g.batch * g.c_in * 49, 1);
        let dy = values(g.batch * g.c_out * 49, 2);
        let mut expected = vec![0.0f64; g.c_out * g.k_group()];
        for (co, dw) in expected.chunks_mut(g.k_group()).enumerate() {
            let grp = co / cog;
            for (i, v) in dw.iter_mut().enumerate() {
                let (ci, ky, kx) = (grp * cig + i / 9, i % 9 / 3, i % 3);
                for b in 0..g.batch {
                    for (oy, ox) in (0..7).flat_map(|oy| (0..7).map(move |ox| (oy, ox))) {
                        let (iy, ix) = (oy + ky, ox + kx); // padded coordinates
                        if (1..=7).contains(&iy) && (1..=7).contains(&ix) {
                            let xv = x[((b * g.c_in + ci) * 7 + iy - 1) * 7 + ix - 1];
                            let dv = dy[((b * g.c_out + co) * 7 + oy) * 7 + ox];
                            *v += f64::from(xv) * f64::from(dv);
                        }
                    }
                }
            }
        }
        let whole = conv2d_backward(g, &x, &values(g.c_out * g.k_group(), 3), &dy, false).1;
        for (what, dw) in [
            ("chunks of 5", batched_weight_grad(g, &x, &dy, 5)),
            ("chunks of 2", batched_weight_grad(g, &x, &dy, 2)),
            ("chunks of 1", batched_weight_grad(g, &x, &dy, 1)),
            ("conv2d_backward", whole),
        ] {
            assert_eq!(dw.len(), expected.len());
            for (a, e) in dw.iter().zip(&expected) {
                assert!(
                    (f64::from(*a) - e).abs() <= 1e-4 * e.abs().max(1.0),
                    "{what}: {a} vs {e}"
                );
            }
        }
    }

    #[test]
    fn weight_gradient_of_an_empty_batch_is_zero() {
        let g = same_3x3(0, 2, 3, 5, 1);
        assert_eq!(g.weight_grad_batch(), None);
        let (_, dw) = conv2d_backward(&g, &[], &values(3 * 18, 1), &[], false);
        assert_eq!(dw, vec![0.0; 3 * 18]);
    }
}
