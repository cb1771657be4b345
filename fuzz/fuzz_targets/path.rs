//! The request path normaliser, `portico::proxy::path::normalize`, which
//! every HTTP/1, HTTP/2 and HTTP/3 request's path goes through before
//! routing, authentication and the upstream see it. It gets the path alone
//! (`Uri::path`), so the whole output is checked; a `?` in the input is
//! just a byte here.
//!
//! Properties, beyond "never panics", for every input it accepts:
//! - the output starts with `/` (normalize refuses everything else,
//!   `*` and the empty string included);
//! - it holds no `//`, `/./` or `/../` and does not end in `/.` or `/..`:
//!   no segment a backend could resolve differently;
//! - it holds no encoded separator (`%2F`, `%5C`, any case), no `\` and no
//!   NUL, raw or `%00`;
//! - it is a fixed point: normalising it again gives it back borrowed, so
//!   normalising is idempotent and costs no allocation the second time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico::proxy::path::normalize;
use std::borrow::Cow;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(once) = normalize(input) else {
        return;
    };
    let path: &str = &once;
    assert!(path.starts_with('/'), "{input:?} -> {path:?}");
    for bad in ["//", "/./", "/../"] {
        assert!(!path.contains(bad), "{input:?} -> {path:?} holds {bad:?}");
    }
    assert!(
        !path.ends_with("/.") && !path.ends_with("/.."),
        "{input:?} -> {path:?} ends in a dot segment"
    );
    let upper = path.to_ascii_uppercase();
    for bad in ["%2F", "%5C", "%00", "\\", "\0"] {
        assert!(!upper.contains(bad), "{input:?} -> {path:?} holds {bad:?}");
    }
    match normalize(path) {
        Ok(Cow::Borrowed(twice)) => assert_eq!(twice, path, "not idempotent for {input:?}"),
        Ok(Cow::Owned(twice)) => {
            panic!("{input:?} -> {path:?} -> {twice:?}: not a fixed point")
        }
        Err(e) => panic!("{input:?} -> {path:?}, which is then refused: {e}"),
    }
});
