//! A tileable run's seam repair is a phase of the sampling stream, one inpainting round per
//! step: its rounds come as progress events, a cancelled stream stops between them, and the
//! result is what `make_tileable` makes of the same images.

mod common;

use common::{max_abs_diff, reference_model};
use tarflow::edit::{InpaintOptions, default_band, make_tileable};
use tarflow::sample::{Labels, SampleEvent, SampleOptions, Sampler};

fn opts() -> SampleOptions {
    SampleOptions {
        tileable: true,
        denoise: false,
        seed: 3,
        ..Default::default()
    }
}

#[test]
fn the_seam_repair_steps_round_by_round_and_can_be_cancelled_between_rounds() {
    let model = reference_model("cond");
    let sampler = Sampler::new(&model).unwrap();
    let labels = Labels::Classes(vec![0, 1]);
    let rounds = InpaintOptions::default().rounds;
    let cfg = model.config();
    let tokens = cfg.num_blocks * (cfg.num_patches() - 1);
    let stream = sampler.stream(&labels, &opts()).unwrap();
    assert_eq!(stream.total_steps(), tokens + rounds);
    let mut tile_steps = Vec::new();
    let mut samples = None;
    for ev in stream {
        match ev.unwrap() {
            SampleEvent::Progress { done, .. } if done > tokens => tile_steps.push(done),
            SampleEvent::Finished(s) => samples = Some(*s),
            _ => {}
        }
    }
    assert_eq!(
        tile_steps,
        ((tokens + 1)..=(tokens + rounds)).collect::<Vec<_>>()
    );
    let s = samples.unwrap();
    let io = InpaintOptions {
        sample: opts(),
        ..Default::default()
    };
    let band = default_band(cfg.img_size, cfg.patch_size);
    let direct = make_tileable(&sampler, &s.raw, &labels, band, &io).unwrap();
    assert_eq!(max_abs_diff(&s.images, &direct), 0.0);

    // Cancelled after the first round: the next event is the cancellation, with one round done.
    let mut stream = sampler.stream(&labels, &opts()).unwrap();
    let token = stream.cancel_token();
    for ev in stream.by_ref() {
        if let SampleEvent::Progress { done, .. } = ev.unwrap()
            && done == tokens + 1
        {
            token.cancel();
            break;
        }
    }
    match stream.next() {
        Some(Ok(SampleEvent::Cancelled { done })) => assert_eq!(done, tokens + 1),
        other => panic!("expected the cancellation, got {other:?}"),
    }
    assert!(stream.next().is_none());
}
