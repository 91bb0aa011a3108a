//! Tensor-name translation between PyTorch checkpoints and this crate, as data.

/// One rename rule on dot-separated name segments.
///
/// A PyTorch segment ending in `#` (e.g. `layer#`) matches that prefix followed by a
/// 1-based number (`layer3`); the segment `#` on the crate side stands for the same position
/// 0-based (`layers.2`). At most one `#` per side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRule {
    /// Segments of the PyTorch name.
    pub torch: &'static [&'static str],
    /// Segments of the crate name.
    pub ours: &'static [&'static str],
}

const fn rule(torch: &'static [&'static str], ours: &'static [&'static str]) -> KeyRule {
    KeyRule { torch, ours }
}

/// A rename table: rules are tried in order at every segment position, left to right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyMap {
    /// The rules.
    pub rules: &'static [KeyRule],
}

/// The ResNet family (ResNet, ResNeXt, SE-ResNet) and its blocks.
pub const RESNET_KEYS: KeyMap = KeyMap {
    rules: &[
        rule(&["layer#"], &["layers", "#"]),
        rule(&["bn1", "IN"], &["bn1", "instance"]),
        rule(&["bn1", "BN"], &["bn1", "batch"]),
        // IBN-b: the instance norm on the residual sum.
        rule(&["IN"], &["post_in"]),
        rule(&["downsample", "0"], &["downsample", "conv"]),
        rule(&["downsample", "1"], &["downsample", "bn"]),
        rule(&["se", "fc", "0"], &["se", "fc1"]),
        rule(&["se", "fc", "2"], &["se", "fc2"]),
    ],
};

/// DenseNet and its blocks.
pub const DENSENET_KEYS: KeyMap = KeyMap {
    rules: &[
        rule(&["features", "conv0"], &["conv0"]),
        rule(&["features", "norm0"], &["norm0"]),
        rule(&["features", "norm5"], &["norm5"]),
        rule(&["features", "denseblock#"], &["blocks", "#"]),
        rule(&["features", "transition#"], &["transitions", "#"]),
        rule(&["denselayer#"], &["layers", "#"]),
        rule(&["norm1", "IN"], &["norm1", "instance"]),
        rule(&["norm1", "BN"], &["norm1", "batch"]),
    ],
};

/// A stand-alone [`Ibn`](crate::norm::Ibn) layer (`IN.*`, `BN.*`).
pub const IBN_KEYS: KeyMap = KeyMap {
    rules: &[rule(&["IN"], &["instance"]), rule(&["BN"], &["batch"])],
};

/// No renaming (stand-alone norms, transitions).
pub const IDENTITY_KEYS: KeyMap = KeyMap { rules: &[] };

/// Matches `pattern` against `segment`: `Some(None)` for a literal match, `Some(Some(n))`
/// for a `#` match capturing `n`.
fn match_segment(pattern: &str, segment: &str, one_based: bool) -> Option<Option<usize>> {
    match pattern.strip_suffix('#') {
        Some(prefix) => {
            let digits = segment.strip_prefix(prefix)?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: usize = digits.parse().ok()?;
            if one_based {
                n.checked_sub(1).map(Some)
            } else {
                Some(Some(n))
            }
        }
        None => (pattern == segment).then_some(None),
    }
}

fn render(pattern: &str, index: Option<usize>, one_based: bool) -> String {
    match (pattern.strip_suffix('#'), index) {
        (Some(prefix), Some(i)) => format!("{prefix}{}", if one_based { i + 1 } else { i }),
        _ => pattern.to_string(),
    }
}

impl KeyMap {
    fn translate(&self, name: &str, to_ours: bool) -> String {
        let segments: Vec<&str> = name.split('.').collect();
        let mut out: Vec<String> = Vec::with_capacity(segments.len() + 2);
        let mut pos = 0;
        'outer: while pos < segments.len() {
            for rule in self.rules {
                let (from, to) = if to_ours {
                    (rule.torch, rule.ours)
                } else {
                    (rule.ours, rule.torch)
                };
                if pos + from.len() > segments.len() {
                    continue;
                }
                let mut index = None;
                let matched = from.iter().zip(&segments[pos..]).all(|(p, s)| {
                    match match_segment(p, s, to_ours) {
                        Some(Some(n)) => {
                            index = Some(n);
                            true
                        }
                        Some(None) => true,
                        None => false,
                    }
                });
                if matched {
                    out.extend(to.iter().map(|p| render(p, index, !to_ours)));
                    pos += from.len();
                    continue 'outer;
                }
            }
            out.push(segments[pos].to_string());
            pos += 1;
        }
        out.join(".")
    }

    /// The crate's name of a PyTorch tensor name.
    ///
    /// ```
    /// use ibn_net::weights::RESNET_KEYS;
    /// assert_eq!(RESNET_KEYS.to_ours("layer2.0.downsample.1.running_var"), "layers.1.0.downsample.bn.running_var");
    /// assert_eq!(RESNET_KEYS.to_ours("layer1.0.bn1.IN.weight"), "layers.0.0.bn1.instance.weight");
    /// ```
    pub fn to_ours(&self, torch_name: &str) -> String {
        self.translate(torch_name, true)
    }

    /// The PyTorch name of one of the crate's tensor names.
    ///
    /// ```
    /// use ibn_net::weights::DENSENET_KEYS;
    /// assert_eq!(
    ///     DENSENET_KEYS.to_torch("blocks.0.layers.3.norm1.batch.weight"),
    ///     "features.denseblock1.denselayer4.norm1.BN.weight"
    /// );
    /// ```
    pub fn to_torch(&self, our_name: &str) -> String {
        self.translate(our_name, false)
    }
}
