//! PKCS#11 URIs (RFC 7512), the subset that selects a token: `token`, `serial`, `model`,
//! `manufacturer`, `slot-id`, and the `module-path` query attribute.

/// What a URI asks for. Unset fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenSelector {
    /// `token=` (CKA token label).
    pub token: Option<String>,
    /// `serial=`.
    pub serial: Option<String>,
    /// `model=`.
    pub model: Option<String>,
    /// `manufacturer=`.
    pub manufacturer: Option<String>,
    /// `slot-id=`.
    pub slot_id: Option<u64>,
    /// `?module-path=`.
    pub module_path: Option<String>,
}

/// Parses `pkcs11:token=vault-token;serial=...?module-path=/usr/lib/...`.
pub fn parse(uri: &str) -> Result<TokenSelector, String> {
    let rest = uri.strip_prefix("pkcs11:").ok_or("a PKCS#11 URI starts with \"pkcs11:\"")?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut sel = TokenSelector::default();
    for (sep, part) in [(';', path), ('&', query)] {
        for attr in part.split(sep).filter(|a| !a.is_empty()) {
            let (k, v) = attr.split_once('=').ok_or_else(|| format!("{attr:?} has no '='"))?;
            let v = decode(v)?;
            match k {
                "token" => sel.token = Some(v),
                "serial" => sel.serial = Some(v),
                "model" => sel.model = Some(v),
                "manufacturer" => sel.manufacturer = Some(v),
                "slot-id" => {
                    sel.slot_id =
                        Some(v.parse().map_err(|_| format!("slot-id {v:?} is not a number"))?)
                }
                "module-path" => sel.module_path = Some(v),
                // Attributes for objects, PINs or other uses do not select a token.
                "object"
                | "id"
                | "type"
                | "library-manufacturer"
                | "library-description"
                | "library-version"
                | "slot-description"
                | "slot-manufacturer"
                | "module-name"
                | "pin-source"
                | "pin-value" => {}
                other => return Err(format!("unknown PKCS#11 URI attribute {other:?}")),
            }
        }
    }
    Ok(sel)
}

fn decode(v: &str) -> Result<String, String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = v.get(i + 1..i + 3).ok_or("truncated %-escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad %-escape %{hex}"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "URI value is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        assert_eq!(
            parse("pkcs11:token=vault-token").expect("uri").token.as_deref(),
            Some("vault-token")
        );
        let s = parse("pkcs11:token=My%20Token;serial=abc;slot-id=3?module-path=/usr/lib/x.so")
            .expect("uri");
        assert_eq!(s.token.as_deref(), Some("My Token"));
        assert_eq!(s.serial.as_deref(), Some("abc"));
        assert_eq!(s.slot_id, Some(3));
        assert_eq!(s.module_path.as_deref(), Some("/usr/lib/x.so"));
        assert_eq!(parse("pkcs11:object=k;token=t").expect("uri").token.as_deref(), Some("t"));
    }

    #[test]
    fn refuses_what_it_cannot_understand() {
        assert!(parse("token=x").is_err());
        assert!(parse("pkcs11:token").is_err());
        assert!(parse("pkcs11:slot-id=x").is_err());
        assert!(parse("pkcs11:token=%zz").is_err());
        assert!(parse("pkcs11:colour=blue").is_err());
    }
}
