//! Builder surface, configuration errors and input validation.

mod common;

use burn::tensor::{Distribution, Tensor};
use common::*;
use ibn_net::IbnError;
use ibn_net::block::{BottleneckConfig, IbnMode, SqueezeExcitationConfig};
use ibn_net::model::{
    Backbone, BlockKind, DenseNetIbnConfig, ResNetIbnConfig, StemPool, block_ibn,
};
use ibn_net::norm::{IbnConfig, IbnOrder};

fn config_error<T>(result: Result<T, IbnError>) -> String {
    match result {
        Err(e @ IbnError::InvalidConfig { .. }) => e.to_string(),
        Err(other) => panic!("expected a configuration error, got {other}"),
        Ok(_) => panic!("expected a configuration error, got a model"),
    }
}

#[test]
fn ibn_sections_follow_the_release() {
    assert_eq!(IbnConfig::new(64).sections().unwrap(), (32, 32));
    assert_eq!(
        IbnConfig::new(10).with_ratio(0.7).sections().unwrap(),
        (7, 3)
    );
    // DenseNet: floor(planes * 0.6) BN channels first.
    assert_eq!(IbnConfig::dense(64).sections().unwrap(), (26, 38));
    assert_eq!(IbnConfig::dense(160).sections().unwrap(), (64, 96));
    assert_eq!(IbnConfig::dense(64).order, IbnOrder::BnFirst);
}

#[test]
fn invalid_configurations_name_the_field() {
    let d = cpu();
    assert!(config_error(IbnConfig::new(64).with_ratio(1.0).init(&d)).contains("ratio: must"));
    assert!(config_error(IbnConfig::new(64).with_ratio(0.0).init(&d)).contains("(0, 1)"));
    assert!(config_error(IbnConfig::new(1).init(&d)).contains("non-empty"));

    let resnet = || ResNetIbnConfig::new(BlockKind::Bottleneck, vec![1, 1, 1, 1]);
    assert!(
        config_error(resnet().with_widths(vec![64, 0, 256, 512]).init(&d)).contains("widths[1]")
    );
    assert!(
        config_error(resnet().with_widths(vec![64, 128]).init(&d))
            .contains("2 widths for 4 stages")
    );
    assert!(config_error(resnet().with_ibn(vec![IbnMode::A]).init(&d)).contains("ibn"));
    assert!(
        config_error(ResNetIbnConfig::new(BlockKind::Basic, vec![]).init(&d)).contains("layers")
    );
    assert!(config_error(resnet().with_ibn_ratio(1.5).init(&d)).contains("ibn_ratio"));
    assert!(config_error(resnet().with_stem_width(0).init(&d)).contains("stem_width"));
    assert!(
        config_error(
            resnet()
                .with_widths(vec![8, 16, 32, 64])
                .with_cardinality(32)
                .with_base_width(4)
                .init(&d)
        )
        .contains("base_width")
    );
    assert!(
        config_error(
            ResNetIbnConfig::new(BlockKind::Basic, vec![1, 1])
                .with_widths(vec![8, 8])
                .with_ibn(vec![IbnMode::A, IbnMode::None])
                .with_se_reduction(Some(4))
                .init(&d)
        )
        .contains("se_reduction")
    );
    assert!(
        config_error(SqueezeExcitationConfig::new(8).with_reduction(16).init(&d))
            .contains("no hidden unit")
    );
    assert!(config_error(BottleneckConfig::new(0, 8).init(&d)).contains("in_channels"));
    assert!(
        config_error(DenseNetIbnConfig::new(vec![2, 2]).init(&d))
            .contains("4 IBN flags for 2 blocks")
    );
    assert!(config_error(DenseNetIbnConfig::new(vec![]).init(&d)).contains("block_config"));
    assert!(
        config_error(resnet().with_se_reduction(Some(0)).init(&d))
            .contains("se_reduction: must be greater than zero")
    );

    // Errors of a block's configuration name the block, by its PyTorch name.
    let err = config_error(
        ResNetIbnConfig::new(BlockKind::Bottleneck, vec![1, 1, 1, 1])
            .with_widths(vec![8, 16, 32, 64])
            .with_se_reduction(Some(64))
            .init(&d),
    );
    assert!(
        err.contains("layer1.0.se.reduction: 32 channels / reduction 64"),
        "{err}"
    );
    let err = config_error(
        ResNetIbnConfig::new(BlockKind::Basic, vec![1, 1, 1, 1])
            .with_widths(vec![1, 16, 32, 64])
            .init(&d),
    );
    assert!(
        err.contains("layer1.0.bn1.ratio: ratio 0.5 on 1 channels"),
        "{err}"
    );
    let err = config_error(
        DenseNetIbnConfig::new(vec![2, 2])
            .with_ibn(vec![false, true])
            .with_ibn_ratio(0.99)
            .init(&d),
    );
    assert!(
        err.contains("features.denseblock2.denselayer1.norm1.ratio"),
        "{err}"
    );
    // An inconsistent configuration still answers `num_features` (validation says why).
    assert_eq!(
        DenseNetIbnConfig::new(vec![6, 12, 24, 16, 8]).num_features(),
        DenseNetIbnConfig::new(vec![6, 12, 24, 16, 8])
            .with_ibn(vec![true; 5])
            .num_features()
    );
}

#[test]
fn ibn_placement_is_decided_per_stage() {
    use IbnMode::*;
    // IBN-a: every block; IBN-b: only the last block (never the first); none: none.
    assert_eq!(
        (0..3).map(|i| block_ibn(A, i, 3)).collect::<Vec<_>>(),
        [A, A, A]
    );
    assert_eq!(
        (0..3).map(|i| block_ibn(B, i, 3)).collect::<Vec<_>>(),
        [None, None, B]
    );
    assert_eq!(block_ibn(B, 0, 1), None);
    assert_eq!(block_ibn(None, 2, 3), None);
}

fn tiny() -> ResNetIbnConfig {
    small_resnet(BlockKind::Basic, vec![1, 1, 1, 1], vec![8, 16, 24, 32])
}

#[test]
fn stem_pool_output_sizes_are_the_pools() {
    let d = cpu();
    for stem_pool in [StemPool::Padded, StemPool::Ceil] {
        let model = tiny().with_stem_pool(stem_pool).init(&d).unwrap();
        for size in 3..24 {
            let x = Tensor::<4>::zeros([1, 1, size, size + 1], &d);
            let [_, _, h, w] = model.maxpool.forward(x).dims();
            assert_eq!(
                (stem_pool.output(size), stem_pool.output(size + 1)),
                (Some(h), Some(w)),
                "{stem_pool:?} at {size}x{}",
                size + 1
            );
        }
    }
    assert_eq!(StemPool::Ceil.output(2), None);
    assert_eq!(StemPool::Padded.output(0), None);
    assert_eq!(StemPool::Ceil.output(33), Some(16));
    assert_eq!(StemPool::Padded.output(33), Some(17));
}

#[test]
fn invalid_inputs_are_rejected_with_a_reason() {
    let d = cpu();
    let model = tiny().init(&d).unwrap();
    let err = |dims: &[usize]| match model.validate_input(dims) {
        Err(IbnError::InvalidInput(msg)) => msg,
        other => panic!("{dims:?}: expected an input error, got {other:?}"),
    };
    assert!(err(&[2, 3, 32]).contains("rank-4"));
    assert!(err(&[2, 1, 32, 32]).contains("expected 3 input channels, got 1"));
    assert!(err(&[0, 3, 32, 32]).contains("empty"));
    // layer3 (IBN-a) sees 2x2 at 32x32 but 1x1 at 16x16.
    model.validate_input(&[2, 3, 32, 32]).unwrap();
    assert!(err(&[2, 3, 16, 16]).contains("layer3.0.bn1"));

    let x = Tensor::<4>::random([1, 1, 32, 32], Distribution::Default, &d);
    assert!(matches!(
        model.try_forward(x.clone()),
        Err(IbnError::InvalidInput(_))
    ));
    assert!(matches!(
        model.forward_intermediates(x, &[0]),
        Err(IbnError::InvalidInput(_))
    ));

    let b = tiny().with_ibn_b().init(&d).unwrap();
    assert!(
        b.validate_input(&[1, 3, 1, 1])
            .unwrap_err()
            .to_string()
            .contains("stem norm")
    );

    let dense = DenseNetIbnConfig::new(vec![1, 1, 1, 1])
        .with_growth_rate(4)
        .with_num_init_features(8)
        .init(&d)
        .unwrap();
    dense.validate_input(&[1, 3, 64, 64]).unwrap();
    assert!(
        dense
            .validate_input(&[1, 3, 24, 24])
            .unwrap_err()
            .to_string()
            .contains("denseblock3")
    );
}

#[test]
fn forward_surface_shapes() {
    let d = cpu();
    let mut model = tiny().init(&d).unwrap();
    let x = Tensor::<4>::random([2, 3, 64, 64], Distribution::Default, &d);

    assert_eq!(model.forward(x.clone()).dims(), [2, 10]);
    let features = model.forward_features(x.clone());
    assert_eq!(features.dims(), [2, 32, 2, 2]);
    assert_eq!(model.forward_head(features.clone(), true).dims(), [2, 32]);

    let maps = model.forward_intermediates(x.clone(), &[1, 3, 0]).unwrap();
    let dims: Vec<_> = maps.iter().map(|m| m.dims()).collect();
    assert_eq!(dims, [[2, 8, 16, 16], [2, 24, 4, 4], [2, 8, 32, 32]]);
    for (map, info) in maps
        .iter()
        .zip([1, 3, 0].map(|i| model.feature_info()[i].clone()))
    {
        assert_eq!(map.dims()[1], info.channels);
        assert_eq!(64 / map.dims()[2], info.reduction);
    }
    assert!(model.forward_intermediates(x.clone(), &[5]).is_err());

    model.reset_classifier(7, &d);
    assert_eq!(model.num_classes(), 7);
    assert_eq!(model.forward(x.clone()).dims(), [2, 7]);
    model.reset_classifier(0, &d);
    assert!(model.fc.is_none());
    assert_eq!(model.forward(x.clone()).dims(), [2, 32]);

    // Re-ID style: last stride 1 doubles the last map.
    let reid = tiny()
        .with_last_stride(1)
        .with_num_classes(0)
        .init(&d)
        .unwrap();
    assert_eq!(reid.forward_features(x.clone()).dims(), [2, 32, 4, 4]);
    assert_eq!(reid.feature_info().last().unwrap().reduction, 16);

    let dense = DenseNetIbnConfig::new(vec![2, 2, 2])
        .with_growth_rate(4)
        .with_num_init_features(8)
        .with_ibn(vec![true, true, false])
        .with_num_classes(5)
        .init(&d)
        .unwrap();
    assert_eq!(dense.forward(x.clone()).dims(), [2, 5]);
    let maps = dense.forward_intermediates(x, &[0, 1, 2, 3]).unwrap();
    let channels: Vec<_> = maps.iter().map(|m| m.dims()[1]).collect();
    let expected: Vec<_> = dense.feature_info().iter().map(|f| f.channels).collect();
    assert_eq!(channels, expected);
}
