//! A tour of the model zoo on random weights: every named model, its parameter count,
//! metadata and feature maps, and one forward pass of a custom re-ID backbone.
//!
//! ```text
//! cargo run --release --example tour [-- [--device flex|ndarray|wgpu] [--forward]]
//! ```

use burn::tensor::{Distribution, Tensor};
use ibn_net::block::IbnMode;
use ibn_net::device::device_from_name;
use ibn_net::model::{Backbone, BlockKind, MODELS, ResNetIbnConfig};
use ibn_net::weights::num_parameters;

const USAGE: &str = "usage: tour [--device flex|ndarray|wgpu] [--forward]";

fn usage(problem: &str) -> Box<dyn std::error::Error> {
    format!("{problem}\n{USAGE}").into()
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (mut device_name, mut forward_all) = (String::from("flex"), false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--device" => {
                device_name = args.next().ok_or_else(|| usage("--device needs a value"))?;
            }
            "--forward" => forward_all = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(usage(&format!("unknown argument `{other}`"))),
        }
    }
    let device_name = device_name.as_str();
    let device = device_from_name(device_name)?;

    println!(
        "IBN-Net model zoo on `{device_name}` ({} models)\n",
        MODELS.len()
    );
    println!(
        "{:<20} {:>12}  {:<32} {:<14} feature maps (channels@stride)",
        "model", "parameters", "released weights", "top-1/top-5"
    );
    for info in MODELS {
        let model = info.init(&device)?;
        let maps: Vec<String> = model
            .feature_info()
            .iter()
            .map(|f| format!("{}@{}", f.channels, f.reduction))
            .collect();
        let error = info
            .imagenet_error
            .map_or("-".to_string(), |(t1, t5)| format!("{t1}/{t5}"));
        println!(
            "{:<20} {:>12}  {:<32} {:<14} {}",
            info.name,
            num_parameters(&model),
            info.weights.unwrap_or("-"),
            error,
            maps.join(" ")
        );
        if forward_all {
            let x = Tensor::<4>::random([1, 3, 224, 224], Distribution::Default, &device);
            println!("{:<20} logits {:?}", "", model.try_forward(x)?.dims());
        }
    }

    // Build your own: a ResNet-50-IBN-a re-ID backbone with last stride 1, no classifier,
    // and IBN-b in the first stage for more appearance invariance.
    let config = ResNetIbnConfig::new(BlockKind::Bottleneck, vec![3, 4, 6, 3])
        .with_ibn(vec![IbnMode::B, IbnMode::A, IbnMode::A, IbnMode::None])
        .with_last_stride(1)
        .with_num_classes(0);
    let backbone = config.init(&device)?;
    let x = Tensor::<4>::random([2, 3, 256, 128], Distribution::Default, &device);
    let maps = backbone.forward_intermediates(x.clone(), &[1, 2, 3, 4])?;
    println!(
        "\ncustom re-ID backbone ({} parameters), input [2, 3, 256, 128]:",
        num_parameters(&backbone)
    );
    for (map, info) in maps.iter().zip(&backbone.feature_info()[1..]) {
        println!("  {:<7} {:?}", info.module, map.dims());
    }
    println!("  embedding {:?}", backbone.try_forward(x)?.dims());
    Ok(())
}
