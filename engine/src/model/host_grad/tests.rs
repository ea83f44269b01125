//! Each host kernel against candle's composed ops and autograd, and the whole pass against
//! [`Model::forward`] + [`Model::loss`] + autograd on random small models (property tests).

use candle_core::{D, DType, Device, Tensor, Var};
use proptest::prelude::*;

use super::kernels::{
    gelu_bwd, gelu_fwd, layer_norm_bwd, layer_norm_fwd, linear_dw, linear_dx, linear_fwd,
};
use super::*;
use crate::config::LAYER_NORM_EPS;
use crate::model::{InitOptions, Weights, init_weights};

/// Deterministic values in [-2, 2).
fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 4.0 - 2.0
        })
        .collect()
}

fn var(v: Vec<f32>, shape: &[usize]) -> Var {
    Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
}

fn host(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// max|a - b| / max(max|b|, 1e-6).
fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    let r = rel(got, want);
    assert!(r <= tol, "{what}: relative difference {r} > {tol}");
}

/// candle's composed LayerNorm (the differentiable fallback of `LayerNorm::forward`).
fn composed_layer_norm(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    let mean = x.mean_keepdim(D::Minus1).unwrap();
    let xc = x.broadcast_sub(&mean).unwrap();
    let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    let xn = xc
        .broadcast_div(&(var + LAYER_NORM_EPS).unwrap().sqrt().unwrap())
        .unwrap();
    xn.broadcast_mul(w).unwrap().broadcast_add(b).unwrap()
}

fn composed_linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    x.matmul(&w.t().unwrap()).unwrap().broadcast_add(b).unwrap()
}

/// `sum(y * r)` for fixed random r: every output gets its own gradient r.
fn weighted_sum(y: &Tensor, seed: u32) -> (Tensor, Vec<f32>) {
    let r = data(y.elem_count(), seed);
    let rt = Tensor::from_vec(r.clone(), y.shape(), y.device()).unwrap();
    ((y * rt).unwrap().sum_all().unwrap(), r)
}

#[test]
fn linear_forward_and_backward_match_autograd() {
    let (m, k, n) = (37, 24, 40);
    let x = var(data(m * k, 1), &[m, k]);
    let w = var(data(n * k, 2), &[n, k]);
    let b = var(data(n, 3), &[n]);
    let y = composed_linear(x.as_tensor(), w.as_tensor(), b.as_tensor());
    let (loss, dy) = weighted_sum(&y, 4);
    let g = loss.backward().unwrap();
    let (xv, wv, bv) = (
        host(x.as_tensor()),
        host(w.as_tensor()),
        host(b.as_tensor()),
    );
    let mut out = vec![0f32; m * n];
    linear_fwd(&mut out, &xv, &wv, &bv, m, false).unwrap();
    assert_close("y", &out, &host(&y), 1e-5);
    // Accumulating adds the layer's output to what is there.
    let mut acc = vec![1f32; m * n];
    linear_fwd(&mut acc, &xv, &wv, &bv, m, true).unwrap();
    let want: Vec<f32> = host(&y).iter().map(|v| v + 1.0).collect();
    assert_close("y accumulated", &acc, &want, 1e-5);
    let mut dx = vec![0f32; m * k];
    linear_dx(&mut dx, &dy, &wv, m, n, false).unwrap();
    assert_close("dx", &dx, &host(g.get(x.as_tensor()).unwrap()), 1e-5);
    let (mut dw, mut db) = (vec![0f32; n * k], vec![0f32; n]);
    linear_dw(&mut dw, &mut db, &dy, &xv, m).unwrap();
    assert_close("dw", &dw, &host(g.get(w.as_tensor()).unwrap()), 1e-5);
    assert_close("db", &db, &host(g.get(b.as_tensor()).unwrap()), 1e-5);
    // Undersized buffers are an error, not a wild write.
    assert!(linear_dx(&mut dx[..5], &dy, &wv, m, n, false).is_err());
}

#[test]
fn layer_norm_forward_and_backward_match_autograd() {
    let (m, c) = (19, 64);
    let x = var(data(m * c, 5), &[m, c]);
    let w = var(data(c, 6), &[c]);
    let b = var(data(c, 7), &[c]);
    let y = composed_layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor());
    let (loss, dy) = weighted_sum(&y, 8);
    let g = loss.backward().unwrap();
    let (wv, bv) = (host(w.as_tensor()), host(b.as_tensor()));
    let (mut out, mut xhat, mut rstd) = (vec![0f32; m * c], vec![0f32; m * c], vec![0f32; m]);
    layer_norm_fwd(
        &host(x.as_tensor()),
        &wv,
        &bv,
        &mut out,
        &mut xhat,
        &mut rstd,
    );
    assert_close("y", &out, &host(&y), 1e-5);
    // The input gradient is accumulated: start from ones.
    let mut dx = vec![1f32; m * c];
    let (mut dw, mut db) = (vec![0f32; c], vec![0f32; c]);
    layer_norm_bwd(&dy, &xhat, &rstd, &wv, &mut dx, Some((&mut dw, &mut db)));
    let want: Vec<f32> = host(g.get(x.as_tensor()).unwrap())
        .iter()
        .map(|v| v + 1.0)
        .collect();
    assert_close("dx", &dx, &want, 1e-4);
    assert_close("dw", &dw, &host(g.get(w.as_tensor()).unwrap()), 1e-5);
    assert_close("db", &db, &host(g.get(b.as_tensor()).unwrap()), 1e-5);
}

/// LayerNorm, Linear(C, 4C), erf GELU, Linear(4C, C) as the host layer runs it.
#[test]
fn vectorised_gelu_follows_the_erf_form_on_every_instruction_set() {
    use candle_core::cpu::erf::erfc_f64;
    // A fine grid over the range activations take, the tails, and zero.
    let xs: Vec<f32> = (-4000..=4000)
        .map(|i| i as f32 * 0.003)
        .chain([-40.0, -20.0, -13.0, 13.0, 20.0, 40.0, 1e-30, -1e-30, 0.0])
        .collect();
    let reference = |x: f32| {
        let x = f64::from(x);
        // Phi(x) = erfc(-x / sqrt 2) / 2, accurate in both tails.
        let cdf = 0.5 * erfc_f64(-x * std::f64::consts::FRAC_1_SQRT_2);
        let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        (cdf * x, cdf + x * pdf)
    };
    let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
    for isa in super::isa::Isa::available() {
        let mut d = xs.clone();
        let mut y = vec![0f32; xs.len()];
        super::kernels::gelu_fwd_on(isa, &mut d, &mut y);
        for ((&x, &g), &dg) in xs.iter().zip(&y).zip(&d) {
            let (want, want_d) = reference(x);
            let scale = f64::from(x.abs()).max(1.0);
            assert!(
                (f64::from(g) - want).abs() <= 2e-7 * scale,
                "{isa:?}: gelu({x}) = {g}, want {want}"
            );
            assert!(
                (f64::from(dg) - want_d).abs() <= 3e-7 * scale,
                "{isa:?}: gelu'({x}) = {dg}, want {want_d}"
            );
        }
        // The tails keep their relative accuracy (what a scalar `1 + erf` loses).
        let tails = [-3.0f32, -5.0, -8.0];
        let (mut td, mut ty) = (tails.to_vec(), vec![0f32; tails.len()]);
        super::kernels::gelu_fwd_on(isa, &mut td, &mut ty);
        for (&x, &g) in tails.iter().zip(&ty) {
            let want = reference(x).0;
            let r = ((f64::from(g) - want) / want).abs();
            assert!(
                r < 1e-5,
                "{isa:?}: gelu({x}) = {g}, want {want} (relative {r})"
            );
        }
        match &first {
            None => first = Some((y, d)),
            Some((y0, d0)) => {
                assert_eq!(&y, y0, "{isa:?}: the same bits as the portable path");
                assert_eq!(&d, d0, "{isa:?}: the same bits as the portable path");
            }
        }
    }
}

#[test]
fn gelu_mlp_backward_matches_autograd() {
    let (m, c) = (23, 64);
    let hid = 4 * c;
    let x = var(data(m * c, 9), &[m, c]);
    let nw = var(data(c, 10), &[c]);
    let nb = var(data(c, 11), &[c]);
    let w1 = var(
        data(hid * c, 12).iter().map(|v| v / 8.0).collect(),
        &[hid, c],
    );
    let b1 = var(data(hid, 13), &[hid]);
    let w2 = var(
        data(c * hid, 14).iter().map(|v| v / 16.0).collect(),
        &[c, hid],
    );
    let b2 = var(data(c, 15), &[c]);
    let ln = composed_layer_norm(x.as_tensor(), nw.as_tensor(), nb.as_tensor());
    let f1 = composed_linear(&ln, w1.as_tensor(), b1.as_tensor());
    let y = composed_linear(&f1.gelu_erf().unwrap(), w2.as_tensor(), b2.as_tensor());
    let (loss, dy) = weighted_sum(&y, 16);
    let g = loss.backward().unwrap();
    let hv = |v: &Var| host(v.as_tensor());
    let (mut lnv, mut xhat, mut rstd) = (vec![0f32; m * c], vec![0f32; m * c], vec![0f32; m]);
    layer_norm_fwd(&hv(&x), &hv(&nw), &hv(&nb), &mut lnv, &mut xhat, &mut rstd);
    let mut f = vec![0f32; m * hid];
    linear_fwd(&mut f, &lnv, &hv(&w1), &hv(&b1), m, false).unwrap();
    let mut gl = vec![0f32; m * hid];
    gelu_fwd(&mut f, &mut gl);
    let mut out = vec![0f32; m * c];
    linear_fwd(&mut out, &gl, &hv(&w2), &hv(&b2), m, false).unwrap();
    assert_close("y", &out, &host(&y), 1e-5);
    let mut dg = vec![0f32; m * hid];
    linear_dx(&mut dg, &dy, &hv(&w2), m, c, false).unwrap();
    let (mut dw2, mut db2) = (vec![0f32; c * hid], vec![0f32; c]);
    linear_dw(&mut dw2, &mut db2, &dy, &gl, m).unwrap();
    gelu_bwd(&f, &mut dg);
    let mut dln = vec![0f32; m * c];
    linear_dx(&mut dln, &dg, &hv(&w1), m, hid, false).unwrap();
    let (mut dw1, mut db1) = (vec![0f32; hid * c], vec![0f32; hid]);
    linear_dw(&mut dw1, &mut db1, &dg, &lnv, m).unwrap();
    let mut dx = vec![0f32; m * c];
    let (mut dnw, mut dnb) = (vec![0f32; c], vec![0f32; c]);
    layer_norm_bwd(
        &dln,
        &xhat,
        &rstd,
        &hv(&nw),
        &mut dx,
        Some((&mut dnw, &mut dnb)),
    );
    for (name, got, v) in [
        ("dx", &dx, &x),
        ("d norm w", &dnw, &nw),
        ("d norm b", &dnb, &nb),
        ("d fc1 w", &dw1, &w1),
        ("d fc1 b", &db1, &b1),
        ("d fc2 w", &dw2, &w2),
        ("d fc2 b", &db2, &b2),
    ] {
        assert_close(name, got, &host(g.get(v.as_tensor()).unwrap()), 1e-4);
    }
}

/// Causal attention of one item (two heads) against the composed candle ops and the -inf mask.
#[test]
fn attention_forward_and_backward_match_autograd() {
    let (n, c) = (13, 128);
    let h = c / HEAD_DIM;
    let (b, batch_items) = (2, 2);
    let qkv = var(data(b * n * 3 * c, 17), &[b, n, 3 * c]);
    let split = qkv
        .as_tensor()
        .reshape((b, n, 3 * h, HEAD_DIM))
        .unwrap()
        .transpose(1, 2)
        .unwrap();
    let part = |i: usize| split.narrow(1, i * h, h).unwrap().contiguous().unwrap();
    let (q, k, v) = (part(0), part(1), part(2));
    let mask = crate::model::meta_block::causal_mask(n, &Device::Cpu).unwrap();
    let scores = (q.matmul(&k.t().unwrap()).unwrap() * 0.125)
        .unwrap()
        .broadcast_add(&mask)
        .unwrap();
    let o = candle_nn::ops::softmax(&scores, D::Minus1)
        .unwrap()
        .matmul(&v)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, n, c))
        .unwrap();
    let (loss, dout) = weighted_sum(&o, 18);
    let g = loss.backward().unwrap();
    let qv = host(qkv.as_tensor());
    let mut p = vec![0f32; b * h * n * n];
    let mut out = vec![0f32; b * n * c];
    attention::forward(&qv, &mut p, &mut out, batch_items, n, c);
    assert_close("o", &out, &host(&o), 1e-5);
    let mut dqkv = vec![0f32; b * n * 3 * c];
    attention::backward(&qv, &p, &dout, &mut dqkv, batch_items, n, c);
    assert_close("dqkv", &dqkv, &host(g.get(qkv.as_tensor()).unwrap()), 1e-5);
    // Every instruction set this CPU has gives the same bits.
    for isa in super::isa::Isa::available() {
        let (mut p2, mut o2) = (vec![0f32; p.len()], vec![0f32; out.len()]);
        attention::forward_on(isa, &qv, &mut p2, &mut o2, batch_items, n, c);
        assert_eq!(o2, out, "{isa:?}: forward");
        let mut d2 = vec![0f32; dqkv.len()];
        attention::backward_on(isa, &qv, &p2, &dout, &mut d2, batch_items, n, c);
        assert_eq!(d2, dqkv, "{isa:?}: backward");
    }
}

#[test]
fn patchify_matches_the_tensor_version() {
    let (b, ch, size, p) = (2, 3, 8, 2);
    let img = data(b * ch * size * size, 19);
    let t = Tensor::from_vec(img.clone(), (b, ch, size, size), &Device::Cpu).unwrap();
    let want = host(&crate::model::patchify(&t, p).unwrap());
    let mut seq = vec![0f32; img.len()];
    super::patchify(&img, &mut seq, b, ch, size, p);
    assert_eq!(seq, want);
    let mut back = vec![0f32; img.len()];
    super::unpatchify(&seq, &mut back, b, ch, size, p);
    assert_eq!(back, img);
}

/// A random small model whose parameters are `Var`s (so autograd reaches them), with the names.
fn model_with_vars(cfg: &ModelConfig, seed: u64) -> (Model, Vec<(String, Var)>) {
    let init = InitOptions {
        proj_out_scale: 0.05,
    };
    let w = init_weights(cfg, seed, init, &Device::Cpu).unwrap();
    let mut weights = Weights::new();
    let mut vars = Vec::new();
    for (name, t) in w {
        if name == "var" || name.ends_with("attn_mask") {
            weights.insert(name, t);
        } else {
            let v = Var::from_tensor(&t).unwrap();
            weights.insert(name.clone(), v.as_tensor().clone());
            vars.push((name, v));
        }
    }
    let model = Model::from_weights(cfg.clone(), &weights, &Device::Cpu).unwrap();
    (model, vars)
}

/// The host pass against `Model::forward` + `loss` + `bits_per_dim` + candle autograd: loss, bpd
/// per item, the input gradient and every parameter gradient.
fn check_against_autograd(cfg: &ModelConfig, batch: usize, labels: Option<Vec<i64>>, seed: u64) {
    let (model, vars) = model_with_vars(cfg, seed);
    let (ch, s) = (cfg.in_channels, cfg.img_size);
    let images: Vec<f32> = data(batch * ch * s * s, seed as u32 + 1)
        .iter()
        .map(|v| v / 2.0)
        .collect();
    let xv = var(images.clone(), &[batch, ch, s, s]);
    // A noise-conditional model runs at another level per item, with iTARFlow's loss weights
    // (each item's level); other models at none, with the plain loss.
    let levels: Option<Vec<f32>> = cfg.noise_range.map(|r| {
        (0..batch)
            .map(|i| r.t0 + (r.t1 - r.t0) * i as f32 / 4.0)
            .collect()
    });
    let (lv, wv) = (levels.as_deref(), levels.as_deref());
    let out = model
        .forward_at(
            xv.as_tensor(),
            labels.as_deref(),
            lv,
            crate::model::Exec::Grad,
        )
        .unwrap();
    let loss = match wv {
        Some(w) => model.weighted_loss(&out, w).unwrap(),
        None => model.loss(&out).unwrap(),
    };
    let bpd = host(&model.bits_per_dim(&out).unwrap());
    let grads = loss.backward().unwrap();
    let mut hg = HostGrad::new(&model).unwrap();
    let wants = Wants {
        params: true,
        input: true,
    };
    // Twice: the second call runs on reused buffers and must give the same answer.
    let first = hg
        .loss_and_grads_at(&images, batch, labels.as_deref(), lv, wv, wants)
        .unwrap();
    let got = hg
        .loss_and_grads_at(&images, batch, labels.as_deref(), lv, wv, wants)
        .unwrap();
    assert_eq!(first.loss, got.loss);
    assert_eq!(first.input_grad, got.input_grad);
    let tol = 1e-4;
    let want_loss = loss
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_close("loss", &[got.loss], &[want_loss], tol);
    assert_close("bits per dim", &got.bits_per_dim, &bpd, tol);
    let gx = host(grads.get(xv.as_tensor()).unwrap());
    assert_close(
        "input gradient",
        got.input_grad.as_deref().unwrap(),
        &gx,
        tol,
    );
    let named = got.param_grads.unwrap();
    assert_eq!(named.len(), vars.len(), "one gradient per parameter");
    for (name, v) in &vars {
        let want = grads.get(v.as_tensor()).unwrap();
        let g = &named[name];
        assert_eq!(g.shape, want.dims(), "{name}: shape");
        assert_close(name, &g.values, &host(want), tol);
    }
    // Only the input's gradient: the same values, no parameter gradients.
    let only = hg
        .loss_and_grads_at(
            &images,
            batch,
            labels.as_deref(),
            lv,
            wv,
            Wants {
                params: false,
                input: true,
            },
        )
        .unwrap();
    assert!(only.param_grads.is_none());
    assert_close(
        "input gradient alone",
        only.input_grad.as_deref().unwrap(),
        &gx,
        tol,
    );
}

#[test]
fn s16_shaped_conditional_model_matches_autograd() {
    let mut cfg = ModelConfig::new(4, 8, 2, 128, 2, 2);
    cfg.num_classes = 3;
    check_against_autograd(&cfg, 3, Some(vec![0, -1, 2]), 11);
}

/// The pass on `images` with every gradient, on a rayon pool of `threads` threads.
fn pass_on_pool(
    model: &Model,
    images: &[f32],
    batch: usize,
    labels: &[i64],
    levels: &[f32],
    threads: usize,
) -> LossAndGrads {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        HostGrad::new(model)
            .unwrap()
            .loss_and_grads_at(
                images,
                batch,
                Some(labels),
                Some(levels),
                Some(levels),
                Wants {
                    params: true,
                    input: true,
                },
            )
            .unwrap()
    })
}

#[test]
fn shards_give_the_same_bits_whatever_the_thread_count() {
    // 7 items: four shards of 2, 2, 2 and 1; a noise-conditional, class-conditional model with
    // mixed orders, so every per-item input of a shard (labels, levels, weights) is sliced.
    let mut cfg = ModelConfig::new(4, 8, 2, 64, 2, 2)
        .with_orders(vec![
            crate::config::Order::Raster,
            crate::config::Order::Column,
        ])
        .with_noise_range(Some(crate::config::NoiseRange { t0: 0.02, t1: 0.3 }));
    cfg.num_classes = 3;
    let (model, _) = model_with_vars(&cfg, 5);
    let batch = 7;
    let images: Vec<f32> = data(batch * 4 * 64, 9).iter().map(|v| v / 2.0).collect();
    let labels = [0, 2, -1, 1, 1, 0, 2];
    let levels: Vec<f32> = (0..batch).map(|i| 0.02 + 0.04 * i as f32).collect();
    let one = pass_on_pool(&model, &images, batch, &labels, &levels, 1);
    for threads in [2, 3, 5] {
        let many = pass_on_pool(&model, &images, batch, &labels, &levels, threads);
        assert_eq!(
            one.loss.to_bits(),
            many.loss.to_bits(),
            "{threads} threads: loss"
        );
        assert_eq!(one.bits_per_dim, many.bits_per_dim, "{threads} threads");
        assert_eq!(one.input_grad, many.input_grad, "{threads} threads");
        assert_eq!(one.param_grads, many.param_grads, "{threads} threads");
    }
    // Each item alone: the same figures as inside its shard (its own bits per dim; its input
    // gradient, which the batch mean divides by 7).
    let per_item = 4 * 64;
    for i in 0..batch {
        let alone = pass_on_pool(
            &model,
            &images[i * per_item..(i + 1) * per_item],
            1,
            &labels[i..=i],
            &levels[i..=i],
            1,
        );
        assert_close(
            &format!("item {i}: bits per dim"),
            &alone.bits_per_dim,
            &one.bits_per_dim[i..=i],
            1e-6,
        );
        let scaled: Vec<f32> = one.input_grad.as_ref().unwrap()[i * per_item..(i + 1) * per_item]
            .iter()
            .map(|g| g * batch as f32)
            .collect();
        assert_close(
            &format!("item {i}: input gradient"),
            &scaled,
            alone.input_grad.as_deref().unwrap(),
            1e-5,
        );
    }
}

#[test]
fn bad_inputs_are_errors() {
    let mut cfg = ModelConfig::new(3, 4, 1, 64, 1, 1);
    cfg.num_classes = 2;
    let (model, _) = model_with_vars(&cfg, 3);
    let mut hg = HostGrad::new(&model).unwrap();
    let img = vec![0f32; 2 * 3 * 16];
    let w = Wants::default();
    assert!(hg.loss_and_grads(&img, 3, None, w).is_err());
    assert!(hg.loss_and_grads(&img, 2, Some(&[0]), w).is_err());
    let e = hg.loss_and_grads(&img, 2, Some(&[0, 2]), w).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
    assert!(hg.loss_and_grads(&img, 2, Some(&[1, -1]), w).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn random_models_match_autograd(
        wide in any::<bool>(),
        blocks in 1usize..=3,
        layers in 1usize..=2,
        nvp in any::<bool>(),
        conditional in any::<bool>(),
        batch in 1usize..=6,
        patch in 1usize..=2,
        four_channels in any::<bool>(),
        no_labels in any::<bool>(),
        label_seed in any::<u64>(),
        order_case in 0usize..3,
        deep_last in any::<bool>(),
        clip in any::<bool>(),
        noise_conditional in any::<bool>(),
        seed in 0u64..1000,
    ) {
        let channels = if wide { 128 } else { 64 };
        let in_ch = if four_channels { 4 } else { 3 };
        use crate::config::Order;
        // The reference's orders, column only, and both mixed.
        let orders = [vec![], vec![Order::Column], vec![Order::Raster, Order::Column]];
        let mut cfg = ModelConfig::new(in_ch, 4 * patch, patch, channels, blocks, layers)
            .with_orders(orders[order_case].clone());
        // STARFlow's soft clip, tight enough that it bends the predictions.
        if clip {
            cfg = cfg.with_soft_clip(0.05);
        }
        // A deep-shallow stack: one more layer in the last block.
        if deep_last {
            cfg = cfg.with_block_layers(
                (0..blocks).map(|t| if t + 1 == blocks { layers + 1 } else { layers }).collect(),
            );
        }
        // iTARFlow's noise conditioning: a time embedding in every block.
        if noise_conditional {
            cfg = cfg.with_noise_range(Some(crate::config::NoiseRange { t0: 0.02, t1: 0.3 }));
        }
        cfg.nvp = nvp;
        cfg.num_classes = if conditional { 3 } else { 0 };
        // Labels in -1..3, sometimes none at all (the mean embedding for every item).
        let labels = (!no_labels).then(|| {
            (0..batch)
                .map(|i| ((label_seed >> (8 * i)) % 4) as i64 - 1)
                .collect::<Vec<_>>()
        });
        check_against_autograd(&cfg, batch, labels, seed);
    }
}
