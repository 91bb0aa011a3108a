//! Run-time choice of the CPU's vector instructions for the crate's own loops.
//!
//! The crate is compiled for the target's baseline (SSE2 on x86-64), so its element-wise
//! loops would use 128-bit vectors on CPUs with AVX2 or AVX-512. `multiversion!` compiles a
//! loop body again for AVX-512 and for AVX2 with FMA and picks the best one the CPU has, once
//! per call. Results do not depend on the choice: the bodies use no fused multiply-adds
//! unless they ask for them, so every version rounds alike.

use core::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// Instruction sets the crate's own CPU loops are compiled for (see [`set_max_simd`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// The target's baseline (SSE2 on x86-64).
    Baseline,
    /// AVX2 with FMA (x86-64).
    Avx2,
    /// AVX-512 (F, VL, DQ, BW) with AVX2 and FMA (x86-64).
    Avx512,
}

static LIMIT: AtomicU8 = AtomicU8::new(SimdLevel::Avx512 as u8);

/// Caps the instruction set of the crate's own CPU loops (normalisation, pooling, im2col,
/// Winograd transforms, direct convolution) at `level`; the default is the best the CPU has.
/// Results are the same at every level (no fused multiply-adds, same summation order), so
/// this is for timing and checking. One exception: the direct convolution kernels exist for
/// AVX2 and AVX-512 only (fused multiply-adds, in the same order in both); below AVX2 the
/// convolutions they take go through im2col and a matrix product, whose sums may round
/// differently where the product splits them. Process-wide; the matrix products (`gemm`)
/// choose their own.
pub fn set_max_simd(level: SimdLevel) {
    LIMIT.store(level as u8, Ordering::Relaxed);
}

/// The instruction set the crate's own CPU loops use: the best this CPU supports, capped by
/// [`set_max_simd`].
pub fn simd_level() -> SimdLevel {
    let limit = match LIMIT.load(Ordering::Relaxed) {
        0 => SimdLevel::Baseline,
        1 => SimdLevel::Avx2,
        _ => SimdLevel::Avx512,
    };
    detected().min(limit)
}

/// The best [`SimdLevel`] this CPU supports (detected once).
fn detected() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let v3 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("bmi1")
                && is_x86_feature_detected!("bmi2")
                && is_x86_feature_detected!("lzcnt");
            let v4 = v3
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512bw");
            if v4 {
                return SimdLevel::Avx512;
            }
            if v3 {
                return SimdLevel::Avx2;
            }
        }
        SimdLevel::Baseline
    })
}

/// `fn name(args) -> R { body(args) }`, with `body` (an `#[inline(always)]` fn) compiled
/// for each [`SimdLevel`] and the one [`simd_level`] names called.
macro_rules! multiversion {
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident$(<$($lt:lifetime),+>)?($($arg:ident: $ty:ty),* $(,)?)
            $(-> $ret:ty)? => $body:path
    ) => {
        $(#[$attr])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name$(<$($lt),+>)?($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(
                    enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,bmi1,bmi2,lzcnt"
                )]
                #[allow(clippy::too_many_arguments)]
                fn v4$(<$($lt),+>)?($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt")]
                #[allow(clippy::too_many_arguments)]
                fn v3$(<$($lt),+>)?($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                match $crate::kernel::simd_level() {
                    // SAFETY: `simd_level()` found these instructions on this CPU.
                    $crate::kernel::SimdLevel::Avx512 => return unsafe { v4($($arg),*) },
                    // SAFETY: as above.
                    $crate::kernel::SimdLevel::Avx2 => return unsafe { v3($($arg),*) },
                    $crate::kernel::SimdLevel::Baseline => {}
                }
            }
            $body($($arg),*)
        }
    };
}

pub(super) use multiversion;
