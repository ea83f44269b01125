//! [`Model`]: the whole TarFlow normalizing flow (the reference's `Model`): patchify, the flow
//! blocks, the learned prior variance, the loss and bits per dimension.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};

use super::attention::{Attention, AttentionBlock, Mlp};
use super::denoiser::{Denoiser, supports_denoiser};
use super::layers::{Exec, LayerNorm, Linear};
use super::meta_block::{MetaBlock, Permutation, causal_mask};
use super::names::{LayerNames, ModelNames, TensorKind, TensorSpec, WeightBias};
use super::patchify::{patchify, unpatchify};
use super::time_embed::TimeEmbed;
use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// Named tensors as in the reference's state_dict, ordered by name.
pub type Weights = BTreeMap<String, Tensor>;

/// Result of a forward (data to noise) pass.
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// The latent: output of the last block, (B, N, D).
    pub z: Tensor,
    /// Output of every block, in block order, each (B, N, D).
    pub blocks: Vec<Tensor>,
    /// Summed log-determinants per item, (B,), per dimension (each block's is `-mean(alpha)`).
    pub logdets: Tensor,
}

/// A TarFlow model with its weights on one device.
#[derive(Debug, Clone)]
pub struct Model {
    config: ModelConfig,
    pub(crate) blocks: Vec<MetaBlock>,
    /// The prior's per-position variance (N, D); all ones unless trained with `update_prior`.
    pub(crate) var: Tensor,
    /// The learned denoiser, when the file carries one ([`ModelConfig::denoiser`]).
    pub(crate) denoiser: Option<Denoiser>,
    device: Device,
}

impl Model {
    /// Build a model from reference-named weights, checking every name and shape against the
    /// config first. Weights are converted to f32 and moved to `device`.
    ///
    /// Errors name the first missing tensor, a tensor of the wrong shape (with expected and found
    /// shapes), tensors the config does not account for, or non-finite values.
    pub fn from_weights(config: ModelConfig, weights: &Weights, device: &Device) -> Result<Self> {
        config.validate()?;
        check_weights(&config, weights)?;
        let get = |name: &str| -> Result<Tensor> {
            let t = &weights[name];
            Ok(t.to_dtype(DType::F32)?.to_device(device)?)
        };
        let linear =
            |p: &WeightBias| -> Result<Linear> { Ok(Linear::new(get(&p.weight)?, get(&p.bias)?)) };
        let norm = |p: &WeightBias| -> Result<LayerNorm> {
            Ok(LayerNorm::new(get(&p.weight)?, get(&p.bias)?))
        };
        let layer = |a: &LayerNames, num_heads: usize| -> Result<AttentionBlock> {
            Ok(AttentionBlock {
                attention: Attention {
                    norm: norm(&a.attention.norm)?,
                    qkv: linear(&a.attention.qkv)?,
                    proj: linear(&a.attention.proj)?,
                    num_heads,
                },
                mlp: Mlp {
                    norm: norm(&a.mlp.norm)?,
                    fc1: linear(&a.mlp.fc1)?,
                    fc2: linear(&a.mlp.fc2)?,
                },
            })
        };
        let names = ModelNames::new();
        let n = config.num_patches();
        let mask = causal_mask(n, device)?;
        let mut blocks = Vec::with_capacity(config.num_blocks);
        for t in 0..config.num_blocks {
            let b = names.block(t);
            let mut layers = Vec::with_capacity(config.layers_of_block(t));
            for l in 0..config.layers_of_block(t) {
                layers.push(layer(&b.layer(l), config.num_heads())?);
            }
            let time_embed = match config.noise_range {
                Some(_) => Some(TimeEmbed {
                    fc1: linear(&b.time_fc1)?,
                    fc2: linear(&b.time_fc2)?,
                }),
                None => None,
            };
            let class_embed = if config.num_classes > 0 {
                Some(get(&b.class_embed)?.squeeze(1)?)
            } else {
                None
            };
            blocks.push(MetaBlock {
                proj_in: linear(&b.proj_in)?,
                pos_embed: get(&b.pos_embed)?,
                class_embed,
                time_embed,
                default_level: config.default_level().unwrap_or(0.0),
                layers,
                proj_out: linear(&b.proj_out)?,
                permutation: Permutation::for_block(&config, t),
                nvp: config.nvp,
                soft_clip: config.soft_clip,
                mask: mask.clone(),
            });
        }
        let var = get(&names.var)?;
        let denoiser = match config.denoiser {
            Some(dn) => {
                supports_denoiser(&config)?;
                let d = names.denoiser();
                Some(Denoiser {
                    proj_in: linear(&d.proj_in)?,
                    pos_embed: get(&d.pos_embed)?,
                    class_embed: if config.num_classes > 0 {
                        Some(get(&d.class_embed)?.squeeze(1)?)
                    } else {
                        None
                    },
                    layers: (0..dn.layers)
                        .map(|l| layer(&d.layer(l), dn.num_heads()))
                        .collect::<Result<_>>()?,
                    proj_out: linear(&d.proj_out)?,
                    in_channels: config.in_channels,
                    img_size: config.img_size,
                    patch_size: config.patch_size,
                })
            }
            None => None,
        };
        Ok(Self {
            config,
            blocks,
            var,
            denoiser,
            device: device.clone(),
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Mutable access to the configuration's descriptive fields (class names, provenance...).
    ///
    /// Changing sizes here does not change the weights; use it for metadata only.
    pub fn config_mut(&mut self) -> &mut ModelConfig {
        &mut self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The flow blocks in forward order.
    pub fn blocks(&self) -> &[MetaBlock] {
        &self.blocks
    }

    /// The prior variance (N, D).
    pub fn prior_var(&self) -> &Tensor {
        &self.var
    }

    /// The learned denoiser, when the model carries one.
    pub fn denoiser(&self) -> Option<&Denoiser> {
        self.denoiser.as_ref()
    }

    /// The flow alone: this model without its learned denoiser (the same flow weights). What
    /// fine-tuning starts from, since a denoiser learned on the old flow would not match the
    /// new one.
    pub fn without_denoiser(&self) -> Self {
        let mut m = self.clone();
        m.config.denoiser = None;
        m.denoiser = None;
        m
    }

    /// Every tensor under its reference state_dict name, buffers (`var`, `attn_mask`) included.
    pub fn weights(&self) -> Result<Weights> {
        let mut w = Weights::new();
        let pair = |w: &mut Weights, p: &WeightBias, weight: &Tensor, bias: &Tensor| {
            w.insert(p.weight.clone(), weight.clone());
            w.insert(p.bias.clone(), bias.clone());
        };
        let lin = |w: &mut Weights, p: &WeightBias, l: &Linear| pair(w, p, &l.weight, &l.bias);
        let ln = |w: &mut Weights, p: &WeightBias, l: &LayerNorm| pair(w, p, &l.weight, &l.bias);
        let names = ModelNames::new();
        let n = self.config.num_patches();
        let tril = Tensor::tril2(n, DType::F32, &self.device)?;
        w.insert(names.var.clone(), self.var.clone());
        for (t, blk) in self.blocks.iter().enumerate() {
            let b = names.block(t);
            w.insert(b.pos_embed.clone(), blk.pos_embed.clone());
            if let Some(c) = &blk.class_embed {
                w.insert(b.class_embed.clone(), c.unsqueeze(1)?);
            }
            w.insert(b.attn_mask.clone(), tril.clone());
            lin(&mut w, &b.proj_in, &blk.proj_in);
            lin(&mut w, &b.proj_out, &blk.proj_out);
            if let Some(te) = &blk.time_embed {
                lin(&mut w, &b.time_fc1, &te.fc1);
                lin(&mut w, &b.time_fc2, &te.fc2);
            }
            for (l, layer) in blk.layers.iter().enumerate() {
                let a = b.layer(l);
                ln(&mut w, &a.attention.norm, &layer.attention.norm);
                lin(&mut w, &a.attention.qkv, &layer.attention.qkv);
                lin(&mut w, &a.attention.proj, &layer.attention.proj);
                ln(&mut w, &a.mlp.norm, &layer.mlp.norm);
                lin(&mut w, &a.mlp.fc1, &layer.mlp.fc1);
                lin(&mut w, &a.mlp.fc2, &layer.mlp.fc2);
            }
        }
        if let Some(dn) = &self.denoiser {
            let d = names.denoiser();
            w.insert(d.pos_embed.clone(), dn.pos_embed.clone());
            if let Some(c) = &dn.class_embed {
                w.insert(d.class_embed.clone(), c.unsqueeze(1)?);
            }
            lin(&mut w, &d.proj_in, &dn.proj_in);
            lin(&mut w, &d.proj_out, &dn.proj_out);
            for (l, layer) in dn.layers.iter().enumerate() {
                let a = d.layer(l);
                ln(&mut w, &a.attention.norm, &layer.attention.norm);
                lin(&mut w, &a.attention.qkv, &layer.attention.qkv);
                lin(&mut w, &a.attention.proj, &layer.attention.proj);
                ln(&mut w, &a.mlp.norm, &layer.mlp.norm);
                lin(&mut w, &a.mlp.fc1, &layer.mlp.fc1);
                lin(&mut w, &a.mlp.fc2, &layer.mlp.fc2);
            }
        }
        Ok(w)
    }

    /// Cut images (B, C, H, W) into the model's patch sequence (B, N, D).
    pub fn patchify(&self, x: &Tensor) -> Result<Tensor> {
        patchify(x, self.config.patch_size)
    }

    /// Reassemble a patch sequence (B, N, D) into images (B, C, H, W).
    pub fn unpatchify(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        unpatchify(x, c.in_channels, c.img_size, c.img_size, c.patch_size)
    }

    fn check_images(&self, x: &Tensor) -> Result<()> {
        let c = &self.config;
        let want = [c.in_channels, c.img_size, c.img_size];
        match x.dims() {
            [_, rest @ ..] if rest == want => Ok(()),
            d => Err(Error::InvalidInput(format!(
                "images of shape {d:?} given, the model takes (B, {}, {}, {})",
                want[0], want[1], want[2]
            ))),
        }
    }

    /// Forward pass (data to noise) on images `x` (B, C, H, W) in [-1, 1], with optional class
    /// labels (one per item; -1 selects the unconditional embedding).
    ///
    /// Uses differentiable ops, so gradients can be taken through it.
    pub fn forward(&self, x: &Tensor, labels: Option<&[i64]>) -> Result<ForwardOutput> {
        self.forward_with(x, labels, Exec::Grad)
    }

    /// Forward pass with a choice of kernels ([`Exec::Fast`] for inference).
    pub fn forward_with(
        &self,
        x: &Tensor,
        labels: Option<&[i64]>,
        exec: Exec,
    ) -> Result<ForwardOutput> {
        self.forward_at(x, labels, None, exec)
    }

    /// Forward pass of a noise-conditional model at each item's noise level `levels`
    /// ([`ModelConfig::noise_range`]; `None`: the model's default level, `t1`). Other models
    /// ignore `levels`.
    pub fn forward_at(
        &self,
        x: &Tensor,
        labels: Option<&[i64]>,
        levels: Option<&[f32]>,
        exec: Exec,
    ) -> Result<ForwardOutput> {
        self.check_images(x)?;
        let x = x.to_dtype(DType::F32)?;
        let mut h = self.patchify(&x)?;
        let mut outputs = Vec::with_capacity(self.blocks.len());
        let mut logdets: Option<Tensor> = None;
        for blk in &self.blocks {
            let (y, ld) = blk.forward(&h, labels, levels, exec)?;
            logdets = Some(match logdets {
                None => ld,
                Some(acc) => (acc + ld)?,
            });
            outputs.push(y.clone());
            h = y;
        }
        let logdets =
            logdets.ok_or_else(|| Error::InvalidConfig("the model has no flow blocks".into()))?;
        Ok(ForwardOutput {
            z: h,
            blocks: outputs,
            logdets,
        })
    }

    /// The training loss per dimension: `0.5 * mean(z^2) - mean(logdets)` (a scalar tensor).
    pub fn loss(&self, out: &ForwardOutput) -> Result<Tensor> {
        Ok(((out.z.sqr()?.mean_all()? * 0.5)? - out.logdets.mean_all()?)?)
    }

    /// iTARFlow's reweighted loss: `mean_b(w_b (0.5 mean(z_b^2) - logdet_b))` with one weight
    /// per item (`w_b = sigma_b` for noise-conditional training); all ones is [`Model::loss`].
    pub fn weighted_loss(&self, out: &ForwardOutput, weights: &[f32]) -> Result<Tensor> {
        let b = out.logdets.dim(0)?;
        if weights.len() != b {
            return Err(Error::InvalidInput(format!(
                "{} loss weights for a batch of {b}",
                weights.len()
            )));
        }
        let per_item = ((out.z.sqr()?.flatten_from(1)?.mean(1)? * 0.5)? - &out.logdets)?;
        let w = Tensor::from_vec(weights.to_vec(), b, out.z.device())?;
        Ok((per_item * w)?.mean_all()?)
    }

    /// Bits per dimension of each item on 8-bit data, as the reference's `evaluate_bpd.py`:
    /// `(0.5*mean(z^2) + 0.5*ln(2pi) + ln(128) - logdet) / ln(2)`, shape (B,).
    pub fn bits_per_dim(&self, out: &ForwardOutput) -> Result<Tensor> {
        let nll = (out.z.sqr()?.flatten_from(1)?.mean(1)? * 0.5)?;
        let c = 0.5 * (2.0 * std::f64::consts::PI).ln() + 128f64.ln();
        Ok((((nll + c)? - &out.logdets)? / std::f64::consts::LN_2)?)
    }

    /// The loss at `x` and its gradient with respect to `x` (same shape): on the CPU through the
    /// hand-written pass ([`HostGrad`](super::host_grad::HostGrad)), elsewhere (or with
    /// `TARFLOW_AUTOGRAD=1`) through candle's autograd.
    pub fn loss_and_input_grad(&self, x: &Tensor, labels: Option<&[i64]>) -> Result<(f32, Tensor)> {
        self.loss_and_input_grad_at(x, labels, None)
    }

    /// [`loss_and_input_grad`](Self::loss_and_input_grad) with a noise-conditional model at
    /// each item's level `levels` (`None`: the default level).
    pub fn loss_and_input_grad_at(
        &self,
        x: &Tensor,
        labels: Option<&[i64]>,
        levels: Option<&[f32]>,
    ) -> Result<(f32, Tensor)> {
        if super::host_grad::applies(self) {
            return super::host_grad::HostGrad::new(self)?
                .loss_and_input_grad_at(x, labels, levels);
        }
        let xv = Var::from_tensor(&x.to_dtype(DType::F32)?.to_device(&self.device)?)?;
        let out = self.forward_at(xv.as_tensor(), labels, levels, Exec::Grad)?;
        let loss = self.loss(&out)?;
        let grads = loss.backward()?;
        let grad = grads
            .get(xv.as_tensor())
            .cloned()
            .ok_or_else(|| Error::InvalidInput("the loss does not depend on the input".into()))?;
        Ok((loss.to_scalar::<f32>()?, grad))
    }
}

/// Check names and shapes of `weights` against `config`, before anything is built.
pub fn check_weights(config: &ModelConfig, weights: &Weights) -> Result<()> {
    let expected = ModelNames::new().state_dict(config);
    for TensorSpec { name, shape, .. } in &expected {
        match weights.get(name) {
            None => {
                return Err(Error::MissingTensor {
                    source_name: None,
                    name: name.clone(),
                    expected: shape.clone(),
                });
            }
            Some(t) if t.dims() != shape.as_slice() => {
                return Err(Error::ShapeMismatch {
                    source_name: None,
                    name: name.clone(),
                    expected: shape.clone(),
                    found: t.dims().to_vec(),
                });
            }
            Some(t)
                if !matches!(
                    t.dtype(),
                    DType::F32 | DType::F16 | DType::BF16 | DType::F64
                ) =>
            {
                return Err(Error::ConfigMismatch {
                    source_name: None,
                    reason: format!(
                        "tensor `{name}` has dtype {:?}, expected a float type",
                        t.dtype()
                    ),
                });
            }
            Some(_) => {}
        }
    }
    let known: std::collections::HashSet<&str> = expected.iter().map(|s| s.name.as_str()).collect();
    let extra: Vec<&str> = weights
        .keys()
        .map(String::as_str)
        .filter(|k| !known.contains(k))
        .collect();
    if !extra.is_empty() {
        let shown: Vec<&str> = extra.iter().take(5).copied().collect();
        return Err(Error::ConfigMismatch {
            source_name: None,
            reason: format!(
                "{} tensor(s) that a model with {}{} does not have: {}{}",
                extra.len(),
                config.describe_layers(),
                if config.num_classes > 0 {
                    format!(" and {} classes", config.num_classes)
                } else {
                    String::new()
                },
                shown.join(", "),
                if extra.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            ),
        });
    }
    for TensorSpec { name, kind, .. } in &expected {
        let t = weights[name]
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        if let Some(i) = t.iter().position(|v| !v.is_finite()) {
            return Err(Error::ConfigMismatch {
                source_name: None,
                reason: format!(
                    "tensor `{name}` holds a non-finite value ({}) at flat index {i}",
                    t[i]
                ),
            });
        }
        if *kind == TensorKind::AttnMask {
            let n = config.num_patches();
            let causal = t
                .iter()
                .enumerate()
                .all(|(k, &v)| v == if k % n <= k / n { 1.0 } else { 0.0 });
            if !causal {
                return Err(Error::ConfigMismatch {
                    source_name: None,
                    reason: format!(
                        "`{name}` is not the lower-triangular causal mask TarFlow uses"
                    ),
                });
            }
        }
    }
    Ok(())
}
