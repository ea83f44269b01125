//! The checkpoint's tensor names: the one place where the reference's state_dict names
//! (`var`, `blocks.{t}.proj_in.weight`, `blocks.{t}.attn_blocks.{l}.attention.qkv.weight`, ...)
//! are written.
//!
//! Names are built from prefixes in the style of candle's `VarBuilder`
//! (`Prefix::root().pp("blocks").pp(t)`), and handed out as typed trees: [`ModelNames`] gives a
//! [`BlockNames`] per flow block, which gives a [`LayerNames`] per attention layer, down to the
//! [`WeightBias`] pair of each Linear and LayerNorm. [`ModelNames::state_dict`] lists every tensor
//! in the reference's order with its shape and [`TensorKind`]; loading and saving a [`Model`],
//! [`tensor_shapes`], fresh initialisation, config inference from a `.pth` and the
//! training checkpoints all read their names from here.
//!
//! [`Model`]: super::Model

use std::fmt::Display;

use crate::config::{MLP_EXPANSION, ModelConfig};

// The reference's attribute names (apple/ml-tarflow, `transformer_flow.py`): `Model.var`,
// `Model.blocks[t]` (`MetaBlock`: `proj_in`, `pos_embed`, `class_embed`, `attn_mask`,
// `attn_blocks[l]`, `proj_out`), `AttentionBlock.attention` (`norm`, `qkv`, `proj`) and
// `AttentionBlock.mlp` (`norm`, `main = Sequential(Linear, GELU, Linear)`).
const VAR: &str = "var";
const BLOCKS: &str = "blocks";
const POS_EMBED: &str = "pos_embed";
const CLASS_EMBED: &str = "class_embed";
const ATTN_MASK: &str = "attn_mask";
const PROJ_IN: &str = "proj_in";
const PROJ_OUT: &str = "proj_out";
const ATTN_BLOCKS: &str = "attn_blocks";
const ATTENTION: &str = "attention";
const MLP: &str = "mlp";
const NORM: &str = "norm";
const QKV: &str = "qkv";
const PROJ: &str = "proj";
const MAIN: &str = "main";
/// Index of the MLP's first Linear in its `nn.Sequential` (`main.0`).
const MAIN_FC1: usize = 0;
/// Index of the MLP's second Linear in its `nn.Sequential` (`main.2`; `main.1` is the GELU).
const MAIN_FC2: usize = 2;
// iTARFlow's `MetaBlock.time_embed` (`FourierTimeEmbedding`: `mlp = Sequential(Linear(C, 4C),
// GELU, Linear(4C, C))`), present only in noise-conditional models.
const TIME_EMBED: &str = "time_embed";
const TIME_MLP: &str = "mlp";
// STARFlow's `Model.learnable_self_denoiser` (`NonCausalBlock`: `proj_in`, `attn_blocks[l]`,
// `proj_out`), with a learned position embedding where STARFlow uses RoPE, and a class
// embedding as its `conditional_denoiser` option; present only in files that carry one.
const DENOISER: &str = "learnable_self_denoiser";
const WEIGHT: &str = "weight";
const BIAS: &str = "bias";

/// A dotted name prefix, as candle's `VarBuilder` keeps one: `root().pp("blocks").pp(3)` is
/// `blocks.3`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Prefix(String);

impl Prefix {
    /// The empty prefix (top-level names).
    pub fn root() -> Self {
        Self(String::new())
    }

    /// This prefix with one more component (`pp` as in `VarBuilder::pp`).
    pub fn pp(&self, part: impl Display) -> Self {
        if self.0.is_empty() {
            Self(part.to_string())
        } else {
            Self(format!("{}.{part}", self.0))
        }
    }

    /// The full name of `leaf` under this prefix.
    pub fn name(&self, leaf: impl Display) -> String {
        self.pp(leaf).0
    }

    /// The prefix as text (`blocks.3`; empty at the root).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number right under this prefix in `name`: 3 for `blocks.3.pos_embed` under `blocks`.
    /// `None` when `name` is not under this prefix or the next component is not a number.
    pub fn index_in(&self, name: &str) -> Option<usize> {
        let rest = if self.0.is_empty() {
            name
        } else {
            name.strip_prefix(self.0.as_str())?.strip_prefix('.')?
        };
        rest.split('.').next()?.parse().ok()
    }
}

impl Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The names of a Linear's or a LayerNorm's two tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightBias {
    /// `{prefix}.weight`.
    pub weight: String,
    /// `{prefix}.bias`.
    pub bias: String,
}

impl WeightBias {
    /// The pair under `prefix`.
    pub fn at(prefix: &Prefix) -> Self {
        Self {
            weight: prefix.name(WEIGHT),
            bias: prefix.name(BIAS),
        }
    }
}

/// The names of one attention layer's pre-norm attention (`...attention.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttentionNames {
    /// The LayerNorm before the qkv projection.
    pub norm: WeightBias,
    /// The fused query/key/value projection.
    pub qkv: WeightBias,
    /// The output projection.
    pub proj: WeightBias,
}

/// The names of one attention layer's pre-norm MLP (`...mlp.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlpNames {
    /// The LayerNorm before the MLP.
    pub norm: WeightBias,
    /// The first Linear, C to 4C (`main.0`).
    pub fc1: WeightBias,
    /// The second Linear, 4C to C (`main.2`).
    pub fc2: WeightBias,
}

/// The names of attention layer `l` of a flow block (`blocks.{t}.attn_blocks.{l}.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerNames {
    /// The attention half.
    pub attention: AttentionNames,
    /// The MLP half.
    pub mlp: MlpNames,
}

impl LayerNames {
    /// The names under `prefix` (`blocks.{t}.attn_blocks.{l}`).
    pub fn at(prefix: &Prefix) -> Self {
        let a = prefix.pp(ATTENTION);
        let m = prefix.pp(MLP);
        let main = m.pp(MAIN);
        Self {
            attention: AttentionNames {
                norm: WeightBias::at(&a.pp(NORM)),
                qkv: WeightBias::at(&a.pp(QKV)),
                proj: WeightBias::at(&a.pp(PROJ)),
            },
            mlp: MlpNames {
                norm: WeightBias::at(&m.pp(NORM)),
                fc1: WeightBias::at(&main.pp(MAIN_FC1)),
                fc2: WeightBias::at(&main.pp(MAIN_FC2)),
            },
        }
    }
}

/// The names of flow block `t` (`blocks.{t}.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockNames {
    layers: Prefix,
    /// Position embedding (N, C).
    pub pos_embed: String,
    /// Class embedding table (classes, 1, C); present only in class-conditional models.
    pub class_embed: String,
    /// The causal mask buffer (N, N).
    pub attn_mask: String,
    /// Patch tokens to the transformer width.
    pub proj_in: WeightBias,
    /// Transformer width to the coupling parameters.
    pub proj_out: WeightBias,
    /// The noise-level embedding's MLP, C to 4C (`time_embed.mlp.0`); noise-conditional models.
    pub time_fc1: WeightBias,
    /// Its second Linear, 4C to C (`time_embed.mlp.2`).
    pub time_fc2: WeightBias,
}

impl BlockNames {
    /// The names under `prefix` (`blocks.{t}`).
    pub fn at(prefix: &Prefix) -> Self {
        Self {
            layers: prefix.pp(ATTN_BLOCKS),
            pos_embed: prefix.name(POS_EMBED),
            class_embed: prefix.name(CLASS_EMBED),
            attn_mask: prefix.name(ATTN_MASK),
            proj_in: WeightBias::at(&prefix.pp(PROJ_IN)),
            proj_out: WeightBias::at(&prefix.pp(PROJ_OUT)),
            time_fc1: WeightBias::at(&prefix.pp(TIME_EMBED).pp(TIME_MLP).pp(MAIN_FC1)),
            time_fc2: WeightBias::at(&prefix.pp(TIME_EMBED).pp(TIME_MLP).pp(MAIN_FC2)),
        }
    }

    /// The names of attention layer `l`.
    pub fn layer(&self, l: usize) -> LayerNames {
        LayerNames::at(&self.layers.pp(l))
    }

    /// The layer index of a name under this block's layers (`...attn_blocks.{l}.*`), if it is one.
    pub fn layer_index(&self, name: &str) -> Option<usize> {
        self.layers.index_in(name)
    }
}

/// The names of the learned denoiser (`learnable_self_denoiser.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenoiserNames {
    layers: Prefix,
    /// Position embedding (N, C).
    pub pos_embed: String,
    /// Class embedding table (classes, 1, C); present only in class-conditional models.
    pub class_embed: String,
    /// Patch tokens to the denoiser's width.
    pub proj_in: WeightBias,
    /// The denoiser's width back to a patch (the predicted score step).
    pub proj_out: WeightBias,
}

impl DenoiserNames {
    /// The names under `prefix` (`learnable_self_denoiser`).
    pub fn at(prefix: &Prefix) -> Self {
        Self {
            layers: prefix.pp(ATTN_BLOCKS),
            pos_embed: prefix.name(POS_EMBED),
            class_embed: prefix.name(CLASS_EMBED),
            proj_in: WeightBias::at(&prefix.pp(PROJ_IN)),
            proj_out: WeightBias::at(&prefix.pp(PROJ_OUT)),
        }
    }

    /// The names of attention layer `l`.
    pub fn layer(&self, l: usize) -> LayerNames {
        LayerNames::at(&self.layers.pp(l))
    }
}

/// What a tensor of the state_dict is, for initialisation and for telling parameters from buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    /// The prior's variance `var` (N, D), a buffer.
    PriorVar,
    /// A block's causal mask `attn_mask` (N, N), a buffer.
    AttnMask,
    /// A block's position embedding.
    PosEmbed,
    /// A block's class embedding table.
    ClassEmbed,
    /// A LayerNorm's scale.
    NormWeight,
    /// A LayerNorm's shift.
    NormBias,
    /// A Linear's weight (out, in) with `fan_in` = in; `zero_init` for the reference's
    /// zero-initialised `proj_out.weight`.
    LinearWeight {
        /// Input features of the layer.
        fan_in: usize,
        /// Whether the reference initialises it to zero.
        zero_init: bool,
    },
    /// A Linear's bias (out) with the layer's `fan_in`.
    LinearBias {
        /// Input features of the layer.
        fan_in: usize,
    },
}

impl TensorKind {
    /// Whether the tensor is trained (everything but the `var` and `attn_mask` buffers).
    pub fn is_parameter(self) -> bool {
        !matches!(self, Self::PriorVar | Self::AttnMask)
    }
}

/// One tensor of the state_dict: its name, shape and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// The reference's state_dict name.
    pub name: String,
    /// The shape the config implies.
    pub shape: Vec<usize>,
    /// What the tensor is.
    pub kind: TensorKind,
}

/// The names of a whole model: `var` and the flow blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelNames {
    blocks: Prefix,
    denoiser: Prefix,
    /// The prior variance buffer (N, D).
    pub var: String,
}

impl Default for ModelNames {
    fn default() -> Self {
        Self::new()
    }
}

impl ModelNames {
    /// The reference's top-level names.
    pub fn new() -> Self {
        let root = Prefix::root();
        Self {
            blocks: root.pp(BLOCKS),
            denoiser: root.pp(DENOISER),
            var: root.name(VAR),
        }
    }

    /// The names of flow block `t`.
    pub fn block(&self, t: usize) -> BlockNames {
        BlockNames::at(&self.blocks.pp(t))
    }

    /// The names of the learned denoiser.
    pub fn denoiser(&self) -> DenoiserNames {
        DenoiserNames::at(&self.denoiser)
    }

    /// Whether `name` belongs to the learned denoiser (`learnable_self_denoiser.*`).
    pub fn is_denoiser(&self, name: &str) -> bool {
        name.strip_prefix(self.denoiser.as_str())
            .is_some_and(|rest| rest.starts_with('.'))
    }

    /// The block index of a name under the blocks (`blocks.{t}.*`), if it is one.
    pub fn block_index(&self, name: &str) -> Option<usize> {
        self.blocks.index_in(name)
    }

    /// The blocks' prefix as text (`blocks`), for messages.
    pub fn blocks_prefix(&self) -> &str {
        self.blocks.as_str()
    }

    /// Whether `name` is a trained parameter rather than one of the `var` and `attn_mask`
    /// buffers (by name alone; any config).
    pub fn is_parameter(&self, name: &str) -> bool {
        name != self.var && name.rsplit('.').next() != Some(ATTN_MASK)
    }

    /// Every tensor of the reference's state_dict for `config`, in the reference's order, with
    /// its shape and kind.
    pub fn state_dict(&self, config: &ModelConfig) -> Vec<TensorSpec> {
        let (n, d, c) = (config.num_patches(), config.patch_dim(), config.channels);
        let h = MLP_EXPANSION * c;
        let mut out = Vec::new();
        let push =
            |out: &mut Vec<TensorSpec>, name: &String, shape: Vec<usize>, kind: TensorKind| {
                out.push(TensorSpec {
                    name: name.clone(),
                    shape,
                    kind,
                });
            };
        let linear = |out: &mut Vec<TensorSpec>,
                      names: &WeightBias,
                      (o, i): (usize, usize),
                      zero_init: bool| {
            let fan_in = i;
            push(
                out,
                &names.weight,
                vec![o, i],
                TensorKind::LinearWeight { fan_in, zero_init },
            );
            push(out, &names.bias, vec![o], TensorKind::LinearBias { fan_in });
        };
        let norm = |out: &mut Vec<TensorSpec>, names: &WeightBias, c: usize| {
            push(out, &names.weight, vec![c], TensorKind::NormWeight);
            push(out, &names.bias, vec![c], TensorKind::NormBias);
        };
        let layer = |out: &mut Vec<TensorSpec>, layer: &LayerNames, c: usize| {
            let h = MLP_EXPANSION * c;
            norm(out, &layer.attention.norm, c);
            linear(out, &layer.attention.qkv, (3 * c, c), false);
            linear(out, &layer.attention.proj, (c, c), false);
            norm(out, &layer.mlp.norm, c);
            linear(out, &layer.mlp.fc1, (h, c), false);
            linear(out, &layer.mlp.fc2, (c, h), false);
        };
        push(&mut out, &self.var, vec![n, d], TensorKind::PriorVar);
        for t in 0..config.num_blocks {
            let b = self.block(t);
            push(&mut out, &b.pos_embed, vec![n, c], TensorKind::PosEmbed);
            if config.num_classes > 0 {
                let shape = vec![config.num_classes, 1, c];
                push(&mut out, &b.class_embed, shape, TensorKind::ClassEmbed);
            }
            push(&mut out, &b.attn_mask, vec![n, n], TensorKind::AttnMask);
            linear(&mut out, &b.proj_in, (c, d), false);
            for l in 0..config.layers_of_block(t) {
                layer(&mut out, &b.layer(l), c);
            }
            linear(&mut out, &b.proj_out, (config.proj_out_dim(), c), true);
            if config.noise_range.is_some() {
                linear(&mut out, &b.time_fc1, (h, c), false);
                linear(&mut out, &b.time_fc2, (c, h), false);
            }
        }
        if let Some(dn) = &config.denoiser {
            let names = self.denoiser();
            let c = dn.channels;
            push(&mut out, &names.pos_embed, vec![n, c], TensorKind::PosEmbed);
            if config.num_classes > 0 {
                let shape = vec![config.num_classes, 1, c];
                push(&mut out, &names.class_embed, shape, TensorKind::ClassEmbed);
            }
            linear(&mut out, &names.proj_in, (c, d), false);
            for l in 0..dn.layers {
                layer(&mut out, &names.layer(l), c);
            }
            // STARFlow zero-initialises the denoiser's `proj_out.weight`: a new denoiser
            // predicts one constant step (its bias) whatever its input.
            linear(&mut out, &names.proj_out, (d, c), true);
        }
        out
    }
}

/// Every tensor of the reference's state_dict of `config` with its shape, in the reference's
/// order (the names from [`ModelNames`]).
pub fn tensor_shapes(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    ModelNames::new()
        .state_dict(config)
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect()
}

/// Number of trainable parameters of `config` (the state_dict without the `var` and
/// `attn_mask` buffers).
pub fn parameter_count(config: &ModelConfig) -> u128 {
    ModelNames::new()
        .state_dict(config)
        .into_iter()
        .filter(|s| s.kind.is_parameter())
        .map(|s| s.shape.iter().map(|&v| v as u128).product::<u128>())
        .sum()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde::de::{MapAccess, Visitor};

    use super::*;

    #[test]
    fn parameters_are_counted_as_the_reference_builds_them() {
        let c = ModelConfig::new(3, 8, 2, 128, 2, 2);
        // 2 blocks x (pos 16*128 + proj_in 12*128+128 + 2 layers + proj_out 24*128+24)
        let layer = 12 * 128 * 128 + 13 * 128;
        let block = 16 * 128 + 12 * 128 + 128 + 2 * layer + 24 * 128 + 24;
        assert_eq!(parameter_count(&c), 2 * block as u128);
    }

    /// The `weights` of a golden JSON (name -> shape) in file order.
    struct Ordered(Vec<(String, Vec<usize>)>);

    impl<'de> serde::Deserialize<'de> for Ordered {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Ordered;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a map from tensor name to shape")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Ordered, A::Error> {
                    let mut v = Vec::new();
                    while let Some(e) = m.next_entry::<String, Vec<usize>>()? {
                        v.push(e);
                    }
                    Ok(Ordered(v))
                }
            }
            d.deserialize_map(V)
        }
    }

    #[derive(serde::Deserialize)]
    struct Golden {
        config: ModelConfig,
        weights: Ordered,
    }

    fn golden(name: &str) -> Golden {
        let dir = match std::env::var("TARFLOW_SHARED") {
            Ok(p) => PathBuf::from(p),
            Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
        };
        let path = dir.join("golden").join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let mut de = serde_json::Deserializer::from_str(&text);
        serde::Deserialize::deserialize(&mut de)
            .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
    }

    #[test]
    fn the_tree_gives_exactly_the_references_names_shapes_and_order() {
        for case in ["small", "cond"] {
            let g = golden(case);
            let ours: Vec<(String, Vec<usize>)> = ModelNames::new()
                .state_dict(&g.config)
                .into_iter()
                .map(|s| (s.name, s.shape))
                .collect();
            assert!(!ours.is_empty(), "{case}: empty state_dict");
            assert_eq!(ours, g.weights.0, "{case}: names, shapes or order differ");
            assert_eq!(ours, tensor_shapes(&g.config), "{case}: tensor_shapes");
        }
    }

    #[test]
    fn kinds_tell_buffers_from_parameters_like_the_names_do() {
        let g = golden("cond");
        let names = ModelNames::new();
        let specs = names.state_dict(&g.config);
        let buffers: Vec<&str> = specs
            .iter()
            .filter(|s| !s.kind.is_parameter())
            .map(|s| s.name.as_str())
            .collect();
        // `var` and one mask per block.
        assert_eq!(buffers.len(), 1 + g.config.num_blocks);
        assert_eq!(buffers[0], "var");
        assert!(buffers[1..].iter().all(|n| n.ends_with(".attn_mask")));
        for s in &specs {
            assert_eq!(
                names.is_parameter(&s.name),
                s.kind.is_parameter(),
                "{}",
                s.name
            );
        }
        // Only proj_out's weight is zero-initialised, one per block.
        let zero: Vec<&str> = specs
            .iter()
            .filter(|s| {
                matches!(
                    s.kind,
                    TensorKind::LinearWeight {
                        zero_init: true,
                        ..
                    }
                )
            })
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(zero.len(), g.config.num_blocks);
        assert!(
            zero.iter().all(|n| n.ends_with(".proj_out.weight")),
            "{zero:?}"
        );
    }

    #[test]
    fn indices_are_read_back_from_names() {
        let names = ModelNames::new();
        let b = names.block(7);
        let qkv = &b.layer(3).attention.qkv.weight;
        assert_eq!(qkv, "blocks.7.attn_blocks.3.attention.qkv.weight");
        assert_eq!(names.block_index(qkv), Some(7));
        assert_eq!(b.layer_index(qkv), Some(3));
        assert_eq!(names.block(6).layer_index(qkv), None);
        assert_eq!(names.block_index(&names.var), None);
        assert_eq!(names.block_index("blocksx.1.pos_embed"), None);
        assert_eq!(names.block_index("blocks.x.pos_embed"), None);
        assert_eq!(
            b.layer(0).mlp.fc2.bias,
            "blocks.7.attn_blocks.0.mlp.main.2.bias"
        );
        assert_eq!(Prefix::root().pp("a").pp(1).name("b"), "a.1.b");
    }
}
