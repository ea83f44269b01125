//! The app exiting while generation is under way leaves no thread behind, counted by the
//! kernel (`/proc/self/task`), not by the plugin's own counters. Alone in its test binary so
//! that no other test's threads come and go meanwhile.

mod common;

use std::time::{Duration, Instant};

use bevy::asset::AssetPlugin;
use bevy::prelude::*;
use bevy_tarflow::TarflowWorkers;
use bevy_tarflow::prelude::*;
use common::slow_model;

/// Names of this process's threads, from the kernel.
fn threads() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

#[derive(Resource)]
struct ExitAfter(u32);

fn exit_after(mut n: ResMut<ExitAfter>, mut exit: MessageWriter<AppExit>) {
    n.0 = n.0.saturating_sub(1);
    if n.0 == 0 {
        exit.write(AppExit::Success);
    }
}

/// Run an app with `requests` slow requests on 3 workers until `steps` sampling steps ran,
/// then let it exit through `App::run` (which drops it).
fn run_and_exit(requests: u64, steps: usize) {
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin::default(),
        ImagePlugin::default(),
        TarflowPlugin {
            settings: TarflowSettings {
                workers: 3,
                ..Default::default()
            },
        },
    ));
    app.finish();
    app.cleanup();
    let monitor = app.world().resource::<TarflowWorkers>().monitor();
    let model = app
        .world_mut()
        .resource_mut::<Assets<TarflowModel>>()
        .add(slow_model(0));
    for seed in 0..requests {
        app.world_mut()
            .spawn(GenerateTexture::new(model.clone()).with_seed(seed));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while monitor.stats().steps < steps {
        assert!(Instant::now() < deadline, "no progress");
        app.update();
        std::thread::sleep(Duration::from_millis(2));
    }
    // The workers (names truncated to 15 characters by the kernel; threads they start, such
    // as the numeric pools', inherit the name).
    let workers = threads()
        .iter()
        .filter(|n| n.starts_with("tarflow-worker"))
        .count();
    assert!(workers >= 3, "{:?}", threads());
    app.insert_resource(ExitAfter(2))
        .add_systems(Update, exit_after);
    assert_eq!(app.run(), AppExit::Success);
    let stats = monitor.stats();
    assert_eq!(stats.threads_alive, 0, "{stats:?}");
    assert!(stats.jobs_finished < requests as usize, "{stats:?}");
}

#[test]
fn the_app_exiting_mid_generation_leaves_no_thread() {
    // A first app, with the rounds' work (batched: large products), starts the process-wide
    // pools (Bevy's task pools, candle's threads) that live as long as the process; the next
    // ones must leave the thread list as they found it. Rayon's global pool, which the `gemm`
    // products of large batches start on first use (possibly late in a run), is started here.
    rayon::broadcast(|_| ());
    run_and_exit(24, 6);
    let before = threads();
    for round in 0..3 {
        run_and_exit(24, 6);
        // Joined threads leave `/proc/self/task` as they exit: give the kernel a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while threads() != before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(threads(), before, "round {round}: threads left behind");
    }
}
