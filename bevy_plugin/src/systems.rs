//! The plugin's systems: submitting requests to the workers and painting what they send back.

use std::collections::HashMap;

use bevy::asset::LoadState;
use bevy::math::{URect, UVec2};
use bevy::prelude::*;
use tarflow::sample::{CancelToken, Labels, RgbaImage};

use crate::asset::TarflowModel;
use crate::messages::{
    PatchRegion, TextureFailed, TextureFinished, TexturePatched, TextureProgress,
};
use crate::request::{GenerateTexture, TarflowTexture, TextureStatus, blank_image};
use crate::settings::TarflowSettings;
use crate::worker::{Job, TarflowWorkers, WorkerEvent};

/// A request sent to the workers.
#[derive(Debug)]
struct Record {
    id: u64,
    cancel: CancelToken,
    image: Handle<Image>,
}

/// Requests waiting to be submitted and those in flight, by entity and by job id.
#[derive(Resource, Debug, Default)]
pub(crate) struct TarflowJobs {
    next_id: u64,
    pending: Vec<Entity>,
    by_entity: HashMap<Entity, Record>,
    by_job: HashMap<u64, Entity>,
}

impl TarflowJobs {
    /// Submit this entity's request when its model is there (once, in arrival order).
    pub(crate) fn queue(&mut self, entity: Entity) {
        if !self.pending.contains(&entity) {
            self.pending.push(entity);
        }
    }

    /// Forget this entity's request and stop its work at the next step.
    pub(crate) fn cancel(&mut self, entity: Entity) {
        self.pending.retain(|e| *e != entity);
        if let Some(record) = self.by_entity.remove(&entity) {
            record.cancel.cancel();
            self.by_job.remove(&record.id);
        }
    }

    fn end(&mut self, entity: Entity) {
        if let Some(record) = self.by_entity.remove(&entity) {
            self.by_job.remove(&record.id);
        }
    }
}

/// Set a request's texture to failed and say so.
fn fail(
    entity: Entity,
    texture: &mut TarflowTexture,
    error: String,
    failed: &mut MessageWriter<TextureFailed>,
) {
    tracing::warn!("bevy_tarflow: texture request {entity} failed: {error}");
    texture.status = TextureStatus::Failed(error.clone());
    failed.write(TextureFailed {
        entity,
        image: texture.image.clone(),
        error,
    });
}

/// Make sure `handle` holds an image of `side` x `side` pixels (a transparent one if not).
fn ensure_size(images: &mut Assets<Image>, handle: &Handle<Image>, side: u32) {
    let ok = images
        .get(handle)
        .is_some_and(|img| img.width() == side && img.height() == side && img.data.is_some());
    if !ok && let Err(e) = images.insert(handle.id(), blank_image(side)) {
        tracing::warn!("bevy_tarflow: could not size a request's image: {e}");
    }
}

/// Send every request whose model has loaded to the workers; fail those whose model failed to
/// load, whose class is unknown or whose options are invalid. Requests changed in place start
/// over.
#[allow(clippy::too_many_arguments)]
pub(crate) fn submit_requests(
    mut jobs: ResMut<TarflowJobs>,
    workers: Option<Res<TarflowWorkers>>,
    models: Option<Res<Assets<TarflowModel>>>,
    server: Option<Res<AssetServer>>,
    mut images: Option<ResMut<Assets<Image>>>,
    changed: Query<(Entity, Ref<GenerateTexture>), Changed<GenerateTexture>>,
    mut requests: Query<(&GenerateTexture, &mut TarflowTexture)>,
    mut failed: MessageWriter<TextureFailed>,
    mut model_events: MessageReader<AssetEvent<TarflowModel>>,
) {
    // Models removed from `Assets` (requests in flight keep theirs: they hold the model).
    let removed: Vec<AssetId<TarflowModel>> = model_events
        .read()
        .filter_map(|e| match e {
            AssetEvent::Removed { id } => Some(*id),
            _ => None,
        })
        .collect();
    // A request mutated in place (not re-inserted: the hooks see those) starts over.
    for (entity, request) in &changed {
        if !request.is_added() {
            jobs.cancel(entity);
            jobs.queue(entity);
            if let (Ok((_, texture)), Some(images)) = (requests.get(entity), images.as_mut())
                && let Some(side) = images.get(&texture.image).map(|i| i.width())
                && let Err(e) = images.insert(texture.image.id(), blank_image(side))
            {
                tracing::warn!("bevy_tarflow: could not reset the image of request {entity}: {e}");
            }
        }
    }
    if jobs.pending.is_empty() {
        return;
    }
    let pending = std::mem::take(&mut jobs.pending);
    let mut waiting = Vec::new();
    let mut to_send = Vec::new();
    for entity in pending {
        let Ok((request, mut texture)) = requests.get_mut(entity) else {
            continue;
        };
        let Some(model) = models.as_ref().and_then(|m| m.get(&request.model)) else {
            let state = server
                .as_ref()
                .and_then(|s| s.get_load_state(request.model.id()));
            match state {
                Some(LoadState::Failed(e)) => fail(
                    entity,
                    &mut texture,
                    format!("the model failed to load: {e}"),
                    &mut failed,
                ),
                // Loaded once and gone from `Assets` since: it will not come back by itself.
                _ if removed.contains(&request.model.id())
                    || matches!(state, Some(LoadState::Loaded)) =>
                {
                    fail(
                        entity,
                        &mut texture,
                        "the model was unloaded before the request could start".into(),
                        &mut failed,
                    )
                }
                _ => waiting.push(entity),
            }
            continue;
        };
        let config = model.model.config();
        if let Some(images) = images.as_mut() {
            ensure_size(images, &texture.image, config.img_size as u32);
        }
        let labels = match request.class.resolve(config) {
            Ok(None) => Labels::Unconditional(1),
            Ok(Some(label)) => Labels::Classes(vec![label]),
            Err(e) => {
                fail(entity, &mut texture, e.to_string(), &mut failed);
                continue;
            }
        };
        let opts = request.sample_options(config);
        if let Err(e) = opts.validate() {
            fail(entity, &mut texture, e.to_string(), &mut failed);
            continue;
        }
        if workers.is_none() {
            fail(
                entity,
                &mut texture,
                "the TarflowPlugin's workers are not running".into(),
                &mut failed,
            );
            continue;
        }
        let id = jobs.next_id;
        jobs.next_id += 1;
        let cancel = CancelToken::new();
        let job = Job {
            id,
            model: model.model.clone(),
            labels,
            opts,
            cancel: cancel.clone(),
            #[cfg(test)]
            panic_after: None,
        };
        to_send.push((entity, job));
    }
    // All of a frame's requests are queued at once, so that a worker can batch them.
    if let Some(workers) = workers.as_ref() {
        let entities: Vec<Entity> = to_send.iter().map(|(e, _)| *e).collect();
        let records: Vec<(u64, CancelToken)> = to_send
            .iter()
            .map(|(_, j)| (j.id, j.cancel.clone()))
            .collect();
        let sent = workers.submit_all(to_send.into_iter().map(|(_, j)| j).collect());
        for (entity, (id, cancel)) in entities.into_iter().zip(records) {
            let Ok((_, mut texture)) = requests.get_mut(entity) else {
                continue;
            };
            if sent.is_err() {
                fail(
                    entity,
                    &mut texture,
                    "no worker thread is running".into(),
                    &mut failed,
                );
                continue;
            }
            texture.status = TextureStatus::Queued;
            jobs.by_job.insert(id, entity);
            jobs.by_entity.insert(
                entity,
                Record {
                    id,
                    cancel,
                    image: texture.image.clone(),
                },
            );
        }
    }
    // Requests queued by hooks while this ran (none: hooks run at command flushes) come after.
    waiting.append(&mut jobs.pending);
    jobs.pending = waiting;
}

/// Copy a `size` x `size` RGBA8 patch to (x, y) of an image `width` x `height`, clipped.
fn blit(data: &mut [u8], width: u32, height: u32, x: u32, y: u32, size: u32, pixels: &[u8]) {
    let (w, h) = (width as usize, height as usize);
    let (x, y, s) = (x as usize, y as usize, size as usize);
    if x >= w {
        return;
    }
    let n = s.min(w - x);
    for row in 0..s {
        let ty = y + row;
        if ty >= h {
            break;
        }
        let (src, dst) = (row * s * 4, (ty * w + x) * 4);
        if let (Some(src), Some(dst)) =
            (pixels.get(src..src + n * 4), data.get_mut(dst..dst + n * 4))
        {
            dst.copy_from_slice(src);
        }
    }
}

/// What one job sent this frame.
#[derive(Default)]
struct Batch {
    patches: Vec<(PatchRegion, Vec<u8>)>,
    progress: Option<(usize, usize)>,
    finished: Option<RgbaImage>,
    failed: Option<String>,
    cancelled: bool,
}

/// Take in what the workers sent (at most `patches_per_frame` patches), paint each texture's
/// patches through one `Assets::get_mut`, and write the messages.
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply_results(
    mut jobs: ResMut<TarflowJobs>,
    workers: Option<Res<TarflowWorkers>>,
    settings: Option<Res<TarflowSettings>>,
    mut images: Option<ResMut<Assets<Image>>>,
    mut textures: Query<&mut TarflowTexture>,
    mut progress: MessageWriter<TextureProgress>,
    mut patched: MessageWriter<TexturePatched>,
    mut finished: MessageWriter<TextureFinished>,
    mut failed: MessageWriter<TextureFailed>,
) {
    let Some(workers) = workers else {
        return;
    };
    let budget = settings.map_or(usize::MAX, |s| s.patches_per_frame.max(1));
    let mut order: Vec<u64> = Vec::new();
    let mut batches: HashMap<u64, Batch> = HashMap::new();
    let mut painted = 0;
    while painted < budget {
        let Some(event) = workers.try_event() else {
            break;
        };
        let job = event.job();
        let batch = batches.entry(job).or_insert_with(|| {
            order.push(job);
            Batch::default()
        });
        match event {
            WorkerEvent::Progress { done, total, .. } => batch.progress = Some((done, total)),
            WorkerEvent::Patch {
                index,
                x,
                y,
                size,
                pixels,
                ..
            } => {
                painted += 1;
                let rect = URect::from_corners(UVec2::new(x, y), UVec2::new(x + size, y + size));
                batch.patches.push((PatchRegion { index, rect }, pixels));
            }
            WorkerEvent::Finished { image, .. } => batch.finished = Some(image),
            WorkerEvent::Failed { error, .. } => batch.failed = Some(error),
            WorkerEvent::Cancelled { .. } => batch.cancelled = true,
        }
    }
    for job in order {
        let Some(batch) = batches.remove(&job) else {
            continue;
        };
        // Events of a request cancelled since are stale: drop them.
        let Some(&entity) = jobs.by_job.get(&job) else {
            continue;
        };
        let Some(image) = jobs.by_entity.get(&entity).map(|r| r.image.clone()) else {
            continue;
        };
        if (!batch.patches.is_empty() || batch.finished.is_some())
            && let Some(images) = images.as_mut()
            && let Some(mut img) = images.get_mut(&image)
        {
            let (w, h) = (img.width(), img.height());
            if let Some(data) = img.data.as_mut() {
                for (region, pixels) in &batch.patches {
                    let r = region.rect;
                    blit(data, w, h, r.min.x, r.min.y, r.width(), pixels);
                }
            }
            if let Some(done) = &batch.finished {
                if done.width == w && done.height == h && img.data.is_some() {
                    img.data = Some(done.pixels.clone());
                } else {
                    let mut fresh = blank_image(done.width);
                    fresh.data = Some(done.pixels.clone());
                    *img = fresh;
                }
            }
        }
        let mut texture = textures.get_mut(entity).ok();
        if !batch.patches.is_empty() {
            patched.write(TexturePatched {
                entity,
                image: image.clone(),
                patches: batch.patches.into_iter().map(|(r, _)| r).collect(),
            });
        }
        if let Some((done, total)) = batch.progress {
            if let Some(t) = texture.as_mut() {
                t.status = TextureStatus::Generating { done, total };
            }
            progress.write(TextureProgress {
                entity,
                image: image.clone(),
                done,
                total,
            });
        }
        if batch.finished.is_some() {
            if let Some(t) = texture.as_mut() {
                t.status = TextureStatus::Finished;
            }
            finished.write(TextureFinished { entity, image });
            jobs.end(entity);
        } else if let Some(error) = batch.failed {
            tracing::warn!("bevy_tarflow: texture request {entity} failed: {error}");
            if let Some(t) = texture.as_mut() {
                t.status = TextureStatus::Failed(error.clone());
            }
            failed.write(TextureFailed {
                entity,
                image,
                error,
            });
            jobs.end(entity);
        } else if batch.cancelled {
            jobs.end(entity);
        }
    }
}

/// Drops the workers' prepared samplers of model assets that were removed, so an unloaded
/// model's weights are freed at once rather than at the next request.
pub(crate) fn prune_samplers(
    mut events: MessageReader<AssetEvent<TarflowModel>>,
    workers: Option<Res<TarflowWorkers>>,
) {
    let removed = events
        .read()
        .any(|e| matches!(e, AssetEvent::Removed { .. } | AssetEvent::Unused { .. }));
    if let (true, Some(w)) = (removed, workers) {
        w.prune_samplers();
    }
}

#[cfg(test)]
mod tests {
    use super::blit;

    #[test]
    fn blit_places_and_clips() {
        let mut data = vec![0u8; 3 * 3 * 4];
        blit(&mut data, 3, 3, 2, 2, 2, &[7; 16]);
        assert_eq!(data.iter().filter(|&&v| v == 7).count(), 4);
        assert_eq!(&data[(2 * 3 + 2) * 4..], &[7, 7, 7, 7]);
        let mut data = vec![0u8; 4 * 4 * 4];
        let px: Vec<u8> = (0..16).collect();
        blit(&mut data, 4, 4, 2, 0, 2, &px);
        assert_eq!(&data[8..16], &px[0..8]);
        assert_eq!(&data[(4 + 2) * 4..(4 + 4) * 4], &px[8..16]);
    }
}
