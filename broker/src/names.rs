//! The naming rules for topics, consumer groups and transactional ids.

/// Longest topic, group or transactional id name, in bytes.
pub const MAX_NAME_BYTES: usize = 200;

/// Which naming rule a name breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_BYTES`].
    #[error("longer than {MAX_NAME_BYTES} bytes")]
    TooLong,
    /// A byte other than an ASCII letter, digit, `.`, `_` or `-`.
    #[error("only ASCII letters, digits, '.', '_' and '-' are allowed")]
    BadCharacter,
    /// A leading `.` or `__`.
    #[error("names starting with '.' or '__' are reserved")]
    Reserved,
}

/// Checks a topic or group name: 1 to [`MAX_NAME_BYTES`] bytes of ASCII
/// letters, digits, `.`, `_` and `-`, not starting with `.` or `__` (those
/// are reserved for internal use and for files in the data dir).
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(NameError::BadCharacter);
    }
    if name.starts_with('.') || name.starts_with("__") {
        return Err(NameError::Reserved);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_rules() {
        assert!(check_name("orders.v1-eu_2").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("../etc").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("__offsets").is_err());
        assert!(check_name(&"x".repeat(201)).is_err());
    }

    #[test]
    fn the_length_rule_names_the_limit() {
        assert_eq!(
            check_name(&"x".repeat(MAX_NAME_BYTES + 1))
                .unwrap_err()
                .to_string(),
            format!("longer than {MAX_NAME_BYTES} bytes")
        );
        assert!(check_name(&"x".repeat(MAX_NAME_BYTES)).is_ok());
    }
}
