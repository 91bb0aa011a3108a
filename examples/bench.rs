//! Times named models (evaluation, and one training step at batch 8 of those named by
//! `--train-models`, resnet50_ibn_a by default) and prints a table, or JSON lines for
//! `scripts/compare.py`.
//!
//! ```text
//! cargo run --release --example bench -- [--models a,b] [--batches 1,8] [--iters 10]
//!     [--train-models a,b] [--device flex|ndarray|wgpu] [--fold] [--no-winograd]
//!     [--gpu-conv unfold|unfold-grouped|burn] [--no-train] [--no-eval] [--json]
//! ```
//!
//! The training step (forward, cross-entropy, backward, SGD with momentum) runs for each model
//! of `--models` that `--train-models` also names.
//!
//! On Linux each case also reports its peak working memory: how far the process's resident
//! memory rose above what it held once the model and the input existed (`/proc/self/status`,
//! with the peak reset through `/proc/self/clear_refs` before the case), i.e. activations,
//! scratch buffers and, in training, gradients and optimizer state. Memory the allocator kept
//! from an earlier case of the same process is reused without showing up, so for memory run
//! one case per process (`--no-train` or `--no-eval`, one model and batch size), as
//! `scripts/compare.py --memory` does. For wgpu it is host memory only.
//!
//! `--no-winograd` turns the Winograd path of the CPU convolutions off
//! ([`ibn_net::kernel::set_winograd`]); `--gpu-conv` picks the GPU convolution, in
//! evaluation and training ([`ibn_net::kernel::set_gpu_conv`]: unfolded matrix product for
//! ungrouped convolutions, for every convolution, or burn's `conv2d` for all).

use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Distribution, Int, Tensor};
use ibn_net::device::device_from_name;
use ibn_net::kernel::GpuConv;
use ibn_net::model::{Backbone, create_model, model_info};

const DEFAULT_MODELS: &str =
    "resnet18_ibn_a,resnet50_ibn_a,resnet50_ibn_b,resnext50_ibn_a,densenet121_ibn_a";
const TRAIN_MODELS: &str = "resnet50_ibn_a";
const TRAIN_BATCH: usize = 8;

struct Args {
    models: Vec<String>,
    batches: Vec<usize>,
    train_models: Vec<String>,
    iters: usize,
    device: String,
    fold: bool,
    train: bool,
    eval: bool,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        models: DEFAULT_MODELS.split(',').map(String::from).collect(),
        batches: vec![1, 8],
        train_models: TRAIN_MODELS.split(',').map(String::from).collect(),
        iters: 10,
        device: "flex".into(),
        fold: false,
        train: true,
        eval: true,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--models" => args.models = value()?.split(',').map(String::from).collect(),
            "--batches" => {
                args.batches = value()?
                    .split(',')
                    .map(|b| b.parse().map_err(|_| format!("bad batch size `{b}`")))
                    .collect::<Result<_, _>>()?
            }
            "--train-models" => args.train_models = value()?.split(',').map(String::from).collect(),
            "--iters" => args.iters = value()?.parse().map_err(|_| "bad --iters".to_string())?,
            "--device" => args.device = value()?,
            "--fold" => args.fold = true,
            "--no-winograd" => ibn_net::kernel::set_winograd(false),
            "--gpu-conv" => ibn_net::kernel::set_gpu_conv(match value()?.as_str() {
                "unfold" => GpuConv::Unfold,
                "unfold-grouped" => GpuConv::UnfoldGrouped,
                "burn" => GpuConv::Burn,
                other => return Err(format!("unknown --gpu-conv `{other}`")),
            }),
            "--no-train" => args.train = false,
            "--no-eval" => args.eval = false,
            "--json" => args.json = true,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if args.iters == 0 {
        return Err("--iters must be at least 1".into());
    }
    // Unknown names fail here rather than silently matching no model of `--models`.
    for name in args.models.iter().chain(&args.train_models) {
        model_info(name).map_err(|e| e.to_string())?;
    }
    Ok(args)
}

fn median_ms(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// A `/proc/self/status` field in MiB (`VmRSS`, `VmHWM`); `None` off Linux.
fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line[field.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// One case's median time and peak working memory (see the module docs).
struct Measured {
    ms: f64,
    peak_mib: Option<f64>,
}

fn time<F: FnMut()>(warmup: usize, iters: usize, mut f: F) -> Measured {
    let before = status_mib("VmRSS");
    // Writing 5 resets the peak resident size (VmHWM) to the current one (Linux >= 4.0).
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    for _ in 0..warmup {
        f();
    }
    let ms = median_ms(
        (0..iters)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    let peak_mib = match (reset, before, status_mib("VmHWM")) {
        (true, Some(before), Some(peak)) => Some((peak - before).max(0.0)),
        _ => None,
    };
    Measured { ms, peak_mib }
}

/// The device name for reports; `wgpu` says which shader compiler the build uses.
fn device_label(name: &str) -> String {
    match name {
        "wgpu" if cfg!(feature = "vulkan") => "wgpu (SPIR-V on Vulkan)".into(),
        "wgpu" => "wgpu (WGSL)".into(),
        other => other.into(),
    }
}

fn report(args: &Args, model: &str, batch: usize, mode: &str, m: &Measured) {
    let ms = m.ms;
    if args.json {
        let peak = m.peak_mib.map_or("null".into(), |p| format!("{p:.1}"));
        println!(
            "{{\"model\": \"{model}\", \"batch\": {batch}, \"mode\": \"{mode}\", \"median_ms\": {ms:.3}, \"peak_mib\": {peak}, \"device\": \"{}\"}}",
            device_label(&args.device)
        );
    } else {
        let peak = m
            .peak_mib
            .map_or(String::new(), |p| format!("{p:>10.0} MiB"));
        println!("{model:<20} {batch:>5} {mode:<6} {ms:>10.1} ms{peak}");
    }
}

fn train_step(args: &Args, name: &str, device: &Device) -> ibn_net::Result<Measured> {
    let device = device.clone().autodiff();
    let mut model = create_model(name, &device)?;
    let x = Tensor::<4>::random([TRAIN_BATCH, 3, 224, 224], Distribution::Default, &device);
    let labels =
        Tensor::<1, Int>::random([TRAIN_BATCH], Distribution::Uniform(0.0, 1000.0), &device);
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optim = SgdConfig::new()
        .with_momentum(Some(MomentumConfig::new().with_dampening(0.0)))
        .init();
    let mut step = || {
        let loss = loss_fn.forward(model.forward(x.clone()), labels.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(0.01, model.clone(), grads);
        device.sync().expect("device sync");
    };
    Ok(time(1, args.iters, &mut step))
}

fn run(args: &Args) -> ibn_net::Result<()> {
    let device = device_from_name(&args.device)?;
    if !args.json {
        println!(
            "device {}, {} timed runs each (median), peak working memory",
            device_label(&args.device),
            args.iters
        );
    }
    if args.eval {
        for name in &args.models {
            let mut model = create_model(name, &device)?.valid();
            if args.fold {
                model = model.fold_batch_norms();
            }
            for &batch in &args.batches {
                let x = Tensor::<4>::random([batch, 3, 224, 224], Distribution::Default, &device);
                let measured = time(2, args.iters, || {
                    let _ = model.forward(x.clone()).into_data();
                });
                report(
                    args,
                    name,
                    batch,
                    if args.fold { "folded" } else { "eval" },
                    &measured,
                );
            }
        }
    }
    if args.train && !args.fold {
        for name in args.models.iter().filter(|m| args.train_models.contains(m)) {
            let measured = train_step(args, name, &device)?;
            report(args, name, TRAIN_BATCH, "train", &measured);
        }
    }
    Ok(())
}

fn main() {
    let result = parse_args()
        .map_err(|e| e.to_string())
        .and_then(|args| run(&args).map_err(|e| e.to_string()));
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
