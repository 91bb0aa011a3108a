//! Criterion benchmarks of the building blocks and of whole networks: norm layers (fused
//! kernels against burn's composed operations), convolutions (this crate's kernels against
//! burn's), blocks, evaluation passes of the released models at batch 1 and 8, and training
//! steps (forward, backward, SGD) at batch 8.
//!
//! ```text
//! cargo bench --bench ibn                          # everything, on flex
//! cargo bench --bench ibn -- "ibn layer"           # the benchmarks whose name matches
//! cargo bench --bench ibn -- --quick model         # fewer samples
//! cargo bench --bench ibn -- --save-baseline before   # then, after a change:
//! cargo bench --bench ibn -- --baseline before     # compare with the saved run
//! IBN_BENCH_DEVICE=wgpu cargo bench --features wgpu --bench ibn -- norm
//! ```
//!
//! Environment: `IBN_BENCH_DEVICE` picks the device (`flex`, `ndarray` or `wgpu`, with the
//! matching cargo feature; by default the first of these the build has), `IBN_BENCH_BATCH` the batch size of the layer, block
//! and training benchmarks (8 by default; the evaluation passes run at 1 and at this size).
//! Every timed call waits for its result (`device.sync()`), so GPU times are whole kernels.
//! Names are `group/benchmark/input`, e.g. `norm/ibn layer, fused kernel/8x64x56x56`.
//!
//! Model timings against PyTorch on the same machine, with peak memory:
//! `python3 scripts/compare.py` (it drives `examples/bench.rs`).

use std::sync::OnceLock;
use std::time::Duration;

use burn::module::Module;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor, module};
use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use ibn_net::block::{BasicBlockConfig, BottleneckConfig, DenseLayerConfig, IbnMode};
use ibn_net::device::{available_devices, device_from_name};
use ibn_net::kernel;
use ibn_net::model::{Backbone, create_model};
use ibn_net::norm::{BatchNorm2dConfig, IbnConfig, InstanceNorm2dConfig};

const MODELS: [&str; 5] = [
    "resnet18_ibn_a",
    "resnet50_ibn_a",
    "resnet50_ibn_b",
    "resnext50_ibn_a",
    "densenet121_ibn_a",
];

/// The device and batch size from the environment (see the module docs).
struct Setup {
    device: Device,
    batch: usize,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let fail = |message: String| -> ! {
            eprintln!("error: {message}");
            std::process::exit(2)
        };
        let name = std::env::var("IBN_BENCH_DEVICE")
            .unwrap_or_else(|_| available_devices().first().unwrap_or(&"flex").to_string());
        let device = device_from_name(&name).unwrap_or_else(|e| fail(e.to_string()));
        let batch = match std::env::var("IBN_BENCH_BATCH") {
            Err(_) => 8,
            Ok(v) => match v.parse() {
                Ok(b) if b > 0 => b,
                _ => fail(format!(
                    "IBN_BENCH_BATCH must be a positive integer, not `{v}`"
                )),
            },
        };
        eprintln!("ibn-net benchmarks: device {name}, batch {batch}");
        Setup { device, batch }
    })
}

fn input(shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

/// `8x64x56x56`: the input part of a benchmark's name.
fn dims(shape: [usize; 4]) -> String {
    shape.map(|d| d.to_string()).join("x")
}

/// Times `forward` on `x`, waiting for the result each time.
fn bench(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    x: &Tensor<4>,
    forward: impl Fn(Tensor<4>) -> Tensor<4>,
) {
    let device = x.device();
    let mut warm = false;
    group.bench_function(criterion::BenchmarkId::new(name, dims(x.dims())), |b| {
        // One untimed call first (only for benchmarks the filter selects: criterion calls
        // this closure for those only): on wgpu it compiles and autotunes the kernels, which
        // criterion's `--quick` mode would otherwise time.
        if !std::mem::replace(&mut warm, true) {
            drop(forward(x.clone()));
            device.sync().expect("device sync");
        }
        b.iter(|| {
            // Keep the output alive through the sync: with kernel fusion, work whose result
            // is dropped unread may never run.
            let output = forward(x.clone());
            device.sync().expect("device sync");
            output
        })
    });
}

/// Runs `f` with the Winograd path of the CPU convolutions off, then turns it back on.
fn without_winograd(f: impl FnOnce()) {
    kernel::set_winograd(false);
    f();
    kernel::set_winograd(true);
}

/// Norm layers at the shapes of each ResNet-50-IBN-a stage (the inputs of IBN-a's `bn1`).
fn norms(c: &mut Criterion) {
    let Setup { device, batch } = setup();
    let mut group = c.benchmark_group("norm");
    for (channels, size) in [(64, 56), (128, 28), (256, 14)] {
        let x = input([*batch, channels, size, size], device);
        let bn = BatchNorm2dConfig::new(channels).init(device);
        bench(&mut group, "batch norm eval, composed", &x, |x| {
            bn.forward_composed(x)
        });
        bench(&mut group, "batch norm eval, fused kernel", &x, |x| {
            bn.forward(x)
        });
        let inorm = InstanceNorm2dConfig::new(channels)
            .with_affine(true)
            .init(device);
        bench(&mut group, "instance norm, composed", &x, |x| {
            inorm.forward_composed(x)
        });
        bench(&mut group, "instance norm, fused kernel", &x, |x| {
            inorm.forward(x)
        });
        let ibn = IbnConfig::new(channels).init(device).expect("valid");
        bench(&mut group, "ibn layer, composed", &x, |x| {
            ibn.forward_composed(x)
        });
        bench(&mut group, "ibn layer, fused kernel", &x, |x| {
            ibn.forward(x)
        });
    }
    group.finish();
}

/// A convolution's name: `conv 3x3 stride 2 -> 128, 32 groups`.
fn conv_name(k: usize, stride: usize, c_out: usize, groups: usize) -> String {
    let mut name = format!("conv {k}x{k}");
    if stride > 1 {
        name += &format!(" stride {stride}");
    }
    name += &format!(" -> {c_out}");
    if groups > 1 {
        name += &format!(", {groups} groups");
    }
    name
}

/// A convolution benchmark: `([C_in, size], C_out, kernel, stride, groups)`.
type ConvShape = ([usize; 2], usize, usize, usize, usize);

/// burn's `conv2d` against this crate's (`ibn_net::kernel::conv2d`: its own kernels on flex
/// and ndarray, burn's call elsewhere) at `shapes`, the 3x3 stride-1 ones also with the
/// Winograd path off; each call is `run(x, convolution)`, on `device`.
fn conv_benches(
    group: &mut BenchmarkGroup<'_, WallTime>,
    shapes: &[ConvShape],
    device: &Device,
    trained_weight: bool,
    run: impl Fn(Tensor<4>, &dyn Fn(Tensor<4>) -> Tensor<4>) -> Tensor<4>,
) {
    let batch = setup().batch;
    for &([c_in, size], c_out, k, stride, groups) in shapes {
        let x = input([batch, c_in, size, size], device);
        let mut w = input([c_out, c_in / groups, k, k], device);
        if trained_weight {
            w = w.require_grad();
        }
        let options = ConvOptions::new([stride; 2], [k / 2; 2], [1, 1], groups);
        let name = conv_name(k, stride, c_out, groups);
        let theirs = |x| module::conv2d(x, w.clone(), None, options.clone());
        bench(group, &format!("{name}, burn"), &x, |x| run(x, &theirs));
        let mine = |x| kernel::conv2d(x, w.clone(), None, options.clone());
        let ours = |x| run(x, &mine);
        bench(group, &format!("{name}, ibn-net"), &x, ours);
        if k == 3 && stride == 1 && groups == 1 {
            without_winograd(|| bench(group, &format!("{name}, ibn-net, winograd off"), &x, ours));
        }
    }
}

/// Convolutions of ResNet-50 and ResNeXt-50 (32x4d), forward (see [`conv_benches`]).
fn convs(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv");
    let shapes = [
        ([3, 224], 64, 7, 2, 1),
        ([64, 56], 64, 3, 1, 1),
        ([128, 28], 128, 3, 1, 1),
        ([256, 14], 256, 3, 1, 1),
        ([512, 7], 512, 3, 1, 1),
        ([128, 56], 128, 3, 2, 1),
        ([128, 56], 128, 3, 1, 32),
        ([512, 28], 512, 3, 2, 32),
        ([1024, 7], 1024, 3, 1, 32),
        ([64, 56], 256, 1, 1, 1),
        ([256, 56], 512, 1, 2, 1),
    ];
    conv_benches(&mut group, &shapes, &setup().device, false, |x, conv| {
        conv(x)
    });
    group.finish();
}

/// Forward, then the input gradient of the sum of the output.
#[cfg(feature = "autodiff")]
fn step(x: Tensor<4>, forward: impl Fn(Tensor<4>) -> Tensor<4>) -> Tensor<4> {
    let x = x.require_grad();
    let grads = forward(x.clone()).sum().backward();
    x.grad(&grads).expect("input gradient")
}

/// Training steps of the norm layers (forward and input gradient on an autodiff device).
#[cfg(feature = "autodiff")]
fn norm_steps(c: &mut Criterion) {
    let Setup { device, batch } = setup();
    let train = device.clone().autodiff();
    let mut group = c.benchmark_group("norm train step");
    for (channels, size) in [(64, 56), (256, 14)] {
        let x = input([*batch, channels, size, size], &train);
        // The fixed cost of a backward pass over this shape (autodiff bookkeeping, gradient
        // seeding), common to every benchmark below.
        bench(&mut group, "baseline x + 0", &x, |x| {
            step(x, |x| x.add_scalar(0.0))
        });
        let bn = BatchNorm2dConfig::new(channels).init(&train);
        bench(&mut group, "batch norm, composed", &x, |x| {
            step(x, |x| bn.forward_composed(x))
        });
        bench(&mut group, "batch norm, fused kernel", &x, |x| {
            step(x, |x| bn.forward(x))
        });
        let ibn = IbnConfig::new(channels).init(&train).expect("valid");
        bench(&mut group, "ibn layer, composed", &x, |x| {
            step(x, |x| ibn.forward_composed(x))
        });
        bench(&mut group, "ibn layer, fused kernel", &x, |x| {
            step(x, |x| ibn.forward(x))
        });
    }
    group.finish();
}

/// Convolution training steps (input and weight gradients) at ResNet-50's shapes (the stem,
/// 3x3 and 1x1 per stage, strided ones) and two grouped ones of ResNeXt-50 (32x4d).
#[cfg(feature = "autodiff")]
fn conv_steps(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv train step");
    let shapes = [
        ([3, 224], 64, 7, 2, 1),
        ([64, 56], 64, 3, 1, 1),
        ([128, 28], 128, 3, 1, 1),
        ([256, 14], 256, 3, 1, 1),
        ([512, 7], 512, 3, 1, 1),
        ([128, 56], 128, 3, 2, 1),
        ([64, 56], 256, 1, 1, 1),
        ([256, 56], 64, 1, 1, 1),
        ([512, 28], 128, 1, 1, 1),
        ([1024, 14], 256, 1, 1, 1),
        ([2048, 7], 512, 1, 1, 1),
        ([256, 56], 512, 1, 2, 1),
        ([128, 56], 128, 3, 1, 32),
        ([512, 14], 512, 3, 1, 32),
    ];
    let train = setup().device.clone().autodiff();
    conv_benches(&mut group, &shapes, &train, true, |x, conv| step(x, conv));
    group.finish();
}

/// Blocks at the stage-1 shapes of the released models.
fn blocks(c: &mut Criterion) {
    let Setup { device, batch } = setup();
    let mut group = c.benchmark_group("block");
    let x = input([*batch, 64, 56, 56], device);
    for (name, ibn) in [
        ("basic block, plain", IbnMode::None),
        ("basic block, IBN-a", IbnMode::A),
        ("basic block, IBN-b", IbnMode::B),
    ] {
        let block = BasicBlockConfig::new(64, 64)
            .with_ibn(ibn)
            .init(device)
            .expect("valid");
        bench(&mut group, name, &x, |x| block.forward(x));
    }
    let x = input([*batch, 256, 56, 56], device);
    let bottleneck = || BottleneckConfig::new(256, 64);
    let bottlenecks = [
        ("bottleneck, plain", bottleneck()),
        ("bottleneck, IBN-a", bottleneck().with_ibn(IbnMode::A)),
        ("bottleneck, IBN-b", bottleneck().with_ibn(IbnMode::B)),
        (
            "resnext 32x4d bottleneck, IBN-a",
            bottleneck()
                .with_ibn(IbnMode::A)
                .with_cardinality(32)
                .with_base_width(4),
        ),
        (
            "se bottleneck, IBN-a",
            bottleneck()
                .with_ibn(IbnMode::A)
                .with_se_reduction(Some(16)),
        ),
    ];
    for (name, config) in bottlenecks {
        let block = config.init(device).expect("valid");
        bench(&mut group, name, &x, |x| block.forward(x));
    }
    let layer = DenseLayerConfig::new(256, 32)
        .with_ibn(true)
        .init(device)
        .expect("valid");
    bench(&mut group, "dense layer, IBN", &x, |x| layer.forward(x));
    group.finish();
}

/// Settings for benchmarks of tens to hundreds of milliseconds a call.
fn slow(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
}

/// Whole networks in evaluation at 224x224, batch 1 and the configured batch, as built and
/// with their batch norms folded into the convolutions. Throughput is in images.
fn models_eval(c: &mut Criterion) {
    let Setup { device, batch } = setup();
    let mut group = c.benchmark_group("model eval");
    slow(&mut group);
    for name in MODELS {
        let model = create_model(name, device).expect("registered").valid();
        let folded = model.clone().fold_batch_norms();
        for b in [1, *batch] {
            let x = input([b, 3, 224, 224], device);
            group.throughput(Throughput::Elements(b as u64));
            bench(&mut group, name, &x, |x| model.forward_features(x));
            bench(&mut group, &format!("{name}, folded"), &x, |x| {
                folded.forward_features(x)
            });
        }
    }
    group.finish();
}

/// One training step of each network at 224x224 and the configured batch: forward,
/// cross-entropy against random labels, backward, SGD with momentum.
#[cfg(feature = "autodiff")]
fn models_train(c: &mut Criterion) {
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::optim::momentum::MomentumConfig;
    use burn::optim::{GradientsParams, SgdConfig};
    use burn::tensor::Int;

    let Setup { device, batch } = setup();
    let train = device.clone().autodiff();
    let mut group = c.benchmark_group("model train step");
    slow(&mut group);
    group.throughput(Throughput::Elements(*batch as u64));
    for name in MODELS {
        let mut model = Some(create_model(name, &train).expect("registered"));
        let x = input([*batch, 3, 224, 224], &train);
        let labels = Tensor::<1, Int>::random([*batch], Distribution::Uniform(0.0, 1000.0), &train);
        let loss_fn = CrossEntropyLossConfig::new().init(&train);
        let mut optim = SgdConfig::new()
            .with_momentum(Some(MomentumConfig::new().with_dampening(0.0)))
            .init();
        let mut step = || {
            let current = model.take().expect("model");
            let loss = loss_fn.forward(current.forward(x.clone()), labels.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &current);
            model = Some(optim.step(0.01, current, grads));
            train.sync().expect("device sync");
        };
        let mut warm = false;
        let id = criterion::BenchmarkId::new(name, dims(x.dims()));
        group.bench_function(id, |b| {
            // An untimed first step, as in `bench`.
            if !std::mem::replace(&mut warm, true) {
                step();
            }
            b.iter(&mut step)
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Defaults for millisecond-scale calls; the command line overrides them.
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = norms, convs, blocks, models_eval
}

#[cfg(feature = "autodiff")]
criterion_group! {
    name = training;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = norm_steps, conv_steps, models_train
}

#[cfg(feature = "autodiff")]
criterion_main!(benches, training);
#[cfg(not(feature = "autodiff"))]
criterion_main!(benches);
