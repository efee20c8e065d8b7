//! One rule compiled for fast decisions: ids instead of names, a bit set of classes, and
//! name matchers that skip the glob engine for the common `*` and literal patterns.

use harpocrates_protocol::OpClass;

use super::accounts;
use super::raw::RawRule;

/// Why a rule was refused.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// None of users, uids, groups, gids.
    #[error("it names nobody: give users, uids, groups or gids")]
    NoPrincipal,
    /// `allow` is empty.
    #[error("it allows nothing: give allow = [\"use\", ...]")]
    NoClass,
    /// `allow` names a class that does not exist.
    #[error("unknown class '{0}' in allow (use, export, manage, rotate, admin or all)")]
    UnknownClass(String),
    /// `allow` names `public`, which every caller already has.
    #[error("'public' in allow means nothing: public operations are always allowed")]
    PublicClass,
    /// A user name that is not in the user database.
    #[error("unknown user '{0}'")]
    UnknownUser(String),
    /// A group name that is not in the group database.
    #[error("unknown group '{0}'")]
    UnknownGroup(String),
    /// The user or group database could not be read.
    #[error("cannot look up {kind} '{name}': {error}")]
    Lookup {
        /// `user` or `group`.
        kind: &'static str,
        /// The name looked up.
        name: String,
        /// What the C library said.
        error: std::io::Error,
    },
    /// A `keys` or `keks` entry that is not a valid glob.
    #[error("bad pattern '{pattern}' in {field}: {message}")]
    BadGlob {
        /// `keys` or `keks`.
        field: &'static str,
        /// The pattern as written.
        pattern: String,
        /// What is wrong with it.
        message: String,
    },
    /// A class that acts on keys, granted with no key or KEK pattern to act on.
    #[error("it allows '{}' but names no keys or keks", .0.name())]
    NoTargets(OpClass),
    /// Two rules with the same name: errors naming it would be ambiguous.
    #[error("the name is already used by rule #{0}")]
    DuplicateName(usize),
}

/// A set of [`OpClass`]es, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ClassSet(u8);

impl ClassSet {
    /// The classes that act on a named key or KEK, and so need patterns.
    pub(super) const TARGETED: ClassSet = ClassSet(
        Self::bit(OpClass::Use)
            | Self::bit(OpClass::Export)
            | Self::bit(OpClass::Manage)
            | Self::bit(OpClass::Rotate),
    );
    /// Every class a rule can grant (all but public).
    pub(super) const GRANTABLE: ClassSet =
        Self::TARGETED.union(ClassSet(Self::bit(OpClass::Admin)));

    const fn bit(class: OpClass) -> u8 {
        1 << class as u8
    }

    /// Whether `class` is in the set.
    pub(super) const fn contains(self, class: OpClass) -> bool {
        self.0 & Self::bit(class) != 0
    }

    /// Whether the two sets share a class.
    pub(super) const fn intersects(self, other: ClassSet) -> bool {
        self.0 & other.0 != 0
    }

    /// Both sets together.
    pub(super) const fn union(self, other: ClassSet) -> ClassSet {
        ClassSet(self.0 | other.0)
    }

    fn insert(&mut self, class: OpClass) {
        self.0 |= Self::bit(class);
    }
}

/// A compiled `keys` or `keks` entry.
#[derive(Debug)]
pub(super) enum NamePattern {
    /// `*`: every name, without running the glob engine.
    Any,
    /// No glob metacharacters: plain string equality.
    Exact(Box<str>),
    /// Anything else.
    Glob(glob::Pattern),
}

impl NamePattern {
    fn parse(field: &'static str, pattern: &str) -> Result<Self, RuleError> {
        // Parse even the trivial cases, so what is accepted is exactly what glob accepts.
        let glob = glob::Pattern::new(pattern).map_err(|e| RuleError::BadGlob {
            field,
            pattern: pattern.to_owned(),
            message: e.to_string(),
        })?;
        Ok(if pattern == "*" {
            NamePattern::Any
        } else if !pattern.contains(['*', '?', '[']) {
            NamePattern::Exact(pattern.into())
        } else {
            NamePattern::Glob(glob)
        })
    }

    /// Whether `name` matches. `*` also matches `/`: names are flat labels, not paths.
    pub(super) fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Any => true,
            NamePattern::Exact(exact) => **exact == *name,
            NamePattern::Glob(glob) => glob.matches(name),
        }
    }
}

/// A validated rule.
#[derive(Debug)]
pub(super) struct Rule {
    /// The uids it names, users resolved.
    pub(super) uids: Box<[u32]>,
    /// The gids it names, groups resolved.
    pub(super) gids: Box<[u32]>,
    /// What the rule grants.
    pub(super) classes: ClassSet,
    /// Patterns over token key names.
    pub(super) keys: Box<[NamePattern]>,
    /// Patterns over KEK names.
    pub(super) keks: Box<[NamePattern]>,
}

impl Rule {
    /// Checks a raw rule and resolves its user and group names.
    pub(super) fn compile(raw: &RawRule) -> Result<Rule, RuleError> {
        if raw.users.is_empty()
            && raw.uids.is_empty()
            && raw.groups.is_empty()
            && raw.gids.is_empty()
        {
            return Err(RuleError::NoPrincipal);
        }
        let classes = classes(&raw.allow)?;
        let mut uids = raw.uids.clone();
        for user in &raw.users {
            let uid = accounts::uid_of(user).map_err(|error| lookup("user", user, error))?;
            uids.push(uid.ok_or_else(|| RuleError::UnknownUser(user.clone()))?);
        }
        let mut gids = raw.gids.clone();
        for group in &raw.groups {
            let gid = accounts::gid_of(group).map_err(|error| lookup("group", group, error))?;
            gids.push(gid.ok_or_else(|| RuleError::UnknownGroup(group.clone()))?);
        }
        let patterns = |field, list: &[String]| -> Result<Box<[NamePattern]>, RuleError> {
            list.iter().map(|p| NamePattern::parse(field, p)).collect()
        };
        let keys = patterns("keys", &raw.keys)?;
        let keks = patterns("keks", &raw.keks)?;
        if keys.is_empty() && keks.is_empty() {
            // Name a class that needs a target, so the message points at the mistake.
            let wanting = OpClass::ALL
                .into_iter()
                .find(|c| ClassSet::TARGETED.contains(*c) && classes.contains(*c));
            if let Some(class) = wanting {
                return Err(RuleError::NoTargets(class));
            }
        }
        Ok(Rule { uids: uids.into(), gids: gids.into(), classes, keys, keks })
    }
}

fn lookup(kind: &'static str, name: &str, error: std::io::Error) -> RuleError {
    RuleError::Lookup { kind, name: name.to_owned(), error }
}

fn classes(allow: &[String]) -> Result<ClassSet, RuleError> {
    if allow.is_empty() {
        return Err(RuleError::NoClass);
    }
    let mut set = ClassSet::default();
    for name in allow {
        match name.as_str() {
            "all" => set = set.union(ClassSet::GRANTABLE),
            "public" => return Err(RuleError::PublicClass),
            other => {
                let class = OpClass::ALL
                    .into_iter()
                    .find(|c| c.name() == other)
                    .ok_or_else(|| RuleError::UnknownClass(other.to_owned()))?;
                set.insert(class);
            }
        }
    }
    Ok(set)
}
