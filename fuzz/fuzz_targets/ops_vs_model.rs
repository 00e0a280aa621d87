//! Arbitrary operation sequences (built from the fuzzer's bytes) run
//! against a real store and the in-memory model; they must agree at every
//! step. The operations and the driver are those of `tests/model.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sessiondb_model::driver::Driver;
use sessiondb_model::ops::{Op, Setup};

/// Longer sequences add little but slow every run.
const MAX_OPS: usize = 64;

fuzz_target!(|input: (Setup, Vec<Op>)| {
    let (setup, ops) = input;
    if ops.len() > MAX_OPS {
        return;
    }
    if let Err(mismatch) = Driver::run(setup, &ops) {
        panic!("store and model disagree: {mismatch}\nsetup: {setup:?}\nops: {ops:#?}");
    }
});
