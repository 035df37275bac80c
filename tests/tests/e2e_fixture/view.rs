//! Moved to the harness (`pgcdc_tests::fixture::view`); re-exported for tests
//! that use it from here.

pub use pgcdc_tests::fixture::view::*;
