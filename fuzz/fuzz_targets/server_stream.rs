//! Arbitrary byte streams from three connections through the server's
//! connection handling; the state's invariants are checked after each step
//! (see `gearframe::server::fuzz`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gearframe::server::fuzz::fuzz_connection_bytes(data);
});
