//! Times named models (evaluation, and one training step of resnet50_ibn_a) and prints a
//! table, or JSON lines for `scripts/compare.py`.
//!
//! ```text
//! cargo run --release --example bench -- [--models a,b] [--batches 1,8] [--iters 10]
//!     [--device flex|ndarray|wgpu] [--fold] [--no-winograd]
//!     [--gpu-conv unfold|unfold-grouped|burn] [--no-train] [--json]
//! ```
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
use ibn_net::model::{Backbone, create_model};

const DEFAULT_MODELS: &str =
    "resnet18_ibn_a,resnet50_ibn_a,resnet50_ibn_b,resnext50_ibn_a,densenet121_ibn_a";
const TRAIN_MODEL: &str = "resnet50_ibn_a";
const TRAIN_BATCH: usize = 8;

struct Args {
    models: Vec<String>,
    batches: Vec<usize>,
    iters: usize,
    device: String,
    fold: bool,
    train: bool,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        models: DEFAULT_MODELS.split(',').map(String::from).collect(),
        batches: vec![1, 8],
        iters: 10,
        device: "flex".into(),
        fold: false,
        train: true,
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
            "--json" => args.json = true,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if args.iters == 0 {
        return Err("--iters must be at least 1".into());
    }
    Ok(args)
}

fn median_ms(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn time<F: FnMut()>(warmup: usize, iters: usize, mut f: F) -> f64 {
    for _ in 0..warmup {
        f();
    }
    median_ms(
        (0..iters)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

/// The device name for reports; `wgpu` says which shader compiler the build uses.
fn device_label(name: &str) -> String {
    match name {
        "wgpu" if cfg!(feature = "vulkan") => "wgpu (SPIR-V on Vulkan)".into(),
        "wgpu" => "wgpu (WGSL)".into(),
        other => other.into(),
    }
}

fn report(args: &Args, model: &str, batch: usize, mode: &str, ms: f64) {
    if args.json {
        println!(
            "{{\"model\": \"{model}\", \"batch\": {batch}, \"mode\": \"{mode}\", \"median_ms\": {ms:.3}, \"device\": \"{}\"}}",
            device_label(&args.device)
        );
    } else {
        println!("{model:<20} {batch:>5} {mode:<6} {ms:>10.1} ms");
    }
}

fn train_step_ms(args: &Args, device: &Device) -> ibn_net::Result<f64> {
    let device = device.clone().autodiff();
    let mut model = create_model(TRAIN_MODEL, &device)?;
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
            "device {}, {} timed runs each (median)",
            device_label(&args.device),
            args.iters
        );
    }
    for name in &args.models {
        let mut model = create_model(name, &device)?.valid();
        if args.fold {
            model = model.fold_batch_norms();
        }
        for &batch in &args.batches {
            let x = Tensor::<4>::random([batch, 3, 224, 224], Distribution::Default, &device);
            let ms = time(2, args.iters, || {
                let _ = model.forward(x.clone()).into_data();
            });
            report(
                args,
                name,
                batch,
                if args.fold { "folded" } else { "eval" },
                ms,
            );
        }
    }
    if args.train && !args.fold && args.models.iter().any(|m| m == TRAIN_MODEL) {
        let ms = train_step_ms(args, &device)?;
        report(args, TRAIN_MODEL, TRAIN_BATCH, "train", ms);
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
