//! Completion: the one place where every request's (and every batch element's) outcome
//! is known. Listings are cut to what the caller may see, then each outcome is handed to
//! the audit actor and counted in the metrics (by operation, error code and latency) once.

use std::time::Duration;

use harpocrates_protocol::{AuditPhase, ErrorCode, Op, Request, Response, WireError, WireResult};

use super::admission::Subject;
use super::context::RequestContext;
use super::dispatch::Router;
use crate::actors::audit::Event;
use crate::keys::envelope;
use crate::policy::Grants;

impl Router {
    /// Cuts listings (and health's key count) to the names the caller may use, so a
    /// restricted caller never learns which other keys exist.
    pub(super) async fn redact(
        &self,
        answers: &mut [WireResult],
        subjects: &[Subject],
        grants: &Grants<'_>,
        ctx: &RequestContext,
    ) {
        for (answer, subject) in answers.iter_mut().zip(subjects) {
            match (subject.op, answer) {
                (Op::ListKeys, Ok(Response::Keys(keys))) => {
                    keys.retain(|k| grants.sees_key(k.handle.as_str()));
                }
                (Op::ListKeks, Ok(Response::Keks(keks))) => {
                    keks.retain(|k| grants.sees_kek(&k.name))
                }
                (Op::HealthCheck, Ok(Response::Health(health))) => {
                    let listed = self
                        .run_in_pool(
                            &self.generation(),
                            vec![(0, Request::ListKeys)],
                            &ctx.conn.lanes,
                        )
                        .await
                        .pop()
                        .map(|(_, r)| r);
                    health.key_count = match listed {
                        Some(Ok(Response::Keys(keys))) => {
                            keys.iter().filter(|k| grants.sees_key(k.handle.as_str())).count()
                                as u64
                        }
                        _ => 0,
                    };
                }
                _ => {}
            }
        }
    }

    /// Records each outcome once (metrics, audit) and returns the answers — with
    /// `audit.fail_closed`, an answer whose record cannot be made durable is withheld.
    /// The metrics count the answers as they leave (a withheld one as
    /// `audit_unavailable`), and their latency up to then.
    pub(super) async fn complete(
        &self,
        ctx: &RequestContext,
        subjects: Vec<Subject>,
        mut answers: Vec<WireResult>,
    ) -> Vec<WireResult> {
        if self.audit.enabled() {
            self.audit_outcomes(ctx, &subjects, &mut answers).await;
        }
        // One lock per run of like operations, one atomic add per error code seen.
        self.metrics.record_answers(subjects.iter().map(|s| s.op), &answers, ctx.arrived.elapsed());
        answers
    }

    /// Hands each outcome to the audit actor; withholds answers whose record had to be
    /// durable and could not be made so.
    async fn audit_outcomes(
        &self,
        ctx: &RequestContext,
        subjects: &[Subject],
        answers: &mut [WireResult],
    ) {
        let latency = ctx.arrived.elapsed();
        let events: Vec<Event> = subjects
            .iter()
            .zip(answers.iter())
            .map(|(subject, answer)| {
                let mut event = self.event(ctx, subject, AuditPhase::Done, Some(answer));
                event.latency = latency;
                event
            })
            .collect();
        if self.audit.fail_closed() {
            if let Err(e) = self.audit.record_durable(events).await {
                let withheld = WireError::new(
                    ErrorCode::AuditUnavailable,
                    format!("{e}; the answer was withheld"),
                );
                for answer in answers.iter_mut().filter(|a| a.is_ok()) {
                    *answer = Err(withheld.clone());
                }
            }
        } else {
            self.audit.record(events).await;
        }
    }

    /// The audit event for `subject`, before (`answer` = `None`) or after it ran.
    pub(super) fn event(
        &self,
        ctx: &RequestContext,
        subject: &Subject,
        phase: AuditPhase,
        answer: Option<&WireResult>,
    ) -> Event {
        Event {
            at: ctx.arrived_at,
            caller: ctx.conn.peer.clone(),
            conn: ctx.conn.id,
            request: ctx.id,
            element: subject.element,
            op: subject.op,
            key: subject.key.clone(),
            kek: subject.kek.clone(),
            version: subject.version.or_else(|| answer.and_then(|a| version_in(subject.op, a))),
            phase,
            error: answer.and_then(|a| a.as_ref().err().map(|e| e.code)),
            latency: Duration::ZERO,
        }
    }
}

/// The KEK version an answer names: the data key's, the new ciphertext's, or the KEK's
/// version a rotation step left pending (else its active one).
fn version_in(op: Op, answer: &WireResult) -> Option<u32> {
    match answer.as_ref().ok()? {
        Response::DataKey(dk) => Some(dk.kek.version),
        Response::Ciphertext(ct) if matches!(op, Op::EnvelopeEncrypt | Op::Rewrap) => {
            envelope::kek_named(ct).ok().map(|(_, version)| version)
        }
        Response::Kek(info) => Some(info.pending_version.unwrap_or(info.active_version)),
        _ => None,
    }
}
