//! Compare-and-swap of a data object across processes, built from what PKCS#11 offers:
//! creating an object is atomic and a later `C_FindObjects` sees it, nothing more (no
//! create-if-absent, no conditional update). See docs/envelope.md, "Two daemons on one
//! token", for the argument.
//!
//! A data object's value lives in *published* objects: `u64 BE sequence || value`,
//! application `harpocrates`; the highest sequence is current. Replacing the value at
//! sequence `n` by a value for `n + 1` is one consensus instance ("slot" `n + 1`) among
//! every process that tries, decided with Disk Paxos over *ballot* objects (application
//! `harpocrates-ballot`, same label) that nobody ever modifies:
//!
//! 1. create `{slot, promised b}`; read every ballot of the slot, then the published
//!    objects. Someone promised a higher round → back off and retry with a higher one.
//!    Otherwise adopt the value of the highest accepted ballot, if any, else our own.
//! 2. create `{slot, promised b, accepted (b, value)}`; read again, the same way. No
//!    higher round → the value is decided.
//! 3. publish `slot || value`, destroy published objects of lower sequences and the
//!    ballots of settled slots.
//!
//! Whenever a read shows a published object at the slot, the slot is settled and its
//! value is that object's; a published object above the slot means it was settled
//! earlier (its value may have been ours). Ballots are read *before* published objects:
//! ballots are destroyed only after a higher-or-equal sequence is published, and the
//! highest published object is never destroyed, so a read that misses a destroyed ballot
//! always sees the publication that allowed its destruction.

use std::time::Duration;

use cryptoki::object::ObjectHandle;

use super::Pkcs11Session;
use crate::backend::{BackendResult, SwapOutcome};

/// `CKA_APPLICATION` of ballot objects (never read as a state).
const BALLOT_APPLICATION: &[u8] = b"harpocrates-ballot";

/// Rounds tried before giving up with [`SwapOutcome::Undecided`].
const MAX_ROUNDS: u32 = 12;

/// A round number, made unique by the proposer's random nonce; compared as a pair.
type Round = (u64, [u8; 16]);

/// One ballot object: never changed after creation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ballot {
    slot: u64,
    promised: Round,
    accepted: Option<(Round, Vec<u8>)>,
}

impl Ballot {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(41 + self.accepted.as_ref().map_or(0, |a| 24 + a.1.len()));
        out.extend_from_slice(&self.slot.to_be_bytes());
        out.extend_from_slice(&self.promised.0.to_be_bytes());
        out.extend_from_slice(&self.promised.1);
        match &self.accepted {
            None => out.push(0),
            Some((round, value)) => {
                out.push(1);
                out.extend_from_slice(&round.0.to_be_bytes());
                out.extend_from_slice(&round.1);
                out.extend_from_slice(value);
            }
        }
        out
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let u64_at = |i: usize| Some(u64::from_be_bytes(b.get(i..i + 8)?.try_into().ok()?));
        let nonce_at = |i: usize| -> Option<[u8; 16]> { b.get(i..i + 16)?.try_into().ok() };
        let slot = u64_at(0)?;
        let promised = (u64_at(8)?, nonce_at(16)?);
        let accepted = match *b.get(32)? {
            0 if b.len() == 33 => None,
            1 => Some(((u64_at(33)?, nonce_at(41)?), b.get(57..)?.to_vec())),
            _ => return None,
        };
        Some(Self { slot, promised, accepted })
    }
}

/// What one read of a slot showed.
enum Survey {
    /// The slot is settled (or passed); nothing more to do but report.
    Settled(SwapOutcome),
    /// Someone promised a higher round than ours (its round number).
    Outbid(u64),
    /// No higher round: the value to propose (the highest accepted one, if any).
    Clear(Option<Vec<u8>>),
}

impl Pkcs11Session {
    /// See the module documentation.
    pub(super) fn swap(
        &self,
        label: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> BackendResult<SwapOutcome> {
        let published = self.object_versions(label)?;
        // The same choice `read_object` makes.
        let top = published.iter().max_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)));
        let slot = match (top, expected) {
            (None, None) => 1,
            (Some((seq, _, current)), Some(e)) if current.as_slice() == e => seq + 1,
            _ => return Ok(SwapOutcome::Lost),
        };
        let mut nonce = [0u8; 16];
        self.session
            .generate_random_slice(&mut nonce)
            .map_err(|e| self.fail(e, "generate ballot nonce"))?;
        let mut round = 1;
        for attempt in 0..MAX_ROUNDS {
            let mine = (round, nonce);
            self.create_ballot(label, &Ballot { slot, promised: mine, accepted: None })?;
            let chosen = match self.survey(label, slot, mine, value)? {
                Survey::Settled(outcome) => return Ok(outcome),
                Survey::Outbid(r) => {
                    round = r + 1;
                    back_off(attempt);
                    continue;
                }
                Survey::Clear(adopted) => adopted.unwrap_or_else(|| value.to_vec()),
            };
            let accepted = Some((mine, chosen.clone()));
            self.create_ballot(label, &Ballot { slot, promised: mine, accepted })?;
            match self.survey(label, slot, mine, value)? {
                Survey::Settled(outcome) => return Ok(outcome),
                Survey::Outbid(r) => {
                    round = r + 1;
                    back_off(attempt);
                    continue;
                }
                Survey::Clear(_) => {}
            }
            // Decided: no higher round was promised after our acceptance was visible.
            let mut stored = slot.to_be_bytes().to_vec();
            stored.extend_from_slice(&chosen);
            self.create_data(super::DATA_APPLICATION, label, stored)?;
            self.collect(label, slot)?;
            return Ok(if chosen == value { SwapOutcome::Swapped } else { SwapOutcome::Lost });
        }
        tracing::warn!(label, slot, "gave up a contended state write");
        Ok(SwapOutcome::Undecided)
    }

    fn create_ballot(&self, label: &str, ballot: &Ballot) -> BackendResult<ObjectHandle> {
        self.create_data(BALLOT_APPLICATION, label, ballot.encode())
    }

    /// Every ballot of `label` (any slot), with its handle.
    fn ballots(&self, label: &str) -> BackendResult<Vec<(ObjectHandle, Ballot)>> {
        Ok(self
            .data_objects(BALLOT_APPLICATION, label)?
            .into_iter()
            .filter_map(|(h, v)| Ballot::decode(&v).map(|b| (h, b)))
            .collect())
    }

    /// Reads the slot: ballots first, then published objects (see the module docs).
    fn survey(&self, label: &str, slot: u64, mine: Round, value: &[u8]) -> BackendResult<Survey> {
        let ballots = self.ballots(label)?;
        let published = self.object_versions(label)?;
        if let Some((_, _, settled)) = published.iter().find(|(s, _, _)| *s == slot) {
            let outcome = if settled == value { SwapOutcome::Swapped } else { SwapOutcome::Lost };
            return Ok(Survey::Settled(outcome));
        }
        if published.iter().any(|(s, _, _)| *s > slot) {
            return Ok(Survey::Settled(SwapOutcome::Superseded));
        }
        let here: Vec<&Ballot> =
            ballots.iter().map(|(_, b)| b).filter(|b| b.slot == slot).collect();
        if let Some(highest) = here.iter().map(|b| b.promised).max()
            && highest > mine
        {
            return Ok(Survey::Outbid(highest.0));
        }
        let adopted = here
            .iter()
            .filter_map(|b| b.accepted.as_ref())
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, v)| v.clone());
        Ok(Survey::Clear(adopted))
    }

    /// After publishing `slot`: removes published objects below it and ballots of slots
    /// up to it. Failures only leave garbage that the next write removes.
    fn collect(&self, label: &str, slot: u64) -> BackendResult<()> {
        for (h, b) in self.ballots(label)? {
            if b.slot <= slot {
                self.destroy_quietly(h, "ballot");
            }
        }
        for (seq, h, _) in self.object_versions(label)? {
            if seq < slot {
                self.destroy_quietly(h, "old state object");
            }
        }
        Ok(())
    }
}

/// Sleeps a random, growing time so two contending writers stop meeting.
fn back_off(attempt: u32) {
    let mut r = [0u8; 2];
    if getrandom::fill(&mut r).is_err() {
        r = [7, 7];
    }
    let cap = 2u64 << attempt.min(6);
    std::thread::sleep(Duration::from_millis(1 + u64::from(u16::from_be_bytes(r)) % cap));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballots_round_trip() {
        let promised = (3, [9u8; 16]);
        for accepted in [None, Some(((2, [1u8; 16]), b"state".to_vec())), Some((promised, vec![]))]
        {
            let b = Ballot { slot: 42, promised, accepted };
            assert_eq!(Ballot::decode(&b.encode()), Some(b));
        }
        assert_eq!(Ballot::decode(&[0; 10]), None);
    }
}
