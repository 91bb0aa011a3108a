//! Domain-shift demo: IBN-Net's claim in miniature, on built-in procedurally generated data.
//!
//! Eight shape classes are rendered in one appearance domain for training and in seven domains
//! for testing (the same scenes each time): the source domain and six shifts (colour cast,
//! brightness, contrast, inverted, texture, noise). Three variants of one small ResNet (no
//! IBN, IBN-a, IBN-b) are trained with the same recipe and seeds; the program prints and
//! writes in-domain accuracy, shifted accuracy and their drop (mean and std over seeds), a bar
//! chart, sample images, and the seed-0 weights, which it reloads to check they give the same
//! accuracy.
//!
//! ```text
//! cargo run --release --example domain_shift [-- OPTIONS]
//!
//!   --quick            smoke test: few steps, small sets, 2 seeds (well under a minute)
//!   --seeds N          seeds per variant (default 3)
//!   --steps N          training steps per run (default 500; 40 with --quick)
//!   --device NAME      flex (default), ndarray or wgpu, as compiled in
//!   --out DIR          output folder (default target/domain_shift)
//!   --batch N          batch size (default 64)
//!   --lr X             peak Adam learning rate (default 0.002)
//!   --train-size N     training images (default 4096)
//!   --test-size N      test images per domain (default 1000)
//! ```

mod chart;
mod data;
mod report;

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use ibn_net::block::IbnMode;
use ibn_net::device::device_from_name;
use ibn_net::model::{Backbone, BlockKind, ResNetIbn, ResNetIbnConfig};
use ibn_net::weights::{load_file, num_parameters, save_file};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use data::{CLASSES, Dataset, Domain, IMAGE_LEN, IMAGE_SIZE, Rng};
use report::{Run, Summary};

type AnyResult<T> = Result<T, Box<dyn Error>>;

/// Seed of the test scenes: every model is evaluated on the same images.
const TEST_SEED: u64 = 0x7E57;
/// Images per forward pass during evaluation.
const EVAL_BATCH: usize = 250;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Command-line options.
#[derive(Clone, Debug)]
struct Options {
    quick: bool,
    seeds: usize,
    steps: usize,
    device: String,
    out: PathBuf,
    batch: usize,
    lr: f64,
    train_size: usize,
    test_size: usize,
}

impl Options {
    /// Parses `args` (without the program name).
    fn parse(args: &[String]) -> Result<Option<Self>, String> {
        let quick = args.iter().any(|a| a == "--quick");
        let mut o = Options {
            quick,
            seeds: if quick { 2 } else { 3 },
            steps: if quick { 40 } else { 500 },
            device: "flex".into(),
            out: PathBuf::from("target/domain_shift"),
            batch: if quick { 32 } else { 64 },
            lr: 0.002,
            train_size: if quick { 512 } else { 4096 },
            test_size: if quick { 200 } else { 1000 },
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value (see --help)"))
            };
            match flag.as_str() {
                "--quick" => {}
                "-h" | "--help" => return Ok(None),
                "--seeds" => o.seeds = positive(flag, &value()?)?,
                "--steps" => o.steps = positive(flag, &value()?)?,
                "--batch" => o.batch = positive(flag, &value()?)?,
                "--train-size" => o.train_size = positive(flag, &value()?)?,
                "--test-size" => o.test_size = positive(flag, &value()?)?,
                "--device" => o.device = value()?,
                "--out" => o.out = PathBuf::from(value()?),
                "--lr" => {
                    let v = value()?;
                    o.lr = v
                        .parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite() && *x > 0.0)
                        .ok_or_else(|| format!("--lr expects a positive number, got `{v}`"))?;
                }
                other => return Err(format!("unknown option `{other}` (see --help)")),
            }
        }
        if o.batch < 2 {
            return Err("--batch must be at least 2 (batch norm needs two samples)".into());
        }
        if o.batch > o.train_size {
            return Err(format!(
                "--batch {} is larger than --train-size {}",
                o.batch, o.train_size
            ));
        }
        Ok(Some(o))
    }
}

fn positive(flag: &str, value: &str) -> Result<usize, String> {
    value
        .parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{flag} expects a positive integer, got `{value}`"))
}

/// The three networks compared: one backbone, three IBN placements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Batch norm only.
    NoIbn,
    /// IBN-a in every stage but the last.
    IbnA,
    /// IBN-b: instance norm in the stem and after the first two stages.
    IbnB,
}

impl Variant {
    /// The variants, in table order.
    pub const ALL: [Variant; 3] = [Variant::NoIbn, Variant::IbnA, Variant::IbnB];

    /// Name in tables, file names and the CSV files.
    pub fn name(self) -> &'static str {
        match self {
            Variant::NoIbn => "no-ibn",
            Variant::IbnA => "ibn-a",
            Variant::IbnB => "ibn-b",
        }
    }

    /// The network configuration of this variant.
    pub fn config(self) -> ResNetIbnConfig {
        // A ResNet with three stages of two basic blocks: 32x32 inputs give 8x8, 4x4 and
        // 2x2 stage maps after the stride-4 stem.
        let base = ResNetIbnConfig::new(BlockKind::Basic, vec![2, 2, 2])
            .with_widths(vec![16, 32, 64])
            .with_stem_width(16)
            .with_num_classes(CLASSES.len());
        match self {
            Variant::NoIbn => base.with_no_ibn(),
            // The paper's IBN-a placement (IN in all stages but the last, as the 4-stage
            // default `[A, A, A, None]`), adapted to three stages.
            Variant::IbnA => {
                let n = base.layers.len();
                let ibn = (0..n)
                    .map(|i| if i + 1 < n { IbnMode::A } else { IbnMode::None })
                    .collect();
                base.with_ibn(ibn)
            }
            Variant::IbnB => base.with_ibn_b(),
        }
    }
}

fn usage() {
    let doc = include_str!("main.rs");
    let start = doc
        .find("//! ```text")
        .map_or(0, |i| i + "//! ```text\n".len());
    let end = doc[start..]
        .find("//! ```")
        .map_or(doc.len(), |i| start + i);
    for line in doc[start..end].lines() {
        println!(
            "{}",
            line.trim_start_matches("//!")
                .strip_prefix(' ')
                .unwrap_or("")
        );
    }
}

fn run() -> AnyResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(options) = Options::parse(&args)? else {
        usage();
        return Ok(());
    };
    let started = Instant::now();
    let device = device_from_name(&options.device)?;
    std::fs::create_dir_all(&options.out)
        .map_err(|e| format!("cannot create {}: {e}", options.out.display()))?;

    let shape = [options.batch, data::CHANNELS, IMAGE_SIZE, IMAGE_SIZE];
    for variant in Variant::ALL {
        Variant::config(variant)
            .init(&device)?
            .validate_input(&shape)?;
    }
    let params = num_parameters(&Variant::IbnA.config().init(&device)?);
    println!(
        "Domain-shift demo{} on `{}`: {} classes of {}x{} shapes, {} training images (source \
         domain), {} test images per domain, ResNet with 3x2 basic blocks ({params} parameters), \
         {} steps of batch {}, {} seed(s) per variant.",
        if options.quick { " (quick)" } else { "" },
        options.device,
        CLASSES.len(),
        IMAGE_SIZE,
        IMAGE_SIZE,
        options.train_size,
        options.test_size,
        options.steps,
        options.batch,
        options.seeds
    );

    // The same test scenes, rendered in every domain.
    let test_scenes = data::scenes(options.test_size, TEST_SEED);
    let tests: Vec<(Domain, Dataset)> = Domain::ALL
        .iter()
        .map(|&d| (d, data::render_all(&test_scenes, d)))
        .collect();
    write_samples(&options.out, &test_scenes)?;

    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let total = (options.seeds * Variant::ALL.len()) as u64;
    let overall = multi.add(ProgressBar::new(total));
    overall.set_style(style(
        "{prefix:>9} [{bar:30.green/white}] {pos}/{len} runs ({elapsed}, eta {eta})",
    ));
    overall.set_prefix("all");

    let mut runs = Vec::new();
    let mut saved = Vec::new();
    for seed in 0..options.seeds as u64 {
        let train_scenes = data::scenes(options.train_size, 1000 + seed);
        let train = data::render_all(&train_scenes, Domain::Source);
        for variant in Variant::ALL {
            let bar = multi.insert_before(&overall, ProgressBar::new(options.steps as u64));
            bar.set_style(style(
                "{prefix:>9} [{bar:30.cyan/blue}] {pos}/{len} steps {msg} ({eta})",
            ));
            bar.set_prefix(format!("{} s{seed}", variant.name()));
            let t0 = Instant::now();
            let (model, loss) = train_model(variant, seed, &train, &options, &device, &bar)?;
            let train_secs = t0.elapsed().as_secs_f64();
            let accuracy: Vec<f64> = tests
                .iter()
                .map(|(_, set)| accuracy(&model, set, &device))
                .collect();
            bar.finish_and_clear();
            let run = Run {
                variant,
                seed,
                accuracy,
                final_loss: loss,
                train_secs,
            };
            multi.suspend(|| println!("{}", run.line()));
            if seed == 0 {
                let path = options.out.join(format!("model_{}.bpk", variant.name()));
                save_file(&model, &path)?;
                saved.push((variant, path, run.accuracy.clone()));
            }
            runs.push(run);
            overall.inc(1);
        }
    }
    overall.finish_and_clear();

    // Reload the saved seed-0 weights into fresh networks and evaluate them again.
    println!("\nReloading the seed-0 weights:");
    for (variant, path, trained) in &saved {
        let fresh = variant.config().init(&device)?;
        let model = load_file(fresh, path)?;
        let reloaded: Vec<f64> = tests
            .iter()
            .map(|(_, set)| accuracy(&model, set, &device))
            .collect();
        let same = reloaded == *trained;
        println!(
            "  {:<7} {}: accuracy on all {} domains {} (in-domain {:.3})",
            variant.name(),
            path.display(),
            reloaded.len(),
            if same {
                "identical to the trained model"
            } else {
                "DIFFERS from the trained model"
            },
            reloaded[0],
        );
        if !same {
            return Err(format!(
                "reloaded {} gives {reloaded:?}, trained model gave {trained:?}",
                path.display()
            )
            .into());
        }
    }

    let summary = Summary::new(&runs);
    report::write_results_csv(&options.out.join("results.csv"), &runs)?;
    report::write_summary_csv(&options.out.join("summary.csv"), &summary)?;
    let chart = report::chart(&summary, options.seeds);
    chart.save_png(&options.out.join("chart.png"))?;

    println!("\n{}", summary.main_table());
    println!("{}", summary.domain_table());
    println!(
        "Outputs in {}: results.csv, summary.csv, chart.png, samples.png, model_*.bpk. Total \
         time {:.0} s.",
        options.out.display(),
        started.elapsed().as_secs_f64()
    );
    println!("{}", summary.verdict());
    Ok(())
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("valid progress template")
        .progress_chars("=> ")
}

/// Trains one variant with one seed on the source domain; returns the model (on the
/// evaluation device) and the mean loss of the last 20 steps.
fn train_model(
    variant: Variant,
    seed: u64,
    train: &Dataset,
    options: &Options,
    device: &Device,
    bar: &ProgressBar,
) -> AnyResult<(ResNetIbn, f32)> {
    let device = device.clone().autodiff();
    device.seed(seed);
    let mut model = variant.config().init(&device)?;
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    // The order of the training images depends on the seed only, not on the variant.
    let mut rng = Rng::new(0xDA7A ^ seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    rng.shuffle(&mut order);
    let mut cursor = 0;
    let mut recent = Vec::new();
    let warmup = (options.steps / 20).max(1);
    for step in 0..options.steps {
        if cursor + options.batch > order.len() {
            rng.shuffle(&mut order);
            cursor = 0;
        }
        let indices = &order[cursor..cursor + options.batch];
        cursor += options.batch;
        let (x, y) = batch(train, indices, &device);
        let loss = loss_fn.forward(model.forward(x), y);
        // Linear warm-up, then cosine decay to zero.
        let progress = step as f64 / options.steps as f64;
        let lr = if step < warmup {
            options.lr * (step + 1) as f64 / warmup as f64
        } else {
            options.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        };
        let value = loss.clone().into_scalar::<f32>();
        if !value.is_finite() {
            return Err(format!(
                "{} seed {seed}: loss became {value} at step {step}",
                variant.name()
            )
            .into());
        }
        recent.push(value);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(lr, model, grads);
        bar.inc(1);
        if step % 10 == 0 {
            bar.set_message(format!("loss {value:.3}"));
        }
    }
    let tail = &recent[recent.len().saturating_sub(20)..];
    let loss = tail.iter().sum::<f32>() / tail.len() as f32;
    Ok((model.valid(), loss))
}

/// Normalises pixels as the network expects them.
fn normalise(pixel: f32) -> f32 {
    (pixel - 0.5) / 0.25
}

/// The images and labels at `indices` as tensors on `device`.
fn batch(set: &Dataset, indices: &[usize], device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let mut images = Vec::with_capacity(indices.len() * IMAGE_LEN);
    let mut labels = Vec::with_capacity(indices.len());
    for &i in indices {
        let (image, label) = set.get(i);
        images.extend(image.iter().map(|&p| normalise(p)));
        labels.push(label);
    }
    let n = indices.len();
    let x = Tensor::from_data(
        TensorData::new(images, [n, data::CHANNELS, IMAGE_SIZE, IMAGE_SIZE]),
        device,
    );
    let y = Tensor::from_data(TensorData::new(labels, [n]), device);
    (x, y)
}

/// Top-1 accuracy of `model` (evaluation mode) on `set`.
fn accuracy(model: &ResNetIbn, set: &Dataset, device: &Device) -> f64 {
    let mut correct = 0usize;
    let all: Vec<usize> = (0..set.len()).collect();
    for chunk in all.chunks(EVAL_BATCH) {
        let (x, y) = batch(set, chunk, device);
        let predicted = model.forward(x).argmax(1).reshape([chunk.len()]);
        let hits = predicted.equal(y).int().sum().into_scalar::<i64>();
        correct += hits as usize;
    }
    correct as f64 / set.len() as f64
}

/// Writes `samples.png`: one scene per class (columns) in every domain (rows).
fn write_samples(out: &Path, scenes: &[data::Scene]) -> AnyResult<()> {
    let mut picked = Vec::new();
    for class in 0..CLASSES.len() {
        if let Some(scene) = scenes.iter().find(|s| s.label == class) {
            picked.push(scene.clone());
        }
    }
    let rendered: Vec<(Domain, Dataset)> = Domain::ALL
        .iter()
        .map(|&d| (d, data::render_all(&picked, d)))
        .collect();
    let rows: Vec<(String, Vec<&[f32]>)> = rendered
        .iter()
        .map(|(d, set)| {
            (
                d.name().to_string(),
                (0..set.len()).map(|i| set.get(i).0).collect(),
            )
        })
        .collect();
    chart::image_grid(&rows, IMAGE_SIZE, 3).save_png(&out.join("samples.png"))?;
    Ok(())
}
