//! Which rules name which ids, as sorted `(id, rule)` pairs: finding a caller's rules costs
//! a few binary searches however many rules there are, and allocates nothing for a caller
//! that no rule names (most callers, when the policy is per service).

use super::Caller;
use super::rule::Rule;

/// The rules' uids and gids, each paired with the position of the rule naming it.
#[derive(Debug, Default)]
pub(super) struct PrincipalIndex {
    by_uid: Box<[(u32, usize)]>,
    by_gid: Box<[(u32, usize)]>,
}

impl PrincipalIndex {
    /// Indexes `rules` by the uids and gids they name.
    pub(super) fn new(rules: &[Rule]) -> Self {
        let pairs = |ids: fn(&Rule) -> &[u32]| -> Box<[(u32, usize)]> {
            let mut v: Vec<(u32, usize)> = rules
                .iter()
                .enumerate()
                .flat_map(|(i, r)| ids(r).iter().map(move |id| (*id, i)))
                .collect();
            v.sort_unstable();
            v.dedup();
            v.into()
        };
        Self { by_uid: pairs(|r| &r.uids), by_gid: pairs(|r| &r.gids) }
    }

    /// The rules among `rules` (the slice this index was built from) naming `caller` by
    /// uid, primary gid or a supplementary gid; each once, in file order.
    pub(super) fn rules_for<'r>(&self, caller: &Caller<'_>, rules: &'r [Rule]) -> Vec<&'r Rule> {
        let mut found: Vec<&'r Rule> = Vec::new();
        let mut add = |table: &[(u32, usize)], id: u32| {
            let start = table.partition_point(|(t, _)| *t < id);
            let named = table[start..].iter().take_while(|(t, _)| *t == id);
            found.extend(named.map(|(_, i)| &rules[*i]));
        };
        add(&self.by_uid, caller.uid);
        add(&self.by_gid, caller.gid);
        for gid in caller.groups {
            add(&self.by_gid, *gid);
        }
        // A caller named twice (by uid and by group, say) gets the rule once. The rules
        // are one slice, so address order is file order.
        found.sort_unstable_by_key(|r| std::ptr::from_ref::<Rule>(r));
        found.dedup_by(|a, b| std::ptr::eq(*a, *b));
        found
    }
}
