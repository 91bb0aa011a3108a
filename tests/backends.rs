//! The same network gives PyTorch's output on every backend of this build.

mod common;

use burn::tensor::Device;
use common::*;
use ibn_net::device::{available_devices, device_from_name};
use ibn_net::model::Backbone;
use ibn_net::npy::NpyArray;

fn check_on(device: &Device, label: &str) {
    for name in [
        "net_resnet_bottleneck_b",
        "net_densenet_a",
        "net_se_resnet_a",
    ] {
        let case = Case::load(name, &format!("{name}.pth"), device);
        let Case::Net(model, _) = &case else {
            unreachable!()
        };
        let x = tensor_from_npy(&format!("{name}.input.npy"), device);
        let reference = NpyArray::read(fixture(&format!("{name}.eval.npy"))).unwrap();
        let rel = assert_close(
            &format!("{name} on {label}"),
            &model.forward(x).into_data(),
            &reference,
            TOL,
        );
        println!("{label:<8} {name:<26} max rel error {rel:.2e}");
    }
}

#[test]
fn every_backend_matches_pytorch() {
    for name in available_devices() {
        check_on(&device_from_name(name).unwrap(), name);
    }
}

#[test]
fn unknown_or_disabled_devices_are_named() {
    let err = device_from_name("tpu").unwrap_err().to_string();
    assert!(
        err.contains("`tpu`") && err.contains("unknown device"),
        "{err}"
    );
    let err = device_from_name("cuda").unwrap_err().to_string();
    assert!(
        err.contains("`cuda`") && err.contains("use `wgpu`"),
        "{err}"
    );
    if !cfg!(feature = "wgpu") {
        let err = device_from_name("wgpu").unwrap_err().to_string();
        assert!(err.contains("`wgpu` cargo feature"), "{err}");
    }
}
