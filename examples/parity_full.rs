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
    if ours.len() != reference.data.len() {
        return Err(format!(
            "{} output values, the reference has {}",
            ours.len(),
            reference.data.len()
        ));
    }
    // A NaN on either side makes the error NaN, which fails the tolerance.
    let nan_max = |m: f32, v: f32| {
        if m.is_nan() || v.is_nan() {
            f32::NAN
        } else {
            m.max(v)
        }
    };
    let scale = reference.data.iter().map(|v| v.abs()).fold(0.0, nan_max);
    let err = ours
        .iter()
        .zip(&reference.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, nan_max);
    println!(
        "{name:<20} max abs error {err:.3e}, relative {:.3e} (output scale {scale:.3})",
        err / scale
    );
    Ok(err / scale)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((dir, names)) = args.split_first().filter(|(_, names)| !names.is_empty()) else {
        eprintln!("usage: parity_full DIR NAME [NAME ...]");
        std::process::exit(2);
    };
    let device = Device::default();
    let mut failed = false;
    for name in names {
        match check(std::path::Path::new(dir), name, &device) {
            Ok(rel) if rel <= TOLERANCE => {}
            Ok(rel) => {
                eprintln!("error: {name}: relative error {rel:e} above {TOLERANCE:e}");
                failed = true;
            }
            Err(e) => {
                eprintln!("error: {name}: {e}");
                failed = true;
            }
        }
    }
    std::process::exit(i32::from(failed));
}
