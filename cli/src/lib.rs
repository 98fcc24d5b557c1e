//! Warren's stock binaries, `warren-worker`, `warren-producer` and `warren-scheduler`: thin
//! mains over the libraries. The library part holds what the mains share with the tests that
//! run them: the demo tasks the stock worker runs and the producer's command line.

pub mod demo;
pub mod producer;
