//! Config errors that point at a place in the file: `PATH:LINE:COL: message`.

use std::fmt;
use std::path::{Path, PathBuf};

/// A config file's path and text, kept to turn byte offsets into positions.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

impl SourceFile {
    /// An error at byte offset `at` of the file.
    pub fn error_at(&self, at: usize, msg: impl Into<String>) -> ConfigError {
        let (line, col) = line_col(&self.text, at);
        ConfigError {
            path: self.path.clone(),
            line,
            col,
            msg: msg.into(),
        }
    }

    /// An error at the position of a spanned value.
    pub fn error_in<T>(&self, at: &toml::Spanned<T>, msg: impl Into<String>) -> ConfigError {
        self.error_at(at.span().start, msg)
    }
}

/// Converts a byte offset into a 1-based line and column (columns count characters).
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let mut at = at;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// An error in a config: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: usize,
    pub col: usize,
    pub msg: String,
}

impl ConfigError {
    /// An error about the file as a whole (it could not be read, say).
    pub fn plain(path: &Path, msg: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.to_path_buf(),
            line: 1,
            col: 1,
            msg: msg.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.col,
            self.msg
        )
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::line_col;

    #[test]
    fn offsets_become_one_based_positions() {
        let t = "ab\ncd\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 1), (1, 2));
        assert_eq!(line_col(t, 3), (2, 1));
        assert_eq!(line_col(t, 100), (3, 1));
    }
}
