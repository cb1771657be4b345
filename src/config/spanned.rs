//! Serde defaults for spanned values that the file may leave out.

use toml::Spanned;

/// An empty string, positioned at the start of the file (a value the file
/// leaves out has no position of its own).
pub(super) fn empty_spanned() -> Spanned<String> {
    Spanned::new(0..0, String::new())
}
