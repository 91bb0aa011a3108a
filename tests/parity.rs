//! Outputs and running statistics equal PyTorch's for the same weights and inputs.
//!
//! Fixtures: `scripts/make_fixtures.py` (PyTorch, kept out of CI) wrote each case's
//! state_dict, input, eval output, train-mode output and state_dict after that train-mode
//! forward. Tolerance: max abs error <= 1e-5 of the output's max abs value.

mod common;

use burn::module::Module;
use common::*;
use ibn_net::npy::NpyArray;

#[test]
fn eval_outputs_match_pytorch() {
    let device = cpu();
    for name in CASES {
        let case = Case::load(name, &format!("{name}.pth"), &device);
        let x = tensor_from_npy(&format!("{name}.input.npy"), &device);
        let reference = NpyArray::read(fixture(&format!("{name}.eval.npy"))).unwrap();
        let rel = assert_close(&format!("{name} (eval)"), &case.forward(x), &reference, TOL);
        println!("{name:<28} eval  max rel error {rel:.2e}");
    }
}

#[cfg(feature = "autodiff")]
#[test]
fn train_outputs_and_running_stats_match_pytorch() {
    let device = cpu().autodiff();
    for name in CASES {
        let case = Case::load(name, &format!("{name}.pth"), &device);
        let x = tensor_from_npy(&format!("{name}.input.npy"), &device);
        let reference = NpyArray::read(fixture(&format!("{name}.train.npy"))).unwrap();
        let rel = assert_close(
            &format!("{name} (train)"),
            &case.forward(x),
            &reference,
            TOL,
        );
        println!("{name:<28} train max rel error {rel:.2e}");

        // Running statistics after that one training-mode forward.
        let after = Case::load(name, &format!("{name}.after_train.pth"), &cpu());
        let ours = case.tensors();
        let torch = after.tensors();
        assert_eq!(ours.len(), torch.len(), "{name}: tensor count");
        for ((n1, a), (n2, b)) in ours.iter().zip(&torch) {
            assert_eq!(n1, n2);
            assert_close(
                &format!("{name}: {n1} after one training step"),
                a,
                &npy_of(b),
                TOL,
            );
        }
    }
}

#[test]
fn fixtures_load_strictly_on_a_valid_model() {
    // `valid()` keeps the loaded weights: the eval output does not depend on the module state.
    let device = cpu();
    let case = Case::load("net_resnet_basic_a", "net_resnet_basic_a.pth", &device);
    if let Case::Net(model, _) = &case {
        let x = tensor_from_npy("net_resnet_basic_a.input.npy", &device);
        let reference = NpyArray::read(fixture("net_resnet_basic_a.eval.npy")).unwrap();
        use ibn_net::model::Backbone;
        assert_close(
            "valid()",
            &model.valid().forward(x).into_data(),
            &reference,
            TOL,
        );
    }
}
