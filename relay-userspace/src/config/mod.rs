//! The daemon's configuration: one YAML file deserialised into a typed tree and validated once
//! at start. Unknown keys and bad values are errors that name the key and its line. Every field
//! is documented, with its default, in `deploy/relay.example.yaml` (a test keeps the two in step).

mod error;
mod locate;
mod reload;
mod types;

pub use error::ConfigError;
pub use types::*;

use std::path::Path;

impl Config {
    /// Parses and validates `text` (`origin` names it in errors, e.g. the file path).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let deserializer = serde_yaml::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let line = inner
                .location()
                .map(|l| l.line())
                .or_else(|| locate::line_of(text, &key));
            let message = strip_path(&strip_location(&inner.to_string()), &key).to_string();
            ConfigError::new(origin, key, line, message)
        })?;
        config.validate().map_err(|(key, message)| {
            let line = locate::line_of(text, &key);
            ConfigError::new(origin, key, line, message)
        })?;
        Ok(config)
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(&origin, String::new(), None, format!("cannot read: {e}"))
        })?;
        Config::parse(&text, &origin)
    }
}

/// serde_yaml starts a nested value's error with the enclosing key ("sessions: …"); the error
/// names the full key itself.
fn strip_path<'a>(message: &'a str, key: &str) -> &'a str {
    let mut prefix = key;
    loop {
        if let Some(rest) = message
            .strip_prefix(prefix)
            .and_then(|m| m.strip_prefix(": "))
        {
            return rest;
        }
        match prefix.rfind('.') {
            Some(i) => prefix = &prefix[..i],
            None => return message,
        }
    }
}

/// serde_yaml appends " at line L column C"; the error reports the line itself.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests;
