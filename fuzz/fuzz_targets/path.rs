//! The request path normaliser, `portico::proxy::path::normalize`.
//!
//! Not built yet: its [[bin]] entry in fuzz/Cargo.toml is commented out
//! until the normaliser is in the crate.
//!
//! Properties, beyond "never panics", for every input it accepts:
//! - idempotent: normalize(normalize(x)) == normalize(x);
//! - the output's path (before any `?`) starts with `/`;
//! - and holds no `//`, no `/./` and no `/../` (nor ends in `/.` or
//!   `/..`): no segment a backend could resolve differently.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico::proxy::path::normalize;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(once) = normalize(input) else {
        return;
    };
    let once: &str = &once;
    // Checked on the path alone, should a query ever come along.
    let path = once.split('?').next().unwrap_or(once);
    assert!(path.starts_with('/'), "{input:?} -> {once:?}");
    for bad in ["//", "/./", "/../"] {
        assert!(!path.contains(bad), "{input:?} -> {once:?} holds {bad:?}");
    }
    // The dot segments at the end, where no slash follows them.
    assert!(
        !path.ends_with("/.") && !path.ends_with("/.."),
        "{input:?} -> {once:?} ends in a dot segment"
    );
    match normalize(once) {
        Ok(twice) => assert_eq!(&*twice, once, "not idempotent for {input:?}"),
        Err(_) => panic!("{input:?} -> {once:?}, which is then refused"),
    }
});
