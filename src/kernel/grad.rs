//! Hand-written backward passes of the kernels (burn's autodiff backend).

use burn::backend::Backend;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::tensor::FloatTensor;

use super::NormKernels;

/// Backward step of `plane_norm`: parents `[x, scale, shift]`.
#[derive(Debug)]
struct PlaneNormBackward;

impl<B: Backend + NormKernels> Backward<B, 3> for PlaneNormBackward {
    /// `(x, scale, stat_start, stat_end, epsilon)`.
    type State = (NodeId, FloatTensor<B>, usize, usize, f32);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_scale, node_shift] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, scale, start, end, epsilon) = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_state);
        let (dx, dscale, dshift) = B::plane_norm_backward(x, grad, scale, start, end, epsilon);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = node_scale {
            grads.register::<B>(node.id, dscale);
        }
        if let Some(node) = node_shift {
            grads.register::<B>(node.id, dshift);
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

impl<B: Backend + NormKernels, C: CheckpointStrategy> NormKernels for Autodiff<B, C> {
    fn plane_norm(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        stat_start: usize,
        stat_end: usize,
        epsilon: f32,
    ) -> FloatTensor<Self> {
        match PlaneNormBackward
            .prepare::<C>([x.node(), scale.node(), shift.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let scale = scale.into_primitive();
                let output = B::plane_norm(
                    x.into_primitive(),
                    scale.clone(),
                    shift.into_primitive(),
                    stat_start,
                    stat_end,
                    epsilon,
                );
                prep.finish((x_state, scale, stat_start, stat_end, epsilon), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::plane_norm(
                x.into_primitive(),
                scale.into_primitive(),
                shift.into_primitive(),
                stat_start,
                stat_end,
                epsilon,
            )),
        }
    }

    fn plane_norm_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        stat_start: usize,
        stat_end: usize,
        epsilon: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // Second derivatives are not provided: the gradients come out as constants.
        let (dx, dscale, dshift) = B::plane_norm_backward(
            x.into_primitive(),
            grad.into_primitive(),
            scale.into_primitive(),
            stat_start,
            stat_end,
            epsilon,
        );
        (
            FloatTensor::<Self>::new(dx),
            FloatTensor::<Self>::new(dscale),
            FloatTensor::<Self>::new(dshift),
        )
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
