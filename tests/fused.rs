//! The fused normalisation kernels equal the generic composed paths (split, norms,
//! concatenation), forward and gradients, and the running statistics they update, on every
//! backend of this build. Tolerance: `TOL` (1e-5) of the reference's largest magnitude.

mod common;

use burn::module::{Param, RunningState};
use burn::tensor::{Device, Distribution, Tensor};
use common::*;
use ibn_net::device::{available_devices, device_from_name};
use ibn_net::kernel::{
    Epilogue, plane_moments, plane_moments_reference, plane_norm, plane_norm_reference,
    plane_norm_train, plane_norm_train_reference, plane_norm_with, plane_norm_with_reference,
};
use ibn_net::norm::{
    BatchNorm2d, BatchNorm2dConfig, Ibn, IbnConfig, InstanceNorm2d, InstanceNorm2dConfig,
};
use ibn_net::npy::NpyArray;

fn npy<const D: usize>(t: Tensor<D>) -> NpyArray {
    npy_of(&t.into_data())
}

fn close<const D: usize>(what: &str, ours: Tensor<D>, reference: Tensor<D>) {
    // The large-offset input (mean 40, std 0.5) costs the float32 composed reference itself
    // ~80x the rounding error (its mean is accurate to |x| * eps, which normalisation divides
    // by the std, and its backward sums (x - mean) terms of that accuracy); the kernels
    // accumulate in float64 (CPU) or sum `x - pivot` (GPU). Every other input holds TOL.
    let tol = if what.contains("offset") { 1e-4 } else { TOL };
    assert_close(what, &ours.into_data(), &npy(reference), tol);
}

fn devices() -> Vec<(&'static str, Device)> {
    available_devices()
        .into_iter()
        .map(|name| (name, device_from_name(name).unwrap()))
        .collect()
}

/// Inputs with 10 channels: contiguous, a non-contiguous view, a large offset, large planes.
fn inputs(device: &Device) -> Vec<(&'static str, Tensor<4>)> {
    device.seed(7);
    vec![
        (
            "contiguous",
            Tensor::random([3, 10, 5, 7], Distribution::Normal(0.5, 2.0), device),
        ),
        (
            "strided",
            Tensor::random([3, 7, 5, 10], Distribution::Normal(-1.0, 1.0), device).swap_dims(1, 3),
        ),
        (
            "offset",
            Tensor::random([3, 10, 5, 7], Distribution::Normal(40.0, 0.5), device),
        ),
        (
            "large planes",
            Tensor::random([2, 10, 40, 41], Distribution::Normal(0.0, 1.0), device),
        ),
    ]
}

const RANGES: [core::ops::Range<usize>; 5] = [0..10, 0..0, 3..8, 0..4, 6..10];

#[test]
fn plane_norm_equals_the_reference() {
    for (name, device) in devices() {
        for (kind, x) in inputs(&device) {
            let scale = Tensor::<1>::random([10], Distribution::Normal(1.0, 0.5), &device);
            let shift = Tensor::<1>::random([10], Distribution::Normal(0.0, 1.0), &device);
            for range in RANGES {
                let what = format!("plane_norm {kind} {range:?} on {name}");
                close(
                    &what,
                    plane_norm(x.clone(), scale.clone(), shift.clone(), range.clone(), 1e-5),
                    plane_norm_reference(x.clone(), scale.clone(), shift.clone(), range, 1e-5),
                );
            }
        }
    }
}

/// The epilogues of [`plane_norm_with`] besides the identity: `(label, residual?, relu)`.
const EPILOGUES: [(&str, bool, bool); 3] = [
    ("relu", false, true),
    ("add", true, false),
    ("add relu", true, true),
];

fn epilogue(residual: Option<&Tensor<4>>, relu: bool) -> Epilogue {
    Epilogue {
        residual: residual.cloned(),
        relu,
    }
}

#[test]
fn plane_norm_with_an_epilogue_equals_the_reference() {
    for (name, device) in devices() {
        for (kind, x) in inputs(&device) {
            let scale = Tensor::<1>::random([10], Distribution::Normal(1.0, 0.5), &device);
            let shift = Tensor::<1>::random([10], Distribution::Normal(0.0, 1.0), &device);
            let residual = Tensor::<4>::random(x.dims(), Distribution::Normal(0.0, 1.0), &device);
            for (label, add, relu) in EPILOGUES {
                for range in [0..10, 0..0, 3..8] {
                    let then = || epilogue(add.then_some(&residual), relu);
                    let (s, b) = (scale.clone(), shift.clone());
                    let r = range.clone();
                    close(
                        &format!("plane_norm then {label}, {kind} {range:?} on {name}"),
                        plane_norm_with(x.clone(), s.clone(), b.clone(), r.clone(), 1e-5, then()),
                        plane_norm_with_reference(x.clone(), s, b, r, 1e-5, then()),
                    );
                }
            }
        }
    }
}

#[test]
fn plane_norm_with_an_epilogue_has_the_reference_gradients() {
    type Norm =
        fn(Tensor<4>, Tensor<1>, Tensor<1>, core::ops::Range<usize>, f64, Epilogue) -> Tensor<4>;
    for (name, device) in devices() {
        let device = device.autodiff();
        for (kind, x) in inputs(&device) {
            let x = x.detach();
            let scale = Tensor::<1>::random([10], Distribution::Normal(1.0, 0.5), &device);
            let shift = Tensor::<1>::random([10], Distribution::Normal(0.0, 1.0), &device);
            let residual = Tensor::<4>::random(x.dims(), Distribution::Normal(0.0, 1.0), &device);
            let weights = Tensor::<4>::random(x.dims(), Distribution::Normal(0.0, 1.0), &device);
            for (label, add, relu) in EPILOGUES {
                for range in [0..10, 0..0, 3..8] {
                    let grads = |f: Norm| {
                        let (x, s, b, r) = (
                            x.clone().require_grad(),
                            scale.clone().require_grad(),
                            shift.clone().require_grad(),
                            residual.clone().require_grad(),
                        );
                        let then = epilogue(add.then_some(&r), relu);
                        let y = f(x.clone(), s.clone(), b.clone(), range.clone(), 1e-5, then);
                        let g = (y * weights.clone()).sum().backward();
                        let dr = add.then(|| r.grad(&g).unwrap());
                        (
                            x.grad(&g).unwrap(),
                            s.grad(&g).unwrap(),
                            b.grad(&g).unwrap(),
                            dr,
                        )
                    };
                    let (dx, ds, db, dr) = grads(plane_norm_with);
                    let (rx, rs, rb, rr) = grads(plane_norm_with_reference);
                    let what = format!("then {label}, {kind} {range:?} on {name}");
                    close(&format!("input gradient {what}"), dx, rx);
                    close(&format!("scale gradient {what}"), ds, rs);
                    close(&format!("shift gradient {what}"), db, rb);
                    if let (Some(d), Some(r)) = (dr, rr) {
                        close(&format!("residual gradient {what}"), d, r);
                    }
                }
            }
        }
    }
}

type TrainNorm = fn(
    Tensor<4>,
    Tensor<1>,
    Tensor<1>,
    core::ops::Range<usize>,
    (f64, f64),
    Epilogue,
) -> (Tensor<4>, Tensor<1>, Tensor<1>);

/// Training mode (batch statistics outside the range), with every epilogue: output, batch
/// statistics, and on autodiff devices the input, scale, shift and residual gradients equal
/// the reference's (two epsilons, so that mixing them up fails).
#[test]
fn plane_norm_train_equals_the_reference() {
    for (name, device) in devices() {
        for device in [device.clone(), device.autodiff()] {
            let autodiff = device.is_autodiff();
            for (kind, x) in inputs(&device) {
                let x = x.detach();
                let scale = Tensor::<1>::random([10], Distribution::Normal(1.0, 0.5), &device);
                let shift = Tensor::<1>::random([10], Distribution::Normal(0.0, 1.0), &device);
                let residual =
                    Tensor::<4>::random(x.dims(), Distribution::Normal(0.0, 1.0), &device);
                let weights =
                    Tensor::<4>::random(x.dims(), Distribution::Normal(0.0, 1.0), &device);
                let identity = ("nothing", false, false);
                for (label, add, relu) in EPILOGUES.into_iter().chain([identity]) {
                    for range in RANGES {
                        let run = |f: TrainNorm| {
                            let track = |t: &Tensor<4>| {
                                if autodiff {
                                    t.clone().require_grad()
                                } else {
                                    t.clone()
                                }
                            };
                            let (x, r) = (track(&x), track(&residual));
                            let (s, b) = if autodiff {
                                (scale.clone().require_grad(), shift.clone().require_grad())
                            } else {
                                (scale.clone(), shift.clone())
                            };
                            let then = epilogue(add.then_some(&r), relu);
                            let (y, mean, var) = f(
                                x.clone(),
                                s.clone(),
                                b.clone(),
                                range.clone(),
                                (1e-5, 1e-2),
                                then,
                            );
                            let grads = autodiff.then(|| {
                                let g = (y.clone() * weights.clone()).sum().backward();
                                let dr = add.then(|| r.grad(&g).unwrap());
                                (
                                    x.grad(&g).unwrap(),
                                    s.grad(&g).unwrap(),
                                    b.grad(&g).unwrap(),
                                    dr,
                                )
                            });
                            (y.detach(), mean, var, grads)
                        };
                        let (y, mean, var, grads) = run(plane_norm_train);
                        let (ry, rmean, rvar, rgrads) = run(plane_norm_train_reference);
                        let what = format!("then {label}, {kind} {range:?} on {name}");
                        close(&format!("training output {what}"), y, ry);
                        close(&format!("batch means {what}"), mean, rmean);
                        close(&format!("batch variances {what}"), var, rvar);
                        if let (Some((dx, ds, db, dr)), Some((rx, rs, rb, rr))) = (grads, rgrads) {
                            close(&format!("training input gradient {what}"), dx, rx);
                            close(&format!("training scale gradient {what}"), ds, rs);
                            close(&format!("training shift gradient {what}"), db, rb);
                            if let (Some(d), Some(r)) = (dr, rr) {
                                close(&format!("training residual gradient {what}"), d, r);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn plane_moments_equal_the_reference() {
    for (name, device) in devices() {
        for (kind, x) in inputs(&device) {
            for range in RANGES {
                let (mean, var) = plane_moments(x.clone(), range.clone());
                let (ref_mean, ref_var) = plane_moments_reference(x.clone(), range.clone());
                close(&format!("means {kind} {range:?} on {name}"), mean, ref_mean);
                close(
                    &format!("variances {kind} {range:?} on {name}"),
                    var,
                    ref_var,
                );
            }
        }
    }
}

#[test]
fn plane_norm_gradients_equal_the_reference() {
    for (name, device) in devices() {
        let device = device.autodiff();
        for (kind, x) in inputs(&device) {
            let x = x.detach();
            let scale = Tensor::<1>::random([10], Distribution::Normal(1.0, 0.5), &device);
            let shift = Tensor::<1>::random([10], Distribution::Normal(0.0, 1.0), &device);
            let weights = Tensor::<4>::random(x.dims(), Distribution::Normal(0.0, 1.0), &device);
            for range in RANGES {
                let grads = |f: fn(
                    Tensor<4>,
                    Tensor<1>,
                    Tensor<1>,
                    core::ops::Range<usize>,
                    f64,
                ) -> Tensor<4>| {
                    let (x, s, b) = (
                        x.clone().require_grad(),
                        scale.clone().require_grad(),
                        shift.clone().require_grad(),
                    );
                    let loss = (f(x.clone(), s.clone(), b.clone(), range.clone(), 1e-5)
                        * weights.clone())
                    .sum();
                    let g = loss.backward();
                    (
                        x.grad(&g).unwrap(),
                        s.grad(&g).unwrap(),
                        b.grad(&g).unwrap(),
                    )
                };
                let (dx, ds, db) = grads(plane_norm);
                let (rx, rs, rb) = grads(plane_norm_reference);
                let what = format!("{kind} {range:?} on {name}");
                close(&format!("input gradient {what}"), dx, rx);
                close(&format!("scale gradient {what}"), ds, rs);
                close(&format!("shift gradient {what}"), db, rb);
            }
        }
    }
}

#[test]
fn plane_moments_gradients_equal_the_reference() {
    for (name, device) in devices() {
        let device = device.autodiff();
        for (kind, x) in inputs(&device) {
            let x = x.detach();
            for range in RANGES.into_iter().filter(|r| !r.is_empty()) {
                let k = range.len();
                let w_mean =
                    Tensor::<2>::random([x.dims()[0], k], Distribution::Normal(0.0, 1.0), &device);
                let w_var =
                    Tensor::<2>::random([x.dims()[0], k], Distribution::Normal(0.0, 1.0), &device);
                type Moments = fn(Tensor<4>, core::ops::Range<usize>) -> (Tensor<2>, Tensor<2>);
                let grad = |f: Moments| {
                    let x = x.clone().require_grad();
                    let (mean, var) = f(x.clone(), range.clone());
                    let loss = (mean * w_mean.clone()).sum() + (var * w_var.clone()).sum();
                    x.grad(&loss.backward()).unwrap()
                };
                close(
                    &format!("input gradient of the moments, {kind} {range:?} on {name}"),
                    grad(plane_moments),
                    grad(plane_moments_reference),
                );
            }
        }
    }
}

/// A normalisation layer under test: its fused and composed paths, trainable parameters and
/// running statistics.
trait Layer {
    fn fast(&self, x: Tensor<4>, then: Epilogue) -> Tensor<4>;
    fn composed(&self, x: Tensor<4>) -> Tensor<4>;
    fn params(&self) -> Vec<Tensor<1>>;
    fn running(&self) -> Vec<Tensor<1>>;
    /// Turns off training behaviour (running statistics used, not updated), as for frozen
    /// normalisation layers during fine-tuning: gradients still flow.
    fn freeze(&mut self);
}

fn bn_parts(bn: &BatchNorm2d) -> (Vec<Tensor<1>>, Vec<Tensor<1>>) {
    (
        vec![bn.weight.val(), bn.bias.val()],
        vec![bn.running_mean.value_sync(), bn.running_var.value_sync()],
    )
}

fn in_parts(inorm: &InstanceNorm2d) -> (Vec<Tensor<1>>, Vec<Tensor<1>>) {
    let params = [&inorm.weight, &inorm.bias]
        .into_iter()
        .flatten()
        .map(|p| p.val())
        .collect();
    let running = [&inorm.running_mean, &inorm.running_var]
        .into_iter()
        .flatten()
        .map(|s| s.value_sync())
        .collect();
    (params, running)
}

impl Layer for Ibn {
    fn fast(&self, x: Tensor<4>, then: Epilogue) -> Tensor<4> {
        self.forward_with(x, then)
    }
    fn composed(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_composed(x)
    }
    fn params(&self) -> Vec<Tensor<1>> {
        [in_parts(&self.instance).0, bn_parts(&self.batch).0].concat()
    }
    fn running(&self) -> Vec<Tensor<1>> {
        [in_parts(&self.instance).1, bn_parts(&self.batch).1].concat()
    }
    fn freeze(&mut self) {
        self.instance.training = Param::from_bool(false);
        self.batch.training = Param::from_bool(false);
    }
}

impl Layer for InstanceNorm2d {
    fn fast(&self, x: Tensor<4>, then: Epilogue) -> Tensor<4> {
        self.forward_with(x, then)
    }
    fn composed(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_composed(x)
    }
    fn params(&self) -> Vec<Tensor<1>> {
        in_parts(self).0
    }
    fn running(&self) -> Vec<Tensor<1>> {
        in_parts(self).1
    }
    fn freeze(&mut self) {
        self.training = Param::from_bool(false);
    }
}

impl Layer for BatchNorm2d {
    fn fast(&self, x: Tensor<4>, then: Epilogue) -> Tensor<4> {
        self.forward_with(x, then)
    }
    fn composed(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_composed(x)
    }
    fn params(&self) -> Vec<Tensor<1>> {
        bn_parts(self).0
    }
    fn running(&self) -> Vec<Tensor<1>> {
        bn_parts(self).1
    }
    fn freeze(&mut self) {
        self.training = Param::from_bool(false);
    }
}

fn random(c: usize, distribution: Distribution, device: &Device) -> Tensor<1> {
    Tensor::random([c], distribution, device)
}

/// Random weight, bias, running mean and running variance for `c` channels.
fn values(c: usize, device: &Device) -> [Tensor<1>; 4] {
    [
        random(c, Distribution::Normal(1.0, 0.3), device),
        random(c, Distribution::Normal(0.0, 0.5), device),
        random(c, Distribution::Normal(0.0, 0.5), device),
        random(c, Distribution::Uniform(0.5, 2.0), device),
    ]
}

fn set_bn(bn: &mut BatchNorm2d, [w, b, m, v]: [Tensor<1>; 4]) {
    bn.weight = Param::from_tensor(w);
    bn.bias = Param::from_tensor(b);
    bn.running_mean = RunningState::new(m);
    bn.running_var = RunningState::new(v);
}

fn set_in(inorm: &mut InstanceNorm2d, [w, b, m, v]: [Tensor<1>; 4]) {
    if inorm.weight.is_some() {
        inorm.weight = Some(Param::from_tensor(w));
        inorm.bias = Some(Param::from_tensor(b));
    }
    if inorm.running_mean.is_some() {
        inorm.running_mean = Some(RunningState::new(m));
        inorm.running_var = Some(RunningState::new(v));
    }
}

/// How a layer runs in [`compare`].
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Plain device, running statistics.
    Eval,
    /// Autodiff device, batch statistics, running-statistics update, gradients.
    Training,
    /// Autodiff device, running statistics (training behaviour off), gradients.
    Frozen,
}

/// Output, input, residual and parameter gradients (autodiff modes) and running statistics of
/// the fused path (the layer's `forward_with` the epilogue `then`) equal the composed path's
/// (the composed layer, then the epilogue by generic operations); `make` builds two identical,
/// independent layers. `then`: `(label, add residual?, relu)`.
fn compare<L: Layer>(
    what: &str,
    make: impl Fn() -> L,
    (x, residual): (&Tensor<4>, &Tensor<4>),
    weights: &Tensor<4>,
    mode: Mode,
    (label, add, relu): (&str, bool, bool),
) {
    let what = format!("{what}, then {label}");
    // Both autodiff modes take gradients.
    let autodiff = mode != Mode::Eval;
    let input = |t: &Tensor<4>| {
        if autodiff {
            t.clone().detach().require_grad()
        } else {
            t.clone()
        }
    };
    let run = |fused: bool| {
        let mut layer = make();
        if mode == Mode::Frozen {
            layer.freeze();
        }
        let x = input(x);
        let residual = add.then(|| input(residual));
        let then = Epilogue {
            residual: residual.clone(),
            relu,
        };
        let params = layer.params();
        let y = if fused {
            layer.fast(x.clone(), then)
        } else {
            then.apply(layer.composed(x.clone()))
        };
        let grads = autodiff.then(|| {
            let g = (y.clone() * weights.clone()).sum().backward();
            let mut d: Vec<Tensor<4>> = vec![x.grad(&g).unwrap()];
            d.extend(residual.map(|r| r.grad(&g).unwrap()));
            let dp: Vec<Tensor<1>> = params.iter().map(|p| p.grad(&g).unwrap()).collect();
            (d, dp)
        });
        (y.detach(), grads, layer.running())
    };
    let (y, grads, running) = run(true);
    let (ry, rgrads, rrunning) = run(false);
    close(&format!("output of {what}"), y, ry);
    if let (Some((d, dp)), Some((rd, rdp))) = (grads, rgrads) {
        for (i, (d, r)) in d.into_iter().zip(rd).enumerate() {
            let of = ["input", "residual"][i];
            close(&format!("{of} gradient of {what}"), d, r);
        }
        for (i, (d, r)) in dp.into_iter().zip(rdp).enumerate() {
            close(&format!("gradient of parameter {i} of {what}"), d, r);
        }
    }
    for (i, (s, r)) in running.into_iter().zip(rrunning).enumerate() {
        close(&format!("running statistic {i} after {what}"), s, r);
    }
}

#[test]
fn normalisation_layers_equal_the_composed_path() {
    for (name, device) in devices() {
        for mode in [Mode::Eval, Mode::Training, Mode::Frozen] {
            let device = if mode == Mode::Eval {
                device.clone()
            } else {
                device.clone().autodiff()
            };
            // Each input with another epilogue (ReLU's kink away from the large planes, where a
            // value within rounding of zero would be likelier).
            let thens = [
                ("add relu", true, true),
                ("relu", false, true),
                ("nothing", false, false),
                ("add", true, false),
            ];
            for ((kind, x), then) in inputs(&device).into_iter().zip(thens) {
                let weights =
                    Tensor::<4>::random(x.dims(), Distribution::Normal(0.0, 1.0), &device);
                let residual =
                    Tensor::<4>::random(x.dims(), Distribution::Normal(0.0, 1.0), &device);
                let x = (&x, &residual);
                let what = |layer: &str| format!("{layer} ({mode:?}, {kind} on {name})");
                // The last cases give the IN section running statistics (not in the released
                // models; used in evaluation like an instance norm's), the very last also
                // freezes the IN section alone (running statistics there, batch statistics
                // in the BN section).
                for (config, in_running, in_frozen) in [
                    (IbnConfig::new(10), false, false),
                    (IbnConfig::new(10).with_ratio(0.7), false, false),
                    (IbnConfig::dense(10), false, false),
                    (IbnConfig::new(10), true, false),
                    (IbnConfig::new(10), true, true),
                ] {
                    let probe = config.init(&device).unwrap();
                    let in_values = values(probe.instance_channels(), &device);
                    let bn_values = values(probe.batch_channels(), &device);
                    let make = || {
                        let mut layer = config.init(&device).unwrap();
                        if in_running {
                            let [_, _, mean, var] = in_values.clone();
                            layer.instance.running_mean = Some(RunningState::new(mean));
                            layer.instance.running_var = Some(RunningState::new(var));
                        }
                        if in_frozen {
                            layer.instance.training = Param::from_bool(false);
                        }
                        set_in(&mut layer.instance, in_values.clone());
                        set_bn(&mut layer.batch, bn_values.clone());
                        layer
                    };
                    let label = format!(
                        "{config:?}, IN running statistics: {in_running}, IN frozen: {in_frozen}"
                    );
                    compare(&what(&label), make, x, &weights, mode, then);
                }
                for (label, config) in [
                    (
                        "instance norm",
                        InstanceNorm2dConfig::new(10).with_affine(true),
                    ),
                    ("plain instance norm", InstanceNorm2dConfig::new(10)),
                    (
                        "instance norm with running statistics",
                        InstanceNorm2dConfig::new(10)
                            .with_affine(true)
                            .with_track_running_stats(true),
                    ),
                ] {
                    let in_values = values(10, &device);
                    let make = || {
                        let mut layer = config.init(&device);
                        set_in(&mut layer, in_values.clone());
                        layer
                    };
                    compare(&what(label), make, x, &weights, mode, then);
                }
                let bn_values = values(10, &device);
                let make = || {
                    let mut layer = BatchNorm2dConfig::new(10).init(&device);
                    set_bn(&mut layer, bn_values.clone());
                    layer
                };
                compare(&what("batch norm"), make, x, &weights, mode, then);
            }
        }
    }
}

/// On CubeCL devices the kernels themselves run (not a default body under kernel fusion).
#[cfg(feature = "wgpu")]
#[test]
fn cube_kernels_are_launched() {
    let device = device_from_name("wgpu").unwrap();
    let x = Tensor::<4>::random([2, 10, 4, 4], Distribution::Default, &device);
    let layer = IbnConfig::new(10).init(&device).unwrap();
    let before = ibn_net::kernel::cube_launches();
    let _ = layer.forward(x.clone()).into_data();
    assert!(
        ibn_net::kernel::cube_launches() > before,
        "forward kernel not launched"
    );

    let device = device.autodiff();
    let layer = IbnConfig::new(10).init(&device).unwrap();
    let x = Tensor::<4>::random([2, 10, 4, 4], Distribution::Default, &device).require_grad();
    let before = ibn_net::kernel::cube_launches();
    let grads = layer.forward(x.clone()).sum().backward();
    let _ = x.grad(&grads).unwrap().into_data();
    // Batch statistics, forward, backward.
    assert!(
        ibn_net::kernel::cube_launches() >= before + 3,
        "training kernels not launched"
    );
}
