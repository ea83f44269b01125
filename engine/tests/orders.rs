//! Block orders (`ModelConfig::orders`): a model whose blocks read their patches column by
//! column must be exactly the raster-order model of the transposed image (with its position
//! embeddings transposed), on the forward pass, the training backend and every sampler; and a
//! model file keeps its orders.

mod common;

use common::{device, max_abs_diff, tol};
use tarflow::config::Order;
use tarflow::model::{InitOptions, init_weights};
use tarflow::sample::{Labels, Method, SampleOptions, Sampler, prior_noise};
use tarflow::{Model, ModelConfig, Weights};

const SIDE: usize = 4;

/// Raster index of the transposed grid's patch at raster index `r`.
fn transposed(r: usize) -> usize {
    (r % SIDE) * SIDE + r / SIDE
}

/// A random RGB 4x4 model with patch 1 (a token is a pixel), 3 blocks of 1 layer, 2 classes,
/// in `orders`, and its weights.
fn model(orders: Vec<Order>, seed: u64) -> (Model, Weights) {
    let mut cfg = ModelConfig::new(3, SIDE, 1, 64, 3, 1).with_orders(orders);
    cfg.num_classes = 2;
    let w = init_weights(
        &cfg,
        seed,
        InitOptions {
            proj_out_scale: 0.1,
        },
        &device(),
    )
    .unwrap();
    (Model::from_weights(cfg, &w, &device()).unwrap(), w)
}

/// The same weights with every block's position embedding rows transposed.
fn with_transposed_positions(w: &Weights) -> Weights {
    w.iter()
        .map(|(k, t)| {
            if k.ends_with("pos_embed") {
                let idx: Vec<u32> = (0..SIDE * SIDE).map(|r| transposed(r) as u32).collect();
                let idx = candle_core::Tensor::from_vec(idx, SIDE * SIDE, t.device()).unwrap();
                (k.clone(), t.index_select(&idx, 0).unwrap())
            } else {
                (k.clone(), t.clone())
            }
        })
        .collect()
}

fn transpose_images(x: &candle_core::Tensor) -> candle_core::Tensor {
    x.transpose(2, 3).unwrap().contiguous().unwrap()
}

#[test]
fn column_order_is_raster_order_on_the_transposed_image() {
    let (column, w) = model(vec![Order::Column], 3);
    let raster_cfg = ModelConfig {
        orders: vec![],
        ..column.config().clone()
    };
    let raster =
        Model::from_weights(raster_cfg, &with_transposed_positions(&w), &device()).unwrap();
    let x = (candle_core::Tensor::randn(0f32, 0.5, (2, 3, SIDE, SIDE), &device()).unwrap())
        .clamp(-1f32, 1f32)
        .unwrap();
    let labels = [0i64, 1];
    let c = column.forward(&x, Some(&labels)).unwrap();
    let r = raster
        .forward(&transpose_images(&x), Some(&labels))
        .unwrap();
    // z is (B, N, D) in raster order of each model's image: transpose back.
    let rz = column.unpatchify(&r.z).unwrap();
    let cz = column.unpatchify(&c.z).unwrap();
    let d = max_abs_diff(&cz, &transpose_images(&rz));
    assert!(
        d < tol().golden,
        "column model vs raster model on the transpose: {d}"
    );
    let (cl, rl) = (
        column.loss(&c).unwrap().to_scalar::<f32>().unwrap(),
        raster.loss(&r).unwrap().to_scalar::<f32>().unwrap(),
    );
    assert!((cl - rl).abs() < 1e-5, "losses {cl} vs {rl}");
    // The training backend (the host pass on the CPU) agrees with the forward pass.
    let (trained, grad) = column.loss_and_input_grad(&x, Some(&labels)).unwrap();
    assert!(
        (trained - cl).abs() < 1e-5,
        "host pass {trained} vs forward {cl}"
    );
    let (_, rgrad) = raster
        .loss_and_input_grad(&transpose_images(&x), Some(&labels))
        .unwrap();
    let g = max_abs_diff(&grad, &transpose_images(&rgrad));
    assert!(g < 1e-5, "input gradients differ by {g}");
    // Not vacuous: raster order on the same weights is another flow.
    let plain = Model::from_weights(
        ModelConfig {
            orders: vec![],
            ..column.config().clone()
        },
        &w,
        &device(),
    )
    .unwrap();
    let p = plain.forward(&x, Some(&labels)).unwrap();
    assert!(max_abs_diff(&p.z, &c.z) > 1e-3);
}

#[test]
fn every_sampler_inverts_a_mixed_order_model() {
    let (m, _) = model(vec![Order::Raster, Order::Column], 5);
    let sampler = Sampler::new(&m).unwrap();
    let labels = Labels::Classes(vec![0, 1, -1]);
    let z = prior_noise(m.config(), 3, 9, &device()).unwrap();
    let opts = SampleOptions {
        denoise: false,
        ..Default::default()
    };
    let run = |method| {
        sampler
            .reverse(
                &z,
                &labels,
                &SampleOptions {
                    method,
                    ..opts.clone()
                },
            )
            .unwrap()
    };
    let plain = run(Method::Plain);
    for method in [Method::Cached, Method::CachedOps, Method::Jacobi] {
        let d = max_abs_diff(&run(method).raw, &plain.raw);
        assert!(d < 1e-3, "{method:?} vs plain: {d}");
    }
    let out = m.forward(&plain.raw, labels.as_slice()).unwrap();
    let d = max_abs_diff(&out.z, &z);
    assert!(d < tol().golden, "forward(reverse(z)) vs z: {d}");
}

#[test]
fn model_files_keep_their_orders_and_export_refuses_them() {
    let (m, _) = model(vec![Order::Raster, Order::Column], 7);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    tarflow::format::save_model(&m, &path).unwrap();
    let back = tarflow::format::load_model(&path, &device()).unwrap();
    assert_eq!(back.config().orders, vec![Order::Raster, Order::Column]);
    let e = tarflow::format::save_reference_safetensors(&m, &dir.path().join("r.safetensors"))
        .unwrap_err();
    assert!(e.to_string().contains("raster order only"), "{e}");
}
