//! Messages the plugin writes about texture requests, each naming the request's entity.
//!
//! All are written in [`TarflowSystems::Apply`](crate::TarflowSystems::Apply) (in `PreUpdate`),
//! except failures found when a request is submitted, written in
//! [`TarflowSystems::Submit`](crate::TarflowSystems::Submit) (in `PostUpdate`).

use bevy::math::URect;
use bevy::prelude::*;

/// A request advanced: at most one per request and frame, with the latest count.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct TextureProgress {
    /// The entity holding the [`GenerateTexture`](crate::GenerateTexture) request.
    pub entity: Entity,
    /// The texture being generated.
    pub image: Handle<Image>,
    /// Sampling steps done.
    pub done: usize,
    /// Sampling steps in the whole request.
    pub total: usize,
}

/// Where a final patch was painted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchRegion {
    /// Index of the patch in raster order (row by row, left to right).
    pub index: usize,
    /// The patch's pixels in the texture (`max` exclusive).
    pub rect: URect,
}

/// Final patches were painted into a request's texture this frame (all of them through one
/// `Assets::get_mut`), in the order the sampler made them.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct TexturePatched {
    /// The entity holding the request.
    pub entity: Entity,
    /// The texture painted.
    pub image: Handle<Image>,
    /// The patches painted this frame.
    pub patches: Vec<PatchRegion>,
}

/// A request is complete: its texture now holds the final (denoised when asked) image.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct TextureFinished {
    /// The entity holding the request.
    pub entity: Entity,
    /// The finished texture.
    pub image: Handle<Image>,
}

/// A request failed (its model failed to load or does not fit, its class is unknown, its
/// options are invalid, or sampling returned an error or panicked). Other requests go on.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct TextureFailed {
    /// The entity holding the request.
    pub entity: Entity,
    /// The request's texture (left as far as it was painted).
    pub image: Handle<Image>,
    /// What went wrong, for people.
    pub error: String,
}
