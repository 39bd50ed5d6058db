//! Config parsing and validation never panic on any input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cfg) = nimgate::config::parse(text) {
            let _ = cfg.validate();
        }
    }
});
