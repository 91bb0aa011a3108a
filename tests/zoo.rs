//! The named models equal the released definitions: parameter counts and the full list of
//! state_dict names and shapes (`tests/reference_keys/<model>.txt`, one line per tensor:
//! name, `param` or `buffer`, shape).

mod common;

use std::collections::BTreeMap;

use common::*;
use ibn_net::model::{Backbone, Family, IbnNet, MODELS, create_model, model_info, model_names};
use ibn_net::weights::{named_tensors, num_parameters};

/// Parameter counts of the released definitions.
const PARAMS: &[(&str, usize)] = &[
    ("resnet18_ibn_a", 11_689_512),
    ("resnet34_ibn_a", 21_797_672),
    ("resnet50_ibn_a", 25_557_032),
    ("resnet101_ibn_a", 44_549_160),
    ("resnet152_ibn_a", 60_192_808),
    ("resnet18_ibn_b", 11_689_896),
    ("resnet50_ibn_b", 25_558_568),
    ("resnext101_ibn_a", 44_177_704),
    ("se_resnet101_ibn_a", 49_292_328),
    ("densenet121_ibn_a", 7_978_856),
    ("densenet169_ibn_a", 14_149_480),
];

#[test]
fn parameter_counts_equal_the_release() {
    let device = cpu();
    for &(name, expected) in PARAMS {
        let model = create_model(name, &device).unwrap();
        assert_eq!(num_parameters(&model), expected, "{name}");
    }
}

/// `key -> (is_parameter, shape)` of a reference key list, without `num_batches_tracked`.
fn reference_keys(name: &str) -> BTreeMap<String, (bool, Vec<usize>)> {
    let path = checkout()
        .join("tests/reference_keys")
        .join(format!("{name}.txt"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|line| {
            let mut parts = line.split('\t');
            let (key, kind, shape) = (parts.next()?, parts.next()?, parts.next()?);
            if key.ends_with("num_batches_tracked") {
                return None;
            }
            let shape = shape
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().parse().unwrap())
                .collect();
            Some((key.to_string(), (kind == "param", shape)))
        })
        .collect()
}

#[test]
fn every_named_model_maps_one_to_one_onto_the_released_keys() {
    let device = cpu();
    assert_eq!(MODELS.len(), 20);
    for name in model_names() {
        let model = create_model(name, &device).unwrap();
        let ours: BTreeMap<String, (bool, Vec<usize>)> = named_tensors(&model, net_keys(&model))
            .into_iter()
            .map(|t| (t.name, (t.is_parameter, t.shape)))
            .collect();
        let reference = reference_keys(name);
        let missing: Vec<_> = reference
            .keys()
            .filter(|k| !ours.contains_key(*k))
            .collect();
        let extra: Vec<_> = ours
            .keys()
            .filter(|k| !reference.contains_key(*k))
            .collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{name}: missing {missing:?}, extra {extra:?}"
        );
        for (key, value) in &reference {
            assert_eq!(&ours[key], value, "{name}: {key}");
        }
    }
}

#[test]
fn registry_metadata_and_lookup() {
    let info = model_info("resnet50_ibn_a").unwrap();
    assert_eq!(info.weights, Some("resnet50_ibn_a-d9d0bb7b.pth"));
    assert_eq!(info.imagenet_error, Some((22.54, 6.32)));
    assert_eq!(info.input_size, [3, 224, 224]);
    assert_eq!(
        model_info("densenet169_ibn_a").unwrap().family,
        Family::DenseNet
    );
    assert_eq!(MODELS.iter().filter(|m| m.weights.is_some()).count(), 12);

    let err = create_model("resnet51_ibn_a", &cpu())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown model `resnet51_ibn_a`") && err.contains("resnet50_ibn_a"),
        "{err}"
    );
}

#[test]
fn named_models_have_the_expected_feature_maps() {
    let device = cpu();
    let model: IbnNet = ibn_net::model::resnet50_ibn_a(&device);
    let info = model.feature_info();
    let summary: Vec<_> = info
        .iter()
        .map(|f| (f.module.as_str(), f.channels, f.reduction))
        .collect();
    assert_eq!(
        summary,
        [
            ("bn1", 64, 2),
            ("layer1", 256, 4),
            ("layer2", 512, 8),
            ("layer3", 1024, 16),
            ("layer4", 2048, 32)
        ]
    );
    let dense = ibn_net::model::densenet121_ibn_a(&device);
    assert_eq!(dense.num_features(), 1024);
    assert_eq!(dense.feature_info().last().unwrap().reduction, 32);
}
