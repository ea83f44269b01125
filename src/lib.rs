//! Host package for tests/ and benches/.
