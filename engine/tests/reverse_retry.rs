//! An item whose reverse pass goes non-finite is sampled again, alone and from the same noise,
//! with safer settings; the other items of its batch are untouched, and the result does not
//! depend on the batch size.

mod common;

use common::{max_abs_diff, reference_model};
use tarflow::Error;
use tarflow::sample::{
    GuideWhat, Labels, SampleEvent, SampleOptions, Sampler, Samples, generate_batches,
};

/// Item 1 is unconditional, so guidance cannot move it; items 0 and 2 are guided so hard that
/// the linear rule's extrapolated log-scales overflow.
fn labels() -> Labels {
    Labels::Classes(vec![0, -1, 1])
}

fn opts(guidance: f32) -> SampleOptions {
    SampleOptions {
        guidance,
        guide_what: GuideWhat::Ab,
        seed: 5,
        ..Default::default()
    }
}

#[test]
fn diverged_items_are_sampled_again_and_the_others_are_untouched() {
    let model = reference_model("cond");
    let sampler = Sampler::new(&model).unwrap();
    let cfg = model.config();
    let stream = sampler.stream(&labels(), &opts(1e4)).unwrap();
    let planned = stream.total_steps();
    let (mut progress, mut last_done, mut last_total) = (0, 0, 0);
    let mut samples: Option<Samples> = None;
    for ev in stream {
        match ev.unwrap() {
            SampleEvent::Progress { done, total } => {
                progress += 1;
                (last_done, last_total) = (done, total);
            }
            SampleEvent::Finished(s) => samples = Some(*s),
            _ => {}
        }
    }
    let guided = samples.unwrap();
    let items: Vec<(usize, f32, f32)> = guided
        .resampled
        .iter()
        .map(|r| (r.item, r.guidance, r.temperature))
        .collect();
    // Half of 1e4 diverges too, so both land on the unguided rung at the run's temperature.
    assert_eq!(items, [(0, 0.0, 1.0), (2, 0.0, 1.0)]);
    // Two retries of one rung each (half guidance, then none), each a full reverse pass of its
    // items: the stream's count of work grows by them and ends where it says.
    let tokens = cfg.num_blocks * (cfg.num_patches() - 1);
    assert_eq!(last_total, planned + 2 * tokens);
    assert_eq!((progress, last_done), (last_total, last_total));

    // The unguided run of the same batch: the unconditional item is the same under any
    // guidance, the others are what the retry made, so every tensor agrees bit for bit.
    let unguided = sampler.sample(&labels(), &opts(0.0)).unwrap();
    assert!(unguided.resampled.is_empty());
    assert_eq!(max_abs_diff(&guided.raw, &unguided.raw), 0.0);
    assert_eq!(max_abs_diff(&guided.images, &unguided.images), 0.0);
    assert_eq!(guided.after_block.len(), unguided.after_block.len());
    for (a, b) in guided.after_block.iter().zip(&unguided.after_block) {
        assert_eq!(max_abs_diff(a, b), 0.0);
    }
    assert_eq!(guided.rgba, unguided.rgba);
    assert!(guided.passes > unguided.passes);
}

#[test]
fn without_retries_a_diverged_item_fails_the_run() {
    let model = reference_model("cond");
    let o = SampleOptions {
        retry_diverged: false,
        ..opts(1e4)
    };
    match tarflow::sample::sample(&model, &labels(), &o) {
        Err(Error::NonFinite(msg)) => assert!(msg.contains("flow block"), "{msg}"),
        other => panic!("expected a non-finite error, got {other:?}"),
    }
}

#[test]
fn retries_do_not_depend_on_the_batch_size() {
    let model = reference_model("cond");
    let sampler = Sampler::new(&model).unwrap();
    let labels: Vec<Option<i64>> = vec![Some(0), None, Some(1), None];
    let run = |batch: usize| {
        let mut rgba = Vec::new();
        let mut resampled = Vec::new();
        generate_batches(
            &sampler,
            &labels,
            None,
            &opts(1e4),
            batch,
            |_| {},
            |first, s| {
                resampled.extend(s.resampled.iter().map(|r| first + r.item));
                rgba.extend(s.rgba);
                Ok(())
            },
        )
        .unwrap();
        (rgba, resampled)
    };
    let (one, r1) = run(1);
    let (all, r4) = run(4);
    assert_eq!(r1, [0, 2]);
    assert_eq!(r1, r4);
    assert_eq!(one, all);
}

#[test]
fn an_item_no_retry_can_save_is_an_error_naming_it() {
    let model = reference_model("cond");
    // A prior this hot overflows whatever the guidance, and 0.7 of it does too.
    let o = SampleOptions {
        temperature: 1e30,
        ..opts(2.0)
    };
    match tarflow::sample::sample(&model, &Labels::Classes(vec![0, 1]), &o) {
        Err(Error::NonFinite(msg)) => {
            assert!(msg.contains("item(s) 0, 1"), "{msg}");
            assert!(msg.contains("without guidance"), "{msg}");
        }
        other => panic!("expected a non-finite error, got {other:?}"),
    }
}
