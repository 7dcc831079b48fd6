//! Fuzz the wire decoder: any bytes must yield a message or a typed error, never a panic,
//! and a decoded message must re-encode to a frame that decodes and re-encodes to the same
//! bytes (compared as bytes: a float field may be NaN, which is not equal to itself).
#![no_main]

use jigsaw_protocol::wire::{decode_frame, encode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((msg, used)) = decode_frame(data) {
        assert!(used <= data.len());
        let again = encode_frame(&msg).expect("a decoded message re-encodes");
        let (back, n) = decode_frame(&again).expect("a re-encoded frame decodes");
        assert_eq!(n, again.len());
        assert_eq!(encode_frame(&back).expect("re-encodes"), again);
    }
});
