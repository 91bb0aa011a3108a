//! Hand-written backward passes of the kernels (burn's autodiff backend).

use burn::backend::Backend;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::tensor::FloatTensor;

use super::NormKernels;
#[cfg(any(feature = "flex", feature = "ndarray"))]
use super::pool::cpu::PoolKernels;
#[cfg(any(feature = "flex", feature = "ndarray", feature = "wgpu"))]
use {
    super::ConvKernels, burn::backend::TensorMetadata, burn::backend::ops::FloatTensorOps,
    burn::tensor::Shape, burn::tensor::ops::ConvOptions,
};

/// What the backward step of a normalisation pass keeps.
#[derive(Clone, Debug)]
struct NormState<B: Backend> {
    /// The input (checkpointed).
    x: NodeId,
    scale: FloatTensor<B>,
    /// The channels normalised with per-plane statistics.
    stats: (usize, usize),
    epsilon: f32,
    /// The output, when ReLU was applied (its mask).
    output: Option<FloatTensor<B>>,
    /// In training mode (`plane_norm_train`): the batch statistics `[2, C]` and their epsilon.
    batch: Option<(FloatTensor<B>, f32)>,
}

/// The gradients of a normalisation pass: `(dx, dresidual, dscale, dshift)`, where
/// `dresidual` (only with `residual`) is the output gradient after ReLU's mask.
fn norm_grads<B: Backend + NormKernels>(
    state: NormState<B>,
    grad: FloatTensor<B>,
    checkpointer: &mut Checkpointer,
    residual: bool,
) -> [Option<FloatTensor<B>>; 4] {
    let NormState {
        x,
        scale,
        stats: (start, end),
        epsilon,
        output,
        batch,
    } = state;
    let x: FloatTensor<B> = checkpointer.retrieve_node_output(x);
    // The masked gradient is not needed on its own without a residual: the backward passes
    // apply the mask themselves.
    let (output, grad, dresidual) = match output {
        Some(output) if !residual => (Some(output), grad, None),
        output => {
            let grad = match output {
                Some(output) => B::relu_mask(output, grad),
                None => grad,
            };
            let dresidual = residual.then(|| grad.clone());
            (None, grad, dresidual)
        }
    };
    let (dx, dscale, dshift) = match (batch, output) {
        (Some((batch, batch_epsilon)), output) => {
            let relu = output.is_some();
            // Without ReLU the output is not read: the input's handle stands in (not the
            // gradient's, which the backward pass may overwrite when it is its only handle).
            let output = output.unwrap_or_else(|| x.clone());
            let eps = (epsilon, batch_epsilon);
            B::plane_norm_train_backward(
                x, output, grad, scale, batch, start, end, eps.0, eps.1, relu,
            )
        }
        (None, Some(output)) => {
            B::plane_norm_relu_backward(x, output, grad, scale, start, end, epsilon)
        }
        (None, None) => B::plane_norm_backward(x, grad, scale, start, end, epsilon),
    };
    [Some(dx), dresidual, Some(dscale), Some(dshift)]
}

/// Backward step of `plane_norm`: parents `[x, scale, shift]`.
#[derive(Debug)]
struct PlaneNormBackward;

impl<B: Backend + NormKernels> Backward<B, 3> for PlaneNormBackward {
    type State = NormState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_scale, node_shift] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let [dx, _, dscale, dshift] = norm_grads::<B>(ops.state, grad, checkpointer, false);
        for (node, grad) in [(node_x, dx), (node_scale, dscale), (node_shift, dshift)] {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// Backward step of `plane_norm_add`: parents `[x, residual, scale, shift]`.
#[derive(Debug)]
struct PlaneNormAddBackward;

impl<B: Backend + NormKernels> Backward<B, 4> for PlaneNormAddBackward {
    type State = NormState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 4>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let all = norm_grads::<B>(ops.state, grad, checkpointer, true);
        for (node, grad) in ops.parents.into_iter().zip(all) {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// Backward step of `plane_moments`: parent `[x]`.
#[derive(Debug)]
struct PlaneMomentsBackward;

impl<B: Backend + NormKernels> Backward<B, 1> for PlaneMomentsBackward {
    /// `(x, moments, start, end)`.
    type State = (NodeId, FloatTensor<B>, usize, usize);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, moments, start, end) = ops.state;
        if let Some(node) = node_x {
            let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_state);
            let dx = B::plane_moments_backward(x, moments, grad, start, end);
            grads.register::<B>(node.id, dx);
        }
    }
}

/// Gradients `(dx, dscale, dshift)` computed by the inner backend, as untracked tensors of the
/// autodiff backend: second derivatives of the kernels are not provided.
#[allow(clippy::type_complexity)]
fn constants<B: Backend, C: CheckpointStrategy>(
    (dx, dscale, dshift): (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>),
) -> (
    FloatTensor<Autodiff<B, C>>,
    FloatTensor<Autodiff<B, C>>,
    FloatTensor<Autodiff<B, C>>,
) {
    (
        FloatTensor::<Autodiff<B, C>>::new(dx),
        FloatTensor::<Autodiff<B, C>>::new(dscale),
        FloatTensor::<Autodiff<B, C>>::new(dshift),
    )
}

/// A normalisation pass under autodiff: `op` is its backward step over the parents `nodes`,
/// `run` computes the output (and in training mode the batch statistics and their epsilon)
/// from the inner `(x, scale)` (the other inputs captured); `(stat_start, stat_end, epsilon,
/// relu)` as the op's. Keeps what [`norm_grads`] needs when tracked; returns the output and
/// the batch statistics.
#[allow(clippy::type_complexity)]
fn norm_op<B, C, Op, const N: usize>(
    op: Op,
    nodes: [NodeGuard; N],
    x: FloatTensor<Autodiff<B, C>>,
    scale: FloatTensor<Autodiff<B, C>>,
    (start, end, epsilon, relu): (usize, usize, f32, bool),
    run: impl FnOnce(FloatTensor<B>, FloatTensor<B>) -> (FloatTensor<B>, Option<(FloatTensor<B>, f32)>),
) -> (
    FloatTensor<Autodiff<B, C>>,
    Option<FloatTensor<Autodiff<B, C>>>,
)
where
    B: Backend + NormKernels,
    C: CheckpointStrategy,
    Op: Backward<B, N, State = NormState<B>>,
{
    // The batch statistics are for running statistics: constants of the graph.
    let untracked = |batch: &Option<(FloatTensor<B>, f32)>| {
        batch
            .as_ref()
            .map(|(b, _)| FloatTensor::<Autodiff<B, C>>::new(b.clone()))
    };
    match op.prepare::<C>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let x_state = prep.checkpoint(&x);
            let scale = scale.into_primitive();
            let (output, batch) = run(x.into_primitive(), scale.clone());
            let stats = untracked(&batch);
            let state = NormState {
                x: x_state,
                scale,
                stats: (start, end),
                epsilon,
                output: relu.then(|| output.clone()),
                batch,
            };
            (prep.finish(state, output), stats)
        }
        OpsKind::UnTracked(prep) => {
            let (output, batch) = run(x.into_primitive(), scale.into_primitive());
            let stats = untracked(&batch);
            (prep.finish(output), stats)
        }
    }
}

impl<B: Backend + NormKernels, C: CheckpointStrategy> NormKernels for Autodiff<B, C> {
    fn plane_norm(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        stat_start: usize,
        stat_end: usize,
        epsilon: f32,
        relu: bool,
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), scale.node(), shift.node()];
        let shift = shift.into_primitive();
        let args = (stat_start, stat_end, epsilon, relu);
        let run = |x, scale| {
            let out = B::plane_norm(x, scale, shift, stat_start, stat_end, epsilon, relu);
            (out, None)
        };
        norm_op::<B, C, _, 3>(PlaneNormBackward, nodes, x, scale, args, run).0
    }

    fn plane_norm_add(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        stat_start: usize,
        stat_end: usize,
        epsilon: f32,
        relu: bool,
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), residual.node(), scale.node(), shift.node()];
        let (residual, shift) = (residual.into_primitive(), shift.into_primitive());
        let args = (stat_start, stat_end, epsilon, relu);
        let run = |x, scale| {
            let (start, end) = (stat_start, stat_end);
            let out = B::plane_norm_add(x, residual, scale, shift, start, end, epsilon, relu);
            (out, None)
        };
        norm_op::<B, C, _, 4>(PlaneNormAddBackward, nodes, x, scale, args, run).0
    }

    fn plane_norm_train(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        stat_start: usize,
        stat_end: usize,
        epsilon: f32,
        batch_epsilon: f32,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let nodes = [x.node(), scale.node(), shift.node()];
        let shift = shift.into_primitive();
        let args = (stat_start, stat_end, epsilon, relu);
        let run = |x, scale| {
            let (start, end, eps) = (stat_start, stat_end, epsilon);
            let (out, batch) =
                B::plane_norm_train(x, scale, shift, start, end, eps, batch_epsilon, relu);
            (out, Some((batch, batch_epsilon)))
        };
        let (out, batch) = norm_op::<B, C, _, 3>(PlaneNormBackward, nodes, x, scale, args, run);
        (out, batch.expect("training mode returns batch statistics"))
    }

    fn plane_norm_train_add(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        stat_start: usize,
        stat_end: usize,
        epsilon: f32,
        batch_epsilon: f32,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let nodes = [x.node(), residual.node(), scale.node(), shift.node()];
        let (residual, shift) = (residual.into_primitive(), shift.into_primitive());
        let args = (stat_start, stat_end, epsilon, relu);
        let run = |x, scale| {
            let (start, end, eps) = (stat_start, stat_end, (epsilon, batch_epsilon));
            let (out, batch) =
                B::plane_norm_train_add(x, residual, scale, shift, start, end, eps.0, eps.1, relu);
            (out, Some((batch, batch_epsilon)))
        };
        let op = PlaneNormAddBackward;
        let (out, batch) = norm_op::<B, C, _, 4>(op, nodes, x, scale, args, run);
        (out, batch.expect("training mode returns batch statistics"))
    }

    fn plane_norm_train_backward(
        x: FloatTensor<Self>,
        output: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        batch: FloatTensor<Self>,
        stat_start: usize,
        stat_end: usize,
        epsilon: f32,
        batch_epsilon: f32,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        constants::<B, C>(B::plane_norm_train_backward(
            x.into_primitive(),
            output.into_primitive(),
            grad.into_primitive(),
            scale.into_primitive(),
            batch.into_primitive(),
            stat_start,
            stat_end,
            epsilon,
            batch_epsilon,
            relu,
        ))
    }

    fn plane_norm_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        stat_start: usize,
        stat_end: usize,
        epsilon: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        constants::<B, C>(B::plane_norm_backward(
            x.into_primitive(),
            grad.into_primitive(),
            scale.into_primitive(),
            stat_start,
            stat_end,
            epsilon,
        ))
    }

    fn plane_norm_relu_backward(
        x: FloatTensor<Self>,
        output: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        stat_start: usize,
        stat_end: usize,
        epsilon: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        constants::<B, C>(B::plane_norm_relu_backward(
            x.into_primitive(),
            output.into_primitive(),
            grad.into_primitive(),
            scale.into_primitive(),
            stat_start,
            stat_end,
            epsilon,
        ))
    }

    fn relu_mask(output: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        // Second derivatives are not provided: the gradient comes out as a constant.
        FloatTensor::<Self>::new(B::relu_mask(output.into_primitive(), grad.into_primitive()))
    }

    fn plane_moments(x: FloatTensor<Self>, start: usize, end: usize) -> FloatTensor<Self> {
        match PlaneMomentsBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let moments = B::plane_moments(x.into_primitive(), start, end);
                prep.finish((x_state, moments.clone(), start, end), moments)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::plane_moments(x.into_primitive(), start, end))
            }
        }
    }

    fn plane_moments_backward(
        x: FloatTensor<Self>,
        moments: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        start: usize,
        end: usize,
    ) -> FloatTensor<Self> {
        // Second derivatives are not provided: the gradient comes out as a constant.
        FloatTensor::<Self>::new(B::plane_moments_backward(
            x.into_primitive(),
            moments.into_primitive(),
            grad.into_primitive(),
            start,
            end,
        ))
    }
}

/// Backward step of the convolution kernels (CPU and CubeCL): parents `[x, weight]`.
#[cfg(any(feature = "flex", feature = "ndarray", feature = "wgpu"))]
#[derive(Debug)]
struct ConvBackward;

#[cfg(any(feature = "flex", feature = "ndarray", feature = "wgpu"))]
impl<B: Backend + ConvKernels> Backward<B, 2> for ConvBackward {
    /// `(x, weight, options)`.
    type State = (NodeId, NodeId, ConvOptions<2>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, weight_state, options) = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_state);
        let weight: FloatTensor<B> = checkpointer.retrieve_node_output(weight_state);
        let (dx, dweight) = B::conv2d_unfold_backward(x, weight, grad, options);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = node_weight {
            grads.register::<B>(node.id, dweight);
        }
    }
}

#[cfg(any(feature = "flex", feature = "ndarray", feature = "wgpu"))]
impl<B: Backend + ConvKernels, C: CheckpointStrategy> ConvKernels for Autodiff<B, C> {
    fn conv2d_unfold(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        with_bias: bool,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        // The kernel leaves the bias to autodiff's broadcasting addition (below), which owns
        // its gradient; it gets the tensor as an unread stand-in.
        let stand_in = bias.clone().into_primitive();
        let out = match ConvBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                let output = B::conv2d_unfold(
                    x.into_primitive(),
                    weight.into_primitive(),
                    stand_in,
                    false,
                    options.clone(),
                );
                prep.finish((x_state, weight_state, options), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv2d_unfold(
                x.into_primitive(),
                weight.into_primitive(),
                stand_in,
                false,
                options,
            )),
        };
        if !with_bias {
            return out;
        }
        let c = bias.shape()[0];
        Self::float_add(out, Self::float_reshape(bias, Shape::new([1, c, 1, 1])))
    }

    fn conv2d_unfold_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        // Second derivatives are not provided: the gradients come out as constants.
        let (dx, dweight) = B::conv2d_unfold_backward(
            x.into_primitive(),
            weight.into_primitive(),
            grad.into_primitive(),
            options,
        );
        (
            FloatTensor::<Self>::new(dx),
            FloatTensor::<Self>::new(dweight),
        )
    }
}

/// Backward step of the CPU max pooling kernel: parent `[x]`.
#[cfg(any(feature = "flex", feature = "ndarray"))]
#[derive(Debug)]
struct MaxPoolBackward;

/// A max pooling's window: `[kernel, stride, padding, dilation]`, per axis, and whether its
/// output size is rounded up.
#[cfg(any(feature = "flex", feature = "ndarray"))]
type PoolWindow = ([[usize; 2]; 4], bool);

#[cfg(any(feature = "flex", feature = "ndarray"))]
impl<B: Backend + PoolKernels> Backward<B, 1> for MaxPoolBackward {
    /// `(x, output, window)`.
    type State = (NodeId, FloatTensor<B>, PoolWindow);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, output, ([k, s, p, d], ceil)) = ops.state;
        if let Some(node) = node_x {
            let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_state);
            let dx = B::max_pool2d_planes_backward(x, output, grad, k, s, p, d, ceil);
            grads.register::<B>(node.id, dx);
        }
    }
}

#[cfg(any(feature = "flex", feature = "ndarray"))]
impl<B: Backend + PoolKernels, C: CheckpointStrategy> PoolKernels for Autodiff<B, C> {
    fn max_pool2d_planes(
        x: FloatTensor<Self>,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        ceil: bool,
    ) -> FloatTensor<Self> {
        let pool = |x| B::max_pool2d_planes(x, kernel, stride, padding, dilation, ceil);
        match MaxPoolBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let output = pool(x.into_primitive());
                let window = ([kernel, stride, padding, dilation], ceil);
                prep.finish((x_state, output.clone(), window), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(pool(x.into_primitive())),
        }
    }

    fn max_pool2d_planes_backward(
        x: FloatTensor<Self>,
        output: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        ceil: bool,
    ) -> FloatTensor<Self> {
        // Second derivatives are not provided: the gradient comes out as a constant.
        FloatTensor::<Self>::new(B::max_pool2d_planes_backward(
            x.into_primitive(),
            output.into_primitive(),
            grad.into_primitive(),
            kernel,
            stride,
            padding,
            dilation,
            ceil,
        ))
    }
}
