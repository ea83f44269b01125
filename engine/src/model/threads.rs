//! How many threads a CPU kernel may use: the rayon pool's size, or less inside a data-parallel
//! shard of a host pass (each shard already holds a thread of its own, so its products and
//! elementwise passes run on that thread instead of waking the pool that the other shards keep
//! busy).

use std::cell::Cell;

thread_local! {
    static BUDGET: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The threads this thread's kernels may split their work over: the budget set by
/// [`with_budget`] around the current call, else the rayon pool's size.
pub(crate) fn available() -> usize {
    BUDGET
        .with(Cell::get)
        .unwrap_or_else(rayon::current_num_threads)
        .max(1)
}

/// Run `f` with at most `threads` threads for the kernels it calls on this thread; the previous
/// budget comes back afterwards (also when `f` panics).
pub(crate) fn with_budget<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<usize>);
    impl Drop for Restore {
        fn drop(&mut self) {
            BUDGET.with(|b| b.set(self.0));
        }
    }
    let _restore = Restore(BUDGET.with(|b| b.replace(Some(threads.max(1)))));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_holds_for_its_call_and_is_restored() {
        let pool = rayon::current_num_threads();
        assert_eq!(available(), pool);
        with_budget(1, || {
            assert_eq!(available(), 1);
            with_budget(3, || assert_eq!(available(), 3));
            assert_eq!(available(), 1);
        });
        assert_eq!(available(), pool);
        let _ = std::panic::catch_unwind(|| with_budget(1, || panic!("inside")));
        assert_eq!(available(), pool, "restored after a panic");
        assert_eq!(with_budget(0, available), 1, "at least one thread");
    }
}
