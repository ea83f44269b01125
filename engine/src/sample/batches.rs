//! Generating many images in batches, in bounded memory: the prior noise is drawn batch by batch
//! (item k from noise stream k, so the result does not depend on the batch size) and each
//! finished batch goes to a sink at once, so a caller that writes or uploads it and lets it go
//! holds one batch at a time, whatever the count.

use candle_core::Tensor;

use super::noise::prior_noise_range;
use super::options::{Labels, SampleOptions};
use super::sampler::Sampler;
use super::stream::{SampleEvent, Samples};
use crate::error::{Error, Result};

/// Generate one image per label (`None` = unconditional), `batch` at a time, from the seeded
/// prior noise of `opts.seed` or, when given, from the rows of `z` (count, N, D).
///
/// `progress(done)` reports the images finished so far, fractionally within a batch (for a
/// progress bar); `sink(first, samples)` receives each batch, items `first ..` in order, as
/// soon as it is done. An error from the sink stops the run and is returned.
pub fn generate_batches(
    sampler: &Sampler,
    labels: &[Option<i64>],
    z: Option<&Tensor>,
    opts: &SampleOptions,
    batch: usize,
    mut progress: impl FnMut(f64),
    mut sink: impl FnMut(usize, Samples) -> Result<()>,
) -> Result<()> {
    let model = sampler.model();
    let count = labels.len();
    if let Some(z) = z {
        let rows = z.dim(0)?;
        if rows != count {
            return Err(Error::InvalidInput(format!(
                "{rows} latents given for {count} labels"
            )));
        }
    }
    let batch = batch.clamp(1, count.max(1));
    let conditional = model.config().num_classes > 0;
    for first in (0..count).step_by(batch) {
        let n = batch.min(count - first);
        let chunk = &labels[first..first + n];
        let labels = if conditional && chunk.iter().any(Option::is_some) {
            Labels::Classes(chunk.iter().map(|l| l.unwrap_or(-1)).collect())
        } else {
            Labels::Unconditional(n)
        };
        let noise = match z {
            Some(z) => z.narrow(0, first, n)?,
            None => prior_noise_range(model.config(), first, n, opts.seed, model.device())?,
        };
        let mut result = None;
        for event in sampler
            .stream_from_noise(&noise, &labels, opts)?
            .with_first_item(first)
        {
            match event? {
                SampleEvent::Progress { done, total } => {
                    progress(first as f64 + n as f64 * done as f64 / total.max(1) as f64)
                }
                SampleEvent::Finished(samples) => result = Some(samples),
                _ => {}
            }
        }
        let samples = result.ok_or_else(|| {
            Error::InvalidInput(format!(
                "sampling of items {first}.. ended without a result"
            ))
        })?;
        progress((first + n) as f64);
        sink(first, *samples)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InitOptions, Model, init_weights};
    use crate::{ModelConfig, candle::Device};

    fn model() -> Model {
        let mut cfg = ModelConfig::new(4, 8, 2, 64, 2, 1);
        cfg.num_classes = 3;
        let w = init_weights(
            &cfg,
            3,
            InitOptions {
                proj_out_scale: 0.05,
            },
            &Device::Cpu,
        )
        .unwrap();
        Model::from_weights(cfg, &w, &Device::Cpu).unwrap()
    }

    #[test]
    fn batches_arrive_in_order_and_equal_one_big_batch() {
        let sampler = Sampler::new(&model()).unwrap();
        let labels = [Some(0), None, Some(2), Some(1), Some(1), None, Some(0)];
        let opts = SampleOptions {
            guidance: 1.5,
            seed: 11,
            ..Default::default()
        };
        let run = |batch: usize| {
            let (mut firsts, mut images, mut last) = (Vec::new(), Vec::new(), 0.0);
            generate_batches(
                &sampler,
                &labels,
                None,
                &opts,
                batch,
                |p| {
                    assert!(p >= last, "progress went back from {last} to {p}");
                    last = p;
                },
                |first, s| {
                    firsts.push(first);
                    images.extend(s.rgba);
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(last, labels.len() as f64);
            (firsts, images)
        };
        let (firsts, small) = run(3);
        assert_eq!(firsts, [0, 3, 6]);
        let (_, whole) = run(7);
        assert_eq!(small, whole, "the batch size changes nothing");
        // Matches sampling the labels directly (item k's noise is stream k).
        let direct = sampler
            .sample(
                &Labels::Classes(labels.iter().map(|l| l.unwrap_or(-1)).collect()),
                &opts,
            )
            .unwrap();
        assert_eq!(direct.rgba, whole);
    }

    #[test]
    fn a_sink_error_stops_the_run() {
        let sampler = Sampler::new(&model()).unwrap();
        let mut calls = 0;
        let e = generate_batches(
            &sampler,
            &[None; 5],
            None,
            &SampleOptions::default(),
            2,
            |_| {},
            |_, _| {
                calls += 1;
                Err(Error::InvalidInput("disk full".into()))
            },
        )
        .unwrap_err();
        assert_eq!(calls, 1);
        assert!(e.to_string().contains("disk full"));
    }
}
