//! The configuration loader (TOML) on arbitrary text: an invalid file is an error with
//! a position, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nprot::control::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        Ok(mut config) => {
            config.resolve_paths(Path::new("/etc/nprot"));
            let _ = config.indicator_files().count();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
