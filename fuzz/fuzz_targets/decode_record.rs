//! Arbitrary bytes as a stored session record and as each index key: the
//! decoders never panic, and whatever decodes encodes back to the same bytes
//! (the stored format has exactly one encoding of each value).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sessiondb::fuzzing;

fuzz_target!(|bytes: &[u8]| {
    if let Some(again) = fuzzing::reencode_record(bytes) {
        assert_eq!(again, bytes, "a decoded record encodes differently");
    }
    assert!(
        fuzzing::record_head_agrees(bytes),
        "decode_head disagrees with decode"
    );
    if let Some(again) = fuzzing::reencode_expiry_key(bytes) {
        assert_eq!(again, bytes, "a parsed expiry key builds differently");
    }
    if let Some(again) = fuzzing::reencode_record_key(bytes) {
        assert_eq!(again, bytes, "a parsed record key builds differently");
    }
});
