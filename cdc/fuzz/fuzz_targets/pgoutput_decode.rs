//! Fuzzes the pgoutput decoder: any byte string must decode or fail with a
//! typed error, never panic, and both entry points must agree.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pgcdc::pgoutput::{decode, decode_bytes};

fuzz_target!(|data: &[u8]| {
    let copied = decode(data);
    let sliced = decode_bytes(&Bytes::copy_from_slice(data));
    assert_eq!(copied, sliced);
    if let Err(error) = copied {
        // Display must not panic either; the error text ends up in logs.
        let _ = error.to_string();
    }
});
