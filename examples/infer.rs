//! Inference from files: a named model, released PyTorch weights (or a converted burnpack /
//! safetensors file), and either a `.npy` batch or images.
//!
//! ```text
//! cargo run --release --example infer -- --model resnet50_ibn_a --weights resnet50_ibn_a-d9d0bb7b.pth \
//!     --input batch.npy --output logits.npy [--features]
//! cargo run --release --example infer -- --model resnet50_ibn_a --weights resnet50_ibn_a-d9d0bb7b.pth \
//!     --image cat.jpg dog.png [--labels imagenet_classes.txt] [--top 5]
//! cargo run --release --example infer -- --model resnet50_ibn_a --weights resnet50_ibn_a-d9d0bb7b.pth \
//!     --save resnet50_ibn_a.bpk
//! ```
//! Options: `--device flex|ndarray|wgpu` (default flex). `--input` is a float32 `[N, 3, H, W]`
//! array already normalised; `--image` files are resized (shorter side 256), centre-cropped to
//! 224 and normalised with the model's mean and std. Errors are one line on stderr, exit code 1.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use ibn_net::IbnError;
use ibn_net::device::device_from_name;
use ibn_net::model::{Backbone, IbnNet, ModelInfo, model_info};
use ibn_net::npy::NpyArray;
use ibn_net::weights::{Strictness, load_file, save_file};

const USAGE: &str = "usage: infer --model NAME [--weights FILE] (--input X.npy --output Y.npy \
                     [--features] | --image FILE... [--labels FILE] [--top K] | --save FILE.bpk) \
                     [--device NAME]";

#[derive(Default)]
struct Args {
    model: Option<String>,
    weights: Option<PathBuf>,
    input: Option<PathBuf>,
    output: Option<PathBuf>,
    images: Vec<PathBuf>,
    labels: Option<PathBuf>,
    save: Option<PathBuf>,
    device: Option<String>,
    features: bool,
    top: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        top: 5,
        ..Args::default()
    };
    let mut it = std::env::args().skip(1).peekable();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--model" => args.model = Some(value("--model")?),
            "--weights" => args.weights = Some(value("--weights")?.into()),
            "--input" => args.input = Some(value("--input")?.into()),
            "--output" => args.output = Some(value("--output")?.into()),
            "--labels" => args.labels = Some(value("--labels")?.into()),
            "--save" => args.save = Some(value("--save")?.into()),
            "--device" => args.device = Some(value("--device")?),
            "--top" => {
                args.top = value("--top")?
                    .parse()
                    .map_err(|_| "--top needs a number".to_string())?
            }
            "--features" => args.features = true,
            "--image" => {
                while let Some(next) = it.peek() {
                    if next.starts_with("--") {
                        break;
                    }
                    args.images.push(it.next().expect("peeked").into());
                }
                if args.images.is_empty() {
                    return Err("--image needs at least one file".into());
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    if args.input.is_some() != args.output.is_some() {
        return Err("--input and --output go together".into());
    }
    if args.input.is_none() && args.images.is_empty() && args.save.is_none() {
        return Err("nothing to do: give --input/--output, --image or --save".into());
    }
    Ok(args)
}

fn load_model(info: &ModelInfo, weights: Option<&Path>, device: &Device) -> Result<IbnNet, String> {
    let model = info.init(device).map_err(|e| e.to_string())?;
    let Some(path) = weights else {
        eprintln!("warning: no --weights given, using random weights");
        return Ok(model);
    };
    if !path.is_file() {
        let hint = info
            .weights_url()
            .map_or_else(String::new, |url| format!(" (the released weights: {url})"));
        return Err(format!("no weights file {}{hint}", path.display()));
    }
    let is_torch = path
        .extension()
        .is_some_and(|e| e == "pth" || e == "pt" || e == "tar" || e == "bin");
    let loaded = if is_torch {
        model
            .load_pytorch(path, Strictness::Strict)
            .map(|(model, _)| model)
    } else {
        load_file(model, path)
    };
    let model = match loaded {
        Ok(model) => model,
        Err(IbnError::CheckpointMismatch { path, report }) => {
            return Err(format!(
                "checkpoint {} does not fit {}: {}",
                path.display(),
                info.name,
                report.summary()
            ));
        }
        Err(e) => return Err(e.to_string()),
    };
    Ok(model.valid())
}

/// Decodes an image, resizes its shorter side to `resize`, centre-crops `crop` and normalises.
fn preprocess(path: &Path, info: &ModelInfo) -> Result<Vec<f32>, String> {
    let image =
        image::open(path).map_err(|e| format!("cannot read image {}: {e}", path.display()))?;
    let image = image.to_rgb32f();
    let (w, h) = image.dimensions();
    let resize = info.resize as f32;
    let scale = resize / w.min(h) as f32;
    let (nw, nh) = (
        ((w as f32 * scale).round() as u32).max(1),
        ((h as f32 * scale).round() as u32).max(1),
    );
    let resized = image::imageops::resize(&image, nw, nh, image::imageops::FilterType::Triangle);
    let [_, ch, cw] = info.input_size;
    if (nw as usize) < cw || (nh as usize) < ch {
        return Err(format!("image {} is too small", path.display()));
    }
    let (x0, y0) = ((nw as usize - cw) / 2, (nh as usize - ch) / 2);
    let mut out = vec![0f32; 3 * ch * cw];
    for c in 0..3 {
        for y in 0..ch {
            for x in 0..cw {
                let v = resized.get_pixel((x0 + x) as u32, (y0 + y) as u32)[c];
                out[(c * ch + y) * cw + x] = (v - info.mean[c]) / info.std[c];
            }
        }
    }
    Ok(out)
}

fn run(args: Args) -> Result<(), String> {
    let name = args.model.as_deref().ok_or("--model is required")?;
    let info = model_info(name).map_err(|e| e.to_string())?;
    let device =
        device_from_name(args.device.as_deref().unwrap_or("flex")).map_err(|e| e.to_string())?;
    let model = load_model(info, args.weights.as_deref(), &device)?;

    if let Some(path) = &args.save {
        save_file(&model, path).map_err(|e| e.to_string())?;
        eprintln!("saved {}", path.display());
    }

    if let (Some(input), Some(output)) = (&args.input, &args.output) {
        let array = NpyArray::read(input).map_err(|e| e.to_string())?;
        model
            .validate_input(&array.shape)
            .map_err(|e| format!("{}: {e}", input.display()))?;
        let shape: [usize; 4] = array.shape.clone().try_into().expect("validated rank");
        let x = Tensor::<4>::from_data(TensorData::new(array.data, shape), &device);
        let y = if args.features {
            model.forward_head(model.forward_features(x), true)
        } else {
            model.forward(x)
        };
        let data = y.into_data();
        let result = NpyArray {
            shape: data.shape().to_vec(),
            data: data.try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?,
        };
        result.write(output).map_err(|e| e.to_string())?;
        eprintln!("wrote {} {:?}", output.display(), result.shape);
    }

    if !args.images.is_empty() {
        let labels: Option<Vec<String>> = match &args.labels {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read labels {}: {e}", path.display()))?
                    .lines()
                    .map(str::to_string)
                    .collect(),
            ),
            None => None,
        };
        let mut batch = Vec::new();
        for path in &args.images {
            batch.extend(preprocess(path, info)?);
        }
        let [c, h, w] = info.input_size;
        let x = Tensor::<4>::from_data(
            TensorData::new(batch, [args.images.len(), c, h, w]),
            &device,
        );
        let probs = burn::tensor::activation::softmax(model.forward(x), 1).into_data();
        let probs = probs.try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?;
        let classes = probs.len() / args.images.len();
        for (i, path) in args.images.iter().enumerate() {
            let row = &probs[i * classes..(i + 1) * classes];
            let mut order: Vec<usize> = (0..classes).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            println!("{}:", path.display());
            for &k in order.iter().take(args.top) {
                let label = labels
                    .as_ref()
                    .and_then(|l| l.get(k))
                    .map_or("", String::as_str);
                println!("  {:>6.2}%  {k:>4}  {label}", row[k] * 100.0);
            }
        }
    }
    Ok(())
}

fn main() {
    if let Err(e) = parse_args().and_then(run) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
