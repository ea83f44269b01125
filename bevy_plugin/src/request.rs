//! The request API: put a [`GenerateTexture`] on an entity and read its texture from the
//! [`TarflowTexture`] that comes with it.

use bevy::asset::RenderAssetUsages;
use bevy::ecs::lifecycle::HookContext;
use bevy::ecs::world::DeferredWorld;
use bevy::prelude::*;
use tarflow::sample::SampleOptions;
use tarflow::{Error, ModelConfig};
use wgpu_types::{Extent3d, TextureDimension, TextureFormat};

use crate::asset::TarflowModel;
use crate::systems::TarflowJobs;

/// Which class a texture is generated for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum TextureClass {
    /// No class conditioning (the mean class embedding); the only choice for models without
    /// classes.
    #[default]
    Unconditional,
    /// A class by its index in the model (0-based).
    Id(usize),
    /// A class by its name in the model file (or its index written as text).
    Name(String),
}

impl From<usize> for TextureClass {
    fn from(id: usize) -> Self {
        Self::Id(id)
    }
}

impl From<&str> for TextureClass {
    fn from(name: &str) -> Self {
        Self::Name(name.to_string())
    }
}

impl From<String> for TextureClass {
    fn from(name: String) -> Self {
        Self::Name(name)
    }
}

impl TextureClass {
    /// The label to sample with: `None` for unconditional, or the class index. Errors for a
    /// name the model does not have, an index out of range, or any class on a model without
    /// classes.
    pub fn resolve(&self, config: &ModelConfig) -> tarflow::Result<Option<i64>> {
        let id = match self {
            Self::Unconditional => return Ok(None),
            Self::Id(id) => *id,
            Self::Name(name) => {
                if config.num_classes == 0 {
                    return Err(Error::InvalidInput(format!(
                        "class `{name}` asked of a model without classes"
                    )));
                }
                config.class_id(name)?
            }
        };
        if id >= config.num_classes {
            return Err(Error::InvalidInput(if config.num_classes == 0 {
                format!("class {id} asked of a model without classes")
            } else {
                format!(
                    "class {id} is out of range for a model with {} classes",
                    config.num_classes
                )
            }));
        }
        Ok(Some(id as i64))
    }
}

/// A request to generate a texture with a TarFlow model.
///
/// Inserting it (on a new or an existing entity) gives the entity a [`TarflowTexture`] whose
/// `image` handle is valid at once: a transparent image of the model's size (if the model is
/// still loading, a 1x1 transparent image until it has loaded). Final patches are painted into
/// it as the sampler makes them, and the finished (denoised) image replaces it at the end;
/// [`TextureProgress`](crate::TextureProgress), [`TexturePatched`](crate::TexturePatched),
/// [`TextureFinished`](crate::TextureFinished) and [`TextureFailed`](crate::TextureFailed)
/// messages follow the request.
///
/// Despawning the entity, removing this component or inserting a new one cancels the work in
/// flight (a new one starts over in the same image).
///
/// ```
/// # use bevy::prelude::*;
/// # use bevy_tarflow::prelude::*;
/// fn spawn(mut commands: Commands, assets: Res<AssetServer>) {
///     let model: Handle<TarflowModel> = assets.load("models/textures16.tarflow.safetensors");
///     commands.spawn(
///         GenerateTexture::new(model)
///             .with_class("stone")
///             .with_seed(7)
///             .with_guidance(1.5),
///     );
/// }
///
/// fn show(textures: Query<&TarflowTexture, Added<TarflowTexture>>) {
///     for texture in &textures {
///         println!("texture {:?} is on its way", texture.image);
///     }
/// }
/// ```
#[derive(Component, Debug, Clone, PartialEq)]
#[component(on_insert = on_request_insert, on_discard = on_request_discard)]
#[require(TarflowTexture)]
pub struct GenerateTexture {
    /// The model to sample from.
    pub model: Handle<TarflowModel>,
    /// The class to generate.
    pub class: TextureClass,
    /// Seed of the prior noise: the same seed, model and options give the same texture.
    pub seed: u64,
    /// Classifier-free guidance weight (0 = none); `None`: the model's recommended weight
    /// (`tarflow info` shows it), else none.
    pub guidance: Option<f32>,
    /// Prior temperature (1 = the model's distribution; lower is smoother).
    pub temperature: f32,
    /// Denoise the result with the model's training noise level (when it has one).
    pub denoise: bool,
    /// Pixel-art alpha: pixels less opaque than this (0-1) become transparent, the others opaque
    /// (see `SampleOptions::alpha_cutoff`); `None`: the model's recommended cutoff, else the
    /// model's alpha as it comes.
    pub alpha_cutoff: Option<f32>,
    /// Use the model's recommended sampling settings (`ModelConfig::sampling`) for what the
    /// request leaves unset (on by default).
    pub recommended: bool,
    /// Seamless tiling: the finished image's wrap-around seams are repaired so that it tiles
    /// (see `SampleOptions::tileable`; the streamed patches are from before the repair).
    pub tileable: bool,
    /// Palette: every pixel a palette colour or transparent (see `SampleOptions::palette`);
    /// `None` keeps the model's colours.
    pub palette: Option<tarflow::palette::PaletteChoice>,
}

impl GenerateTexture {
    /// An unconditional request with seed 0, no guidance, temperature 1 and denoising.
    pub fn new(model: Handle<TarflowModel>) -> Self {
        let d = SampleOptions::default();
        Self {
            model,
            class: TextureClass::Unconditional,
            seed: d.seed,
            guidance: None,
            temperature: d.temperature,
            denoise: d.denoise,
            alpha_cutoff: None,
            recommended: true,
            tileable: d.tileable,
            palette: d.palette,
        }
    }

    /// Generate this class.
    pub fn with_class(mut self, class: impl Into<TextureClass>) -> Self {
        self.class = class.into();
        self
    }

    /// Use this seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Use this guidance weight.
    pub fn with_guidance(mut self, guidance: f32) -> Self {
        self.guidance = Some(guidance);
        self
    }

    /// Use this prior temperature.
    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.temperature = temperature;
        self
    }

    /// Denoise the result or not.
    pub fn with_denoise(mut self, denoise: bool) -> Self {
        self.denoise = denoise;
        self
    }

    /// Snap alpha to transparent/opaque at this opacity (pixel-art sprites).
    pub fn with_alpha_cutoff(mut self, cutoff: f32) -> Self {
        self.alpha_cutoff = Some(cutoff);
        self
    }

    /// Snap every pixel to `n` colours of the model's learned palette for the class (the model
    /// file must carry palettes: `tarflow palette` adds them), snapped inside decoding.
    pub fn with_palette(mut self, n: usize) -> Self {
        self.palette = Some(tarflow::palette::PaletteChoice::Learned(n));
        self
    }

    /// Snap every pixel to these colours (a game's master palette).
    pub fn with_palette_colours(mut self, colours: Vec<[u8; 3]>) -> Self {
        self.palette = Some(tarflow::palette::PaletteChoice::Colours(colours));
        self
    }

    /// Ignore the model's recommended sampling settings: what the request leaves unset is the
    /// engine's default.
    pub fn without_recommended(mut self) -> Self {
        self.recommended = false;
        self
    }

    /// Make the texture tile seamlessly (block faces, floors, walls).
    pub fn tileable(mut self) -> Self {
        self.tileable = true;
        self
    }

    /// The engine's options for this request on a model of `config`: what the request sets,
    /// the model's recommended settings where it sets none (guidance, the alpha cutoff, the
    /// attention temperature; `denoise` is always the request's) (unless [`without_recommended`](Self::without_recommended)), the engine's defaults for
    /// everything else; as `tarflow::sample::sample` would take them to make the same texture.
    pub fn sample_options(&self, config: &tarflow::ModelConfig) -> SampleOptions {
        let base = if self.recommended {
            SampleOptions::recommended(config)
        } else {
            SampleOptions::default()
        };
        SampleOptions {
            seed: self.seed,
            guidance: self.guidance.unwrap_or(base.guidance),
            temperature: self.temperature,
            denoise: self.denoise,
            alpha_cutoff: self.alpha_cutoff.or(base.alpha_cutoff),
            tileable: self.tileable,
            palette: self.palette.clone(),
            ..base
        }
    }
}

/// Where a request stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TextureStatus {
    /// Waiting for its model to load.
    #[default]
    WaitingForModel,
    /// Sent to the workers, not begun.
    Queued,
    /// Being generated.
    Generating {
        /// Sampling steps done.
        done: usize,
        /// Sampling steps in all.
        total: usize,
    },
    /// Finished: the image is final.
    Finished,
    /// Failed, with the reason.
    Failed(String),
}

/// The texture of a [`GenerateTexture`] request, added with it.
///
/// Give it your own handle (for example from `Assets::<Image>::reserve_handle`, already set on
/// a `Sprite`) by inserting `TarflowTexture::new(handle)` with the request; otherwise a new
/// image is made. The image is an `Rgba8UnormSrgb` 2D texture kept in the main and render
/// worlds, so that it stays writable.
#[derive(Component, Debug, Clone, PartialEq, Default)]
pub struct TarflowTexture {
    /// The texture, usable at once on a `Sprite` or UI node.
    pub image: Handle<Image>,
    pub(crate) status: TextureStatus,
}

impl TarflowTexture {
    /// A texture to be generated into `image`.
    pub fn new(image: Handle<Image>) -> Self {
        Self {
            image,
            status: TextureStatus::default(),
        }
    }

    /// Where the request stands.
    pub fn status(&self) -> &TextureStatus {
        &self.status
    }
}

/// A fully transparent RGBA8 sRGB image of `side` x `side` pixels, kept in both worlds.
pub(crate) fn blank_image(side: u32) -> Image {
    let side = side.max(1);
    Image::new_fill(
        Extent3d {
            width: side,
            height: side,
            depth_or_array_layers: 1,
        },
        TextureDimension::D2,
        &[0, 0, 0, 0],
        TextureFormat::Rgba8UnormSrgb,
        RenderAssetUsages::MAIN_WORLD | RenderAssetUsages::RENDER_WORLD,
    )
}

/// Side in pixels of the images of a loaded model, if it is loaded.
pub(crate) fn model_side(world: &DeferredWorld, model: &Handle<TarflowModel>) -> Option<u32> {
    world
        .get_resource::<Assets<TarflowModel>>()?
        .get(model)
        .map(|m| m.model.config().img_size as u32)
}

/// Make the request's image at once and queue the request.
fn on_request_insert(mut world: DeferredWorld, ctx: HookContext) {
    let entity = ctx.entity;
    let Some(model) = world
        .get::<GenerateTexture>(entity)
        .map(|r| r.model.clone())
    else {
        return;
    };
    let side = model_side(&world, &model).unwrap_or(1);
    let given = world
        .get::<TarflowTexture>(entity)
        .map(|t| t.image.clone())
        .filter(|h| *h != Handle::default());
    let Some(mut images) = world.get_resource_mut::<Assets<Image>>() else {
        tracing::warn!(
            "bevy_tarflow: no `Assets<Image>` (add `ImagePlugin`); request {entity} ignored"
        );
        return;
    };
    let image = match given {
        Some(handle) => {
            if let Err(e) = images.insert(handle.id(), blank_image(side)) {
                tracing::warn!("bevy_tarflow: could not reset the image of request {entity}: {e}");
            }
            handle
        }
        None => images.add(blank_image(side)),
    };
    if let Some(mut texture) = world.get_mut::<TarflowTexture>(entity) {
        texture.image = image;
        texture.status = TextureStatus::WaitingForModel;
    }
    if let Some(mut jobs) = world.get_resource_mut::<TarflowJobs>() {
        jobs.queue(entity);
    }
}

/// Cancel the work of the request being removed or replaced.
fn on_request_discard(mut world: DeferredWorld, ctx: HookContext) {
    if let Some(mut jobs) = world.get_resource_mut::<TarflowJobs>() {
        jobs.cancel(ctx.entity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every builder setting reaches the engine's options (what the workers sample with).
    #[test]
    fn builder_settings_reach_the_sample_options() {
        let req = GenerateTexture::new(Handle::default())
            .with_seed(9)
            .with_guidance(2.5)
            .with_temperature(0.8)
            .with_denoise(false)
            .with_alpha_cutoff(0.5)
            .with_palette(8)
            .tileable();
        let plain = tarflow::ModelConfig::new(4, 16, 2, 128, 8, 1);
        let o = req.sample_options(&plain);
        assert!(o.tileable);
        assert_eq!(o.palette, Some(tarflow::palette::PaletteChoice::Learned(8)));
        assert!(
            !GenerateTexture::new(Handle::default())
                .sample_options(&plain)
                .tileable
        );
        assert_eq!(
            (o.seed, o.guidance, o.temperature, o.denoise, o.alpha_cutoff),
            (9, 2.5, 0.8, false, Some(0.5))
        );
        assert_eq!(GenerateTexture::new(Handle::default()).alpha_cutoff, None);
    }

    /// A model's recommended settings fill what a request leaves unset, and only that.
    #[test]
    fn recommended_settings_fill_the_gaps() {
        let mut cfg = tarflow::ModelConfig::new(4, 16, 2, 128, 8, 1);
        cfg.sampling = Some(tarflow::config::RecommendedSampling {
            guidance: Some(1.5),
            alpha_cutoff: Some(0.5),
            ..Default::default()
        });
        let req = GenerateTexture::new(Handle::default());
        let o = req.sample_options(&cfg);
        assert_eq!((o.guidance, o.alpha_cutoff), (1.5, Some(0.5)));
        let o = req.clone().with_guidance(3.0).sample_options(&cfg);
        assert_eq!((o.guidance, o.alpha_cutoff), (3.0, Some(0.5)));
        let o = req.clone().without_recommended().sample_options(&cfg);
        assert_eq!((o.guidance, o.alpha_cutoff), (0.0, None));
        // The engine's own merge agrees.
        let e = tarflow::sample::SampleOptions::recommended(&cfg);
        assert_eq!((e.guidance, e.alpha_cutoff), (1.5, Some(0.5)));
    }
}
