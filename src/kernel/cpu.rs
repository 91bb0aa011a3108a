//! The kernels on CPU backends (flex, ndarray): plain Rust over contiguous `f32` planes,
//! statistics accumulated in `f64`; one rayon task per chunk of (sample, channel) planes, or
//! per channel (every sample's plane of it) where batch statistics are taken and in the
//! backward passes, which write the input gradient over the output gradient when they may.

use core::mem::MaybeUninit;
use core::ops::Range;

use super::buffer::{assume_init, assume_init_mut, uninit};
use super::simd::multiversion;

/// Lanes of the `f64` accumulators: independent partial sums so the loops vectorise.
const LANES: usize = 8;

/// `sum(f(v))` over `values`, accumulated in `f64`.
#[inline(always)]
fn sum_f64(values: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(v);
        }
    }
    let tail: f64 = rest.iter().map(|&v| f(v)).sum();
    acc.iter().sum::<f64>() + tail
}

/// `sum(f(a, b))` over pairs of `a` and `b`, accumulated in `f64`.
#[inline(always)]
fn sum2_f64(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&a, &b)| f(a, b))
        .sum();
    for (ca, cb) in ca.zip(cb) {
        for ((acc, &a), &b) in acc.iter_mut().zip(ca).zip(cb) {
            *acc += f(a, b);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Mean and biased variance of one plane (two passes).
#[inline(always)]
fn mean_var(plane: &[f32]) -> (f64, f64) {
    let m = plane.len() as f64;
    let mean = sum_f64(plane, |v| v as f64) / m;
    let var = sum_f64(plane, |v| {
        let d = v as f64 - mean;
        d * d
    }) / m;
    (mean, var)
}

/// `y = x * a + b` over one plane, every value of `y` written.
#[inline(always)]
fn affine(x: &[f32], y: &mut [MaybeUninit<f32>], a: f32, b: f32) {
    for (y, &x) in y.iter_mut().zip(x) {
        y.write(x * a + b);
    }
}

/// ReLU that keeps NaN (as PyTorch and burn do).
#[inline(always)]
pub(super) fn relu(v: f32) -> f32 {
    if v > 0.0 || v.is_nan() { v } else { 0.0 }
}

/// `y = x * a + b`, plus `residual` if any, then ReLU with `relu`, over one plane; every value
/// of `y` written.
#[inline(always)]
fn affine_then(
    x: &[f32],
    y: &mut [MaybeUninit<f32>],
    (a, b): (f32, f32),
    residual: Option<&[f32]>,
    relu_after: bool,
) {
    // One loop per case, so that each vectorises.
    match (residual, relu_after) {
        (None, false) => affine(x, y, a, b),
        (None, true) => {
            for (y, &x) in y.iter_mut().zip(x) {
                y.write(relu(x * a + b));
            }
        }
        (Some(r), false) => {
            for ((y, &x), &r) in y.iter_mut().zip(x).zip(r) {
                y.write(x * a + b + r);
            }
        }
        (Some(r), true) => {
            for ((y, &x), &r) in y.iter_mut().zip(x).zip(r) {
                y.write(relu(x * a + b + r));
            }
        }
    }
}

/// One plane of [`norm_forward`]: normalised with its own statistics when `stat`, then
/// `* scale + shift` (`affine`), the residual added and ReLU applied as asked.
#[inline(always)]
fn norm_plane_body(
    x: &[f32],
    y: &mut [MaybeUninit<f32>],
    stat: bool,
    [scale, shift]: [f32; 2],
    epsilon: f32,
    residual: Option<&[f32]>,
    relu: bool,
) {
    let (a, b) = if stat {
        let (mean, var) = mean_var(x);
        let a = scale as f64 / (var + epsilon as f64).sqrt();
        (a as f32, (shift as f64 - mean * a) as f32)
    } else {
        (scale, shift)
    };
    affine_then(x, y, (a, b), residual, relu);
}

multiversion! {
    fn norm_plane(
        x: &[f32],
        y: &mut [MaybeUninit<f32>],
        stat: bool,
        affine: [f32; 2],
        epsilon: f32,
        residual: Option<&[f32]>,
        relu: bool,
    ) => norm_plane_body
}

/// The input gradient of the values normalised together (one plane of `plane_norm`, or one
/// channel of every sample in batch-norm training) as `dx = g * a + (x - mu) * cx + b`, from
/// their input `x` and output gradient `g`; with `(sum(g * xhat), sum(g))` over them.
struct PlaneGrad {
    a: f32,
    mu: f32,
    cx: f32,
    b: f32,
    /// Whether the values are normalised with their own statistics (then `dx` depends on `x`).
    stat: bool,
    sums: (f64, f64),
}

impl PlaneGrad {
    #[inline(always)]
    fn new(x: &[f32], g: &[f32], stat: bool, scale: f32, epsilon: f32) -> Self {
        // xhat = (x - mu) * r: the normalised input, or x itself without statistics.
        let (mu, r) = if stat {
            let (mean, var) = mean_var(x);
            (mean, 1.0 / (var + epsilon as f64).sqrt())
        } else {
            (0.0, 1.0)
        };
        let (sum_g, sum_gc) = grad_sums_body(x, g, mu);
        Self::from_sums(stat, (mu, r), x.len() as f64, (sum_g, sum_gc), scale)
    }

    /// From the statistics `(mu, r)` of `count` values (`r = 1 / sqrt(var + epsilon)`, or
    /// `(0, 1)` without statistics) and the sums `(sum(g), sum(g * (x - mu)))` over them.
    #[inline(always)]
    fn from_sums(
        stat: bool,
        (mu, r): (f64, f64),
        count: f64,
        (sum_g, sum_gc): (f64, f64),
        scale: f32,
    ) -> Self {
        let sum_gx = sum_gc * r;
        let k = scale as f64 * r;
        // With statistics dx = scale * r * (g - mean(g) - xhat * mean(g * xhat)), else
        // dx = scale * g.
        let (b, cx) = if stat {
            (
                (-k * sum_g / count) as f32,
                (-k * sum_gx * r / count) as f32,
            )
        } else {
            (0.0, 0.0)
        };
        Self {
            a: k as f32,
            mu: mu as f32,
            cx,
            b,
            stat,
            sums: (sum_gx, sum_g),
        }
    }

    /// Turns the output gradient of one plane, held in `g`, into its input gradient.
    #[inline(always)]
    fn apply_in_place(&self, x: &[f32], g: &mut [f32]) {
        if !self.stat {
            g.iter_mut().for_each(|g| *g *= self.a);
            return;
        }
        for (g, &x) in g.iter_mut().zip(x) {
            *g = *g * self.a + (x - self.mu) * self.cx + self.b;
        }
    }
}

/// `(sum(g), sum(g * (x - mu)))` over one plane, accumulated in `f64`.
#[inline(always)]
fn grad_sums_body(x: &[f32], g: &[f32], mu: f64) -> (f64, f64) {
    let sum_g = sum_f64(g, |v| v as f64);
    let sum_gc = sum2_f64(x, g, |x, g| g as f64 * (x as f64 - mu));
    (sum_g, sum_gc)
}

/// [`PlaneGrad::apply_in_place`] compiled per instruction set.
#[inline(always)]
fn grad_apply_in_place_body(p: &PlaneGrad, x: &[f32], g: &mut [f32]) {
    p.apply_in_place(x, g)
}

/// ReLU's mask ([`mask`]) applied to `g` in place: 0 where `output <= 0`.
#[inline(always)]
fn mask_in_place_body(output: &[f32], g: &mut [f32]) {
    for (g, &y) in g.iter_mut().zip(output) {
        if y <= 0.0 {
            *g = 0.0;
        }
    }
}

/// `dst = src` over one plane.
#[inline(always)]
fn copy_body(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        d.write(v);
    }
}

/// One plane of `plane_norm` (normalised with its own statistics when `stat`), its output
/// gradient `g` turned into the input gradient in place; returns `(sum(g * xhat), sum(g))`.
#[inline(always)]
fn plane_backward_in_place_body(
    x: &[f32],
    g: &mut [f32],
    stat: bool,
    scale: f32,
    epsilon: f32,
) -> (f64, f64) {
    let p = PlaneGrad::new(x, g, stat, scale, epsilon);
    p.apply_in_place(x, g);
    p.sums
}

multiversion! {
    fn grad_sums(x: &[f32], g: &[f32], mu: f64) -> (f64, f64) => grad_sums_body
}

multiversion! {
    fn grad_apply_in_place(p: &PlaneGrad, x: &[f32], g: &mut [f32]) => grad_apply_in_place_body
}

multiversion! {
    fn mask_in_place(output: &[f32], g: &mut [f32]) => mask_in_place_body
}

multiversion! {
    fn copy_plane(src: &[f32], dst: &mut [MaybeUninit<f32>]) => copy_body
}

multiversion! {
    fn plane_backward_in_place(
        x: &[f32],
        g: &mut [f32],
        stat: bool,
        scale: f32,
        epsilon: f32,
    ) -> (f64, f64) => plane_backward_in_place_body
}

multiversion! {
    /// [`mean_var`] compiled for the CPU's vector instructions.
    fn plane_mean_var(plane: &[f32]) -> (f64, f64) => mean_var
}

multiversion! {
    /// [`affine`] compiled for the CPU's vector instructions.
    fn plane_affine(x: &[f32], y: &mut [MaybeUninit<f32>], a: f32, b: f32) => affine
}

/// `dx = grad` where `output > 0` (or is NaN), else 0: ReLU's input gradient, as burn's
/// `relu_backward` (which zeroes where `output <= 0`).
#[inline(always)]
fn mask(output: &[f32], grad: &[f32], dx: &mut [MaybeUninit<f32>]) {
    for ((d, &y), &g) in dx.iter_mut().zip(output).zip(grad) {
        d.write(if y <= 0.0 { 0.0 } else { g });
    }
}

multiversion! {
    /// [`mask`] compiled for the CPU's vector instructions.
    fn relu_mask_chunk(output: &[f32], grad: &[f32], dx: &mut [MaybeUninit<f32>]) => mask
}

/// Values per task of the element-wise ReLU masks.
const CHUNK: usize = 1 << 14;

/// [`relu_mask`] written over `grad` itself.
pub(super) fn relu_mask_in_place(output: &[f32], grad: &mut [f32]) {
    use rayon::prelude::*;
    assert_eq!(output.len(), grad.len(), "ReLU output and gradient lengths");
    grad.par_chunks_mut(CHUNK)
        .zip(output.par_chunks(CHUNK))
        .for_each(|(g, y)| mask_in_place(y, g));
}

/// ReLU's input gradient over whole buffers of one length (see [`mask`]), in parallel.
pub(super) fn relu_mask(output: &[f32], grad: &[f32]) -> Vec<f32> {
    use rayon::prelude::*;
    assert_eq!(output.len(), grad.len(), "ReLU output and gradient lengths");
    let mut dx = uninit(grad.len());
    dx.par_chunks_mut(CHUNK)
        .zip(output.par_chunks(CHUNK).zip(grad.par_chunks(CHUNK)))
        .for_each(|(dx, (y, g))| relu_mask_chunk(y, g, dx));
    // SAFETY: the chunks of `dx`, `output` and `grad` pair up one to one (one length), and
    // `mask` writes every value of each.
    unsafe { assume_init(dx) }
}

/// Forward of `plane_norm` on a contiguous `[N, C, H, W]` buffer, with `residual` (the same
/// layout) added and ReLU applied after the affine map when given.
#[allow(clippy::too_many_arguments)]
pub(super) fn norm_forward(
    x: &[f32],
    [_, c, h, w]: [usize; 4],
    scale: &[f32],
    shift: &[f32],
    stats: Range<usize>,
    epsilon: f32,
    residual: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    use rayon::prelude::*;
    if let Some(r) = residual {
        assert_eq!(r.len(), x.len(), "residual and input lengths");
    }
    let hw = h * w;
    if hw == 0 {
        return vec![0.0; x.len()];
    }
    let mut out = uninit(x.len());
    out.par_chunks_mut(hw)
        .zip(x.par_chunks(hw))
        .enumerate()
        .for_each(|(p, (y, x))| {
            let ch = p % c;
            let residual = residual.map(|r| &r[p * hw..(p + 1) * hw]);
            let (stat, affine) = (stats.contains(&ch), [scale[ch], shift[ch]]);
            norm_plane(x, y, stat, affine, epsilon, residual, relu);
        });
    // SAFETY: `out` and `x` have the same length, a whole number of planes of `hw` values, and
    // the loop above wrote every value of every plane.
    unsafe { assume_init(out) }
}

/// `plane_moments` of the channels `channels`: `[2, N, K]`, means then biased variances.
pub(super) fn moments(x: &[f32], [n, c, h, w]: [usize; 4], channels: Range<usize>) -> Vec<f32> {
    use rayon::prelude::*;
    let hw = h * w;
    let k = channels.len();
    let planes = n * k;
    let stats: Vec<(f64, f64)> = (0..planes)
        .into_par_iter()
        .map(|p| {
            if hw == 0 {
                return (f64::NAN, f64::NAN);
            }
            let (i, ch) = (p / k, channels.start + p % k);
            let start = (i * c + ch) * hw;
            plane_mean_var(&x[start..start + hw])
        })
        .collect();
    let mut out = vec![0.0f32; 2 * planes];
    for (p, (mean, var)) in stats.into_iter().enumerate() {
        out[p] = mean as f32;
        out[planes + p] = var as f32;
    }
    out
}

/// Input gradient of `plane_moments` of the channels `channels` (zero elsewhere).
pub(super) fn moments_backward(
    x: &[f32],
    moments: &[f32],
    grad: &[f32],
    [n, c, h, w]: [usize; 4],
    channels: Range<usize>,
) -> Vec<f32> {
    use rayon::prelude::*;
    let hw = h * w;
    let k = channels.len();
    let planes = n * k;
    if hw == 0 {
        return vec![0.0; x.len()];
    }
    let mut dx = uninit(x.len());
    let m = hw as f32;
    dx.par_chunks_mut(hw)
        .zip(x.par_chunks(hw))
        .enumerate()
        .for_each(|(plane, (dx, x))| {
            let ch = plane % c;
            if !channels.contains(&ch) {
                dx.fill(MaybeUninit::new(0.0));
                return;
            }
            let p = (plane / c) * k + ch - channels.start;
            let mean = moments[p];
            let (g_mean, g_var) = (grad[p], grad[planes + p]);
            // dx = g_mean / M + g_var * 2 (x - mean) / M
            let a = 2.0 * g_var / m;
            plane_affine(x, dx, a, g_mean / m - a * mean);
        });
    // SAFETY: `dx` and `x` have the same length, a whole number of planes of `hw` values, and
    // every plane is either filled with zeros or written by `affine`.
    unsafe { assume_init(dx) }
}

/// The planes of a `[N, C, H, W]` buffer (`hw` values each) grouped by channel: group `ch`
/// holds the planes `(0, ch)`, `(1, ch)`, ... in sample order. Lets one task own a channel of
/// every sample.
fn channel_planes<T>(buf: &mut [T], c: usize, hw: usize) -> Vec<Vec<&mut [T]>> {
    let mut groups: Vec<Vec<&mut [T]>> = (0..c).map(|_| Vec::new()).collect();
    for (p, plane) in buf.chunks_mut(hw).enumerate() {
        groups[p % c].push(plane);
    }
    groups
}

/// Plane `(i, ch)` of a `[N, C, H, W]` buffer of `c` channels and `hw` values per plane.
#[inline(always)]
fn plane_of(buf: &[f32], i: usize, (ch, c, hw): (usize, usize, usize)) -> &[f32] {
    &buf[(i * c + ch) * hw..][..hw]
}

/// Mean and biased variance of a channel over every sample, from its planes' (law of total
/// variance: no cancellation between planes with different means).
fn batch_mean_var(planes: impl Iterator<Item = (f64, f64)>) -> (f64, f64) {
    let moments: Vec<(f64, f64)> = planes.collect();
    let n = moments.len() as f64;
    let mean = moments.iter().map(|m| m.0).sum::<f64>() / n;
    let var = moments
        .iter()
        .map(|&(m, v)| v + (m - mean) * (m - mean))
        .sum::<f64>()
        / n;
    (mean, var)
}

/// Forward of `plane_norm_train`: the channels in `stats` normalised per plane, the others
/// with their batch statistics (over every sample), then `* scale + shift`, `residual` and
/// ReLU as in [`norm_forward`]. One task per channel, so that a channel's planes are read
/// from memory once for the statistics and again from cache to normalise them. Returns the
/// output and the batch statistics `[2, C]` (means, then biased variances; 0 on the channels
/// in `stats`).
#[allow(clippy::too_many_arguments)]
pub(super) fn norm_train_forward(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    scale: &[f32],
    shift: &[f32],
    stats: Range<usize>,
    (epsilon, batch_epsilon): (f32, f32),
    residual: Option<&[f32]>,
    relu: bool,
) -> (Vec<f32>, Vec<f32>) {
    use rayon::prelude::*;
    if let Some(r) = residual {
        assert_eq!(r.len(), x.len(), "residual and input lengths");
    }
    let hw = h * w;
    let mut out = uninit(x.len());
    let moments: Vec<(f64, f64)> = if hw == 0 {
        vec![(f64::NAN, f64::NAN); c]
    } else {
        channel_planes(&mut out, c, hw)
            .into_par_iter()
            .enumerate()
            .map(|(ch, planes)| {
                let stat = stats.contains(&ch);
                let (affine, moments) = if stat {
                    ([scale[ch], shift[ch]], (0.0, 0.0))
                } else {
                    let each = (0..n).map(|i| plane_mean_var(plane_of(x, i, (ch, c, hw))));
                    let (mean, var) = batch_mean_var(each);
                    let a = scale[ch] as f64 / (var + batch_epsilon as f64).sqrt();
                    (
                        [a as f32, (shift[ch] as f64 - mean * a) as f32],
                        (mean, var),
                    )
                };
                for (i, y) in planes.into_iter().enumerate() {
                    let residual = residual.map(|r| plane_of(r, i, (ch, c, hw)));
                    let x = plane_of(x, i, (ch, c, hw));
                    norm_plane(x, y, stat, affine, epsilon, residual, relu);
                }
                moments
            })
            .collect()
    };
    // SAFETY: `out` is a whole number of planes of `hw` values (none when `hw` is 0), every
    // plane belongs to one channel's group, and each group's planes are all written above.
    let out = unsafe { assume_init(out) };
    let mut batch = vec![0.0f32; 2 * c];
    for (ch, (mean, var)) in moments.into_iter().enumerate() {
        batch[ch] = mean as f32;
        batch[c + ch] = var as f32;
    }
    (out, batch)
}

/// What the backward pass of `plane_norm` and `plane_norm_train` needs besides the output
/// gradient: the input, the ReLU output (when the mask is still to be applied), the shape, the
/// scale, the channels with per-plane statistics and the two epsilons (per-plane, batch), and
/// in training the batch statistics `[2, C]` of the other channels (which `plane_norm` maps by
/// the affine transform alone).
pub(super) struct NormGrad<'a> {
    pub x: &'a [f32],
    pub relu_output: Option<&'a [f32]>,
    pub dims: [usize; 4],
    pub scale: &'a [f32],
    pub batch: Option<&'a [f32]>,
    pub stats: Range<usize>,
    pub epsilons: (f32, f32),
}

impl NormGrad<'_> {
    /// Channel `ch`'s input gradient in place of its output gradient `g` (its planes in
    /// sample order, ReLU's mask applied here when `relu_output` is given): plane by plane,
    /// except for a batch-normalised channel, done in two passes over its planes (the
    /// gradient's sums, then `dx`), the second from cache. Returns `(dscale, dshift)` of the
    /// channel.
    fn channel(&self, ch: usize, mut g: Vec<&mut [f32]>) -> (f64, f64) {
        let [_, c, h, w] = self.dims;
        let at = (ch, c, h * w);
        let (x, scale) = (self.x, self.scale[ch]);
        let mask = |i: usize, g: &mut [f32]| {
            if let Some(y) = self.relu_output {
                mask_in_place(plane_of(y, i, at), g);
            }
        };
        let stat = self.stats.contains(&ch);
        let batch = match self.batch {
            Some(batch) if !stat => batch,
            _ => {
                let each = g.into_iter().enumerate().map(|(i, g)| {
                    mask(i, g);
                    let x = plane_of(x, i, at);
                    plane_backward_in_place(x, g, stat, scale, self.epsilons.0)
                });
                return each.fold((0.0, 0.0), |(s, b), (gs, gb)| (s + gs, b + gb));
            }
        };
        let mu = batch[ch] as f64;
        let r = 1.0 / (batch[c + ch] as f64 + self.epsilons.1 as f64).sqrt();
        let (mut sum_g, mut sum_gc) = (0.0, 0.0);
        for (i, g) in g.iter_mut().enumerate() {
            mask(i, g);
            let (s, sc) = grad_sums(plane_of(x, i, at), g, mu);
            sum_g += s;
            sum_gc += sc;
        }
        let count = (g.len() * h * w) as f64;
        let p = PlaneGrad::from_sums(true, (mu, r), count, (sum_g, sum_gc), scale);
        for (i, g) in g.into_iter().enumerate() {
            grad_apply_in_place(&p, plane_of(x, i, at), g);
        }
        p.sums
    }

    /// The backward pass with the output gradient `grad` turned into the input gradient in
    /// place (no new buffer: the gradient is read from and written to cache-resident
    /// planes): `(dscale [C], dshift [C])`.
    pub(super) fn in_place(&self, grad: &mut [f32]) -> (Vec<f32>, Vec<f32>) {
        use rayon::prelude::*;
        let [_, c, h, w] = self.check(grad.len());
        if h * w == 0 {
            return (vec![0.0; c], vec![0.0; c]);
        }
        let sums: Vec<(f64, f64)> = channel_planes(grad, c, h * w)
            .into_par_iter()
            .enumerate()
            .map(|(ch, g)| self.channel(ch, g))
            .collect();
        sums.into_iter().map(|(s, b)| (s as f32, b as f32)).unzip()
    }

    /// The backward pass into a new buffer: `(dx, dscale [C], dshift [C])`. Each channel's
    /// output gradient (masked, with ReLU) is first copied into its planes of `dx`.
    pub(super) fn to_new(&self, grad: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        use rayon::prelude::*;
        let [_, c, h, w] = self.check(grad.len());
        let hw = h * w;
        let mut dx = uninit(grad.len());
        let sums: Vec<(f64, f64)> = if hw == 0 {
            vec![(0.0, 0.0); c]
        } else {
            let masked = NormGrad {
                relu_output: None,
                stats: self.stats.clone(),
                ..*self
            };
            channel_planes(&mut dx, c, hw)
                .into_par_iter()
                .enumerate()
                .map(|(ch, planes)| {
                    let at = (ch, c, hw);
                    let g = planes.into_iter().enumerate().map(|(i, dx)| {
                        let g = plane_of(grad, i, at);
                        match self.relu_output {
                            Some(y) => relu_mask_chunk(plane_of(y, i, at), g, dx),
                            None => copy_plane(g, dx),
                        }
                        // SAFETY: both branches wrote every value of `dx`.
                        unsafe { assume_init_mut(dx) }
                    });
                    masked.channel(ch, g.collect())
                })
                .collect()
        };
        // SAFETY: `dx` is a whole number of planes of `hw` values (none when `hw` is 0), every
        // plane belongs to one channel's group, and each group's planes are all written above.
        let dx = unsafe { assume_init(dx) };
        let (dscale, dshift) = sums.into_iter().map(|(s, b)| (s as f32, b as f32)).unzip();
        (dx, dscale, dshift)
    }

    /// The shape, once the lengths of the gradient and the other buffers are checked.
    fn check(&self, grad: usize) -> [usize; 4] {
        assert_eq!(grad, self.x.len(), "input and gradient lengths");
        if let Some(y) = self.relu_output {
            assert_eq!(y.len(), self.x.len(), "input and ReLU output lengths");
        }
        self.dims
    }
}

mod backends {
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Backend, TensorMetadata};
    use burn::tensor::{DType, Shape, TensorData};

    use burn::tensor::ops::ConvOptions;

    use super::super::conv::{ConvFinishKernels, ConvKernels, output_size};
    use super::super::im2col::{ConvGeometry, Finish, conv2d_backward, conv2d_forward};
    use super::super::pool::cpu::PoolKernels;
    use super::super::pool::{PoolGeometry, max_pool_backward_planes, max_pool_planes};
    use super::super::{NormKernels, dims4, direct, winograd};

    /// Read access to a CPU backend's tensors as contiguous `f32` values.
    pub(super) trait CpuAccess: Backend {
        /// Calls `f` with the values of `x` in row-major order (no copy when `x` is already
        /// contiguous `f32`).
        fn with_f32<R>(x: FloatTensor<Self>, f: impl FnOnce(&[f32]) -> R) -> R;

        /// Calls `f` on the values of `x` to be overwritten in place, when `x` is contiguous
        /// `f32` held by no other tensor: `Ok((x, result))`; otherwise `Err(x)`, untouched.
        #[allow(clippy::type_complexity)]
        fn with_f32_mut<R>(
            x: FloatTensor<Self>,
            f: impl FnOnce(&mut [f32]) -> R,
        ) -> Result<(FloatTensor<Self>, R), FloatTensor<Self>>;
    }

    #[cfg(feature = "flex")]
    impl CpuAccess for burn::backend::Flex {
        fn with_f32<R>(x: FloatTensor<Self>, f: impl FnOnce(&[f32]) -> R) -> R {
            if x.dtype() == DType::F32 {
                let x = x.to_contiguous();
                if let Some(values) = x.as_slice::<f32>() {
                    return f(values);
                }
                return f(&read::<Self>(x));
            }
            f(&read::<Self>(x))
        }

        fn with_f32_mut<R>(
            mut x: FloatTensor<Self>,
            f: impl FnOnce(&mut [f32]) -> R,
        ) -> Result<(FloatTensor<Self>, R), FloatTensor<Self>> {
            let Some((start, end)) = x.layout().contiguous_offsets() else {
                return Err(x);
            };
            if x.dtype() != DType::F32 {
                return Err(x);
            }
            let result = match x.try_storage_mut::<f32>() {
                Some(values) => f(&mut values[start..end]),
                None => return Err(x),
            };
            Ok((x, result))
        }
    }

    #[cfg(feature = "ndarray")]
    impl CpuAccess for burn::backend::NdArray {
        fn with_f32<R>(x: FloatTensor<Self>, f: impl FnOnce(&[f32]) -> R) -> R {
            if let burn::backend::ndarray::NdArrayTensor::F32(storage) = &x
                && let Some(values) = storage.view().as_slice()
            {
                return f(values);
            }
            f(&read::<Self>(x))
        }

        fn with_f32_mut<R>(
            x: FloatTensor<Self>,
            _: impl FnOnce(&mut [f32]) -> R,
        ) -> Result<(FloatTensor<Self>, R), FloatTensor<Self>> {
            // Not attempted: the backend's tensors share their arrays freely.
            Err(x)
        }
    }

    /// Copies a CPU tensor out as `f32` values.
    fn read<B: Backend>(x: FloatTensor<B>) -> Vec<f32> {
        let data = ready(B::float_into_data(x)).expect("reading a CPU tensor cannot fail");
        match data.dtype() {
            DType::F32 => data.try_into_vec::<f32>(),
            _ => data.convert::<f32>().try_into_vec::<f32>(),
        }
        .expect("f32 data")
    }

    /// A tensor on `device` from `f32` values, in `dtype`.
    fn write<B: Backend>(
        values: Vec<f32>,
        shape: Shape,
        dtype: DType,
        device: &B::Device,
    ) -> FloatTensor<B> {
        let data = TensorData::new(values, shape);
        let data = if dtype == DType::F32 {
            data
        } else {
            data.convert_dtype(dtype)
        };
        B::float_from_data(data, device)
    }

    /// Runs a future that CPU backends complete immediately.
    fn ready<F: Future>(future: F) -> F::Output {
        let mut future = core::pin::pin!(future);
        let mut cx = core::task::Context::from_waker(core::task::Waker::noop());
        loop {
            if let core::task::Poll::Ready(value) = future.as_mut().poll(&mut cx) {
                return value;
            }
            std::thread::yield_now();
        }
    }

    /// `plane_norm` (no `residual`) and `plane_norm_add`.
    #[allow(clippy::too_many_arguments)]
    pub(in super::super) fn plane_norm<B: CpuAccess>(
        x: FloatTensor<B>,
        residual: Option<FloatTensor<B>>,
        scale: FloatTensor<B>,
        shift: FloatTensor<B>,
        stat_start: usize,
        stat_end: usize,
        epsilon: f32,
        relu: bool,
    ) -> FloatTensor<B> {
        let (shape, dtype, device) = (x.shape(), x.dtype(), x.device());
        let (scale, shift) = (read::<B>(scale), read::<B>(shift));
        let norm = |x: &[f32], residual: Option<&[f32]>| {
            let stats = stat_start..stat_end;
            let dims = dims4(&shape);
            super::norm_forward(x, dims, &scale, &shift, stats, epsilon, residual, relu)
        };
        let out = B::with_f32(x, |x| match residual {
            Some(r) => B::with_f32(r, |r| norm(x, Some(r))),
            None => norm(x, None),
        });
        write::<B>(out, shape, dtype, &device)
    }

    /// `plane_norm_backward`, and with `relu_output` `plane_norm_relu_backward`.
    pub(in super::super) fn plane_norm_backward<B: CpuAccess>(
        x: FloatTensor<B>,
        relu_output: Option<FloatTensor<B>>,
        grad: FloatTensor<B>,
        scale: FloatTensor<B>,
        stat_start: usize,
        stat_end: usize,
        epsilon: f32,
    ) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
        let stats = (stat_start, stat_end);
        norm_backward::<B>(x, relu_output, grad, scale, None, stats, (epsilon, epsilon))
    }

    /// `plane_norm_train` (no `residual`) and `plane_norm_train_add`.
    #[allow(clippy::too_many_arguments)]
    pub(in super::super) fn plane_norm_train<B: CpuAccess>(
        x: FloatTensor<B>,
        residual: Option<FloatTensor<B>>,
        scale: FloatTensor<B>,
        shift: FloatTensor<B>,
        stats: (usize, usize),
        epsilons: (f32, f32),
        relu: bool,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        let (shape, dtype, device) = (x.shape(), x.dtype(), x.device());
        let (scale, shift) = (read::<B>(scale), read::<B>(shift));
        let dims = dims4(&shape);
        let norm = |x: &[f32], residual: Option<&[f32]>| {
            let stats = stats.0..stats.1;
            super::norm_train_forward(x, dims, &scale, &shift, stats, epsilons, residual, relu)
        };
        let (out, batch) = B::with_f32(x, |x| match residual {
            Some(r) => B::with_f32(r, |r| norm(x, Some(r))),
            None => norm(x, None),
        });
        (
            write::<B>(out, shape, dtype, &device),
            write::<B>(batch, Shape::new([2, dims[1]]), dtype, &device),
        )
    }

    /// `plane_norm_train_backward`; `relu_output` is read when given.
    #[allow(clippy::too_many_arguments)]
    pub(in super::super) fn plane_norm_train_backward<B: CpuAccess>(
        x: FloatTensor<B>,
        relu_output: Option<FloatTensor<B>>,
        grad: FloatTensor<B>,
        scale: FloatTensor<B>,
        batch: FloatTensor<B>,
        stats: (usize, usize),
        epsilons: (f32, f32),
    ) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
        norm_backward::<B>(x, relu_output, grad, scale, Some(batch), stats, epsilons)
    }

    /// The backward pass of `plane_norm` (without `batch`) or `plane_norm_train` (with its
    /// batch statistics): `(dx, dscale, dshift)`. The input gradient takes the place of the
    /// output gradient when the backend lets the latter be written.
    #[allow(clippy::too_many_arguments)]
    fn norm_backward<B: CpuAccess>(
        x: FloatTensor<B>,
        relu_output: Option<FloatTensor<B>>,
        grad: FloatTensor<B>,
        scale: FloatTensor<B>,
        batch: Option<FloatTensor<B>>,
        stats: (usize, usize),
        epsilons: (f32, f32),
    ) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
        let (shape, dtype, device) = (x.shape(), x.dtype(), x.device());
        let scale_shape = scale.shape();
        let (scale, batch) = (read::<B>(scale), batch.map(read::<B>));
        let (dims, stats) = (dims4(&shape), stats.0..stats.1);
        let inputs = (dims, &scale[..], batch.as_deref(), stats, epsilons);
        let vector = |values: Vec<f32>| write::<B>(values, scale_shape.clone(), dtype, &device);
        let in_place = B::with_f32_mut(grad, |g| {
            let (x, y) = (x.clone(), relu_output.clone());
            with_norm_grad::<B, _>(x, y, inputs.clone(), |k| k.in_place(g))
        });
        let grad = match in_place {
            Ok((dx, (dscale, dshift))) => return (dx, vector(dscale), vector(dshift)),
            Err(grad) => grad,
        };
        let (dx, dscale, dshift) = B::with_f32(grad, |g| {
            with_norm_grad::<B, _>(x, relu_output, inputs, |k| k.to_new(g))
        });
        (
            write::<B>(dx, shape, dtype, &device),
            vector(dscale),
            vector(dshift),
        )
    }

    /// `(dims, scale, batch, stats, epsilons)` of a [`NormGrad`](super::NormGrad).
    type NormInputs<'a> = (
        [usize; 4],
        &'a [f32],
        Option<&'a [f32]>,
        core::ops::Range<usize>,
        (f32, f32),
    );

    /// Calls `f` with the [`NormGrad`](super::NormGrad) of `x`, `relu_output` and `inputs`.
    fn with_norm_grad<B: CpuAccess, R>(
        x: FloatTensor<B>,
        relu_output: Option<FloatTensor<B>>,
        inputs: NormInputs<'_>,
        f: impl FnOnce(&super::NormGrad) -> R,
    ) -> R {
        fn make<'a>(
            x: &'a [f32],
            relu_output: Option<&'a [f32]>,
            (dims, scale, batch, stats, epsilons): NormInputs<'a>,
        ) -> super::NormGrad<'a> {
            super::NormGrad {
                x,
                relu_output,
                dims,
                scale,
                batch,
                stats,
                epsilons,
            }
        }
        B::with_f32(x, |x| match relu_output {
            Some(y) => B::with_f32(y, |y| f(&make(x, Some(y), inputs))),
            None => f(&make(x, None, inputs)),
        })
    }

    pub(in super::super) fn relu_mask<B: CpuAccess>(
        output: FloatTensor<B>,
        grad: FloatTensor<B>,
    ) -> FloatTensor<B> {
        let (shape, dtype, device) = (grad.shape(), grad.dtype(), grad.device());
        assert_eq!(
            output.shape(),
            shape,
            "relu_mask: output and gradient shapes"
        );
        let in_place = B::with_f32_mut(grad, |g| {
            B::with_f32(output.clone(), |y| super::relu_mask_in_place(y, g))
        });
        let grad = match in_place {
            Ok((dx, ())) => return dx,
            Err(grad) => grad,
        };
        let dx = B::with_f32(output, |y| B::with_f32(grad, |g| super::relu_mask(y, g)));
        write::<B>(dx, shape, dtype, &device)
    }

    pub(in super::super) fn plane_moments<B: CpuAccess>(
        x: FloatTensor<B>,
        start: usize,
        end: usize,
    ) -> FloatTensor<B> {
        let (shape, dtype, device) = (x.shape(), x.dtype(), x.device());
        let dims = dims4(&shape);
        let out = B::with_f32(x, |x| super::moments(x, dims, start..end));
        write::<B>(out, Shape::new([2, dims[0], end - start]), dtype, &device)
    }

    pub(in super::super) fn plane_moments_backward<B: CpuAccess>(
        x: FloatTensor<B>,
        moments: FloatTensor<B>,
        grad: FloatTensor<B>,
        start: usize,
        end: usize,
    ) -> FloatTensor<B> {
        let (shape, dtype, device) = (x.shape(), x.dtype(), x.device());
        let (moments, grad) = (read::<B>(moments), read::<B>(grad));
        let dx = B::with_f32(x, |x| {
            super::moments_backward(x, &moments, &grad, dims4(&shape), start..end)
        });
        write::<B>(dx, shape, dtype, &device)
    }

    macro_rules! cpu_kernels {
        ($backend:ty) => {
            impl NormKernels for $backend {
                fn plane_norm(
                    x: FloatTensor<Self>,
                    scale: FloatTensor<Self>,
                    shift: FloatTensor<Self>,
                    stat_start: usize,
                    stat_end: usize,
                    epsilon: f32,
                    relu: bool,
                ) -> FloatTensor<Self> {
                    let (start, end) = (stat_start, stat_end);
                    plane_norm::<Self>(x, None, scale, shift, start, end, epsilon, relu)
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
                    let (start, end, r) = (stat_start, stat_end, Some(residual));
                    plane_norm::<Self>(x, r, scale, shift, start, end, epsilon, relu)
                }

                fn plane_norm_backward(
                    x: FloatTensor<Self>,
                    grad: FloatTensor<Self>,
                    scale: FloatTensor<Self>,
                    stat_start: usize,
                    stat_end: usize,
                    epsilon: f32,
                ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
                    let (start, end) = (stat_start, stat_end);
                    plane_norm_backward::<Self>(x, None, grad, scale, start, end, epsilon)
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
                    let (start, end, y) = (stat_start, stat_end, Some(output));
                    plane_norm_backward::<Self>(x, y, grad, scale, start, end, epsilon)
                }

                fn plane_moments(
                    x: FloatTensor<Self>,
                    start: usize,
                    end: usize,
                ) -> FloatTensor<Self> {
                    plane_moments::<Self>(x, start, end)
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
                    plane_norm_train::<Self>(x, None, scale, shift, stats, eps, relu)
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
                    let r = Some(residual);
                    plane_norm_train::<Self>(x, r, scale, shift, stats, eps, relu)
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
                    let y = relu.then_some(output);
                    plane_norm_train_backward::<Self>(x, y, grad, scale, batch, stats, eps)
                }

                fn relu_mask(
                    output: FloatTensor<Self>,
                    grad: FloatTensor<Self>,
                ) -> FloatTensor<Self> {
                    relu_mask::<Self>(output, grad)
                }

                fn plane_moments_backward(
                    x: FloatTensor<Self>,
                    moments: FloatTensor<Self>,
                    grad: FloatTensor<Self>,
                    start: usize,
                    end: usize,
                ) -> FloatTensor<Self> {
                    plane_moments_backward::<Self>(x, moments, grad, start, end)
                }
            }
        };
    }

    #[cfg(feature = "flex")]
    cpu_kernels!(burn::backend::Flex);
    #[cfg(feature = "ndarray")]
    cpu_kernels!(burn::backend::NdArray);

    /// `[N, C]` of an input of shape `[N, C, H, W]` and the pooling of its planes with
    /// `[kernel, stride, padding, dilation]`.
    fn pool_geometry(
        shape: &Shape,
        window: [[usize; 2]; 4],
        ceil: bool,
    ) -> ([usize; 2], PoolGeometry) {
        let [n, c, h, w] = dims4(shape);
        let [kernel, stride, padding, dilation] = window;
        let g = PoolGeometry {
            input: [h, w],
            kernel,
            stride,
            padding,
            dilation,
            ceil,
        };
        ([n, c], g)
    }

    pub(in super::super) fn max_pool2d_planes<B: CpuAccess>(
        x: FloatTensor<B>,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        ceil: bool,
    ) -> FloatTensor<B> {
        let (shape, dtype, device) = (x.shape(), x.dtype(), x.device());
        let ([n, c], g) = pool_geometry(&shape, [kernel, stride, padding, dilation], ceil);
        let [oh, ow] = g.output();
        let out = B::with_f32(x, |x| max_pool_planes(x, n * c, &g));
        write::<B>(out, Shape::new([n, c, oh, ow]), dtype, &device)
    }

    #[allow(clippy::too_many_arguments)]
    #[cfg_attr(not(feature = "autodiff"), allow(dead_code))]
    pub(in super::super) fn max_pool2d_planes_backward<B: CpuAccess>(
        x: FloatTensor<B>,
        output: FloatTensor<B>,
        grad: FloatTensor<B>,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        ceil: bool,
    ) -> FloatTensor<B> {
        let (shape, dtype, device) = (x.shape(), x.dtype(), x.device());
        let ([n, c], g) = pool_geometry(&shape, [kernel, stride, padding, dilation], ceil);
        let dx = B::with_f32(x, |x| {
            B::with_f32(output, |y| {
                B::with_f32(grad, |dy| max_pool_backward_planes(x, y, dy, n * c, &g))
            })
        });
        write::<B>(dx, shape, dtype, &device)
    }

    macro_rules! cpu_pool_kernels {
        ($backend:ty) => {
            impl PoolKernels for $backend {
                fn max_pool2d_planes(
                    x: FloatTensor<Self>,
                    kernel: [usize; 2],
                    stride: [usize; 2],
                    padding: [usize; 2],
                    dilation: [usize; 2],
                    ceil: bool,
                ) -> FloatTensor<Self> {
                    max_pool2d_planes::<Self>(x, kernel, stride, padding, dilation, ceil)
                }

                fn max_pool2d_planes_backward(
                    x: FloatTensor<Self>,
                    output: FloatTensor<Self>,
                    grad: FloatTensor<Self>,
                    kernel: [usize; 2],
                    stride: [usize; 2],
                    padding: [usize; 2],
                    dilation: [usize; 2],
                    ceil: bool,
                ) -> FloatTensor<Self> {
                    let (k, s, p, d) = (kernel, stride, padding, dilation);
                    max_pool2d_planes_backward::<Self>(x, output, grad, k, s, p, d, ceil)
                }
            }
        };
    }

    #[cfg(feature = "flex")]
    cpu_pool_kernels!(burn::backend::Flex);
    #[cfg(feature = "ndarray")]
    cpu_pool_kernels!(burn::backend::NdArray);

    /// The geometry of a convolution of `x` by `weight`.
    fn conv_geometry(x: &Shape, weight: &Shape, options: &ConvOptions<2>) -> ConvGeometry {
        let [batch, c_in, h, w] = dims4(x);
        let [c_out, _, kh, kw] = dims4(weight);
        let out_size = |size: usize, k: usize, axis: usize| {
            output_size(size, k, options, axis).expect("the kernel fits (checked by conv2d)")
        };
        ConvGeometry {
            batch,
            c_in,
            h,
            w,
            c_out,
            kernel: [kh, kw],
            stride: options.stride,
            padding: options.padding_begin(),
            dilation: options.dilation,
            groups: options.groups,
            out: [out_size(h, kh, 0), out_size(w, kw, 1)],
        }
    }

    /// The forward convolution: multiplied by `scale` `[C_out]`, `bias` `[C_out]` and
    /// `residual` `[N, C_out, OH, OW]` added when given, then ReLU when `relu`, as the kernels
    /// write the output.
    pub(in super::super) fn conv2d_finished<B: CpuAccess>(
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        (scale, bias): (Option<FloatTensor<B>>, Option<FloatTensor<B>>),
        residual: Option<FloatTensor<B>>,
        relu: bool,
        options: ConvOptions<2>,
    ) -> FloatTensor<B> {
        let (dtype, device) = (x.dtype(), x.device());
        let g = conv_geometry(&x.shape(), &weight.shape(), &options);
        let (scale, bias) = (scale.map(read::<B>), bias.map(read::<B>));
        let forward = if winograd::applies(&g) && !direct::preferred_over_winograd(&g) {
            winograd::conv2d_forward
        } else if direct::applies(&g) {
            direct::conv2d_forward
        } else {
            conv2d_forward
        };
        let run = |residual: Option<&[f32]>| {
            let finish = Finish {
                scale: scale.as_deref(),
                bias: bias.as_deref(),
                residual,
                relu,
            };
            B::with_f32(x, |x| B::with_f32(weight, |w| forward(&g, x, w, finish)))
        };
        let out = match residual {
            Some(residual) => B::with_f32(residual, |r| run(Some(r))),
            None => run(None),
        };
        let shape = Shape::new([g.batch, g.c_out, g.out[0], g.out[1]]);
        write::<B>(out, shape, dtype, &device)
    }

    pub(in super::super) fn conv2d_unfold_backward<B: CpuAccess>(
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        grad: FloatTensor<B>,
        options: ConvOptions<2>,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        let (x_shape, w_shape) = (x.shape(), weight.shape());
        let (dtype, device) = (x.dtype(), x.device());
        let g = conv_geometry(&x_shape, &w_shape, &options);
        let (dx, dw) = B::with_f32(x, |x| {
            B::with_f32(weight, |w| {
                B::with_f32(grad, |grad| {
                    // The input gradient by Winograd or the direct kernel where they apply,
                    // else with the weight's.
                    let fast = winograd::input_grad(&g, w, grad)
                        .or_else(|| direct::input_grad(&g, w, grad));
                    let (dx, dw) = conv2d_backward(&g, x, w, grad, fast.is_none());
                    (fast.or(dx).expect("an input gradient"), dw)
                })
            })
        });
        (
            write::<B>(dx, x_shape, dtype, &device),
            write::<B>(dw, w_shape, dtype, &device),
        )
    }

    macro_rules! cpu_conv_kernels {
        ($backend:ty) => {
            impl ConvKernels for $backend {
                fn conv2d_unfold(
                    x: FloatTensor<Self>,
                    weight: FloatTensor<Self>,
                    bias: FloatTensor<Self>,
                    with_bias: bool,
                    options: ConvOptions<2>,
                ) -> FloatTensor<Self> {
                    let affine = (None, with_bias.then_some(bias));
                    conv2d_finished::<Self>(x, weight, affine, None, false, options)
                }

                fn conv2d_unfold_backward(
                    x: FloatTensor<Self>,
                    weight: FloatTensor<Self>,
                    grad: FloatTensor<Self>,
                    options: ConvOptions<2>,
                ) -> (FloatTensor<Self>, FloatTensor<Self>) {
                    conv2d_unfold_backward::<Self>(x, weight, grad, options)
                }
            }

            impl ConvFinishKernels for $backend {
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
                ) -> FloatTensor<Self> {
                    let affine = (with_scale.then_some(scale), with_bias.then_some(bias));
                    let residual = with_residual.then_some(residual);
                    conv2d_finished::<Self>(x, weight, affine, residual, relu, options)
                }
            }
        };
    }

    #[cfg(feature = "flex")]
    cpu_conv_kernels!(burn::backend::Flex);
    #[cfg(feature = "ndarray")]
    cpu_conv_kernels!(burn::backend::NdArray);
}

#[cfg(test)]
mod tests {
    #[test]
    fn relu_mask_zeroes_where_the_output_is_not_positive() {
        // burn's `relu_backward`: the gradient goes through where the output is > 0 or NaN.
        let output = [
            1.0,
            0.0,
            -0.0,
            -2.0,
            f32::NAN,
            f32::INFINITY,
            f32::MIN_POSITIVE,
        ];
        let grad = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0];
        assert_eq!(
            super::relu_mask(&output, &grad),
            [10.0, 0.0, 0.0, 0.0, 50.0, 60.0, 70.0]
        );
        // Longer than one parallel chunk, with a short last chunk.
        let n = (1 << 14) * 2 + 5;
        let output: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect();
        let grad: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let dx = super::relu_mask(&output, &grad);
        for ((d, y), g) in dx.iter().zip(&output).zip(&grad) {
            assert_eq!(*d, if *y > 0.0 { *g } else { 0.0 });
        }
    }
}
