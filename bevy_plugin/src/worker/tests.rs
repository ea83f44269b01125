//! The worker pool's own tests (panics, shutdown with work in flight).

use super::*;
use std::sync::Arc;

use tarflow::Model;
use tarflow::candle::Device;
use tarflow::sample::{CancelToken, Labels, SampleOptions};

use crate::settings::TarflowSettings;

use std::time::{Duration, Instant};
use tarflow::ModelConfig;
use tarflow::model::init::{InitOptions, init_weights};

fn tiny() -> Arc<Model> {
    let mut cfg = ModelConfig::new(4, 4, 2, 64, 2, 1);
    cfg.num_classes = 2;
    let w = init_weights(
        &cfg,
        1,
        InitOptions {
            proj_out_scale: 0.05,
        },
        &Device::Cpu,
    )
    .expect("weights");
    Arc::new(Model::from_weights(cfg, &w, &Device::Cpu).expect("model"))
}

fn job(id: u64, model: &Arc<Model>, panic_after: Option<usize>) -> Job {
    Job {
        id,
        model: model.clone(),
        labels: Labels::repeat(0, 1),
        opts: SampleOptions {
            seed: id,
            ..Default::default()
        },
        cancel: CancelToken::new(),
        panic_after,
    }
}

/// Collect events until every job in `ids` ended (finished, failed or cancelled).
fn ends(pool: &TarflowWorkers, ids: &[u64]) -> Vec<WorkerEvent> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ended = ids.iter().all(|id| {
            out.iter().any(|e: &WorkerEvent| {
                e.job() == *id
                    && matches!(
                        e,
                        WorkerEvent::Finished { .. }
                            | WorkerEvent::Failed { .. }
                            | WorkerEvent::Cancelled { .. }
                    )
            })
        });
        if ended {
            return out;
        }
        assert!(Instant::now() < deadline, "workers did not finish in time");
        match pool.events.recv_timeout(Duration::from_millis(50)) {
            Ok(e) => out.push(e),
            Err(_) => continue,
        }
    }
}

#[test]
fn a_panic_fails_its_request_and_the_worker_goes_on() {
    let model = tiny();
    let mut pool = TarflowWorkers::start(&TarflowSettings::default());
    let monitor = pool.monitor();
    assert!(pool.submit(job(1, &model, Some(3))).is_ok());
    assert!(pool.submit(job(2, &model, None)).is_ok());
    let events = ends(&pool, &[1, 2]);
    let failed = events.iter().find_map(|e| match e {
        WorkerEvent::Failed { job: 1, error } => Some(error.clone()),
        _ => None,
    });
    let failed = failed.expect("job 1 fails");
    assert!(failed.contains("test panic inside generation"), "{failed}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, WorkerEvent::Finished { job: 2, .. }))
    );
    // The same (single) worker still takes work after the panic.
    assert!(pool.submit(job(3, &model, None)).is_ok());
    let events = ends(&pool, &[3]);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, WorkerEvent::Finished { job: 3, .. }))
    );
    let stats = monitor.stats();
    assert_eq!(
        (stats.panics, stats.jobs_failed, stats.jobs_finished),
        (1, 1, 2)
    );
    pool.shutdown();
    assert_eq!(monitor.stats().threads_alive, 0);
}

#[test]
fn dropping_the_pool_with_work_in_flight_joins_every_thread() {
    let mut cfg = ModelConfig::new(4, 16, 2, 128, 4, 2);
    cfg.num_classes = 2;
    let w = init_weights(&cfg, 1, InitOptions::default(), &Device::Cpu).expect("weights");
    let model = Arc::new(Model::from_weights(cfg, &w, &Device::Cpu).expect("model"));
    let pool = TarflowWorkers::start(&TarflowSettings {
        workers: 2,
        ..Default::default()
    });
    let monitor = pool.monitor();
    for id in 0..8 {
        assert!(pool.submit(job(id, &model, None)).is_ok());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while monitor.stats().steps < 3 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    let t = Instant::now();
    drop(pool);
    let stats = monitor.stats();
    assert_eq!(stats.threads_alive, 0);
    assert!(stats.jobs_finished < 8, "{stats:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}
