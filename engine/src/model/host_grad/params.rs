//! The flow's parameters as the host path sees them: one generic layout ([`BlockParams`]) for the
//! model's weight tensors, the borrowed weight slices a pass reads and the gradient buffers it
//! writes, visited in one fixed order under the checkpoint's tensor names.

use candle_core::{Storage, Tensor};

use crate::error::{Error, Result};
use crate::model::Model;
use crate::model::names::{LayerNames, ModelNames};

/// One attention layer's twelve tensors.
#[derive(Debug, Clone)]
pub(super) struct LayerParams<T> {
    pub(super) attn_norm_w: T,
    pub(super) attn_norm_b: T,
    pub(super) qkv_w: T,
    pub(super) qkv_b: T,
    pub(super) proj_w: T,
    pub(super) proj_b: T,
    pub(super) mlp_norm_w: T,
    pub(super) mlp_norm_b: T,
    pub(super) fc1_w: T,
    pub(super) fc1_b: T,
    pub(super) fc2_w: T,
    pub(super) fc2_b: T,
}

/// A noise-conditional block's time-embedding MLP (`time_embed.mlp.{0,2}`).
#[derive(Debug, Clone)]
pub(super) struct TimeParams<T> {
    pub(super) fc1_w: T,
    pub(super) fc1_b: T,
    pub(super) fc2_w: T,
    pub(super) fc2_b: T,
}

/// One flow block's tensors. `class_embed` is (K, C) here (the checkpoint's (K, 1, C) squeezed).
#[derive(Debug, Clone)]
pub(super) struct BlockParams<T> {
    pub(super) proj_in_w: T,
    pub(super) proj_in_b: T,
    pub(super) pos_embed: T,
    pub(super) class_embed: Option<T>,
    pub(super) layers: Vec<LayerParams<T>>,
    pub(super) proj_out_w: T,
    pub(super) proj_out_b: T,
    pub(super) time: Option<TimeParams<T>>,
}

impl<T> LayerParams<T> {
    /// The same layout, borrowing each field.
    pub(super) fn as_ref(&self) -> LayerParams<&T> {
        LayerParams {
            attn_norm_w: &self.attn_norm_w,
            attn_norm_b: &self.attn_norm_b,
            qkv_w: &self.qkv_w,
            qkv_b: &self.qkv_b,
            proj_w: &self.proj_w,
            proj_b: &self.proj_b,
            mlp_norm_w: &self.mlp_norm_w,
            mlp_norm_b: &self.mlp_norm_b,
            fc1_w: &self.fc1_w,
            fc1_b: &self.fc1_b,
            fc2_w: &self.fc2_w,
            fc2_b: &self.fc2_b,
        }
    }

    /// Map every field, in the one fixed order, with its checkpoint name from `names`.
    fn into_map<U>(
        self,
        names: &LayerNames,
        f: &mut impl FnMut(String, T) -> Result<U>,
    ) -> Result<LayerParams<U>> {
        let mut g = |name: &String, t: T| f(name.clone(), t);
        let (a, m) = (&names.attention, &names.mlp);
        Ok(LayerParams {
            attn_norm_w: g(&a.norm.weight, self.attn_norm_w)?,
            attn_norm_b: g(&a.norm.bias, self.attn_norm_b)?,
            qkv_w: g(&a.qkv.weight, self.qkv_w)?,
            qkv_b: g(&a.qkv.bias, self.qkv_b)?,
            proj_w: g(&a.proj.weight, self.proj_w)?,
            proj_b: g(&a.proj.bias, self.proj_b)?,
            mlp_norm_w: g(&m.norm.weight, self.mlp_norm_w)?,
            mlp_norm_b: g(&m.norm.bias, self.mlp_norm_b)?,
            fc1_w: g(&m.fc1.weight, self.fc1_w)?,
            fc1_b: g(&m.fc1.bias, self.fc1_b)?,
            fc2_w: g(&m.fc2.weight, self.fc2_w)?,
            fc2_b: g(&m.fc2.bias, self.fc2_b)?,
        })
    }
}

impl<T> BlockParams<T> {
    /// The same layout, borrowing each field.
    pub(super) fn as_ref(&self) -> BlockParams<&T> {
        BlockParams {
            proj_in_w: &self.proj_in_w,
            proj_in_b: &self.proj_in_b,
            pos_embed: &self.pos_embed,
            class_embed: self.class_embed.as_ref(),
            layers: self.layers.iter().map(LayerParams::as_ref).collect(),
            proj_out_w: &self.proj_out_w,
            proj_out_b: &self.proj_out_b,
            time: self.time.as_ref().map(|t| TimeParams {
                fc1_w: &t.fc1_w,
                fc1_b: &t.fc1_b,
                fc2_w: &t.fc2_w,
                fc2_b: &t.fc2_b,
            }),
        }
    }

    /// Map every field of block `t`, in the one fixed order, with its checkpoint name (from
    /// [`ModelNames`], like every other reader and writer of the weights).
    pub(super) fn into_map<U>(
        self,
        t: usize,
        f: &mut impl FnMut(String, T) -> Result<U>,
    ) -> Result<BlockParams<U>> {
        let b = ModelNames::new().block(t);
        Ok(BlockParams {
            proj_in_w: f(b.proj_in.weight.clone(), self.proj_in_w)?,
            proj_in_b: f(b.proj_in.bias.clone(), self.proj_in_b)?,
            pos_embed: f(b.pos_embed.clone(), self.pos_embed)?,
            class_embed: match self.class_embed {
                Some(c) => Some(f(b.class_embed.clone(), c)?),
                None => None,
            },
            layers: self
                .layers
                .into_iter()
                .enumerate()
                .map(|(l, layer)| layer.into_map(&b.layer(l), f))
                .collect::<Result<_>>()?,
            proj_out_w: f(b.proj_out.weight.clone(), self.proj_out_w)?,
            proj_out_b: f(b.proj_out.bias.clone(), self.proj_out_b)?,
            time: match self.time {
                Some(t) => Some(TimeParams {
                    fc1_w: f(b.time_fc1.weight.clone(), t.fc1_w)?,
                    fc1_b: f(b.time_fc1.bias.clone(), t.fc1_b)?,
                    fc2_w: f(b.time_fc2.weight.clone(), t.fc2_w)?,
                    fc2_b: f(b.time_fc2.bias.clone(), t.fc2_b)?,
                }),
                None => None,
            },
        })
    }
}

/// The model's parameter tensors (clones sharing the model's storage: a trainer's in-place
/// updates of its `Var`s are seen without copying), made contiguous.
pub(super) fn tensors_of(model: &Model) -> Result<Vec<BlockParams<Tensor>>> {
    let c = |t: &Tensor| -> Result<Tensor> { Ok(t.contiguous()?) };
    model
        .blocks()
        .iter()
        .map(|blk| {
            let layers = blk
                .layers
                .iter()
                .map(|l| {
                    let (a, m) = (&l.attention, &l.mlp);
                    Ok(LayerParams {
                        attn_norm_w: c(&a.norm.weight)?,
                        attn_norm_b: c(&a.norm.bias)?,
                        qkv_w: c(&a.qkv.weight)?,
                        qkv_b: c(&a.qkv.bias)?,
                        proj_w: c(&a.proj.weight)?,
                        proj_b: c(&a.proj.bias)?,
                        mlp_norm_w: c(&m.norm.weight)?,
                        mlp_norm_b: c(&m.norm.bias)?,
                        fc1_w: c(&m.fc1.weight)?,
                        fc1_b: c(&m.fc1.bias)?,
                        fc2_w: c(&m.fc2.weight)?,
                        fc2_b: c(&m.fc2.bias)?,
                    })
                })
                .collect::<Result<_>>()?;
            Ok(BlockParams {
                proj_in_w: c(&blk.proj_in.weight)?,
                proj_in_b: c(&blk.proj_in.bias)?,
                pos_embed: c(&blk.pos_embed)?,
                class_embed: blk.class_embed.as_ref().map(c).transpose()?,
                layers,
                proj_out_w: c(&blk.proj_out.weight)?,
                proj_out_b: c(&blk.proj_out.bias)?,
                time: match &blk.time_embed {
                    Some(te) => Some(TimeParams {
                        fc1_w: c(&te.fc1.weight)?,
                        fc1_b: c(&te.fc1.bias)?,
                        fc2_w: c(&te.fc2.weight)?,
                        fc2_b: c(&te.fc2.bias)?,
                    }),
                    None => None,
                },
            })
        })
        .collect()
}

/// Run `f` on host slices of every tensor of `params`, borrowed from the tensors' storage (read
/// locks held for the call; nothing is copied).
pub(super) fn with_slices<R>(
    params: &[BlockParams<Tensor>],
    f: impl FnOnce(&[BlockParams<&[f32]>]) -> Result<R>,
) -> Result<R> {
    let mut tensors: Vec<(String, &Tensor)> = Vec::new();
    for (t, blk) in params.iter().enumerate() {
        blk.as_ref().into_map(t, &mut |name, tensor| {
            tensors.push((name, tensor));
            Ok(())
        })?;
    }
    let guards: Vec<_> = tensors
        .iter()
        .map(|(_, t)| t.storage_and_layout())
        .collect();
    let mut slices = Vec::with_capacity(guards.len());
    for ((name, _), (storage, layout)) in tensors.iter().zip(&guards) {
        let Storage::Cpu(candle_core::CpuStorage::F32(v)) = &**storage else {
            return Err(Error::InvalidInput(format!(
                "the host gradient path needs f32 weights on the CPU; `{name}` is not"
            )));
        };
        let Some((a, b)) = layout.contiguous_offsets() else {
            return Err(Error::InvalidInput(format!(
                "the host gradient path needs contiguous weights; `{name}` is not"
            )));
        };
        slices.push(&v[a..b]);
    }
    let mut it = slices.into_iter();
    let views = params
        .iter()
        .enumerate()
        .map(|(t, blk)| {
            blk.as_ref().into_map(t, &mut |name, _| {
                it.next().ok_or_else(|| {
                    Error::InvalidInput(format!("no host slice for `{name}` (internal error)"))
                })
            })
        })
        .collect::<Result<Vec<_>>>()?;
    f(&views)
}
