//! A configuration error that names the file, the key and (when known) the line.

use std::fmt;

/// Why the configuration was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or other origin) of the text.
    pub origin: String,
    /// Dotted key path, e.g. `api.tokens[0].max_sessions`; empty for the whole document.
    pub key: String,
    /// 1-based line of the key, when it could be found.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(
        origin: &str,
        key: impl Into<String>,
        line: Option<usize>,
        message: impl Into<String>,
    ) -> ConfigError {
        let key = key.into();
        ConfigError {
            origin: origin.to_string(),
            key: if key == "." { String::new() } else { key },
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}
