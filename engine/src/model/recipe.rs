//! The one description of a flow block's network: the order of its steps, written once and run
//! by every backend that executes a block.
//!
//! A flow block predicts each token's affine transform from the tokens before it (DESIGN.md
//! section 3). Its network is: [`embed`](Kernels::embed) the tokens (`proj_in`, position and
//! class embeddings) into the residual stream `h`; for each attention layer, the eight
//! [`LAYER`] steps (pre-norm attention, then pre-norm MLP, each added to `h`); and
//! [`proj_out`](Kernels::proj_out). [`transformer`] runs that order forward on any [`Kernels`],
//! [`transformer_backward`] runs the same list in reverse on any [`GradKernels`]. The backends:
//!
//! - candle tensors, full sequence under a causal mask (`model/meta_block.rs`): training by
//!   autograd on any device, `Model::forward`, the guided encoder;
//! - candle tensors with a KV cache (`sample/ops.rs`): sampling on CUDA/Metal;
//! - fused host kernels with a KV cache (`sample/fused.rs`): sampling on the CPU;
//! - host buffers with saved activations, forward and backward (`model/host_grad/block.rs`):
//!   training and denoising on the CPU.
//!
//! A change to the network's structure is made here; a new kind of step is a new [`Step`]
//! variant, and every backend's exhaustive `match` then fails to compile until it has the kernel
//! (forward and, for the host pass, backward). The tests that hold the backends together:
//! `tests/sampler_backends.rs` (every sampling backend and the forward pass on random models),
//! `host_grad`'s property tests (the host pass against autograd), the golden suites (PyTorch).

use crate::error::Result;

/// Which half of an attention layer a LayerNorm belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sublayer {
    /// The attention's pre-norm (`attention.norm`).
    Attention,
    /// The MLP's pre-norm (`mlp.norm`).
    Mlp,
}

/// One step of an attention layer, on the residual stream `h` (tokens x C) and the layer's
/// temporaries: `a` (normed, C), `qkv` (3C), `y` (attention output, C), `f` and `g` (MLP
/// hidden, 4C).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// `a = LayerNorm(h)` (eps 1e-5, affine) with the sublayer's parameters.
    Norm(Sublayer),
    /// `qkv = a W^T + b` (`attention.qkv`): all query heads, then all key heads, then all value
    /// heads, 64 values each.
    Qkv,
    /// `y = softmax(q k^T / 8 + causal mask) v` per head, heads merged; a sampler may scale the
    /// queries further per row (guidance's attention temperature).
    Attend,
    /// `h += y W^T + b` (`attention.proj`).
    AddProj,
    /// `f = a W^T + b` (`mlp.main.0`, C to 4C).
    Fc1,
    /// `g = gelu(f)`, the erf form.
    Gelu,
    /// `h += g W^T + b` (`mlp.main.2`, 4C to C).
    AddFc2,
}

/// The steps of one attention layer, in order: `h + Attn(LN(h))`, then `h + MLP(LN(h))`.
pub(crate) const LAYER: [Step; 8] = [
    Step::Norm(Sublayer::Attention),
    Step::Qkv,
    Step::Attend,
    Step::AddProj,
    Step::Norm(Sublayer::Mlp),
    Step::Fc1,
    Step::Gelu,
    Step::AddFc2,
];

/// A value inside one attention layer, as its steps hand it on. The backends keep some of them
/// in one buffer (the host kernels normalise both sublayers into the same scratch), so a step
/// can only read a value while its [`slot`](Value::slot) still holds it: [`dataflow_holds`]
/// checks that for an order of steps, and [`LAYER`] is checked at compile time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Value {
    /// The residual stream `h` (read and updated in place).
    Stream,
    /// `a` normed for the attention.
    AttnIn,
    /// `a` normed for the MLP.
    MlpIn,
    /// `qkv`.
    Qkv,
    /// `y`, the attention's output.
    Attended,
    /// `f`, fc1's output.
    Hidden,
    /// `g = gelu(f)`.
    Activated,
}

impl Value {
    /// The buffer the backends keep the value in: the two normed inputs share one.
    pub(crate) const fn slot(self) -> usize {
        match self {
            Self::Stream => 0,
            Self::AttnIn | Self::MlpIn => 1,
            Self::Qkv => 2,
            Self::Attended => 3,
            Self::Hidden => 4,
            Self::Activated => 5,
        }
    }
}

impl Step {
    /// The values the step reads.
    pub(crate) const fn reads(self) -> &'static [Value] {
        match self {
            Self::Norm(_) => &[Value::Stream],
            Self::Qkv => &[Value::AttnIn],
            Self::Attend => &[Value::Qkv],
            Self::AddProj => &[Value::Stream, Value::Attended],
            Self::Fc1 => &[Value::MlpIn],
            Self::Gelu => &[Value::Hidden],
            Self::AddFc2 => &[Value::Stream, Value::Activated],
        }
    }

    /// The value the step writes.
    pub(crate) const fn writes(self) -> Value {
        match self {
            Self::Norm(Sublayer::Attention) => Value::AttnIn,
            Self::Norm(Sublayer::Mlp) => Value::MlpIn,
            Self::Qkv => Value::Qkv,
            Self::Attend => Value::Attended,
            Self::AddProj | Self::AddFc2 => Value::Stream,
            Self::Fc1 => Value::Hidden,
            Self::Gelu => Value::Activated,
        }
    }
}

/// Whether `steps`, run in order from the residual stream, read every value while its slot
/// still holds it (never before it is written, never after another value took its buffer), and
/// use every value they compute. The host pass's forward and backward hand values between
/// steps through such shared buffers, so an order this refuses would compile and compute wrong
/// values or gradients; [`LAYER`] is checked at compile time.
pub(crate) const fn dataflow_holds(steps: &[Step]) -> bool {
    // The value each slot holds (`None`: nothing yet); slot 0, the stream, is always there.
    let mut held: [Option<Value>; 6] = [Some(Value::Stream), None, None, None, None, None];
    let mut read = [false; 7];
    let mut i = 0;
    while i < steps.len() {
        let reads = steps[i].reads();
        let mut r = 0;
        while r < reads.len() {
            let v = reads[r];
            match held[v.slot()] {
                Some(h) if h as u8 == v as u8 => read[v as usize] = true,
                _ => return false,
            }
            r += 1;
        }
        let w = steps[i].writes();
        held[w.slot()] = Some(w);
        i += 1;
    }
    // Every intermediate value computed is read by a later step.
    let mut v = 1;
    while v < read.len() {
        let mut written = false;
        let mut i = 0;
        while i < steps.len() {
            if steps[i].writes() as usize == v {
                written = true;
            }
            i += 1;
        }
        if written && !read[v] {
            return false;
        }
        v += 1;
    }
    true
}

const _: () = assert!(
    dataflow_holds(&LAYER),
    "LAYER reads a value after its buffer was reused, or before it is computed"
);

/// A backend's forward kernels for one pass of a block's network.
pub(crate) trait Kernels {
    /// Attention layers of the block.
    fn layers(&self) -> usize;
    /// `h = x W_in^T + b + pos + class`: the tokens into the residual stream (`proj_in`,
    /// `pos_embed` in the block's order, the class row or the classes' mean).
    fn embed(&mut self) -> Result<()>;
    /// One step of layer `l`.
    fn step(&mut self, l: usize, step: Step) -> Result<()>;
    /// `o = h W_out^T + b` (`proj_out`): per token, the log-scale and shift (nvp) or the shift
    /// of the *next* token.
    fn proj_out(&mut self) -> Result<()>;
}

/// A backend's backward kernels, run in the reverse order of [`Kernels`]: each takes the
/// gradient of its step's output and gives that of its input (and its parameters' gradients
/// when asked); the residual steps pass `dh` through and add to it.
pub(crate) trait GradKernels {
    /// Attention layers of the block.
    fn layers(&self) -> usize;
    /// Backward of [`Kernels::proj_out`]: `dh` from `do`.
    fn proj_out(&mut self) -> Result<()>;
    /// Backward of one step of layer `l`.
    fn step(&mut self, l: usize, step: Step) -> Result<()>;
    /// Backward of [`Kernels::embed`]: the embeddings' and `proj_in`'s gradients, `dx`.
    fn embed(&mut self) -> Result<()>;
}

/// The block's network forward: embed, every layer's [`LAYER`] steps, `proj_out`.
pub(crate) fn transformer(k: &mut impl Kernels) -> Result<()> {
    k.embed()?;
    for l in 0..k.layers() {
        for step in LAYER {
            k.step(l, step)?;
        }
    }
    k.proj_out()
}

/// The block's network backward: [`transformer`]'s steps in reverse.
pub(crate) fn transformer_backward(k: &mut impl GradKernels) -> Result<()> {
    k.proj_out()?;
    for l in (0..k.layers()).rev() {
        for step in LAYER.into_iter().rev() {
            k.step(l, step)?;
        }
    }
    k.embed()
}

/// The affine coupling a block applies to each value with its token's prediction `(alpha, mu)`:
/// data to noise `z = (x - mu) exp(-alpha)`, whose log-determinant is `-alpha` per value, and
/// noise to data `x = z exp(alpha) + mu`. Without `nvp` there is no `alpha` (a shift only).
/// Written once here for the tensor paths (the forward pass, the guided encoder, the device
/// sampler) and the host paths (the CPU sampler, the host pass); the host pass's backward
/// (`host_grad/block.rs`) holds its derivative.
pub(crate) mod coupling {
    use candle_core::Tensor;

    use crate::error::Result;

    /// `exp(-alpha)`: what the forward multiplies `x - mu` by (its log is the log-determinant).
    pub(crate) fn inv_scale(alpha: f32) -> f32 {
        (-alpha).exp()
    }

    /// Noise to data for one value: `z exp(alpha) + mu`, or `z + mu` without `alpha`.
    pub(crate) fn inverse(z: f32, alpha: Option<f32>, mu: f32) -> f32 {
        match alpha {
            Some(a) => z * a.exp() + mu,
            None => z + mu,
        }
    }

    /// Data to noise on tensors: `(x - mu) exp(-alpha)`.
    pub(crate) fn forward_t(x: &Tensor, alpha: &Tensor, mu: &Tensor) -> Result<Tensor> {
        Ok((x - mu)?.mul(&alpha.neg()?.exp()?)?)
    }

    /// Noise to data on tensors: `z exp(alpha) + mu`, or `z + mu` without `alpha`.
    pub(crate) fn inverse_t(z: &Tensor, alpha: Option<&Tensor>, mu: &Tensor) -> Result<Tensor> {
        Ok(match alpha {
            Some(a) => z.mul(&a.exp()?)?.add(mu)?,
            None => z.add(mu)?,
        })
    }
}

/// STARFlow's soft clip of `proj_out`'s output, `c tanh(o / c)` (`MetaBlock.get_proj_out`),
/// on every value (log-scales and shifts) before the one-token shift; `c = 0` is off (the
/// reference). It bounds the predicted log-scales, so no step can blow a value up. Written once
/// for the tensor paths and the host paths; the host pass's backward reads [`derivative`].
pub(crate) mod soft_clip {
    use candle_core::Tensor;

    use crate::error::Result;

    /// In place on host values.
    pub(crate) fn apply(o: &mut [f32], c: f32) {
        if c > 0.0 {
            o.iter_mut().for_each(|v| *v = c * (*v / c).tanh());
        }
    }

    /// On a tensor.
    pub(crate) fn apply_t(o: Tensor, c: f32) -> Result<Tensor> {
        if c > 0.0 {
            Ok(((o / f64::from(c))?.tanh()? * f64::from(c))?)
        } else {
            Ok(o)
        }
    }

    /// `d clipped / d o` from the clipped value `y = c tanh(o / c)`: `1 - (y / c)^2`.
    pub(crate) fn derivative(y: f32, c: f32) -> f32 {
        let t = y / c;
        1.0 - t * t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_clip_bounds_and_its_derivative_matches_finite_differences() {
        let c = 4.0f32;
        let mut v = vec![-100.0f32, -3.0, 0.0, 0.5, 3.0, 100.0];
        let raw = v.clone();
        soft_clip::apply(&mut v, c);
        assert!(v.iter().all(|x| x.abs() <= c));
        assert_eq!(v[2], 0.0);
        for (&o, &y) in raw.iter().zip(&v).filter(|(o, _)| o.abs() < 10.0) {
            let h = 1e-3f32;
            let f = |x: f32| c * (x / c).tanh();
            let fd = (f(o + h) - f(o - h)) / (2.0 * h);
            assert!((fd - soft_clip::derivative(y, c)).abs() < 1e-3, "{o}: {fd}");
        }
        let mut off = raw.clone();
        soft_clip::apply(&mut off, 0.0);
        assert_eq!(off, raw);
    }

    /// Records the calls a pass makes.
    #[derive(Default)]
    struct Trace {
        layers: usize,
        calls: Vec<String>,
    }

    impl Kernels for Trace {
        fn layers(&self) -> usize {
            self.layers
        }
        fn embed(&mut self) -> Result<()> {
            self.calls.push("embed".into());
            Ok(())
        }
        fn step(&mut self, l: usize, step: Step) -> Result<()> {
            self.calls.push(format!("{l}:{step:?}"));
            Ok(())
        }
        fn proj_out(&mut self) -> Result<()> {
            self.calls.push("proj_out".into());
            Ok(())
        }
    }

    impl GradKernels for Trace {
        fn layers(&self) -> usize {
            self.layers
        }
        fn proj_out(&mut self) -> Result<()> {
            self.calls.push("proj_out".into());
            Ok(())
        }
        fn step(&mut self, l: usize, step: Step) -> Result<()> {
            self.calls.push(format!("{l}:{step:?}"));
            Ok(())
        }
        fn embed(&mut self) -> Result<()> {
            self.calls.push("embed".into());
            Ok(())
        }
    }

    /// The reference's order (`AttentionBlock.forward`: `x + attention(norm1(x))`, then
    /// `x + mlp(norm2(x))`), and the backward visits exactly the forward's calls, reversed.
    #[test]
    fn orders_that_would_hand_on_the_wrong_buffer_are_refused() {
        assert!(dataflow_holds(&LAYER));
        let swap = |i: usize, j: usize| {
            let mut l = LAYER;
            l.swap(i, j);
            l
        };
        // Qkv before its norm; GELU before fc1; the attention's output added before it exists.
        for (i, j) in [(0, 1), (5, 6), (2, 3)] {
            assert!(!dataflow_holds(&swap(i, j)), "steps {i} and {j} swapped");
        }
        // The MLP's norm moved up: it overwrites the normed input Qkv then reads (one buffer).
        let mut early = LAYER.to_vec();
        let norm = early.remove(4);
        early.insert(1, norm);
        assert!(!dataflow_holds(&early));
        // A step dropped: GELU's input is computed and never used, fc2 reads nothing.
        let mut dropped = LAYER.to_vec();
        dropped.remove(6);
        assert!(!dataflow_holds(&dropped));
        // A value computed and not used.
        assert!(!dataflow_holds(&[Step::Norm(Sublayer::Attention)]));
        // Attention and MLP are independent sublayers: the MLP first is a valid order.
        let mlp_first = [
            LAYER[4], LAYER[5], LAYER[6], LAYER[7], LAYER[0], LAYER[1], LAYER[2], LAYER[3],
        ];
        assert!(dataflow_holds(&mlp_first));
    }

    #[test]
    fn the_backward_is_the_forward_reversed() {
        let mut fwd = Trace {
            layers: 2,
            ..Trace::default()
        };
        transformer(&mut fwd).unwrap();
        assert_eq!(fwd.calls.len(), 2 + 2 * LAYER.len());
        assert_eq!(fwd.calls[0], "embed");
        assert_eq!(fwd.calls[1], "0:Norm(Attention)");
        assert_eq!(fwd.calls[4], "0:AddProj");
        assert_eq!(fwd.calls[5], "0:Norm(Mlp)");
        assert_eq!(fwd.calls[8], "0:AddFc2");
        assert_eq!(fwd.calls[9], "1:Norm(Attention)");
        assert_eq!(fwd.calls.last().map(String::as_str), Some("proj_out"));
        let mut bwd = Trace {
            layers: 2,
            ..Trace::default()
        };
        transformer_backward(&mut bwd).unwrap();
        let mut reversed = fwd.calls.clone();
        reversed.reverse();
        assert_eq!(bwd.calls, reversed);
    }
}
