//! What a run asks for that a checkpoint's run or a model already fixes: [`Conflict`]s, found by
//! [`RunRequest::size_conflicts`] and [`RunRequest::resume_conflicts`].

use std::fmt;

use super::RunRequest;
use crate::config::{ModelConfig, Order};
use crate::train::augment::NoiseConfig;
use crate::train::checkpoint::Checkpoint;
use crate::train::dataset::SizePolicy;

/// A setting asked for that differs from what a checkpoint's run or a model already fixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The setting, named as `tarflow train`'s flag without its dashes (`lr`, `batch`,
    /// `patch-size`, ...).
    pub setting: &'static str,
    /// The value asked for (empty for a switch).
    pub given: String,
    /// The value it has (`None`: a switch it was trained without).
    pub has: Option<String>,
}

impl fmt::Display for Conflict {
    /// `lr 0.001 (it has 0.0005)`, or `hflip (it was trained without)` for a switch.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.has {
            Some(has) => write!(f, "{} {} (it has {has})", self.setting, self.given),
            None => write!(f, "{} (it was trained without)", self.setting),
        }
    }
}

/// Collects [`Conflict`]s.
#[derive(Default)]
struct Conflicts(Vec<Conflict>);

impl Conflicts {
    fn check<T: PartialEq + fmt::Display>(
        &mut self,
        setting: &'static str,
        given: Option<T>,
        has: T,
    ) {
        if let Some(g) = given
            && g != has
        {
            self.0.push(Conflict {
                setting,
                given: g.to_string(),
                has: Some(has.to_string()),
            });
        }
    }

    fn switch(&mut self, setting: &'static str, given: bool, has: bool) {
        if given && !has {
            self.0.push(Conflict {
                setting,
                given: String::new(),
                has: None,
            });
        }
    }
}

/// The training noise as `tarflow train` writes it: `uniform` or the sigma (`--noise`), or
/// the range (`--noise-range T0:T1`, with `unweighted` for `--noise-weight none`).
pub(super) fn show_noise(n: &NoiseConfig) -> String {
    match n {
        NoiseConfig::Uniform => "uniform".into(),
        NoiseConfig::Gaussian { sigma } => sigma.to_string(),
        NoiseConfig::Range { t0, t1, reweight } => {
            format!("{t0}:{t1}{}", if *reweight { "" } else { " unweighted" })
        }
    }
}

impl RunRequest {
    /// The sizes and image format asked for that differ from `model`'s (which fine-tuning and
    /// resuming keep).
    pub fn size_conflicts(&self, model: &ModelConfig) -> Vec<Conflict> {
        let mut c = Conflicts::default();
        self.sizes(model, &mut c);
        c.0
    }

    fn sizes(&self, m: &ModelConfig, c: &mut Conflicts) {
        c.check("channels", self.channels, m.channels);
        c.check("blocks", self.blocks, m.num_blocks);
        c.check("layers", self.layers, m.layers_per_block);
        let show_layers = |l: &[usize]| -> String {
            l.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
        };
        let has: Vec<usize> = (0..m.num_blocks).map(|t| m.layers_of_block(t)).collect();
        c.check(
            "layers-per-block",
            self.block_layers.as_deref().map(show_layers),
            show_layers(&has),
        );
        c.check("soft-clip", self.soft_clip, m.soft_clip);
        c.check(
            "orders",
            self.orders.as_deref().map(Order::show_list),
            Order::show_list(&m.orders),
        );
        c.check("patch-size", self.patch_size, m.patch_size);
        c.check("img-size", self.img_size, m.img_size);
        c.check(
            "image-channels",
            self.image_channels.and_then(|i| i.count()),
            m.in_channels,
        );
    }

    /// Every setting asked for that differs from the checkpoint's run: a resumed run continues
    /// with its own settings.
    pub fn resume_conflicts(&self, ckpt: &Checkpoint) -> Vec<Conflict> {
        let mut c = Conflicts::default();
        self.sizes(&ckpt.model_config, &mut c);
        let t = &ckpt.state.config;
        let d = &ckpt.state.manifest.config;
        c.check(
            "noise",
            self.noise.as_ref().map(show_noise),
            show_noise(&t.noise),
        );
        let policy = |p: SizePolicy| format!("{p:?}").to_lowercase();
        c.check(
            "size-policy",
            self.size_policy.map(policy),
            policy(d.size_policy),
        );
        c.switch("split-strips", self.split_strips, d.split_strips);
        c.switch("unconditional", self.unconditional, d.unconditional);
        c.check("lr", self.lr, t.lr);
        c.check("batch", self.batch_size, t.batch_size);
        c.check("warmup", self.warmup_steps, t.warmup_steps);
        c.check("ema", self.ema_decay, t.ema_decay);
        c.check("label-dropout", self.label_dropout, t.label_dropout);
        c.check("holdout", self.holdout_fraction, t.holdout_fraction);
        c.check("seed", self.seed, t.seed);
        c.switch("hflip", self.augment.hflip, t.augment.hflip);
        c.switch("vflip", self.augment.vflip, t.augment.vflip);
        c.switch("rot90", self.augment.rot90, t.augment.rot90);
        c.switch("toroidal", self.augment.toroidal, t.augment.toroidal);
        c.0
    }
}
