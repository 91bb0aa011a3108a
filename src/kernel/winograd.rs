//! 3x3 stride-1 convolutions on CPU backends as Winograd F(2x2, 3x3) transforms around 16
//! matrix products (Lavin & Gray, 2016), for the output and, as the convolution of the output
//! gradient with the flipped kernel, for the input gradient.
//!
//! The output is cut into 2x2 tiles, each computed from a 4x4 input tile. With the filter
//! transform `U = G g G^T`, the input transform `V = B^T d B` and the output transform
//! `Y = A^T M A`, the 16 positions `xi` of the 4x4 transformed tile are independent products
//! `M_xi [C_out, T] = U_xi [C_out, C_in] x V_xi [C_in, T]` over the `T` tiles: 16 multiplies
//! per tile and channel pair where the direct convolution needs 36 (2.25x fewer). The
//! transform matrices hold only 0, ±1 and ±1/2, so the result stays within float32 rounding
//! of the direct convolution.
//!
//! Buffers (all row-major): `U [C_out, 16, C_in]`, `V [C_in, 16, T]`, `M [16, C_out, T]`,
//! each laid out so that one task writes one contiguous part: the filter transform runs per
//! output channel, the input transform per input channel, the products per `xi` and the
//! output transform per output plane. Tiles are handled a block at a time (whole samples, or
//! tile rows of one sample for large images) so that `V` and `M` stay within `TILE_BUDGET`
//! values. Threads share the work as in im2col: a batch with at least one sample per thread
//! is split into one run of samples per thread, each run handled start to end on its thread
//! (one fork and join per call); a smaller batch spreads each step over the threads.

use core::mem::MaybeUninit;
use core::ops::Range;
use std::cell::RefCell;

use rayon::prelude::*;

use super::buffer::{assume_init, uninit};
use super::conv::winograd_enabled;
use super::im2col::{ConvGeometry, Finish, View, matmul, run_tasks, sample_runs};
use super::simd::multiversion;

/// Positions of a transformed tile.
const XI: usize = 16;

/// Most values of `V` and `M` together per block of tiles (8 MiB).
const TILE_BUDGET: usize = 2 << 20;

/// Largest `U` kept between calls (values; 32 MiB).
const FILTERS_KEEP: usize = 8 << 20;

/// Fewest tiles (over the whole batch) for which the transforms pay off; smaller outputs
/// (deep layers at batch 1) go through im2col, where the filter transform would cost about
/// as much as the products it saves.
const MIN_TILES: usize = 32;

/// Whether `g` goes through [`conv2d_forward`]: an ungrouped, undilated 3x3 kernel at
/// stride 1, with channels, and with enough tiles for the transforms to pay off.
pub(super) fn applies(g: &ConvGeometry) -> bool {
    let (th, tw) = tile_counts(g);
    winograd_enabled()
        && g.c_in > 0
        && g.c_out > 0
        && g.kernel == [3, 3]
        && g.stride == [1, 1]
        && g.dilation == [1, 1]
        && g.groups == 1
        && g.batch * th * tw >= MIN_TILES
}

/// The input gradient of a convolution that [`applies`] with padding at most 2, as the
/// Winograd convolution of `dy` `[N, C_out, OH, OW]` with the flipped, transposed kernel
/// `W'[c, k, i, j] = W[k, c, 2 - i, 2 - j]` and padding `2 - p`: `[N, C_in, H, W]`. `None` when
/// that convolution does not apply.
pub(super) fn input_grad(g: &ConvGeometry, weight: &[f32], dy: &[f32]) -> Option<Vec<f32>> {
    if !applies(g) {
        return None;
    }
    g.input_grad_by(weight, dy, applies, conv2d_forward)
}

/// Tile rows and tile columns of one output plane.
fn tile_counts(g: &ConvGeometry) -> (usize, usize) {
    (g.out[0].div_ceil(2), g.out[1].div_ceil(2))
}

/// A block of tiles: the tile rows `rows` of each sample of `samples` (every tile row when
/// there is more than one sample).
struct Block {
    samples: Range<usize>,
    rows: Range<usize>,
}

impl Block {
    fn tiles(&self, tw: usize) -> usize {
        self.samples.len() * self.rows.len() * tw
    }
}

/// The blocks of tiles of the samples `samples` that keep `V` and `M` within
/// [`TILE_BUDGET`]: as many whole samples as fit, else as many tile rows of one sample as fit
/// (at least one).
fn blocks(g: &ConvGeometry, samples: Range<usize>) -> Vec<Block> {
    let (th, tw) = tile_counts(g);
    let fit = (TILE_BUDGET / (XI * (g.c_in + g.c_out))).max(1);
    let per_sample = th * tw;
    if fit >= per_sample {
        let step = fit / per_sample;
        let end = samples.end;
        samples
            .step_by(step)
            .map(|s| Block {
                samples: s..(s + step).min(end),
                rows: 0..th,
            })
            .collect()
    } else {
        let step = (fit / tw).max(1);
        samples
            .flat_map(|s| {
                (0..th).step_by(step).map(move |r| Block {
                    samples: s..s + 1,
                    rows: r..(r + step).min(th),
                })
            })
            .collect()
    }
}

/// Calls `f(i, chunk)` for the `len`-sized chunks of `buf`, on all threads or on this one.
fn each_chunk<T: Send>(
    buf: &mut [T],
    len: usize,
    parallel: bool,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    if parallel {
        buf.par_chunks_mut(len)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    } else {
        buf.chunks_mut(len).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// `U [C_out, 16, C_in]`: every 3x3 filter `g` of `weight` `[C_out, C_in, 3, 3]` as
/// `G g G^T`.
fn transform_filters(g: &ConvGeometry, weight: &[f32], u: &mut [f32]) {
    let c_in = g.c_in;
    each_chunk(u, XI * c_in, true, |k, u| {
        filter_row(&weight[k * 9 * c_in..(k + 1) * 9 * c_in], u)
    });
}

/// `U` of one output channel: its filters `w` `[C_in, 3, 3]` into `u` `[16, C_in]`.
#[inline(always)]
fn filter_row_body(w: &[f32], u: &mut [f32]) {
    let c_in = w.len() / 9;
    for (ch, f) in w.chunks_exact(9).enumerate() {
        // G f (4x3), one row per transformed row.
        let mut gf = [[0.0f32; 3]; 4];
        for j in 0..3 {
            let (a, b, c) = (f[j], f[3 + j], f[6 + j]);
            gf[0][j] = a;
            gf[1][j] = 0.5 * (a + b + c);
            gf[2][j] = 0.5 * (a - b + c);
            gf[3][j] = c;
        }
        // (G f) G^T (4x4).
        for (i, [a, b, c]) in gf.into_iter().enumerate() {
            let row = [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
            for (j, v) in row.into_iter().enumerate() {
                u[(4 * i + j) * c_in + ch] = v;
            }
        }
    }
}

multiversion! {
    fn filter_row(w: &[f32], u: &mut [f32]) => filter_row_body
}

/// `V [C_in, 16, T]` of `block`: every 4x4 input tile `d` of `x` `[N, C_in, H, W]` as
/// `B^T d B`, zero outside the input.
///
/// Per tile row, the 4 input rows are read once, zero-padded to the `2 * tw + 2` columns the
/// tiles span and split into even and odd columns, so that both transform stages are
/// element-wise loops over contiguous arrays: tile `tx` starts at even column `tx`.
fn transform_inputs(g: &ConvGeometry, x: &[f32], block: &Block, v: &mut [f32], parallel: bool) {
    let (_, tw) = tile_counts(g);
    let t = block.tiles(tw);
    each_chunk(v, XI * t, parallel, |c, v| input_channel(g, x, block, c, v));
}

/// The part of [`transform_inputs`] for input channel `c`: `v` `[16, T]`.
#[inline(always)]
fn input_channel_body(g: &ConvGeometry, x: &[f32], block: &Block, c: usize, v: &mut [f32]) {
    let (_, tw) = tile_counts(g);
    let t = block.tiles(tw);
    let [ph, pw] = g.padding;
    let (h, w, plane) = (g.h, g.w, g.h * g.w);
    // Even and odd columns of one padded row: `tw + 1` each.
    let half = tw + 1;
    // Rows `[d0, d1, d2, d3]`, then `B^T` of them, each as `[even | odd]`.
    let mut d = vec![0.0f32; 8 * half];
    let mut bt = vec![0.0f32; 8 * half];
    let mut t0 = 0;
    for n in block.samples.clone() {
        let src = &x[(n * g.c_in + c) * plane..(n * g.c_in + c + 1) * plane];
        for ty in block.rows.clone() {
            for (r, row) in d.chunks_exact_mut(2 * half).enumerate() {
                row.fill(0.0);
                let iy = (2 * ty + r) as isize - ph as isize;
                if !(0..h as isize).contains(&iy) {
                    continue;
                }
                let (even, odd) = row.split_at_mut(half);
                // Input column `ix` is padded column `ix + pw`: the even input columns go to
                // one half from `pw / 2` on, the odd ones to the other from
                // `ceil(pw / 2)` on. Columns past the tiles' span (end padding wider
                // than 2) feed no output.
                let cols = w.min((2 * half).saturating_sub(pw));
                let src = &src[iy as usize * w..][..cols];
                let (first, second) = if pw % 2 == 0 {
                    (even, odd)
                } else {
                    (odd, even)
                };
                let evens = src.iter().step_by(2);
                let odds = src.iter().skip(1).step_by(2);
                first[pw / 2..]
                    .iter_mut()
                    .zip(evens)
                    .for_each(|(d, s)| *d = *s);
                second[pw.div_ceil(2)..]
                    .iter_mut()
                    .zip(odds)
                    .for_each(|(d, s)| *d = *s);
            }
            // B^T along the rows: [d0 - d2, d1 + d2, d2 - d1, d1 - d3].
            let (d0, rest) = d.split_at(2 * half);
            let (d1, rest) = rest.split_at(2 * half);
            let (d2, d3) = rest.split_at(2 * half);
            let (b0, rest) = bt.split_at_mut(2 * half);
            let (b1, rest) = rest.split_at_mut(2 * half);
            let (b2, b3) = rest.split_at_mut(2 * half);
            for i in 0..2 * half {
                b0[i] = d0[i] - d2[i];
                b1[i] = d1[i] + d2[i];
                b2[i] = d2[i] - d1[i];
                b3[i] = d1[i] - d3[i];
            }
            // B along the columns: tile `tx` reads columns `2 tx .. 2 tx + 4`, that
            // is even[tx], odd[tx], even[tx + 1], odd[tx + 1].
            for (i, row) in bt.chunks_exact(2 * half).enumerate() {
                let (even, odd) = row.split_at(half);
                let (e0, e1, o0, o1) = (&even[..tw], &even[1..], &odd[..tw], &odd[1..]);
                let out = |j: usize| (4 * i + j) * t + t0;
                let (v0, rest) = v[out(0)..].split_at_mut(t);
                let (v1, rest) = rest.split_at_mut(t);
                let (v2, v3) = rest.split_at_mut(t);
                for tx in 0..tw {
                    v0[tx] = e0[tx] - e1[tx];
                    v1[tx] = o0[tx] + e1[tx];
                    v2[tx] = e1[tx] - o0[tx];
                    v3[tx] = o0[tx] - o1[tx];
                }
            }
            t0 += tw;
        }
    }
}

multiversion! {
    fn input_channel(g: &ConvGeometry, x: &[f32], block: &Block, c: usize, v: &mut [f32])
        => input_channel_body
}

/// The output rows of `block` from `M [16, C_out, T]`: `A^T m A` per tile, finished by
/// `finish` (whose part starts at the block's first sample); `y` holds the output planes
/// `[C_out, OH, OW]` of the block's samples, of which every row of the block's tile rows is
/// written.
fn transform_outputs(
    g: &ConvGeometry,
    m: &[f32],
    block: &Block,
    finish: Finish<'_>,
    y: &mut [MaybeUninit<f32>],
    parallel: bool,
) {
    let plane = g.out[0] * g.out[1];
    each_chunk(y, plane, parallel, |p, out| {
        output_plane(g, m, block, &finish, p, out)
    });
}

/// The part of [`transform_outputs`] for output plane `p` (sample `p / C_out`, channel
/// `p % C_out` of the block): the block's rows of `out` `[OH, OW]`.
#[inline(always)]
fn output_plane_body(
    g: &ConvGeometry,
    m: &[f32],
    block: &Block,
    finish: &Finish<'_>,
    p: usize,
    out: &mut [MaybeUninit<f32>],
) {
    let (_, tw) = tile_counts(g);
    let t = block.tiles(tw);
    let [oh, ow] = g.out;
    let c_out = g.c_out;
    let (s, k) = (p / c_out, p % c_out);
    // A^T along the rows of each tile: `s_j = m0j + m1j + m2j`,
    // `d_j = m1j - m2j - m3j`, as 8 rows of `tw`; then the two output rows.
    let mut sd = vec![0.0f32; 8 * tw];
    let mut rows = vec![0.0f32; 4 * tw];
    for (r, ty) in block.rows.clone().enumerate() {
        let t0 = (s * block.rows.len() + r) * tw;
        let at = |xi: usize| &m[(xi * c_out + k) * t + t0..][..tw];
        let (sums, diffs) = sd.split_at_mut(4 * tw);
        for j in 0..4 {
            let (m0, m1, m2, m3) = (at(j), at(4 + j), at(8 + j), at(12 + j));
            let s = &mut sums[j * tw..(j + 1) * tw];
            let d = &mut diffs[j * tw..(j + 1) * tw];
            for tx in 0..tw {
                s[tx] = m0[tx] + m1[tx] + m2[tx];
                d[tx] = m1[tx] - m2[tx] - m3[tx];
            }
        }
        // A along the columns: `[q0 + q1 + q2, q1 - q2 - q3]` per tile.
        for (half, q) in rows.chunks_exact_mut(2 * tw).zip(sd.chunks_exact(4 * tw)) {
            let (q0, rest) = q.split_at(tw);
            let (q1, rest) = rest.split_at(tw);
            let (q2, q3) = rest.split_at(tw);
            for (tx, pair) in half.chunks_exact_mut(2).enumerate() {
                pair[0] = q0[tx] + q1[tx] + q2[tx];
                pair[1] = q1[tx] - q2[tx] - q3[tx];
            }
        }
        for (i, row) in rows.chunks_exact(2 * tw).enumerate() {
            let oy = 2 * ty + i;
            if oy < oh {
                let at = p * oh * ow + oy * ow;
                finish.write(k, at, &row[..ow], &mut out[oy * ow..(oy + 1) * ow]);
            }
        }
    }
}

multiversion! {
    fn output_plane(
        g: &ConvGeometry,
        m: &[f32],
        block: &Block,
        finish: &Finish<'_>,
        p: usize,
        out: &mut [MaybeUninit<f32>],
    ) => output_plane_body
}

/// `M_xi [C_out, T] = U_xi [C_out, C_in] x V_xi [C_in, T]` for the 16 positions `xi`: rows
/// `16 C_in` and `16 T` apart in `U` and `V`; the products spread over the threads.
fn products(g: &ConvGeometry, u: &[f32], v: &[f32], m: &mut [f32], t: usize, parallel: bool) {
    let (c_in, c_out) = (g.c_in, g.c_out);
    each_chunk(m, c_out * t, parallel, |xi, m| {
        matmul(
            m,
            t,
            (c_out, t, c_in),
            View::row_major(&u[xi * c_in..], XI * c_in),
            View::row_major(&v[xi * t..], XI * t),
            false,
            false,
        );
    });
}

thread_local! {
    /// Reused `U` buffer of the calling thread.
    static FILTERS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Forward convolution by Winograd F(2x2, 3x3) (see [`applies`]): `x` `[N, C_in, H, W]`,
/// `weight` `[C_out, C_in, 3, 3]`, `finish` for the whole output; returns `[N, C_out, OH,
/// OW]`.
pub(super) fn conv2d_forward(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    finish: Finish<'_>,
) -> Vec<f32> {
    let (c_in, c_out) = (g.c_in, g.c_out);
    let (_, tw) = tile_counts(g);
    let y_len = c_out * g.out[0] * g.out[1];
    let mut y = uninit(g.batch * y_len);
    let most = blocks(g, 0..g.batch)
        .iter()
        .map(|b| b.tiles(tw))
        .max()
        .unwrap_or(0);
    let u_len = XI * c_out * c_in;
    let mut filters = FILTERS.with(|cell| cell.take());
    filters.resize(u_len, 0.0);
    transform_filters(g, weight, &mut filters);
    let u = &filters[..];
    let items = sample_runs(g, &mut y, y_len);
    run_tasks(
        XI * (c_in + c_out) * most,
        items,
        |(samples, y_run), scratch, parallel| {
            let first = samples.start;
            for block in blocks(g, samples) {
                let t = block.tiles(tw);
                let (v, m) = scratch.split_at_mut(XI * c_in * t);
                let m = &mut m[..XI * c_out * t];
                transform_inputs(g, x, &block, v, parallel);
                products(g, u, v, m, t, parallel);
                let y = &mut y_run[(block.samples.start - first) * y_len..]
                    [..block.samples.len() * y_len];
                let finish = finish.part(0..c_out, block.samples.start * y_len);
                transform_outputs(g, m, &block, finish, y, parallel);
            }
        },
    );
    if filters.len() <= FILTERS_KEEP {
        FILTERS.with(|cell| cell.replace(filters));
    }
    // SAFETY: the blocks of each run cover its samples and every tile row of them, and
    // `transform_outputs` writes both output rows of each tile row (the second one when it
    // is inside the output) across every column of every output plane.
    unsafe { assume_init(y) }
}
