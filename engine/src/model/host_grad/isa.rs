//! The instruction sets the hand-written host kernels are compiled for (portable, AVX2 + FMA,
//! AVX-512), chosen at run time, and [`multiversion`], which compiles one kernel body for each.

/// The instruction set the host kernels run on, the fastest the CPU has, picked at run time.
/// Every path computes bit-identical results: the kernels write their sums out in a fixed order
/// (attention: 16 lanes, then a tree) and use no fused multiply-add the portable path lacks (Rust
/// never contracts `a * b + c`), so the compiler vectorises them without changing a bit.
///
/// A token of a detected feature: its field is private to this module, so the only values are
/// those [`Isa::detect`] (or the tests' [`Isa::available`]) hand out after checking the CPU, and
/// no other code can ask for AVX-512 kernels on a CPU without them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Isa(Kind);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// x86-64 with AVX-512F.
    Avx512,
    /// x86-64 with AVX2 and FMA.
    Avx2,
    /// Whatever the build targets (SSE2 on x86-64).
    Portable,
}

impl Isa {
    /// Which instruction set this is (read by [`multiversion`]'s dispatch).
    pub(super) fn kind(self) -> Kind {
        self.0
    }

    /// The best the running CPU supports.
    pub(super) fn detect() -> Self {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    return Isa(Kind::Avx512);
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    return Isa(Kind::Avx2);
                }
            }
            Isa(Kind::Portable)
        })
    }

    /// The paths this CPU can run (for tests).
    #[cfg(test)]
    pub(super) fn available() -> Vec<Self> {
        let mut v = vec![Isa(Kind::Portable)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                v.push(Isa(Kind::Avx2));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push(Isa(Kind::Avx512));
            }
        }
        v
    }
}

/// Compile `$body` (an `#[inline(always)]` function) once per [`Isa`] and dispatch on it.
macro_rules! multiversion {
    ($name:ident, $body:ident, ($($arg:ident: $ty:ty),*)) => {
        #[allow(clippy::too_many_arguments)]
        pub(super) fn $name(isa: Isa, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                match isa.kind() {
                    // SAFETY: an `Isa` exists only from `Isa::detect` (or the tests'
                    // `available`), which found the feature on this CPU: its field is private.
                    $crate::model::host_grad::isa::Kind::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    $crate::model::host_grad::isa::Kind::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::model::host_grad::isa::Kind::Portable => {}
                }
            }
            let _ = isa;
            $body($($arg),*)
        }
    };
}

pub(super) use multiversion;
