//! A tour of the model zoo on random weights: every named model, its parameter count,
//! metadata and feature maps, and one forward pass of a custom re-ID backbone.
//!
//! ```text
//! cargo run --release --example tour [-- --device flex|ndarray|wgpu] [--forward]
//! ```

use burn::tensor::{Distribution, Tensor};
use ibn_net::block::IbnMode;
use ibn_net::device::device_from_name;
use ibn_net::model::{Backbone, BlockKind, MODELS, ResNetIbnConfig};
use ibn_net::weights::num_parameters;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> ibn_net::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let device_name = args
        .iter()
        .position(|a| a == "--device")
        .and_then(|i| args.get(i + 1))
        .map_or("flex", String::as_str);
    let forward_all = args.iter().any(|a| a == "--forward");
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
