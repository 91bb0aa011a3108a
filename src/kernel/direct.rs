//! 2-d convolutions on CPU backends computed directly: grouped ones, and ungrouped ones with
//! few input values per output that Winograd does not take; for stride 1 also their input
//! gradient (the convolution of the output gradient with the flipped kernel).
//!
//! A grouped convolution with few channels per group (ResNeXt's 32 groups of 4 to 32
//! channels) is a poor fit for im2col and a matrix product per group: the products are tiny
//! (`[C_out / groups, K_g] x [K_g, OH * OW]` with `K_g` 36 to 288), so the unfolding and each
//! product's set-up cost more than the arithmetic. Here each group's output is accumulated in
//! registers instead, a tile of output channels by output positions at a time, from the
//! group's input planes. The same kernel is faster than im2col for the 7x7 stems and the
//! strided 3x3 convolutions up to 128 input channels, and than Winograd for 3x3 convolutions
//! with at most 32 output channels (DenseNet's); BENCHMARKS.md has the measurements. The tile
//! kernels are AVX-512 and AVX2 intrinsics; elsewhere these convolutions stay on im2col.
//!
//! The input planes of a group are first copied, zero-padded, into *phase planes*: with stride
//! `s`, phase `(a, b)` holds the padded input rows `a, a + s, ...` and columns `b, b + s, ...`,
//! so that kernel tap `(i, j)` (dilation `d`) reads phase `(i d mod s, j d mod s)` at row and
//! column offsets `(i d / s, j d / s)`: a stride-1 read of one plane. With output positions
//! numbered along rows of the phase planes' width `Wq` (`p = oy * Wq + ox`, of which
//! `ox < OW` are kept), a tap's input for consecutive positions is a contiguous run of one
//! phase plane, so a tile of positions is one vector load per tap and input channel, shared by
//! every output channel of the tile. The `Wq - OW` positions per row past the output are
//! computed and dropped (3 % of a 56x56 output, 22 % of a 7x7 one).
//!
//! Work is split across threads by (sample, group), and by blocks of output channels when
//! that leaves fewer than two tasks per thread; each task writes a contiguous part of the
//! output.

use core::ops::Range;

use rayon::prelude::*;

use super::buffer::{assume_init, uninit};
use super::im2col::{self, ConvGeometry, Finish, valid_range, with_scratch};
use super::simd::{SimdLevel, multiversion, simd_level};

/// Most output channels per tile.
const MAX_BLOCK: usize = 8;

/// Most input values per group (`C_in / groups * kh * kw`) for which the direct convolution
/// is used; groups with more go through im2col, whose matrix products are then as fast.
const MAX_K_GROUP: usize = 1152;

/// Whether `g` goes through [`conv2d_forward`]: on a CPU with the tile kernels' instructions,
/// with channels, a grouped convolution or an ungrouped one with a kernel larger than 1x1
/// (1x1 ones are matrix products as they stand), with at most [`MAX_K_GROUP`] input values
/// per group. Meant for the convolutions the Winograd path does not take.
pub(super) fn applies(g: &ConvGeometry) -> bool {
    available()
        && g.c_in > 0
        && g.c_out > 0
        && (g.groups > 1 || g.kernel != [1, 1])
        && g.k_group() <= MAX_K_GROUP
}

/// Whether `g`, a convolution the Winograd path takes too, is faster here: with few output
/// channels (at most 32: DenseNet's 3x3 convolutions) Winograd's input transform, done per
/// input channel, is shared by too few outputs to pay off, as long as there are at least as
/// many samples as threads (with fewer, the tasks here split the output channels and each
/// copies the input again). Measured on DenseNet-121's 3x3 convolutions at batch 8: 1.0-1.7x
/// faster than Winograd; at batch 1, 0.8-1.1x.
pub(super) fn preferred_over_winograd(g: &ConvGeometry) -> bool {
    applies(g) && g.c_out / g.groups <= 32 && g.batch >= rayon::current_num_threads()
}

/// Whether this CPU runs the direct kernels (AVX2 with FMA, or AVX-512, within the
/// [`set_max_simd`](super::set_max_simd) cap).
pub(super) fn available() -> bool {
    Isa::at(simd_level()).is_some()
}

/// Sizes of one group's phase planes and output tiles, and the tile kernels that compute.
struct Layout {
    /// The tile kernels' instructions.
    isa: Isa,
    /// Columns of each phase plane.
    wq: usize,
    /// Values per phase plane: `hq * wq` (`hq` rows), then the values that tiles running
    /// past the last output row read.
    plane: usize,
    /// Values per input channel: every phase's plane.
    channel: usize,
    /// Output rows (`OH`).
    rows: usize,
    /// Positions per output channel in the scratch: `OH * wq` rounded up to the widest
    /// tile the group's blocks of output channels use.
    positions: usize,
    /// Where tap `t`'s input starts in an input channel's phase planes.
    taps: Vec<usize>,
    /// What each phase plane copies from the input plane.
    phases: Vec<PhaseCopy>,
}

/// The part of a phase plane that holds input values (the rest is padding): rows `rows`
/// and columns `cols`, from input row `iy` and column `ix` on, every `stride` rows and
/// columns.
struct PhaseCopy {
    rows: Range<usize>,
    cols: Range<usize>,
    iy: usize,
    ix: usize,
}

impl Layout {
    fn new(g: &ConvGeometry, isa: Isa) -> Self {
        let [sh, sw] = g.stride;
        let [dh, dw] = g.dilation;
        let [kh, kw] = g.kernel;
        let [ph, pw] = g.padding.map(|p| p as isize);
        let hq = g.out[0] + (kh - 1) * dh / sh;
        let wq = g.out[1] + (kw - 1) * dw / sw;
        let outputs = g.out[0] * wq;
        let positions = blocks(g.c_out / g.groups)
            .map(|(_, n)| outputs.div_ceil(isa.width(n)) * isa.width(n))
            .max()
            .unwrap_or(0);
        // Tiles run to at most `positions`, and a tap reads at most `(hq - OH) * wq + wq`
        // positions further on.
        let plane = positions + (hq - g.out[0] + 1) * wq;
        let taps: Vec<usize> = (0..kh * kw)
            .map(|t| {
                let (i, j) = (t / kw * dh, t % kw * dw);
                let phase = (i % sh) * sw + j % sw;
                phase * plane + i / sh * wq + j / sw
            })
            .collect();
        // The bound the tile kernels' reads rely on.
        assert!(
            taps.iter().all(|&t| t % plane + positions <= plane),
            "tap offsets within the phase planes"
        );
        let phases = (0..sh * sw)
            .map(|phase| {
                let (a, b) = ((phase / sw) as isize, (phase % sw) as isize);
                let (u_lo, u_hi) = valid_range(g.h, hq, sh, a - ph);
                let (v_lo, v_hi) = valid_range(g.w, wq, sw, b - pw);
                let first = |lo: usize, s: usize, off: isize| {
                    (lo as isize * s as isize + off).max(0) as usize
                };
                PhaseCopy {
                    rows: if v_lo < v_hi { u_lo..u_hi } else { 0..0 },
                    cols: v_lo..v_hi,
                    iy: first(u_lo, sh, a - ph),
                    ix: first(v_lo, sw, b - pw),
                }
            })
            .collect();
        Layout {
            isa,
            wq,
            plane,
            channel: sh * sw * plane,
            rows: g.out[0],
            positions,
            taps,
            phases,
        }
    }

    /// Positions computed by tiles `width` positions wide: the output rows (`OH * wq`
    /// positions) rounded up to whole tiles.
    fn computed(&self, width: usize) -> usize {
        (self.rows * self.wq).div_ceil(width) * width
    }

    /// Scratch values per task: the phase planes of one group's input channels, then the
    /// computed positions of `channels` output channels.
    fn scratch(&self, g: &ConvGeometry, channels: usize) -> usize {
        g.c_in / g.groups * self.channel + channels * self.positions
    }
}

/// The weights `[C_out, K_g]` rearranged per group into blocks of output channels (8, then
/// 4, 2, 1 for the rest), each block `[K_g, block]`, so that a tile's weights for one input
/// value are adjacent. Block `(co0, n)` of group `grp` starts at `(grp * cog + co0) * K_g`.
fn pack_weights(g: &ConvGeometry, weight: &[f32]) -> Vec<f32> {
    let (kg, cog) = (g.k_group(), g.c_out / g.groups);
    let mut packed = vec![0.0; weight.len()];
    for grp in 0..g.groups {
        for (co0, n) in blocks(cog) {
            let base = (grp * cog + co0) * kg;
            for c in 0..n {
                let row = &weight[base + c * kg..base + (c + 1) * kg];
                for (k, &v) in row.iter().enumerate() {
                    packed[base + k * n + c] = v;
                }
            }
        }
    }
    packed
}

/// `(first channel, channels)` of the blocks a group's `cog` output channels are tiled in.
fn blocks(cog: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut co0 = 0;
    core::iter::from_fn(move || {
        let n = [MAX_BLOCK, 4, 2, 1].into_iter().find(|&n| co0 + n <= cog)?;
        co0 += n;
        Some((co0 - n, n))
    })
}

/// Forward convolution: `x` `[N, C_in, H, W]`, `weight` `[C_out, C_in / groups, kh, kw]`,
/// `finish` for the whole output, applied as each tile's values are copied out; returns
/// `[N, C_out, OH, OW]`.
pub(super) fn conv2d_forward(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    finish: Finish<'_>,
) -> Vec<f32> {
    // `applies` checked the instructions; were they capped since, im2col is the fallback.
    let Some(isa) = Isa::at(simd_level()) else {
        return im2col::conv2d_forward(g, x, weight, finish);
    };
    forward(isa, g, x, weight, finish)
}

/// The input gradient of a stride-1 convolution `g`, `[N, C_in, H, W]`, as the direct
/// convolution of `dy` `[N, C_out, OH, OW]` with the flipped kernel
/// ([`ConvGeometry::input_grad_by`]). `None` when `g` is strided, its begin padding
/// exceeds the kernel's reach, or the direct kernel does not take that convolution.
pub(super) fn input_grad(g: &ConvGeometry, weight: &[f32], dy: &[f32]) -> Option<Vec<f32>> {
    g.input_grad_by(weight, dy, applies, conv2d_forward)
}

/// [`conv2d_forward`] with the tile kernels for `isa`.
fn forward(isa: Isa, g: &ConvGeometry, x: &[f32], weight: &[f32], finish: Finish<'_>) -> Vec<f32> {
    let layout = Layout::new(g, isa);
    let packed = pack_weights(g, weight);
    let (cig, cog, n_out) = (g.c_in / g.groups, g.c_out / g.groups, g.out_plane());
    let (in_group, kg) = (cig * g.in_plane(), g.k_group());
    // Output channels per task: a group's, or a part of them (a multiple of the largest
    // block) when there are fewer than two (sample, group) pairs per thread.
    let pairs = g.batch * g.groups;
    let splits = (2 * rayon::current_num_threads())
        .div_ceil(pairs.max(1))
        .min(cog.div_ceil(MAX_BLOCK))
        .max(1);
    let chunk = cog.div_ceil(splits).next_multiple_of(MAX_BLOCK).min(cog);
    let scratch = layout.scratch(g, chunk);
    let mut y = uninit(g.batch * g.c_out * n_out);
    y.par_chunks_mut((cog * n_out).max(1))
        .enumerate()
        .flat_map(|(k, y)| {
            y.par_chunks_mut((chunk * n_out).max(1))
                .enumerate()
                .map(move |(part, y)| (k, part * chunk, y))
        })
        .for_each(|(k, c0, y)| {
            let (b, grp) = (k / g.groups, k % g.groups);
            let channels = grp * cog + c0..grp * cog + c0 + y.len() / n_out;
            let x = &x[(b * g.groups + grp) * in_group..][..in_group];
            let w = &packed[channels.start * kg..channels.end * kg];
            let finish = finish.part(channels.clone(), (b * g.c_out + channels.start) * n_out);
            with_scratch(scratch, |s| group_conv(g, &layout, x, w, &finish, s, y));
        });
    // SAFETY: the tasks cover the output, and each writes every value of its part.
    unsafe { assume_init(y) }
}

/// Output channels of one sample and one group, `y` `[channels, OH, OW]`, from the group's
/// input channels `x` `[cig, H, W]` and the channels' packed weights `w` `[channels * K_g]`
/// (whole blocks: `channels` is a multiple of the largest block, or the group's last ones).
#[inline(always)]
fn group_conv_body(
    g: &ConvGeometry,
    layout: &Layout,
    x: &[f32],
    w: &[f32],
    finish: &Finish<'_>,
    scratch: &mut [f32],
    y: &mut [core::mem::MaybeUninit<f32>],
) {
    let (cig, kg) = (g.c_in / g.groups, g.k_group());
    let cog = w.len() / kg;
    let (planes, out) = scratch.split_at_mut(cig * layout.channel);
    for (plane, dst) in x
        .chunks_exact(g.in_plane())
        .zip(planes.chunks_exact_mut(layout.channel))
    {
        fill_phases(g, layout, plane, dst);
    }
    for (co0, n) in blocks(cog) {
        let w = &w[co0 * kg..(co0 + n) * kg];
        let out = &mut out[co0 * layout.positions..(co0 + n) * layout.positions];
        run_tiles(layout, cig, planes, w, out, n);
    }
    // Keep the first `OW` of every `wq` positions, finished.
    let (ow, n_out) = (g.out[1], g.out_plane());
    for c in 0..cog {
        let src = &out[c * layout.positions..];
        let rows = y[c * n_out..(c + 1) * n_out].chunks_exact_mut(ow);
        for (oy, dst) in rows.enumerate() {
            let at = c * n_out + oy * ow;
            finish.write(c, at, &src[oy * layout.wq..][..ow], dst);
        }
    }
}

multiversion! {
    fn group_conv(
        g: &ConvGeometry,
        layout: &Layout,
        x: &[f32],
        w: &[f32],
        finish: &Finish<'_>,
        scratch: &mut [f32],
        y: &mut [core::mem::MaybeUninit<f32>],
    ) => group_conv_body
}

/// Copies one input plane `[H, W]` into its zero-padded phase planes `dst`.
#[inline(always)]
fn fill_phases(g: &ConvGeometry, layout: &Layout, plane: &[f32], dst: &mut [f32]) {
    let (sh, sw) = (g.stride[0], g.stride[1]);
    dst.fill(0.0);
    if sw == 2 {
        // Both column phases of a row from one pass over the input row (pairs of columns
        // `2v - pw, 2v - pw + 1`), in a loop the compiler vectorises; then the columns at
        // the edges that only one phase reads.
        for (a, rows) in layout.phases.chunks_exact(2).enumerate() {
            let (even, odd) = (&rows[0], &rows[1]);
            let (lo, hi) = (
                even.cols.start.max(odd.cols.start),
                even.cols.end.min(odd.cols.end),
            );
            // The rows of a row phase are the same in both column phases, unless a column
            // phase reads no column at all (then it has none).
            let rows = if even.rows.is_empty() { odd } else { even };
            for (k, u) in rows.rows.clone().enumerate() {
                let src = &plane[(rows.iy + k * sh) * g.w..][..g.w];
                let row = |phase: usize| (2 * a + phase) * layout.plane + u * layout.wq;
                let (head, tail) = dst.split_at_mut(row(1));
                let (e, o) = (&mut head[row(0)..], &mut tail[..layout.wq]);
                if lo < hi {
                    let first = 2 * lo - g.padding[1];
                    let pairs = src[first..first + 2 * (hi - lo)].chunks_exact(2);
                    for ((e, o), pair) in e[lo..hi].iter_mut().zip(&mut o[lo..hi]).zip(pairs) {
                        *e = pair[0];
                        *o = pair[1];
                    }
                }
                for (copy, out) in [(even, e), (odd, o)] {
                    let edges = copy.cols.start..lo.max(copy.cols.start);
                    for v in edges.chain(hi.min(copy.cols.end).max(lo)..copy.cols.end) {
                        out[v] = src[copy.ix + (v - copy.cols.start) * 2];
                    }
                }
            }
        }
        return;
    }
    for (copy, dst) in layout.phases.iter().zip(dst.chunks_exact_mut(layout.plane)) {
        let n = copy.cols.len();
        for (k, u) in copy.rows.clone().enumerate() {
            let src = &plane[(copy.iy + k * sh) * g.w + copy.ix..];
            let row = &mut dst[u * layout.wq..][copy.cols.clone()];
            if sw == 1 {
                row.copy_from_slice(&src[..n]);
            } else {
                for (d, &s) in row.iter_mut().zip(src.iter().step_by(sw)) {
                    *d = s;
                }
            }
        }
    }
}

/// The vector instructions a tile kernel is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    /// 16 lanes (AVX-512F).
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// 8 lanes (AVX2 with FMA).
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Isa {
    /// Positions per tile of `n` output channels (as [`run_tiles`] picks the tiles).
    fn width(self, n: usize) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => 16 * (16 / n),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => 8 * (8 / n),
        }
    }

    /// The tile kernels for `level`; none without vector instructions with fused
    /// multiply-adds (there im2col's matrix products are faster than scalar tiles).
    fn at(level: SimdLevel) -> Option<Self> {
        match level {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => Some(Isa::Avx512),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => Some(Isa::Avx2),
            _ => None,
        }
    }
}

/// Every tile of positions for the `n` output channels of one block: `out` `[n, positions]`
/// from the phase planes `planes` (`cig` channels) and the block's packed weights `w`
/// `[K_g, n]`.
fn run_tiles(layout: &Layout, cig: usize, planes: &[f32], w: &[f32], out: &mut [f32], n: usize) {
    assert!(
        planes.len() >= cig * layout.channel
            && w.len() == cig * layout.taps.len() * n
            && out.len() >= n * layout.positions,
        "tile buffers too small"
    );
    #[cfg(target_arch = "x86_64")]
    {
        use x86::{avx2, avx512};
        // SAFETY: `layout.isa` was chosen from the instructions `simd_level()` found on this CPU,
        // and the buffers hold what the tiles read and write (checked above, with
        // `Layout::new`'s bound on tap offsets).
        unsafe {
            match (layout.isa, n) {
                (Isa::Avx512, 8) => avx512::<8, 2>(layout, cig, planes, w, out),
                (Isa::Avx512, 4) => avx512::<4, 4>(layout, cig, planes, w, out),
                (Isa::Avx512, 2) => avx512::<2, 8>(layout, cig, planes, w, out),
                (Isa::Avx512, _) => avx512::<1, 16>(layout, cig, planes, w, out),
                (Isa::Avx2, 8) => avx2::<8, 1>(layout, cig, planes, w, out),
                (Isa::Avx2, 4) => avx2::<4, 2>(layout, cig, planes, w, out),
                (Isa::Avx2, 2) => avx2::<2, 4>(layout, cig, planes, w, out),
                (Isa::Avx2, _) => avx2::<1, 8>(layout, cig, planes, w, out),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    match layout.isa {}
}

/// The tile kernels: `N` output channels by `T` vectors of positions, `N * T` accumulators
/// held in registers while the input channels and taps go by.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    use super::Layout;

    /// One vector register of `f32` lanes.
    trait Vector: Copy {
        const LANES: usize;
        unsafe fn zero() -> Self;
        unsafe fn splat(v: f32) -> Self;
        unsafe fn load(p: *const f32) -> Self;
        /// `a * b + self`, rounded once.
        unsafe fn fma(self, a: Self, b: Self) -> Self;
        unsafe fn store(self, p: *mut f32);
    }

    /// The [`Vector`] implementation for one register type, and `$kernel`: [`tiles`] compiled
    /// for `$features` with that register.
    macro_rules! isa {
        (
            $kernel:ident, $features:literal, $doc:literal, $vector:ty, $lanes:literal,
            $zero:ident, $splat:ident, $load:ident, $fma:ident, $store:ident
        ) => {
            impl Vector for $vector {
                const LANES: usize = $lanes;
                #[inline(always)]
                unsafe fn zero() -> Self {
                    // SAFETY: the caller runs on a CPU with these instructions.
                    unsafe { $zero() }
                }
                #[inline(always)]
                unsafe fn splat(v: f32) -> Self {
                    // SAFETY: as above.
                    unsafe { $splat(v) }
                }
                #[inline(always)]
                unsafe fn load(p: *const f32) -> Self {
                    // SAFETY: as above, and the caller's pointer holds `LANES` values.
                    unsafe { $load(p) }
                }
                #[inline(always)]
                unsafe fn fma(self, a: Self, b: Self) -> Self {
                    // SAFETY: as above.
                    unsafe { $fma(a, b, self) }
                }
                #[inline(always)]
                unsafe fn store(self, p: *mut f32) {
                    // SAFETY: as above, and the caller's pointer has room for `LANES` values.
                    unsafe { $store(p, self) }
                }
            }

            #[doc = concat!("[`tiles`] in ", $doc, ".")]
            ///
            /// # Safety
            #[doc = concat!("As [`tiles`], on a CPU with ", $doc, ".")]
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $kernel<const N: usize, const T: usize>(
                layout: &Layout,
                cig: usize,
                planes: &[f32],
                w: &[f32],
                out: &mut [f32],
            ) {
                // SAFETY: as this function's.
                unsafe { tiles::<$vector, N, T>(layout, cig, planes, w, out) }
            }
        };
    }

    isa!(
        avx512,
        "avx512f",
        "AVX-512F",
        __m512,
        16,
        _mm512_setzero_ps,
        _mm512_set1_ps,
        _mm512_loadu_ps,
        _mm512_fmadd_ps,
        _mm512_storeu_ps
    );
    isa!(
        avx2,
        "avx2,fma",
        "AVX2 with FMA",
        __m256,
        8,
        _mm256_setzero_ps,
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_fmadd_ps,
        _mm256_storeu_ps
    );

    /// # Safety
    /// The CPU has `V`'s instructions; `planes` holds `cig` channels of `layout.channel`
    /// values, `w` `cig * taps * N` values and `out` `N * layout.positions`; every tap offset
    /// plus `layout.positions` is within a channel.
    #[inline(always)]
    unsafe fn tiles<V: Vector, const N: usize, const T: usize>(
        layout: &Layout,
        cig: usize,
        planes: &[f32],
        w: &[f32],
        out: &mut [f32],
    ) {
        let width = T * V::LANES;
        // The tile shapes here and `Isa::width`, which sized `layout.positions`, agree.
        assert!(
            layout.computed(width) <= layout.positions,
            "tiles of {width} positions within the scratch rows"
        );
        let taps = layout.taps.len();
        let (planes, w, out) = (planes.as_ptr(), w.as_ptr(), out.as_mut_ptr());
        // SAFETY (every access below): tiles start below `layout.computed(width) <=
        // layout.positions` and span `width` positions, so reads stay inside the channel
        // (tap offset + positions) and writes inside the block's rows of `out`.
        unsafe {
            for p0 in (0..layout.computed(width)).step_by(width) {
                let mut acc = [[V::zero(); T]; N];
                for ci in 0..cig {
                    let channel = planes.add(ci * layout.channel + p0);
                    let w = w.add(ci * taps * N);
                    for (t, &offset) in layout.taps.iter().enumerate() {
                        let src = channel.add(offset);
                        let x: [V; T] = core::array::from_fn(|v| V::load(src.add(v * V::LANES)));
                        for (c, acc) in acc.iter_mut().enumerate() {
                            let wc = V::splat(*w.add(t * N + c));
                            for (acc, &x) in acc.iter_mut().zip(&x) {
                                *acc = acc.fma(wc, x);
                            }
                        }
                    }
                }
                for (c, acc) in acc.iter().enumerate() {
                    let dst = out.add(c * layout.positions + p0);
                    for (v, acc) in acc.iter().enumerate() {
                        acc.store(dst.add(v * V::LANES));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::im2col;
    use super::*;

    /// The larger of `m` and `v`, NaN when either is (`f32::max` would skip a NaN, and an
    /// all-NaN result would pass the comparisons below).
    fn nan_max(m: f32, v: f32) -> f32 {
        if m.is_nan() || v.is_nan() {
            f32::NAN
        } else {
            m.max(v)
        }
    }

    /// A small deterministic generator of values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The tile kernels this CPU can run.
    fn isas() -> Vec<Isa> {
        [SimdLevel::Avx512, SimdLevel::Avx2]
            .into_iter()
            .filter(|&level| level <= simd_level())
            .filter_map(Isa::at)
            .collect()
    }

    fn geometry(
        batch: usize,
        [c_in, c_out, groups]: [usize; 3],
        [h, w]: [usize; 2],
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [(usize, usize); 2],
        dilation: [usize; 2],
    ) -> ConvGeometry {
        let out = [0, 1].map(|a| {
            let size = [h, w][a];
            let (b, e) = padding[a];
            (size + b + e - dilation[a] * (kernel[a] - 1) - 1) / stride[a] + 1
        });
        ConvGeometry {
            batch,
            c_in,
            h,
            w,
            c_out,
            kernel,
            stride,
            padding: padding.map(|p| p.0),
            dilation,
            groups,
            out,
        }
    }

    /// The direct convolution against im2col and a matrix product per group (the path it
    /// replaces, itself held to a float64 reference in `tests/conv.rs`), over ResNeXt's group
    /// shapes, ungrouped 7x7 and 3x3 kernels, strides 1 to 3, dilation, asymmetric padding,
    /// padding wider than the kernel, output channels per group that are not a multiple of
    /// the tile (blocks of 8, 4, 2 and 1) or split across tasks, depthwise groups, bias (and
    /// a scale, a residual and ReLU), each instruction set this CPU has, and one and two
    /// threads.
    #[test]
    fn direct_convolution_matches_im2col() {
        let same = [(1, 1), (1, 1)];
        #[rustfmt::skip]
        let cases = [
            geometry(2, [32, 32, 8], [12, 12], [3, 3], [1, 1], same, [1, 1]),
            geometry(3, [64, 64, 8], [11, 9], [3, 3], [2, 2], same, [1, 1]),
            geometry(1, [60, 45, 3], [7, 7], [3, 3], [1, 1], same, [1, 1]),
            geometry(2, [6, 12, 6], [10, 13], [3, 3], [1, 1], same, [1, 1]),
            geometry(2, [8, 8, 2], [15, 11], [3, 2], [2, 1], [(0, 2), (3, 1)], [2, 1]),
            geometry(1, [6, 15, 3], [14, 17], [5, 5], [3, 2], [(2, 2), (1, 3)], [1, 2]),
            geometry(2, [4, 4, 2], [4, 5], [2, 2], [1, 1], [(3, 3), (2, 4)], [1, 1]),
            geometry(1, [256, 256, 32], [7, 7], [3, 3], [1, 1], same, [1, 1]),
            // Stride 2 over odd and even widths without padding, and over a width of one
            // (the even column phase then reads no column).
            geometry(2, [8, 12, 4], [9, 10], [3, 3], [2, 2], [(0, 0), (0, 0)], [1, 1]),
            geometry(2, [8, 12, 4], [6, 1], [3, 3], [2, 2], same, [1, 1]),
            // Ungrouped: the 7x7 stride-2 stem (one sample: the output channels split into
            // tasks of 8, 8 and 4) and a strided 3x3.
            geometry(1, [3, 20, 1], [23, 19], [7, 7], [2, 2], [(3, 3), (3, 3)], [1, 1]),
            geometry(2, [16, 24, 1], [12, 13], [3, 3], [2, 2], same, [1, 1]),
        ];
        for (k, g) in cases.iter().enumerate() {
            assert_eq!(applies(g), !isas().is_empty(), "case {k}: path");
            let cig = g.c_in / g.groups;
            let x = values(g.batch * g.c_in * g.h * g.w, 2 * k as u64);
            let w = values(g.c_out * cig * g.kernel[0] * g.kernel[1], 2 * k as u64 + 1);
            let b = values(g.c_out, 99 + k as u64);
            let n_out = g.out_plane();
            // Every other case also scales, adds a residual and applies ReLU as it copies out.
            let r = values(g.batch * g.c_out * n_out, 199 + k as u64);
            let a = values(g.c_out, 299 + k as u64);
            let finish = Finish {
                scale: (k % 2 == 1).then_some(&a[..]),
                bias: Some(&b),
                residual: (k % 2 == 1).then_some(&r[..]),
                relu: k % 2 == 1,
            };
            let expected: Vec<f32> = im2col::conv2d_forward(g, &x, &w, Finish::default())
                .iter()
                .enumerate()
                .map(|(i, &y)| {
                    let c = i / n_out % g.c_out;
                    match finish.relu {
                        true => (y * a[c] + b[c] + r[i]).max(0.0),
                        false => y + b[c],
                    }
                })
                .collect();
            for (isa, threads) in isas().into_iter().flat_map(|i| [(i, 1), (i, 2)]) {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("a thread pool");
                let y = pool.install(|| forward(isa, g, &x, &w, finish));
                assert_eq!(y.len(), expected.len(), "case {k}: output size");
                let worst = y
                    .iter()
                    .zip(&expected)
                    .map(|(a, e)| (a - e).abs())
                    .fold(0.0f32, nan_max);
                // Sums of up to 256 products of values in [-1, 1), in another order.
                assert!(
                    worst < 1e-4,
                    "case {k}, {isa:?}, {threads} threads: off by {worst}"
                );
            }
        }
    }

    /// The input gradient by the direct kernel against im2col's (the transposed product and
    /// col2im), over grouped and ungrouped stride-1 convolutions with dilation, asymmetric
    /// and zero padding and non-square kernels; strided ones are left to im2col.
    #[test]
    fn input_gradient_matches_im2col() {
        let same = [(1, 1), (1, 1)];
        #[rustfmt::skip]
        let cases = [
            geometry(2, [32, 32, 8], [12, 12], [3, 3], [1, 1], same, [1, 1]),
            geometry(1, [60, 45, 3], [7, 9], [3, 3], [1, 1], same, [1, 1]),
            geometry(2, [8, 8, 2], [15, 11], [3, 2], [1, 1], [(0, 2), (1, 1)], [2, 1]),
            geometry(2, [6, 10, 1], [9, 8], [3, 3], [1, 1], [(0, 0), (2, 1)], [1, 1]),
            geometry(1, [6, 15, 3], [14, 17], [5, 5], [1, 1], [(2, 2), (1, 3)], [1, 2]),
        ];
        if isas().is_empty() {
            return;
        }
        for (k, g) in cases.iter().enumerate() {
            let cig = g.c_in / g.groups;
            let x = values(g.batch * g.c_in * g.h * g.w, 7 * k as u64);
            let w = values(g.c_out * cig * g.kernel[0] * g.kernel[1], 7 * k as u64 + 1);
            let dy = values(g.batch * g.c_out * g.out_plane(), 7 * k as u64 + 2);
            let (expected, _) = im2col::conv2d_backward(g, &x, &w, &dy, true);
            let expected = expected.expect("an input gradient");
            let dx = input_grad(g, &w, &dy).expect("the direct kernel takes it");
            assert_eq!(dx.len(), expected.len(), "case {k}: size");
            let worst = dx
                .iter()
                .zip(&expected)
                .map(|(a, e)| (a - e).abs())
                .fold(0.0f32, nan_max);
            assert!(worst < 1e-4, "case {k}: off by {worst}");
        }
        let strided = geometry(2, [8, 8, 2], [9, 9], [3, 3], [2, 2], same, [1, 1]);
        assert!(input_grad(&strided, &[0.0; 288], &[0.0; 400]).is_none());
    }

    #[test]
    fn blocks_tile_every_output_channel() {
        for cog in 0..40 {
            let blocks: Vec<_> = blocks(cog).collect();
            let mut next = 0;
            for &(co0, n) in &blocks {
                assert_eq!(co0, next);
                assert!([1, 2, 4, 8].contains(&n));
                next += n;
            }
            assert_eq!(next, cog);
        }
    }
}
