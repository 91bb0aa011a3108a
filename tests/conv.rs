//! `ibn_net::kernel::conv2d` (on flex and ndarray the crate's im2col + matrix-product,
//! Winograd and direct kernels; on wgpu the unfolding kernels and matrix products, forward
//! and backward) against a float64 direct convolution computed here: output and
//! the gradients of input, weight and bias, over strides, asymmetric padding, dilation, groups,
//! 1x1 to 7x7 kernels, a non-contiguous input and inputs large enough to be unfolded in blocks
//! of output rows or transformed in blocks of tiles (CPU devices only); and the output of
//! `conv2d_with` (a residual added and ReLU applied, by the kernels on CPU devices). The CPU cases run in
//! 1- and 2-thread pools, so both batch paths (the batch split into runs of samples across
//! threads, including a run of two; one sample at a time, parallel inside) are taken on any
//! machine. Tolerance: 1e-5 of the reference's largest magnitude.

use std::sync::Mutex;

use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use ibn_net::device::{available_devices, device_from_name};
use ibn_net::kernel::{
    Epilogue, GpuConv, conv2d, conv2d_with, set_gpu_conv, set_winograd, winograd_enabled,
};

const TOL: f64 = 1e-5;

/// Held by the tests that depend on the process-wide algorithm switches (Winograd, GPU).
static SWITCHES: Mutex<()> = Mutex::new(());

#[derive(Clone, Debug)]
struct Case {
    batch: usize,
    c_in: usize,
    c_out: usize,
    size: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [(usize, usize); 2],
    dilation: [usize; 2],
    groups: usize,
    bias: bool,
    /// Build the input as a transposed view (non-contiguous).
    strided: bool,
}

impl Case {
    fn new(batch: usize, c_in: usize, c_out: usize, size: usize, kernel: usize) -> Self {
        Self {
            batch,
            c_in,
            c_out,
            size: [size, size],
            kernel: [kernel, kernel],
            stride: [1, 1],
            padding: [(kernel / 2, kernel / 2); 2],
            dilation: [1, 1],
            groups: 1,
            bias: false,
            strided: false,
        }
    }

    fn options(&self) -> ConvOptions<2> {
        ConvOptions::new_with_padding(self.stride, self.padding, self.dilation, self.groups)
    }

    fn out(&self) -> [usize; 2] {
        [0, 1].map(|a| {
            let (b, e) = self.padding[a];
            (self.size[a] + b + e - self.dilation[a] * (self.kernel[a] - 1) - 1) / self.stride[a]
                + 1
        })
    }
}

fn cases() -> Vec<Case> {
    let mut cases = vec![
        // 1x1, unit stride: the input is the unfolded matrix. (More output channels than
        // unfolded rows: on CPUs the weight gradient's products in their usual orientation;
        // the 3x3 cases below sum it transposed.)
        Case::new(3, 8, 12, 6, 1),
        Case::new(1, 8, 12, 6, 1),
        // 3x3 same padding, both batch paths (81-value output planes: on CPUs the weight
        // gradient sums one product per sample).
        Case::new(3, 5, 7, 9, 3),
        Case::new(1, 5, 7, 9, 3),
        // Output planes of at most 64 values (ResNet's last stage, small): on CPUs the weight
        // gradient is one product over many samples at a time; 3x3 and 1x1.
        Case::new(3, 16, 24, 7, 3),
        Case::new(5, 24, 40, 7, 1),
        // A 1x1 stride-1 convolution padded at the end only: output planes larger than the
        // input's, so the input cannot serve as the unfolded matrix.
        Case {
            padding: [(0, 1), (0, 2)],
            ..Case::new(2, 4, 6, 5, 1)
        },
        // The 7x7 stride-2 stem shape, small.
        Case {
            stride: [2, 2],
            ..Case::new(2, 3, 8, 15, 7)
        },
        // Strided 1x1 (ResNet downsample).
        Case {
            stride: [2, 2],
            ..Case::new(3, 6, 10, 9, 1)
        },
    ];
    cases.push(Case {
        groups: 4,
        bias: true,
        ..Case::new(3, 8, 12, 7, 3)
    });
    cases.push(Case {
        groups: 2,
        stride: [2, 1],
        padding: [(0, 2), (3, 1)],
        dilation: [2, 1],
        kernel: [3, 2],
        ..Case::new(1, 6, 4, 10, 3)
    });
    cases.push(Case {
        bias: true,
        strided: true,
        stride: [1, 3],
        dilation: [1, 2],
        ..Case::new(2, 4, 5, 11, 3)
    });
    // A large input, grouped, strided along the height: computed directly, and its gradients
    // unfolded a block of output rows at a time (16 x 9 x 290 values per output row: 100
    // rows per block, then 50).
    cases.push(Case {
        size: [300, 290],
        stride: [2, 1],
        groups: 2,
        bias: true,
        ..Case::new(2, 16, 4, 300, 3)
    });
    // Winograd F(2x2, 3x3) (3x3, stride 1, at least 32 tiles of 2x2 outputs, more than 32
    // output channels: fewer go to the direct kernel when the batch has a sample per thread):
    // odd and unequal output sizes (13 x 9, partial tiles at the bottom and right), asymmetric
    // padding, bias.
    cases.push(Case {
        size: [13, 10],
        padding: [(0, 2), (1, 0)],
        bias: true,
        ..Case::new(2, 5, 36, 13, 3)
    });
    // Winograd with end padding wider than 2 (the input gradient's convolution then reads
    // output-gradient columns beyond the ones its tiles need).
    cases.push(Case {
        padding: [(1, 3), (0, 3)],
        ..Case::new(2, 4, 34, 10, 3)
    });
    // Winograd, tiles in blocks of whole samples (169 tiles each; 3 samples fit a block, the
    // last block holds one).
    cases.push(Case::new(4, 100, 100, 26, 3));
    // Winograd, a large input transformed a block of tile rows at a time (145 tiles of 56
    // transformed values per tile row: 15 rows per block).
    cases.push(Case {
        size: [100, 290],
        bias: true,
        ..Case::new(2, 16, 40, 100, 3)
    });
    // One sample, im2col (160 x 9 input values per output, more than the direct kernels
    // take) and a product with enough rows (80 output channels) to be split into blocks of
    // rows across threads (48 and 32 rows with two threads), forward and backward.
    cases.push(Case::new(1, 160, 80, 6, 3));
    // ResNeXt's grouped 3x3 at stride 2 (4 channels per group), small.
    cases.push(Case {
        groups: 8,
        stride: [2, 2],
        bias: true,
        ..Case::new(2, 32, 32, 11, 3)
    });
    // Padding wider than the kernel reach: rows and columns made only of padding.
    cases.push(Case {
        padding: [(3, 3), (2, 4)],
        ..Case::new(2, 3, 2, 4, 2)
    });
    cases
}

fn values(t: &TensorData) -> Vec<f64> {
    t.try_to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

struct Reference {
    y: Vec<f64>,
    dx: Vec<f64>,
    dw: Vec<f64>,
    db: Vec<f64>,
}

/// Direct float64 convolution and its gradients for the output gradient `dy`.
fn reference(c: &Case, x: &[f64], w: &[f64], b: Option<&[f64]>, dy: &[f64]) -> Reference {
    let [h, wd] = c.size;
    let [oh, ow] = c.out();
    let [kh, kw] = c.kernel;
    let (cig, cog) = (c.c_in / c.groups, c.c_out / c.groups);
    let mut r = Reference {
        y: vec![0.0; c.batch * c.c_out * oh * ow],
        dx: vec![0.0; x.len()],
        dw: vec![0.0; w.len()],
        db: vec![0.0; c.c_out],
    };
    for n in 0..c.batch {
        for co in 0..c.c_out {
            let grp = co / cog;
            for oy in 0..oh {
                for ox in 0..ow {
                    let yi = ((n * c.c_out + co) * oh + oy) * ow + ox;
                    let mut acc = b.map_or(0.0, |b| b[co]);
                    for ci in 0..cig {
                        let cx = grp * cig + ci;
                        for i in 0..kh {
                            for j in 0..kw {
                                let iy = (oy * c.stride[0] + i * c.dilation[0]) as isize
                                    - c.padding[0].0 as isize;
                                let ix = (ox * c.stride[1] + j * c.dilation[1]) as isize
                                    - c.padding[1].0 as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xi = ((n * c.c_in + cx) * h + iy as usize) * wd + ix as usize;
                                let wi = ((co * cig + ci) * kh + i) * kw + j;
                                acc += x[xi] * w[wi];
                                r.dx[xi] += w[wi] * dy[yi];
                                r.dw[wi] += x[xi] * dy[yi];
                            }
                        }
                    }
                    r.y[yi] = acc;
                    r.db[co] += dy[yi];
                }
            }
        }
    }
    r
}

fn assert_close(what: &str, ours: &TensorData, reference: &[f64]) {
    let ours = values(ours);
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    // NaN anywhere makes `err` NaN, which fails the comparison below.
    let nan_max = |m: f64, v: f64| {
        if m.is_nan() || v.is_nan() {
            f64::NAN
        } else {
            m.max(v)
        }
    };
    let scale = reference
        .iter()
        .map(|v| v.abs())
        .fold(0.0, nan_max)
        .max(1e-12);
    let err = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, nan_max);
    assert!(
        err <= TOL * scale,
        "{what}: max error {err:e} > {TOL:e} x {scale:e}"
    );
}

fn check(device: &Device, label: &str, c: &Case) {
    let what = |part: &str| format!("{label} {c:?}: {part}");
    let [h, w] = c.size;
    let x = if c.strided {
        Tensor::<4>::random([c.batch, w, h, c.c_in], Distribution::Default, device)
            .permute([0, 3, 2, 1])
    } else {
        Tensor::<4>::random([c.batch, c.c_in, h, w], Distribution::Default, device)
    };
    let weight = Tensor::<4>::random(
        [c.c_out, c.c_in / c.groups, c.kernel[0], c.kernel[1]],
        Distribution::Default,
        device,
    );
    let bias = c
        .bias
        .then(|| Tensor::<1>::random([c.c_out], Distribution::Default, device));
    let [oh, ow] = c.out();
    let dy = Tensor::<4>::random([c.batch, c.c_out, oh, ow], Distribution::Default, device);

    let (xv, wv) = (values(&x.to_data()), values(&weight.to_data()));
    let bv = bias.as_ref().map(|b| values(&b.to_data()));
    let expected = reference(c, &xv, &wv, bv.as_deref(), &values(&dy.to_data()));

    let y = conv2d(x.clone(), weight.clone(), bias.clone(), c.options());
    assert_eq!(y.dims(), [c.batch, c.c_out, oh, ow], "{}", what("shape"));
    assert_close(&what("output"), &y.into_data(), &expected.y);

    // `conv2d_with` (on CPUs the kernels add the residual and apply ReLU as they write). The
    // inputs are positive, so ReLU alone runs on the negated input's output, and the residual
    // spans the output's range: both leave roughly half of the values at zero.
    let relu = |v: f64| v.max(0.0);
    let plane = oh * ow;
    let b_of = |i: usize| bv.as_ref().map_or(0.0, |b| b[i / plane % c.c_out]);
    let y = conv2d_with(
        x.clone().neg(),
        weight.clone(),
        bias.clone(),
        c.options(),
        Epilogue::relu(),
    );
    // conv(-x) + b = -(y - b) + b.
    let reference: Vec<f64> = (expected.y.iter().enumerate())
        .map(|(i, &v)| relu(2.0 * b_of(i) - v))
        .collect();
    assert_close(&what("output, ReLU"), &y.into_data(), &reference);
    let y_max = expected.y.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let spread = Distribution::Uniform(-y_max, y_max);
    let residual = Tensor::<4>::random([c.batch, c.c_out, oh, ow], spread, device);
    let rv = values(&residual.to_data());
    let epilogue = Epilogue::add_relu(residual.clone());
    let y = conv2d_with(
        x.clone(),
        weight.clone(),
        bias.clone(),
        c.options(),
        epilogue,
    );
    let reference: Vec<f64> = expected
        .y
        .iter()
        .zip(&rv)
        .map(|(&v, &r)| relu(v + r))
        .collect();
    assert_close(&what("output + residual, ReLU"), &y.into_data(), &reference);
    let epilogue = Epilogue {
        residual: Some(residual),
        relu: false,
    };
    let y = conv2d_with(
        x.clone(),
        weight.clone(),
        bias.clone(),
        c.options(),
        epilogue,
    );
    let reference: Vec<f64> = expected.y.iter().zip(&rv).map(|(&v, &r)| v + r).collect();
    assert_close(&what("output + residual"), &y.into_data(), &reference);

    // Gradients: d(sum(y * dy)) / d(x, weight, bias).
    let ad = device.clone().autodiff();
    let x = Tensor::<4>::from_data(x.into_data(), &ad).require_grad();
    let weight = Tensor::<4>::from_data(weight.into_data(), &ad).require_grad();
    let bias = bias.map(|b| Tensor::<1>::from_data(b.into_data(), &ad).require_grad());
    let dy = Tensor::<4>::from_data(dy.into_data(), &ad);
    let y = conv2d(x.clone(), weight.clone(), bias.clone(), c.options());
    let grads = (y * dy).sum().backward();
    let grad = |t: &Tensor<4>| t.grad(&grads).expect("a gradient").into_data();
    assert_close(&what("input gradient"), &grad(&x), &expected.dx);
    assert_close(&what("weight gradient"), &grad(&weight), &expected.dw);
    if let Some(bias) = bias {
        let db = bias.grad(&grads).expect("a bias gradient").into_data();
        assert_close(&what("bias gradient"), &db, &expected.db);
    }
}

#[test]
fn conv2d_matches_a_float64_direct_convolution_on_every_backend() {
    let _switch = SWITCHES.lock().unwrap_or_else(|e| e.into_inner());
    assert!(winograd_enabled(), "the Winograd path is on by default");
    for name in available_devices() {
        let device = device_from_name(name).unwrap();
        device.seed(11);
        if name == "wgpu" {
            // The unfolded convolution (forward and gradients), grouped cases included, over
            // the cases small enough for a software adapter; then burn's convolution (each new
            // shape is autotuned), whose padding and bias plumbing needs one case.
            set_gpu_conv(GpuConv::UnfoldGrouped);
            let small = |c: &&Case| c.size[0] * c.size[1] * c.c_in * c.c_out < 100_000;
            for case in cases().iter().filter(small) {
                check(&device, "wgpu, unfolded", case);
            }
            let case = Case {
                bias: true,
                padding: [(0, 2), (3, 1)],
                ..Case::new(2, 4, 6, 7, 3)
            };
            set_gpu_conv(GpuConv::Burn);
            check(&device, "wgpu, burn's conv2d", &case);
            set_gpu_conv(GpuConv::Unfold);
            continue;
        }
        let cases = cases();
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a thread pool");
            let label = format!("{name}, {threads} threads");
            pool.install(|| cases.iter().for_each(|case| check(&device, &label, case)));
        }
    }
}

/// The Winograd path is a different computation from the direct kernel or im2col (different
/// rounding, so not bit-identical on random data) with the same result to float32 rounding;
/// the switch turns it off. On each CPU device (the devices with the crate's own kernels).
#[test]
fn winograd_switch_selects_the_algorithm() {
    let _switch = SWITCHES.lock().unwrap_or_else(|e| e.into_inner());
    for name in available_devices().into_iter().filter(|n| *n != "wgpu") {
        let device = device_from_name(name).unwrap();
        device.seed(5);
        let x = Tensor::<4>::random([2, 8, 16, 16], Distribution::Default, &device);
        let w = Tensor::<4>::random([40, 8, 3, 3], Distribution::Default, &device);
        let conv = |winograd: bool| {
            set_winograd(winograd);
            let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
            let y = conv2d(x.clone(), w.clone(), None, options);
            set_winograd(true);
            y.into_data()
        };
        let (fast, direct) = (conv(true), conv(false));
        assert_ne!(
            fast, direct,
            "{name}: both settings ran the same computation"
        );
        fast.assert_approx_eq::<f32>(&direct, burn::tensor::Tolerance::absolute(1e-4));
    }
}

/// On wgpu (when available), the GPU setting picks the algorithm, in inference and training:
/// the unfolded matrix product and burn's convolution round differently (not bit-identical on
/// random data) and agree to float32 rounding; the default unfolds ungrouped convolutions
/// only, so a grouped one is bit-identical to burn's. The crate's unfold and fold kernels run
/// exactly when the setting unfolds (counted launches).
#[cfg(feature = "wgpu")]
#[test]
fn gpu_conv_setting_selects_the_algorithm() {
    let _switch = SWITCHES.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(ibn_net::kernel::gpu_conv(), GpuConv::Unfold, "the default");
    let Some(name) = available_devices().into_iter().find(|n| *n == "wgpu") else {
        return;
    };
    let device = device_from_name(name).unwrap();
    device.seed(9);
    let x = Tensor::<4>::random([2, 8, 12, 12], Distribution::Default, &device);
    let weights =
        [1, 2].map(|g| Tensor::<4>::random([8, 8 / g, 3, 3], Distribution::Default, &device));
    let launches = ibn_net::kernel::cube_conv_launches;
    // (output, input gradient of sum(y^2), kernel launches), at stride 2 so that the fold
    // kernel computes the input gradient.
    let conv = |setting: GpuConv, groups: usize, train: bool| {
        set_gpu_conv(setting);
        let before = launches();
        let options = ConvOptions::new([2, 2], [1, 1], [1, 1], groups);
        let w = weights[groups - 1].clone();
        let result = if train {
            let ad = device.clone().autodiff();
            let x = Tensor::<4>::from_data(x.to_data(), &ad).require_grad();
            let w = Tensor::<4>::from_data(w.into_data(), &ad);
            let grads = conv2d(x.clone(), w, None, options)
                .powi_scalar(2)
                .sum()
                .backward();
            x.grad(&grads).expect("an input gradient").into_data()
        } else {
            conv2d(x.clone(), w, None, options).into_data()
        };
        set_gpu_conv(GpuConv::Unfold);
        (result, launches() - before)
    };
    // Relative: the input gradients reach ~10^3.
    let tolerance = burn::tensor::Tolerance::rel_abs(1e-5, 1e-4);
    for train in [false, true] {
        let what = if train { "input gradient" } else { "output" };
        let (unfolded, ran) = conv(GpuConv::Unfold, 1, train);
        let (burn, burn_ran) = conv(GpuConv::Burn, 1, train);
        assert_ne!(
            unfolded, burn,
            "ungrouped {what}: both settings ran the same computation"
        );
        unfolded.assert_approx_eq::<f32>(&burn, tolerance);
        // Forward: one unfold; training: unfold, then fold and unfold in the backward pass.
        assert_eq!(
            ran,
            if train { 3 } else { 1 },
            "{what}: unfold kernel launches"
        );
        assert_eq!(
            burn_ran, 0,
            "{what}: burn's convolution launched unfold kernels"
        );
        let (burn, _) = conv(GpuConv::Burn, 2, train);
        let (default, ran) = conv(GpuConv::Unfold, 2, train);
        assert_eq!(default, burn, "grouped {what}: the default runs burn's");
        assert_eq!(
            ran, 0,
            "grouped {what}: the default launched unfold kernels"
        );
        let (unfolded, ran) = conv(GpuConv::UnfoldGrouped, 2, train);
        assert_ne!(
            unfolded, burn,
            "grouped {what}: UnfoldGrouped ran burn's convolution"
        );
        assert!(
            ran > 0,
            "grouped {what}: UnfoldGrouped launched no unfold kernel"
        );
        unfolded.assert_approx_eq::<f32>(&burn, tolerance);
    }
}

/// `conv2d` of zero tensors of these shapes, padding 1.
fn conv_of(x: [usize; 4], weight: [usize; 4], bias: Option<usize>) -> Tensor<4> {
    let device = Device::default();
    conv2d(
        Tensor::zeros(x, &device),
        Tensor::zeros(weight, &device),
        bias.map(|c| Tensor::zeros([c], &device)),
        ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
    )
}

#[test]
#[should_panic(expected = "the weight expects 2 input channels, the input has 3")]
fn conv2d_names_a_channel_mismatch() {
    conv_of([1, 3, 8, 8], [4, 2, 3, 3], None);
}

#[test]
#[should_panic(expected = "the bias has 3 values for 4 output channels")]
fn conv2d_names_a_bias_mismatch() {
    conv_of([1, 2, 8, 8], [4, 2, 3, 3], Some(3));
}

#[test]
#[should_panic(expected = "does not fit the padded input size 4")]
fn conv2d_names_a_kernel_larger_than_the_input() {
    conv_of([1, 2, 2, 2], [4, 2, 5, 5], None);
}

#[test]
#[should_panic(
    expected = "conv2d_with: the residual's shape [1, 4, 8, 7] differs from the output's [1, 4, 8, 8]"
)]
fn conv2d_with_names_a_residual_of_another_shape() {
    let device = Device::default();
    let zeros = |shape: [usize; 4]| Tensor::<4>::zeros(shape, &device);
    let epilogue = Epilogue::add_relu(zeros([1, 4, 8, 7]));
    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    conv2d_with(
        zeros([1, 2, 8, 8]),
        zeros([4, 2, 3, 3]),
        None,
        options,
        epilogue,
    );
}
