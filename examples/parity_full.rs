//! On-demand parity check of full-size named models against PyTorch.
//!
//! ```text
//! python3 scripts/make_fixtures.py --full /tmp/ibn-full resnet50_ibn_a densenet121_ibn_a
//! cargo run --release --example parity_full -- /tmp/ibn-full resnet50_ibn_a densenet121_ibn_a
//! ```
//! For each model, loads `<dir>/<name>.pth` strictly, runs `<name>.input.npy` and prints the
//! max abs error against `<name>.eval.npy`, absolute and relative to the output's largest
//! value. Exits non-zero when a relative error exceeds 1e-5.

use burn::tensor::{Device, Tensor, TensorData};
use ibn_net::model::{Backbone, IbnNet};
use ibn_net::npy::NpyArray;

const TOLERANCE: f32 = 1e-5;

fn check(dir: &std::path::Path, name: &str, device: &Device) -> Result<f32, String> {
    let model = IbnNet::from_pytorch(name, dir.join(format!("{name}.pth")), device)
        .map_err(|e| e.to_string())?;
    let input = NpyArray::read(dir.join(format!("{name}.input.npy"))).map_err(|e| e.to_string())?;
    let reference =
        NpyArray::read(dir.join(format!("{name}.eval.npy"))).map_err(|e| e.to_string())?;
    let shape: [usize; 4] = input
        .shape
        .clone()
        .try_into()
        .map_err(|_| "input is not rank 4")?;
    let x = Tensor::<4>::from_data(TensorData::new(input.data, shape), device);
    let ours = model
        .forward(x)
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?;
    let scale = reference.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = ours
        .iter()
        .zip(&reference.data)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!(
        "{name:<20} max abs error {err:.3e}, relative {:.3e} (output scale {scale:.3})",
        err / scale
    );
    Ok(err / scale)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((dir, names)) = args.split_first() else {
        eprintln!("usage: parity_full DIR NAME [NAME ...]");
        std::process::exit(2);
    };
    let device = Device::default();
    let mut failed = false;
    for name in names {
        match check(std::path::Path::new(dir), name, &device) {
            Ok(rel) if rel <= TOLERANCE => {}
            Ok(_) => failed = true,
            Err(e) => {
                eprintln!("error: {name}: {e}");
                failed = true;
            }
        }
    }
    std::process::exit(i32::from(failed));
}
