//! Checkpoint formats, strictness and errors; burnpack and safetensors round trips.

mod common;

use burn::tensor::{Distribution, Tensor};
use common::*;
use ibn_net::IbnError;
use ibn_net::model::{Backbone, BlockKind, IbnNet, ResNetIbnConfig};
use ibn_net::npy::NpyArray;
use ibn_net::weights::{LoadReport, Strictness, load_file, named_tensors, save_file};

const NET: &str = "net_resnet_basic_a";

fn fresh() -> IbnNet {
    net_config(NET).init(&cpu()).unwrap()
}

/// The report of a load that must fail with [`IbnError::CheckpointMismatch`]; panics naming
/// `what` otherwise.
fn mismatch<T>(what: &str, result: Result<T, IbnError>) -> LoadReport {
    match result {
        Err(IbnError::CheckpointMismatch { report, .. }) => *report,
        Err(other) => panic!("{what}: {other}"),
        Ok(_) => panic!("{what}: loaded"),
    }
}

#[test]
fn every_checkpoint_format_loads_and_matches_pytorch() {
    let device = cpu();
    // One network per name table: the ResNet family and DenseNet.
    for net in [NET, "net_densenet_a"] {
        let x = tensor_from_npy(&format!("{net}.input.npy"), &device);
        let reference = NpyArray::read(fixture(&format!("{net}.eval.npy"))).unwrap();
        for file in ["", ".wrapped", ".legacy", ".wrapped_legacy"] {
            let path = fixture(&format!("{net}{file}.pth"));
            let model = net_config(net).init(&device).unwrap();
            let (model, report) = model.load_pytorch(&path, Strictness::Strict).unwrap();
            assert!(report.is_exact(), "{net}{file}: {report}");
            let prefix = if file.starts_with(".wrapped") {
                "state_dict.module."
            } else {
                ""
            };
            assert_eq!(report.prefix, prefix, "{net}{file}");
            assert_eq!(
                report.loaded.len(),
                named_tensors(&model, model.keys()).len(),
                "{net}{file}"
            );
            assert_close(
                &format!("{net}{file}"),
                &model.forward(x.clone()).into_data(),
                &reference,
                TOL,
            );
        }
    }
}

#[test]
fn strict_loading_reports_every_mismatch_by_pytorch_name() {
    // A checkpoint of a deeper, wider network.
    let wrong = small_resnet(BlockKind::Basic, vec![1, 1, 1, 1], vec![8, 16, 24, 48])
        .init(&cpu())
        .unwrap();
    let err = IbnNet::ResNet(wrong)
        .load_pytorch(fixture(&format!("{NET}.pth")), Strictness::Strict)
        .unwrap_err();
    let IbnError::CheckpointMismatch { report, .. } = &err else {
        panic!("{err}")
    };
    assert!(
        report
            .unexpected
            .iter()
            .any(|k| k == "layer1.1.conv1.weight"),
        "{report}"
    );
    assert!(
        report
            .mismatched
            .iter()
            .any(|m| m.name == "layer4.0.conv1.weight"
                && m.expected == [48, 24, 3, 3]
                && m.found == [32, 24, 3, 3]),
        "{report}"
    );
    assert!(report.missing.is_empty(), "{report}");
    let text = err.to_string();
    assert!(
        text.contains("layer4.0.bn2.running_var") && text.contains("mis-shaped"),
        "{text}"
    );

    // The other family: nothing matches; every name is listed.
    let dense = net_config("net_densenet_a").init(&cpu()).unwrap();
    let report = mismatch(
        "a ResNet file into a DenseNet",
        dense.load_pytorch(fixture(&format!("{NET}.pth")), Strictness::Strict),
    );
    assert!(
        report
            .missing
            .iter()
            .any(|k| k == "features.denseblock1.denselayer1.norm1.IN.weight"),
        "{report}"
    );
    assert!(
        report
            .unexpected
            .iter()
            .any(|k| k == "layer1.0.bn1.IN.weight"),
        "{report}"
    );
    assert!(report.loaded.is_empty(), "{report}");
}

/// A checkpoint as fast-reid's trainer writes it: the backbone under `model.backbone.`, beside
/// a re-identification head, pixel statistics, optimizer and scheduler state; its backbone
/// pools the stem without padding, in ceil mode (`StemPool::Ceil`).
#[test]
fn fast_reid_checkpoints_load_their_backbone_and_match_pytorch() {
    let device = cpu();
    let net = "net_fastreid_a";
    let path = fixture(&format!("{net}.fastreid.pth"));
    let model = net_config(net).init(&device).unwrap();
    let (model, report) = model.load_pytorch(&path, Strictness::NonStrict).unwrap();
    assert_eq!(report.prefix, "model.backbone.", "{report}");
    assert_eq!(
        report.loaded.len(),
        named_tensors(&model, model.keys()).len(),
        "{report}"
    );
    assert!(
        report.missing.is_empty() && report.mismatched.is_empty(),
        "{report}"
    );
    for outside in [
        "model.heads.weight",
        "model.pixel_mean",
        "model.heads.bottleneck.0.running_var",
    ] {
        assert!(
            report.unexpected.iter().any(|n| n == outside),
            "{outside}: {report}"
        );
    }
    assert!(
        report.summary().contains("(names under `model.backbone.`)"),
        "{}",
        report.summary()
    );
    let x = tensor_from_npy(&format!("{net}.input.npy"), &device);
    let reference = NpyArray::read(fixture(&format!("{net}.eval.npy"))).unwrap();
    assert_close(
        net,
        &model.forward_features(x.clone()).into_data(),
        &reference,
        TOL,
    );

    // With the authors' padded stem pool the same weights give another map (17x16, not 16x15).
    let padded = ResNetIbnConfig::new(BlockKind::Basic, vec![1, 1, 1, 1])
        .with_widths(vec![8, 16, 24, 32])
        .with_stem_width(8)
        .with_num_classes(0)
        .with_last_stride(1);
    let (padded, _) = IbnNet::ResNet(padded.init(&device).unwrap())
        .load_pytorch(&path, Strictness::NonStrict)
        .unwrap();
    assert_eq!(padded.forward_features(x).dims(), [2, 32, 5, 4]);

    // Strict loading names what else the file holds.
    let err = net_config(net)
        .init(&device)
        .unwrap()
        .load_pytorch(&path, Strictness::Strict)
        .unwrap_err();
    assert!(err.to_string().contains("model.heads.weight"), "{err}");
}

#[test]
fn a_file_with_nothing_for_the_model_is_an_error_even_when_not_strict() {
    // A ResNet checkpoint into a DenseNet: not one tensor fits.
    let dense = net_config("net_densenet_a").init(&cpu()).unwrap();
    let report = mismatch(
        "a ResNet file into a DenseNet",
        dense.load_pytorch(fixture(&format!("{NET}.pth")), Strictness::NonStrict),
    );
    assert!(report.loaded.is_empty(), "{report}");
    assert!(
        report
            .unexpected
            .iter()
            .any(|n| n == "layer1.0.conv1.weight"),
        "{report}"
    );

    // A DenseNet checkpoint into a ResNet: its names end in ResNet names
    // (`features.denseblock1.denselayer1.conv1.weight`), which must not pass for a prefix.
    let report = mismatch(
        "a DenseNet file into a ResNet",
        fresh().load_pytorch(fixture("net_densenet_a.pth"), Strictness::NonStrict),
    );
    assert_eq!(report.prefix, "", "{report}");
    assert!(
        report.missing.iter().any(|n| n == "conv1.weight"),
        "{report}"
    );
}

#[test]
fn non_strict_loading_fills_what_fits_and_says_what_did_not() {
    // A checkpoint with a classifier into a backbone without one: the head is unexpected.
    let mut headless = fresh();
    headless.reset_classifier(0, &cpu());
    let (headless, report) = headless
        .load_pytorch(fixture(&format!("{NET}.pth")), Strictness::NonStrict)
        .unwrap();
    assert_eq!(report.unexpected, ["fc.bias", "fc.weight"]);
    assert!(report.missing.is_empty() && report.mismatched.is_empty());
    let err = headless
        .load_pytorch(fixture(&format!("{NET}.pth")), Strictness::Strict)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("unexpected in the file (2): fc.bias, fc.weight"),
        "{err}"
    );

    // Fine-tuning with a new number of classes: the head is reported as mis-shaped.
    let mut five = fresh();
    five.reset_classifier(5, &cpu());
    let (_, report) = five
        .load_pytorch(fixture(&format!("{NET}.pth")), Strictness::NonStrict)
        .unwrap();
    let names: Vec<_> = report.mismatched.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["fc.bias", "fc.weight"]);
    // Shapes are reported in PyTorch's layout ([out, in] for linear weights).
    assert_eq!(report.mismatched[1].expected, [5, 32]);
    assert_eq!(report.mismatched[1].found, [10, 32]);
    assert!(
        report
            .summary()
            .starts_with("78 loaded, 2 mis-shaped (e.g. fc.bias: model [5], file [10])"),
        "{}",
        report.summary()
    );
}

#[test]
fn unreadable_files_give_a_read_error() {
    let dir = std::env::temp_dir().join(format!("ibn-net-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = std::fs::read(fixture(&format!("{NET}.pth"))).unwrap();
    let legacy = std::fs::read(fixture(&format!("{NET}.legacy.pth"))).unwrap();
    let cases = [
        ("truncated.pth", bytes[..bytes.len() / 2].to_vec()),
        ("truncated_legacy.pth", legacy[..legacy.len() / 2].to_vec()),
        ("text.pth", b"this is not a checkpoint".to_vec()),
        ("empty.pth", Vec::new()),
    ];
    for (name, content) in cases {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        match fresh().load_pytorch(&path, Strictness::NonStrict) {
            Err(IbnError::CheckpointRead { path: p, reason }) => {
                assert_eq!(p, path);
                assert!(!reason.is_empty());
            }
            Err(other) => panic!("{name}: wrong error {other}"),
            Ok(_) => panic!("{name}: loaded"),
        }
    }
    let missing = fresh()
        .load_pytorch(dir.join("nope.pth"), Strictness::Strict)
        .unwrap_err();
    assert!(missing.to_string().contains("no such file"), "{missing}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn burnpack_and_safetensors_round_trips_are_bit_identical() {
    let device = cpu();
    let (model, _) = fresh()
        .load_pytorch(fixture(&format!("{NET}.pth")), Strictness::Strict)
        .unwrap();
    let x = Tensor::<4>::random([2, 3, 32, 32], Distribution::Default, &device);
    let expected = model.forward(x.clone()).into_data();
    let dir = std::env::temp_dir().join(format!("ibn-net-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["model.bpk", "model.safetensors"] {
        let path = dir.join(file);
        save_file(&model, &path).unwrap();
        let loaded = load_file(fresh(), &path).unwrap();
        assert_eq!(loaded.forward(x.clone()).into_data(), expected, "{file}");
        // A file of another architecture is refused, every tensor named by its module path
        // in the file (enum variants included).
        let other = net_config("net_densenet_a").init(&device).unwrap();
        let report = mismatch(&format!("{file} into a DenseNet"), load_file(other, &path));
        assert!(report.loaded.is_empty(), "{file}: {report}");
        assert!(
            report.unexpected.iter().any(|n| n == "ResNet.conv1.weight"),
            "{file}: {report}"
        );
        // Another number of classes: only the classifier is mis-shaped (burn's layout).
        let mut five = fresh();
        five.reset_classifier(5, &device);
        let report = mismatch(&format!("{file} into 5 classes"), load_file(five, &path));
        let names: Vec<_> = report.mismatched.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["ResNet.fc.bias", "ResNet.fc.weight"],
            "{file}: {report}"
        );
        assert_eq!(report.mismatched[1].expected, [32, 5], "{file}: {report}");
        assert!(
            report.missing.is_empty() && report.unexpected.is_empty(),
            "{file}: {report}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
