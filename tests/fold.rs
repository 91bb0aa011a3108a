//! Folding batch norms into convolutions keeps evaluation outputs (to float32 rounding).

mod common;

use burn::module::Module;
use burn::tensor::{Distribution, Tensor};
use common::*;
use ibn_net::model::Backbone;
use ibn_net::npy::NpyArray;

#[test]
fn folded_networks_match_the_unfolded_ones_and_pytorch() {
    let device = cpu();
    for name in CASES.iter().filter(|n| n.starts_with("net_")) {
        let Case::Net(model, features_only) = Case::load(name, &format!("{name}.pth"), &device)
        else {
            unreachable!()
        };
        let x = tensor_from_npy(&format!("{name}.input.npy"), &device);
        let run = |m: &ibn_net::model::IbnNet| match features_only {
            true => m.forward_features(x.clone()).into_data(),
            false => m.forward(x.clone()).into_data(),
        };
        let model = model.valid();
        let unfolded = run(&model);
        let folded = model.fold_batch_norms();
        let reference = NpyArray::read(fixture(&format!("{name}.eval.npy"))).unwrap();
        let as_npy = npy_of(&unfolded);
        let rel = assert_close(
            &format!("{name} folded vs unfolded"),
            &run(&folded),
            &as_npy,
            TOL,
        );
        assert_close(
            &format!("{name} folded vs PyTorch"),
            &run(&folded),
            &reference,
            TOL,
        );
        println!("{name:<26} folded max rel error {rel:.2e}");
    }
}

#[test]
fn folding_a_named_model_keeps_its_output() {
    let device = cpu();
    device.seed(3);
    let model = ibn_net::model::resnet18_ibn_b(&device).valid();
    let x = Tensor::<4>::random([1, 3, 64, 64], Distribution::Default, &device);
    let before = model.forward(x.clone()).into_data();
    let after = model.fold_batch_norms().forward(x).into_data();
    let before = npy_of(&before);
    assert_close("resnet18_ibn_b folded", &after, &before, TOL);
}
