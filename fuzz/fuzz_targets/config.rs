//! The config loader: TOML text → validated config, as `portico check` and
//! a start or reload read it, before any file named in it is opened.
//!
//! Properties, beyond "never panics":
//! - an error is `fuzz.toml:LINE:COL: message`, LINE and COL from 1;
//! - a config that loads re-serialises: to JSON for the admin API's
//!   `GET /config` (secrets masked), and to TOML that loads again into the
//!   same config (so what the admin API shows is what is in force).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico::config;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    let loaded = match config::parse(path, text.to_string()) {
        Ok(l) => l,
        Err(e) => {
            assert!(e.line >= 1 && e.col >= 1, "error position {e:?}");
            assert!(
                e.line <= text.lines().count().max(1) + 1,
                "line past end: {e:?}"
            );
            let shown = e.to_string();
            assert!(shown.starts_with("fuzz.toml:"), "{shown}");
            return;
        }
    };
    let json = config::redact::redacted(&loaded.config);
    assert!(json.is_object(), "redacted config is not an object: {json}");
    let again = toml::to_string(&loaded.config)
        .unwrap_or_else(|e| panic!("a loaded config does not serialise to TOML: {e}"));
    match config::parse(path, again.clone()) {
        Ok(l) => assert!(
            l.config == loaded.config,
            "config changed on a TOML round trip\n--- in\n{text}\n--- out\n{again}"
        ),
        Err(e) => panic!(
            "a loaded config, re-serialised, does not load: {e}\n--- in\n{text}\n--- out\n{again}"
        ),
    }
});
