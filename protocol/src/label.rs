//! Key labels: what a valid name looks like. Both sides check names with these rules (the
//! daemon on every request, the client when it reads an envelope header).

/// Longest label accepted, in bytes.
pub const MAX_LABEL_LEN: usize = 128;

/// Checks a key label: 1 to [`MAX_LABEL_LEN`] bytes of printable ASCII letters, digits and
/// `-_.:/@+`, so a label is safe in a log line, a file name fragment and a PKCS#11
/// `CKA_LABEL` alike.
pub fn validate_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("key label is empty".into());
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(format!("key label is {} bytes; the limit is {MAX_LABEL_LEN}", label.len()));
    }
    if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || "-_.:/@+".contains(*c)))
    {
        return Err(format!(
            "key label contains '{}'; use letters, digits and -_.:/@+ only",
            c.escape_default()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_labels() {
        for ok in ["demo", "app/db-key:v1", "a", "user@example.com+1", &"k".repeat(128)] {
            assert_eq!(validate_label(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_empty_long_and_odd_labels() {
        assert!(validate_label("").is_err());
        assert!(validate_label(&"k".repeat(129)).unwrap_err().contains("129 bytes"));
        for bad in ["with space", "new\nline", "nul\0", "émoji", "semi;colon"] {
            assert!(validate_label(bad).is_err(), "{bad:?}");
        }
    }
}
