//! Compare-and-swap of a data object across processes, built from what PKCS#11 offers on
//! every token, including SoftHSM2's file store. See docs/envelope.md, "Two daemons on one
//! token", and docs/pkcs11.md, "SoftHSM2 across processes", for the argument.
//!
//! A data object's value lives in *published* objects: `u64 BE sequence || value`,
//! application `harpocrates`; the highest sequence is current. Published objects are never
//! modified.
//!
//! **Batons.** The right to publish sequence `n + 1` is a *baton* object (application
//! `harpocrates-baton`, same label, value `u64 BE n`), created by the writer of `n` before
//! it publishes `n`. A writer claims it by destroying it: the token removes an object
//! once, so exactly one `C_DestroyObject` of it succeeds, and only that writer publishes
//! `n + 1` (after creating baton `n + 1`). Published objects made this way carry
//! [`BATONED`] in `CKA_OBJECT_ID`.
//!
//! Why not read-then-decide: SoftHSM2's file store does not show a process the objects
//! another process created just before this process's own create or destroy, until some
//! other process writes again (its generation counter absorbs the other writer's bump).
//! Any protocol that decides from "I see no competing object" (Disk Paxos over ballot
//! objects, which this module used before) can then let two writers both win. Claiming by
//! destruction does not depend on seeing anything: a missed object only makes a writer
//! lose (and retry), never win twice.
//!
//! **Before batons.** A state published by the earlier code (no [`BATONED`] mark) is
//! replaced with that code's Disk Paxos over *ballot* objects (application
//! `harpocrates-ballot`): correct on a token whose reads are linearizable, and exposed to
//! the SoftHSM2 visibility gap above. It is kept only for such states; their next
//! successful write is unmarked too, so a KEK moves to batons when it is created anew.
//! A KEK created by this code starts with baton 1.

use std::time::Duration;

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};

use super::Pkcs11Session;
use crate::backend::{BackendResult, SwapOutcome};

/// `CKA_APPLICATION` of ballot objects of the earlier protocol (never read as a state).
const BALLOT_APPLICATION: &[u8] = b"harpocrates-ballot";

/// Paxos rounds tried before giving up with [`SwapOutcome::Undecided`].
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

/// `CKA_APPLICATION` of baton objects (never read as a state).
const BATON_APPLICATION: &[u8] = b"harpocrates-baton";

/// `CKA_OBJECT_ID` of published objects whose baton was created before them.
const BATONED: &[u8] = b"harpocrates/baton/1";

/// Published objects kept below the current one. A reader that missed the newest
/// publications (see the module docs) still finds an older state rather than none.
const KEEP_PUBLISHED: u64 = 8;

/// Publication attempts: a repeated publication carries the same bytes, so a retry after
/// an error whose effect is unknown is harmless.
const PUBLISH_ATTEMPTS: u32 = 3;

/// One published object.
struct Published {
    seq: u64,
    handle: ObjectHandle,
    value: Vec<u8>,
    batoned: bool,
}

impl Pkcs11Session {
    /// See the module documentation.
    pub(super) fn swap(
        &self,
        label: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> BackendResult<SwapOutcome> {
        let published = self.published(label)?;
        // The same choice `read_object` makes.
        let top = published.iter().max_by(|a, b| (a.seq, &a.value).cmp(&(b.seq, &b.value)));
        match (top, expected) {
            (None, None) => {
                self.publish(label, 1, value)?;
                Ok(SwapOutcome::Swapped)
            }
            (Some(top), Some(e)) if top.value == e => {
                if published.iter().any(|p| p.seq == top.seq && p.batoned) {
                    self.claim_and_publish(label, top.seq, value)
                } else {
                    self.paxos(label, top.seq + 1, value)
                }
            }
            _ => Ok(SwapOutcome::Lost),
        }
    }

    /// Claims baton `seq` and publishes `seq + 1`.
    fn claim_and_publish(&self, label: &str, seq: u64, value: &[u8]) -> BackendResult<SwapOutcome> {
        let batons: Vec<ObjectHandle> = self
            .data_objects(BATON_APPLICATION, label)?
            .into_iter()
            .filter(|(_, v)| v.as_slice() == seq.to_be_bytes())
            .map(|(h, _)| h)
            .collect();
        // No baton: another writer claimed it, and its state is on the way (or published
        // but not visible to this process yet). Either way ours is not the next one.
        let Some(&baton) = batons.first() else { return self.lost(label, seq, value) };
        self.sync_view();
        match self.session.destroy_object(baton) {
            Ok(()) => {}
            // Already destroyed by another writer: SoftHSM2 answers FUNCTION_FAILED when
            // its file was removed under it, HANDLE_INVALID when it noticed before.
            Err(CkError::Pkcs11(RvError::ObjectHandleInvalid | RvError::FunctionFailed, _)) => {
                return self.lost(label, seq, value);
            }
            Err(e) => return Err(self.fail(e, "claim state baton")),
        }
        if let Err(e) = self.publish(label, seq + 1, value) {
            // We hold the only right to publish `seq + 1` and could not use it: the state
            // stays at `seq` and no writer can replace it until an operator repairs it.
            tracing::error!(
                label,
                seq,
                error = %e,
                "claimed the state baton but could not publish; see docs/envelope.md, \
                 \"A claimed baton that was never used\""
            );
            return Err(e);
        }
        Ok(SwapOutcome::Swapped)
    }

    /// The outcome after another writer claimed baton `seq`: swapped if what it published
    /// is byte for byte our value (two daemons making the same `Commit`), else lost.
    fn lost(&self, label: &str, seq: u64, value: &[u8]) -> BackendResult<SwapOutcome> {
        let same = self.published(label)?.iter().any(|p| p.seq == seq + 1 && p.value == value);
        Ok(if same { SwapOutcome::Swapped } else { SwapOutcome::Lost })
    }

    /// Creates baton `seq`, then publishes `seq || value` marked as batoned, then removes
    /// what is no longer needed. Baton first: whoever sees the publication sees the baton.
    fn publish(&self, label: &str, seq: u64, value: &[u8]) -> BackendResult<()> {
        self.create_data(BATON_APPLICATION, label, seq.to_be_bytes().to_vec(), None)?;
        let mut stored = seq.to_be_bytes().to_vec();
        stored.extend_from_slice(value);
        let mut attempt = 1;
        while let Err(e) =
            self.create_data(super::DATA_APPLICATION, label, stored.clone(), Some(BATONED))
        {
            if attempt >= PUBLISH_ATTEMPTS {
                return Err(e);
            }
            attempt += 1;
            back_off(attempt);
        }
        // Failures only leave garbage that a later write removes.
        for p in self.published(label)? {
            if p.seq + KEEP_PUBLISHED <= seq || (p.seq < seq && !p.batoned) {
                self.destroy_quietly(p.handle, "old state object");
            }
        }
        for (h, _) in self.ballots(label)? {
            self.destroy_quietly(h, "ballot");
        }
        Ok(())
    }

    /// Every published object of `label`. Objects destroyed meanwhile are skipped.
    fn published(&self, label: &str) -> BackendResult<Vec<Published>> {
        let template = [
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(super::DATA_APPLICATION.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        let handles =
            self.session.find_objects(&template).map_err(|e| self.fail(e, "find data object"))?;
        let mut out = Vec::with_capacity(handles.len());
        for handle in handles {
            let attrs = match self
                .session
                .get_attributes(handle, &[AttributeType::Value, AttributeType::ObjectId])
            {
                Ok(a) => a,
                Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => continue,
                Err(e) => return Err(self.fail(e, "read data object")),
            };
            let (mut stored, mut batoned) = (None, false);
            for a in attrs {
                match a {
                    Attribute::Value(v) => stored = Some(v),
                    Attribute::ObjectId(id) => batoned = id == BATONED,
                    _ => {}
                }
            }
            let Some(stored) = stored.filter(|v| v.len() >= 8) else { continue };
            let (seq, value) = stored.split_at(8);
            let seq = u64::from_be_bytes(seq.try_into().unwrap_or([0; 8]));
            out.push(Published { seq, handle, value: value.to_vec(), batoned });
        }
        Ok(out)
    }

    /// The earlier protocol: Disk Paxos for `slot` over ballot objects, for states
    /// published before batons (see the module docs).
    fn paxos(&self, label: &str, slot: u64, value: &[u8]) -> BackendResult<SwapOutcome> {
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
            self.create_data(super::DATA_APPLICATION, label, stored, None)?;
            self.collect(label, slot)?;
            return Ok(if chosen == value { SwapOutcome::Swapped } else { SwapOutcome::Lost });
        }
        tracing::warn!(label, slot, "gave up a contended state write");
        Ok(SwapOutcome::Undecided)
    }

    fn create_ballot(&self, label: &str, ballot: &Ballot) -> BackendResult<ObjectHandle> {
        self.create_data(BALLOT_APPLICATION, label, ballot.encode(), None)
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
