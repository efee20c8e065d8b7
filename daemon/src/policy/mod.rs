//! Access control: which caller may do which [class](OpClass) of operation on which key or
//! KEK names. Pure logic; the router asks, this module answers.
//!
//! A [`Policy`] is built once from the `[[policy]]` tables of the configuration file: user
//! and group names are resolved and globs compiled at load, so a decision only compares
//! integers and matches names. Per connection (or request) the router takes the caller's
//! [`Grants`] — the few rules naming that caller — and asks [`Grants::allows`] for each
//! request, or each element of a batch. Decisions look at names only, never at whether a
//! key exists, so a refusal says nothing about what is in the token.
//!
//! Root, the daemon's own uid and (with `--dev`) the invoking user are *privileged*: they
//! may do everything. Everyone else may do public operations and what the rules grant.
//! See `docs/access-control.md`.

pub mod accounts;
mod principals;
pub mod raw;
mod rule;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use harpocrates_protocol::{OpClass, Target};

use principals::PrincipalIndex;
pub use raw::RawRule;
pub use rule::RuleError;
use rule::{ClassSet, Rule};

/// Who is asking: the peer's credentials as the kernel reported them at connect time.
/// Borrows the groups, so building one per connection or request copies nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caller<'a> {
    /// Effective user id (`SO_PEERCRED`).
    pub uid: u32,
    /// Effective (primary) group id (`SO_PEERCRED`).
    pub gid: u32,
    /// Supplementary group ids (`SO_PEERGROUPS`), not the group database: a service given
    /// `SupplementaryGroups=` by systemd has groups that `/etc/group` does not list.
    pub groups: &'a [u32],
}

/// Which rule an error is about: its 1-based position and its name, if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    /// Position among the `[[policy]]` tables, counting from 1 as a reader would.
    pub index: usize,
    /// The rule's `name`, if given.
    pub name: Option<String>,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "rule '{name}' (#{})", self.index),
            None => write!(f, "rule #{}", self.index),
        }
    }
}

/// A policy that cannot be loaded: the file, the rule and why.
#[derive(Debug, thiserror::Error)]
#[error("policy in {}, {rule}: {reason}", .path.display())]
pub struct PolicyError {
    /// The configuration file the rules came from.
    pub path: PathBuf,
    /// The offending rule.
    pub rule: RuleRef,
    /// What is wrong with it.
    pub reason: RuleError,
}

/// The loaded access rules plus the privileged uids. Immutable; reload builds a new one.
#[derive(Debug)]
pub struct Policy {
    rules: Box<[Rule]>,
    principals: PrincipalIndex,
    privileged: Box<[u32]>,
}

impl Policy {
    /// Checks and compiles `rules` (read from `source`, named in errors). `privileged` are
    /// the uids that may do everything whatever the rules say.
    pub fn new(rules: &[RawRule], source: &Path, privileged: &[u32]) -> Result<Self, PolicyError> {
        let mut compiled = Vec::with_capacity(rules.len());
        for (i, raw) in rules.iter().enumerate() {
            let rule = RuleRef { index: i + 1, name: raw.name.clone() };
            let fail = |reason| PolicyError { path: source.to_owned(), rule: rule.clone(), reason };
            if let Some(name) = &raw.name
                && let Some(first) = rules[..i].iter().position(|r| r.name.as_ref() == Some(name))
            {
                return Err(fail(RuleError::DuplicateName(first + 1)));
            }
            compiled.push(Rule::compile(raw).map_err(fail)?);
        }
        let rules: Box<[Rule]> = compiled.into();
        Ok(Self { principals: PrincipalIndex::new(&rules), rules, privileged: privileged.into() })
    }

    /// A policy with no rules: only the privileged uids get more than public operations.
    pub fn privileged_only(privileged: &[u32]) -> Self {
        Self {
            rules: Box::default(),
            principals: PrincipalIndex::default(),
            privileged: privileged.into(),
        }
    }

    /// How many rules were loaded (for the startup and reload log line).
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// What `caller` may do: compute once per connection or request, then ask it.
    pub fn grants(&self, caller: &Caller<'_>) -> Grants<'_> {
        if self.privileged.contains(&caller.uid) {
            return Grants { privileged: true, classes: ClassSet::default(), rules: Vec::new() };
        }
        let rules = self.principals.rules_for(caller, &self.rules);
        let classes = rules.iter().fold(ClassSet::default(), |set, r| set.union(r.classes));
        Grants { privileged: false, classes, rules }
    }
}

/// One caller's view of a [`Policy`]: whether it is privileged and the rules that name it.
#[derive(Debug)]
pub struct Grants<'a> {
    privileged: bool,
    /// Union of the matching rules' classes: refuses most requests without a scan.
    classes: ClassSet,
    rules: Vec<&'a Rule>,
}

impl Grants<'_> {
    /// Whether the caller may perform an operation of `class` on `target`.
    ///
    /// Public is always allowed and admin ignores the target. Otherwise a rule naming the
    /// caller must grant `class` and, for a key or KEK, have a pattern matching its name;
    /// for a KEK inside a ciphertext the router could not parse, any KEK pattern; for no
    /// target (random bytes, listings), the class alone.
    pub fn allows(&self, class: OpClass, target: Target<'_>) -> bool {
        if class == OpClass::Public || self.privileged {
            return true;
        }
        if !self.classes.contains(class) {
            return false;
        }
        let granting = self.rules.iter().filter(|r| r.classes.contains(class));
        match (class, target) {
            (OpClass::Admin, _) | (_, Target::None) => true,
            (_, Target::Key(name)) => {
                granting.into_iter().any(|r| r.keys.iter().any(|p| p.matches(name)))
            }
            (_, Target::Kek(name)) => {
                granting.into_iter().any(|r| r.keks.iter().any(|p| p.matches(name)))
            }
            (_, Target::InCiphertext) => granting.into_iter().any(|r| !r.keks.is_empty()),
        }
    }

    /// Whether a key listing shown to the caller may include the token key `name`.
    pub fn sees_key(&self, name: &str) -> bool {
        self.privileged || self.sees(|r| r.keys.iter().any(|p| p.matches(name)))
    }

    /// Whether a KEK listing shown to the caller may include the KEK `name`.
    pub fn sees_kek(&self, name: &str) -> bool {
        self.privileged || self.sees(|r| r.keks.iter().any(|p| p.matches(name)))
    }

    fn sees(&self, matches: impl Fn(&Rule) -> bool) -> bool {
        self.rules.iter().any(|r| r.classes.intersects(ClassSet::TARGETED) && matches(r))
    }

    /// Whether the caller is privileged: listings need no filtering and nothing is refused.
    pub fn unrestricted(&self) -> bool {
        self.privileged
    }
}

/// The policy in force, shared by every connection and swapped whole on reload.
#[derive(Debug)]
pub struct PolicyStore {
    current: RwLock<Arc<Policy>>,
}

impl PolicyStore {
    /// Holds `policy` as the one in force.
    pub fn new(policy: Policy) -> Self {
        Self { current: RwLock::new(Arc::new(policy)) }
    }

    /// The policy in force. Cheap (a read lock and a reference count); a request keeps
    /// its `Arc`, so a reload never changes the answer halfway through a request.
    pub fn current(&self) -> Arc<Policy> {
        // A panic while holding the lock cannot leave the Arc half-written: keep using it.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts `policy` in force for every request that starts after this.
    pub fn replace(&self, policy: Policy) {
        self.put(Arc::new(policy));
    }

    /// Puts `policy` in force (one compiled for another store, on a reload).
    pub fn put(&self, policy: Arc<Policy>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = policy;
    }

    /// Builds a policy from `rules` and puts it in force; on error the old one stays.
    pub fn reload(
        &self,
        rules: &[RawRule],
        source: &Path,
        privileged: &[u32],
    ) -> Result<(), PolicyError> {
        self.replace(Policy::new(rules, source, privileged)?);
        Ok(())
    }
}
