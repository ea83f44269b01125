//! The shapes and per-item conditioning of a host pass, and the token reordering of a block:
//! what [`block`](super::block) and the pass in [`HostGrad`](super::HostGrad) share.

/// The sizes of one pass.
#[derive(Debug, Clone, Copy)]
pub(super) struct PassDims {
    /// Items.
    pub(super) b: usize,
    /// Items the loss is a mean over: the whole batch, of which these `b` may be a shard.
    pub(super) mean_over: usize,
    /// Tokens per item.
    pub(super) n: usize,
    /// Token width (patch values).
    pub(super) d: usize,
    /// Transformer width.
    pub(super) c: usize,
    /// Attention heads.
    pub(super) heads: usize,
    /// MLP hidden width.
    pub(super) hidden: usize,
    /// proj_out's width: 2D with nvp, else D.
    pub(super) out: usize,
    /// Whether proj_out predicts a log-scale as well as a shift.
    pub(super) nvp: bool,
    /// Soft clip of proj_out's output (0: off).
    pub(super) soft_clip: f32,
}

impl PassDims {
    /// Rows of the token matrices (B * N).
    pub(super) fn m(&self) -> usize {
        self.b * self.n
    }
}

/// Grow `v` to `len` values (contents unspecified: every user writes before reading).
pub(super) fn fit(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// Copy `src` (raster order) to `dst` (block order), both (b, n, width): position `i` of
/// each item gets the token at raster index `order[i]`.
pub(super) fn permute(src: &[f32], dst: &mut [f32], d: &PassDims, width: usize, order: &[usize]) {
    let item = d.n * width;
    for (s, t) in src.chunks_exact(item).zip(dst.chunks_exact_mut(item)) {
        for (i, tr) in t.chunks_exact_mut(width).enumerate() {
            let r = order[i] * width;
            tr.copy_from_slice(&s[r..r + width]);
        }
    }
}

/// The inverse of [`permute`]: `src` in block order back to `dst` in raster order.
pub(super) fn unpermute(src: &[f32], dst: &mut [f32], d: &PassDims, width: usize, order: &[usize]) {
    let item = d.n * width;
    for (s, t) in src.chunks_exact(item).zip(dst.chunks_exact_mut(item)) {
        for (i, sr) in s.chunks_exact(width).enumerate() {
            let r = order[i] * width;
            t[r..r + width].copy_from_slice(sr);
        }
    }
}

/// The class row added to each item: `Some(k)` for label k, `None` for the mean of the rows.
pub(super) type ClassRows = [Option<usize>];

/// What the items of a pass are conditioned on and how much each weighs in the loss.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cond<'a> {
    /// The class row of each item.
    pub(super) classes: &'a ClassRows,
    /// The Fourier features of each item's noise level, (b, c): noise-conditional models only.
    pub(super) feats: Option<&'a [f32]>,
    /// Each item's loss weight (`None`: all ones).
    pub(super) weights: Option<&'a [f32]>,
}

impl Cond<'_> {
    /// The loss weight of item `bi`.
    pub(super) fn weight(&self, bi: usize) -> f32 {
        self.weights.and_then(|w| w.get(bi).copied()).unwrap_or(1.0)
    }

    /// The conditioning of items `items` alone (their index 0 is item `items.start`); `c` is
    /// the width of a Fourier-feature row.
    pub(super) fn items(&self, items: std::ops::Range<usize>, c: usize) -> Self {
        Cond {
            classes: &self.classes[items.clone()],
            feats: self.feats.map(|f| &f[items.start * c..items.end * c]),
            weights: self.weights.map(|w| &w[items]),
        }
    }
}
