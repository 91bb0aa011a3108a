//! Benchmarks of the building blocks and of whole networks, printed as a table
//! (median of timed runs after warm-up).
//!
//! ```text
//! cargo bench --bench ibn [-- --device flex|ndarray|wgpu] [--iters N] [--quick] [--filter TEXT]
//! ```
//! Model timings against PyTorch on the same machine: `python3 scripts/compare.py`.

use std::time::Instant;

use burn::module::Module;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor, module};
use ibn_net::block::{BasicBlockConfig, BottleneckConfig, DenseLayerConfig, IbnMode};
use ibn_net::device::device_from_name;
use ibn_net::kernel;
use ibn_net::model::{Backbone, create_model};
use ibn_net::norm::{BatchNorm2dConfig, IbnConfig, InstanceNorm2dConfig};

fn median_ms<F: FnMut()>(iters: usize, mut f: F) -> f64 {
    f();
    f();
    let mut samples: Vec<f64> = (0..iters)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn input(shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

/// Only benchmarks whose name contains this (`--filter`) run.
static FILTER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn selected(name: &str) -> bool {
    name.contains(FILTER.get().map_or("", String::as_str))
}

/// Times `forward` on `x`, waiting for the result each time, and prints the median.
fn bench(
    name: &str,
    shape: [usize; 4],
    iters: usize,
    x: &Tensor<4>,
    forward: impl Fn(Tensor<4>) -> Tensor<4>,
) {
    if !selected(name) {
        return;
    }
    let device = x.device();
    let ms = median_ms(iters, || {
        // Keep the output alive through the sync: with kernel fusion, work whose result is
        // dropped unread may never run.
        let output = forward(x.clone());
        device.sync().expect("device sync");
        drop(output);
    });
    println!("{name:<44} {:<18} {ms:>10.3} ms", format!("{shape:?}"));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let device_name = value("--device").map_or("flex", String::as_str);
    let quick = args.iter().any(|a| a == "--quick");
    let iters: usize = value("--iters")
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 3 } else { 10 });
    let device = match device_from_name(device_name) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    FILTER
        .set(value("--filter").cloned().unwrap_or_default())
        .expect("set once");
    let batch = if quick { 2 } else { 8 };
    println!("device {device_name}, batch {batch}, median of {iters} runs\n");
    println!("{:<44} {:<18} {:>13}", "benchmark", "input", "time");

    // Norm layers at the shapes of each ResNet-50-IBN-a stage (IBN-a `bn1` inputs).
    for (channels, size) in [(64, 56), (128, 28), (256, 14)] {
        let shape = [batch, channels, size, size];
        let x = input(shape, &device);
        let bn = BatchNorm2dConfig::new(channels).init(&device);
        bench("batch norm (eval), composed", shape, iters, &x, |x| {
            bn.forward_composed(x)
        });
        bench("batch norm (eval), fused kernel", shape, iters, &x, |x| {
            bn.forward(x)
        });
        let inorm = InstanceNorm2dConfig::new(channels)
            .with_affine(true)
            .init(&device);
        bench("instance norm, composed", shape, iters, &x, |x| {
            inorm.forward_composed(x)
        });
        bench("instance norm, fused kernel", shape, iters, &x, |x| {
            inorm.forward(x)
        });
        let ibn = IbnConfig::new(channels).init(&device).expect("valid");
        bench("ibn layer [IN|BN], composed", shape, iters, &x, |x| {
            ibn.forward_composed(x)
        });
        bench("ibn layer [IN|BN], fused kernel", shape, iters, &x, |x| {
            ibn.forward(x)
        });
    }

    // Convolutions of ResNet-50 and ResNeXt-50 (32x4d): burn's `conv2d` vs this crate's
    // (`ibn_net::kernel::conv2d`, its own kernels on flex and ndarray; the same call as
    // burn's elsewhere). The 3x3 stride-1 ones also with the Winograd path turned off.
    let convs = [
        ("conv 7x7/2 stem", [3, 224], 64, 7, 2, 1),
        ("conv 3x3", [64, 56], 64, 3, 1, 1),
        ("conv 3x3", [128, 28], 128, 3, 1, 1),
        ("conv 3x3", [256, 14], 256, 3, 1, 1),
        ("conv 3x3", [512, 7], 512, 3, 1, 1),
        ("conv 3x3/2", [128, 56], 128, 3, 2, 1),
        ("conv 3x3 32 groups", [128, 56], 128, 3, 1, 32),
        ("conv 3x3/2 32 groups", [512, 28], 512, 3, 2, 32),
        ("conv 3x3 32 groups", [1024, 7], 1024, 3, 1, 32),
        ("conv 1x1", [64, 56], 256, 1, 1, 1),
        ("conv 1x1/2 downsample", [256, 56], 512, 1, 2, 1),
    ];
    for (label, [c_in, size], c_out, k, stride, groups) in convs {
        let shape = [batch, c_in, size, size];
        let x = input(shape, &device);
        let w = input([c_out, c_in / groups, k, k], &device);
        let options = ConvOptions::new([stride; 2], [k / 2; 2], [1, 1], groups);
        bench(&format!("{label}, burn"), shape, iters, &x, |x| {
            module::conv2d(x, w.clone(), None, options.clone())
        });
        bench(&format!("{label}, ibn-net"), shape, iters, &x, |x| {
            kernel::conv2d(x, w.clone(), None, options.clone())
        });
        if k == 3 && stride == 1 && groups == 1 {
            kernel::set_winograd(false);
            bench(
                &format!("{label}, ibn-net, winograd off"),
                shape,
                iters,
                &x,
                |x| kernel::conv2d(x, w.clone(), None, options.clone()),
            );
            kernel::set_winograd(true);
        }
    }

    // Training steps of the norm layers (forward + backward on an autodiff device).
    #[cfg(feature = "autodiff")]
    {
        let train = device.clone().autodiff();
        // Forward, then the input gradient of the sum of the output.
        fn step(x: Tensor<4>, forward: impl Fn(Tensor<4>) -> Tensor<4>) -> Tensor<4> {
            let x = x.require_grad();
            let grads = forward(x.clone()).sum().backward();
            x.grad(&grads).expect("input gradient")
        }
        for (channels, size) in [(64, 56), (256, 14)] {
            let shape = [batch, channels, size, size];
            let x = input(shape, &train);
            // The fixed cost of a backward pass over this shape (autodiff bookkeeping,
            // gradient seeding), common to every row below.
            bench("train step baseline (x + 0)", shape, iters, &x, |x| {
                step(x, |x| x.add_scalar(0.0))
            });
            let bn = BatchNorm2dConfig::new(channels).init(&train);
            bench("batch norm train step, composed", shape, iters, &x, |x| {
                step(x, |x| bn.forward_composed(x))
            });
            bench(
                "batch norm train step, fused kernel",
                shape,
                iters,
                &x,
                |x| step(x, |x| bn.forward(x)),
            );
            let ibn = IbnConfig::new(channels).init(&train).expect("valid");
            bench("ibn layer train step, composed", shape, iters, &x, |x| {
                step(x, |x| ibn.forward_composed(x))
            });
            bench(
                "ibn layer train step, fused kernel",
                shape,
                iters,
                &x,
                |x| step(x, |x| ibn.forward(x)),
            );
        }
        // Convolution training steps (input and weight gradients) at ResNet-50's shapes (the
        // stem, 3x3 and 1x1 per stage, strided ones) and two grouped ones of ResNeXt-50 (32x4d).
        let convs = [
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
        for ([c_in, size], c_out, k, stride, groups) in convs {
            let shape = [batch, c_in, size, size];
            let x = input(shape, &train);
            let w = input([c_out, c_in / groups, k, k], &train).require_grad();
            let options = ConvOptions::new([stride; 2], [k / 2; 2], [1, 1], groups);
            let mut label = format!("conv {k}x{k}");
            if stride > 1 {
                label += &format!("/{stride}");
            }
            label += &format!(" -> {c_out}");
            if groups > 1 {
                label += &format!(" {groups} groups");
            }
            label += " train step";
            bench(&format!("{label}, burn"), shape, iters, &x, |x| {
                step(x, |x| module::conv2d(x, w.clone(), None, options.clone()))
            });
            bench(&format!("{label}, ibn-net"), shape, iters, &x, |x| {
                step(x, |x| kernel::conv2d(x, w.clone(), None, options.clone()))
            });
            if k == 3 && stride == 1 && groups == 1 {
                kernel::set_winograd(false);
                let name = format!("{label}, ibn-net, winograd off");
                bench(&name, shape, iters, &x, |x| {
                    step(x, |x| kernel::conv2d(x, w.clone(), None, options.clone()))
                });
                kernel::set_winograd(true);
            }
        }
    }

    // Blocks, stage-1 shapes of the released models.
    let shape = [batch, 64, 56, 56];
    let x = input(shape, &device);
    for (label, ibn) in [
        ("basic block, plain", IbnMode::None),
        ("basic block, IBN-a", IbnMode::A),
        ("basic block, IBN-b", IbnMode::B),
    ] {
        let block = BasicBlockConfig::new(64, 64)
            .with_ibn(ibn)
            .init(&device)
            .expect("valid");
        bench(label, shape, iters, &x, |x| block.forward(x));
    }
    let shape = [batch, 256, 56, 56];
    let x = input(shape, &device);
    let bottlenecks = [
        ("bottleneck, plain", BottleneckConfig::new(256, 64)),
        (
            "bottleneck, IBN-a",
            BottleneckConfig::new(256, 64).with_ibn(IbnMode::A),
        ),
        (
            "bottleneck, IBN-b",
            BottleneckConfig::new(256, 64).with_ibn(IbnMode::B),
        ),
        (
            "resnext 32x4d bottleneck, IBN-a",
            BottleneckConfig::new(256, 64)
                .with_ibn(IbnMode::A)
                .with_cardinality(32)
                .with_base_width(4),
        ),
        (
            "se bottleneck, IBN-a",
            BottleneckConfig::new(256, 64)
                .with_ibn(IbnMode::A)
                .with_se_reduction(Some(16)),
        ),
    ];
    for (label, config) in bottlenecks {
        let block = config.init(&device).expect("valid");
        bench(label, shape, iters, &x, |x| block.forward(x));
    }
    let shape = [batch, 256, 56, 56];
    let x = input(shape, &device);
    let layer = DenseLayerConfig::new(256, 32)
        .with_ibn(true)
        .init(&device)
        .expect("valid");
    bench("dense layer, IBN", shape, iters, &x, |x| layer.forward(x));

    // Whole networks, evaluation, 224x224.
    let models = [
        "resnet18_ibn_a",
        "resnet50_ibn_a",
        "resnet50_ibn_b",
        "resnext50_ibn_a",
        "densenet121_ibn_a",
    ];
    for name in models.iter().take(if quick { 1 } else { models.len() }) {
        if !selected(&format!("{name} (eval, folded)")) && !selected(&format!("{name} (eval)")) {
            continue;
        }
        let model = create_model(name, &device).expect("registered").valid();
        for b in [1, batch] {
            let shape = [b, 3, 224, 224];
            let x = input(shape, &device);
            bench(&format!("{name} (eval)"), shape, iters, &x, |x| {
                model.forward_features(x)
            });
            let folded = model.clone().fold_batch_norms();
            bench(&format!("{name} (eval, folded)"), shape, iters, &x, |x| {
                folded.forward_features(x)
            });
        }
    }
}
