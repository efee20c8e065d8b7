//! One `[[policy]]` table exactly as written: every list optional, unknown fields refused.

use serde::Deserialize;

/// One access rule before validation: who it applies to, which names, which classes.
///
/// ```toml
/// [[policy]]
/// name = "orders"
/// users = ["orders-svc"]
/// keks = ["orders"]
/// allow = ["use"]
/// ```
///
/// [`Policy::new`](super::Policy::new) resolves the names and checks the rule.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Optional label, used in error messages.
    pub name: Option<String>,
    /// User names, resolved to uids when the policy is loaded.
    #[serde(default)]
    pub users: Vec<String>,
    /// Numeric user ids.
    #[serde(default)]
    pub uids: Vec<u32>,
    /// Group names, resolved to gids when the policy is loaded.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Numeric group ids, matched against the caller's primary and supplementary groups.
    #[serde(default)]
    pub gids: Vec<u32>,
    /// Globs over token key names (`*`, `?`, `[...]`).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Globs over KEK names.
    #[serde(default)]
    pub keks: Vec<String>,
    /// Class names (`use`, `export`, `manage`, `rotate`, `admin`), or `all`.
    #[serde(default)]
    pub allow: Vec<String>,
}
