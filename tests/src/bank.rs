//! A saga for the tests: `transfer` moves an amount between two `account`
//! entities with messages only — debit, then credit, a refund when the
//! credit is refused, and an expiry timer that refunds a debit that comes
//! back after the transfer's deadline. Every transfer ends `completed`,
//! `failed` (nothing moved) or `compensated` (moved back), and the sum of
//! balances never changes. `alarm` is a plain timer entity.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_entities::{Ctx, Effect, Entity, EntityRef, Rejection, Response};

/// An account (`account`).
pub struct Account;

/// Its state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AccountState {
    /// The balance.
    pub balance: i64,
    /// Refuses credits when set.
    pub frozen: bool,
}

/// Its commands.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountCommand {
    /// Puts money in (a deposit from outside the bank).
    Deposit {
        /// How much.
        amount: i64,
    },
    /// Takes money out for a transfer; refused when the balance is short.
    Debit {
        /// The transfer.
        transfer: String,
        /// How much.
        amount: i64,
    },
    /// Puts money in for a transfer; refused when frozen.
    Credit {
        /// The transfer.
        transfer: String,
        /// How much.
        amount: i64,
    },
    /// Refuses credits from now on.
    Freeze,
    /// Reads the balance.
    Get,
}

/// Its events.
#[derive(Debug, Serialize, Deserialize)]
pub enum AccountEvent {
    /// Money in from outside.
    Deposited {
        /// How much.
        amount: i64,
    },
    /// Money out for a transfer.
    Debited {
        /// The transfer.
        transfer: String,
        /// How much.
        amount: i64,
    },
    /// Money in for a transfer.
    Credited {
        /// The transfer.
        transfer: String,
        /// How much.
        amount: i64,
    },
    /// Frozen.
    Frozen,
}

impl Entity for Account {
    const TYPE: &'static str = "account";
    type State = AccountState;
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Reply = i64;

    fn handle(&self, s: &AccountState, c: AccountCommand, _: &mut Ctx) -> Result<Effect<AccountEvent, i64>, Rejection> {
        match c {
            AccountCommand::Deposit { amount } => {
                Ok(Effect::persist(AccountEvent::Deposited { amount }, s.balance + amount))
            }
            AccountCommand::Debit { amount, .. } if amount > s.balance => {
                Err(Rejection::new("insufficient_funds", format!("balance {} < {amount}", s.balance)))
            }
            AccountCommand::Debit { transfer, amount } => {
                Ok(Effect::persist(AccountEvent::Debited { transfer, amount }, s.balance - amount))
            }
            AccountCommand::Credit { .. } if s.frozen => Err(Rejection::new("frozen", "the account takes no credits")),
            AccountCommand::Credit { transfer, amount } => {
                Ok(Effect::persist(AccountEvent::Credited { transfer, amount }, s.balance + amount))
            }
            AccountCommand::Freeze => Ok(Effect::persist(AccountEvent::Frozen, s.balance)),
            AccountCommand::Get => Ok(Effect::reply(s.balance)),
        }
    }

    fn apply(&self, s: &mut AccountState, e: &AccountEvent) {
        match e {
            AccountEvent::Deposited { amount } | AccountEvent::Credited { amount, .. } => s.balance += amount,
            AccountEvent::Debited { amount, .. } => s.balance -= amount,
            AccountEvent::Frozen => s.frozen = true,
        }
    }
}

/// A transfer (`transfer`), the saga.
pub struct Transfer;

/// Where a transfer stands.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Not started.
    #[default]
    New,
    /// Waiting for the debit.
    Debiting,
    /// Debited, waiting for the credit.
    Crediting,
    /// Moved.
    Completed,
    /// Nothing moved (the debit was refused).
    Failed,
    /// Waiting for the refund of the debit.
    Compensating,
    /// Moved back.
    Compensated,
}

/// Its state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TransferState {
    /// The source account's id.
    pub from: String,
    /// The destination account's id.
    pub to: String,
    /// How much.
    pub amount: i64,
    /// Where it stands.
    pub status: Status,
    /// Its deadline passed before the debit came back.
    pub expired: bool,
    /// Why it failed or was compensated.
    pub reason: Option<String>,
}

/// Its commands.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferCommand {
    /// Starts it.
    Start {
        /// The source account.
        from: String,
        /// The destination account.
        to: String,
        /// How much.
        amount: i64,
        /// Its deadline for the debit, ms.
        timeout_ms: u64,
    },
    /// The debit's answer.
    Debited(Response<i64>),
    /// The credit's answer.
    Credited(Response<i64>),
    /// The refund's answer.
    Refunded(Response<i64>),
    /// The deadline.
    Expire,
    /// Reads where it stands.
    Get,
}

/// Its events.
#[derive(Debug, Serialize, Deserialize)]
pub enum TransferEvent {
    /// Started.
    Started {
        /// The source account.
        from: String,
        /// The destination account.
        to: String,
        /// How much.
        amount: i64,
    },
    /// Moved to this status.
    Moved {
        /// The status.
        status: Status,
        /// Why (failures and compensations).
        reason: Option<String>,
    },
    /// The deadline passed before the debit came back.
    Expired,
}

fn account(id: &str) -> EntityRef {
    EntityRef::new(Account::TYPE, id)
}

fn moved(status: Status, reason: Option<String>) -> TransferEvent {
    TransferEvent::Moved { status, reason }
}

impl Entity for Transfer {
    const TYPE: &'static str = "transfer";
    type State = TransferState;
    type Command = TransferCommand;
    type Event = TransferEvent;
    type Reply = Status;

    fn handle(
        &self,
        s: &TransferState,
        c: TransferCommand,
        ctx: &mut Ctx,
    ) -> Result<Effect<TransferEvent, Status>, Rejection> {
        let id = ctx.entity_id().to_owned();
        let refund = |s: &TransferState, why: String| {
            Effect::persist(moved(Status::Compensating, Some(why)), Status::Compensating).and_ask(
                account(&s.from),
                &AccountCommand::Credit { transfer: format!("{id}:refund"), amount: s.amount },
                "refunded",
            )
        };
        match c {
            TransferCommand::Start { .. } if s.status != Status::New => Ok(Effect::reply(s.status.clone())),
            TransferCommand::Start { from, to, amount, timeout_ms } => {
                let debit = AccountCommand::Debit { transfer: id.clone(), amount };
                let events =
                    vec![TransferEvent::Started { from: from.clone(), to, amount }, moved(Status::Debiting, None)];
                Ok(Effect::persist_all(events, Status::Debiting)
                    .and_ask(account(&from), &debit, "debited")
                    .and_schedule("expire", ctx.after(Duration::from_millis(timeout_ms)), &TransferCommand::Expire))
            }
            TransferCommand::Expire if s.status == Status::Debiting && !s.expired => {
                Ok(Effect::persist(TransferEvent::Expired, s.status.clone()))
            }
            TransferCommand::Debited(r) if s.status == Status::Debiting => match r.result {
                Err(e) => Ok(Effect::persist(moved(Status::Failed, Some(e.code)), Status::Failed).and_cancel("expire")),
                // Debited after the deadline: give the money back.
                Ok(_) if s.expired => Ok(refund(s, "expired".into())),
                Ok(_) => {
                    let credit = AccountCommand::Credit { transfer: id.clone(), amount: s.amount };
                    Ok(Effect::persist(moved(Status::Crediting, None), Status::Crediting)
                        .and_ask(account(&s.to), &credit, "credited")
                        .and_cancel("expire"))
                }
            },
            TransferCommand::Credited(r) if s.status == Status::Crediting => match r.result {
                Ok(_) => Ok(Effect::persist(moved(Status::Completed, None), Status::Completed)),
                Err(e) => Ok(refund(s, e.code)),
            },
            TransferCommand::Refunded(r) if s.status == Status::Compensating => match r.result {
                Ok(_) => Ok(Effect::persist(moved(Status::Compensated, s.reason.clone()), Status::Compensated)),
                Err(e) => Err(Rejection::new("refund_refused", e.message)),
            },
            // A late or repeated answer, a deadline after the debit: nothing to do.
            _ => Ok(Effect::reply(s.status.clone())),
        }
    }

    fn apply(&self, s: &mut TransferState, e: &TransferEvent) {
        match e {
            TransferEvent::Started { from, to, amount } => {
                (s.from, s.to, s.amount) = (from.clone(), to.clone(), *amount);
            }
            TransferEvent::Moved { status, reason } => {
                s.status = status.clone();
                if reason.is_some() {
                    s.reason = reason.clone();
                }
            }
            TransferEvent::Expired => s.expired = true,
        }
    }
}

/// A plain timer entity (`alarm`): `set` schedules a ring, `cancel`
/// cancels it; each ring is an event with the time it rang.
pub struct Alarm;

/// Its state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AlarmState {
    /// Rings so far.
    pub rings: u64,
}

/// Its commands.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmCommand {
    /// Rings at `at_ms` (ms since the Unix epoch).
    Set {
        /// The timer's id.
        id: String,
        /// When.
        at_ms: i64,
    },
    /// Cancels the timer.
    Cancel {
        /// The timer's id.
        id: String,
    },
    /// The timer's command.
    Ring {
        /// The timer's id.
        id: String,
        /// When it was due.
        due_ms: i64,
    },
    /// Asks any entity anything (bad targets, for the tests).
    Ask {
        /// The target's type.
        entity_type: String,
        /// The target's id.
        id: String,
        /// The command's name (no payload).
        command: String,
    },
    /// The answer of an `ask`.
    Answered(Response<serde_json::Value>),
    /// Reads the rings.
    Get,
}

/// Its events.
#[derive(Debug, Serialize, Deserialize)]
pub enum AlarmEvent {
    /// An answer came back.
    Answered {
        /// `ok` or the rejection's code.
        outcome: String,
    },
    /// Set.
    Set {
        /// The timer's id.
        id: String,
    },
    /// Rang.
    Rang {
        /// The timer's id.
        id: String,
        /// When it was due.
        due_ms: i64,
        /// When it rang (the handler's clock).
        at_ms: i64,
    },
}

impl Entity for Alarm {
    const TYPE: &'static str = "alarm";
    type State = AlarmState;
    type Command = AlarmCommand;
    type Event = AlarmEvent;
    type Reply = u64;

    fn handle(&self, s: &AlarmState, c: AlarmCommand, ctx: &mut Ctx) -> Result<Effect<AlarmEvent, u64>, Rejection> {
        match c {
            AlarmCommand::Set { id, at_ms } => Ok(Effect::persist(AlarmEvent::Set { id: id.clone() }, s.rings)
                .and_schedule(&id, at_ms, &AlarmCommand::Ring { id: id.clone(), due_ms: at_ms })),
            AlarmCommand::Cancel { id } => Ok(Effect::reply(s.rings).and_cancel(&id)),
            AlarmCommand::Ring { id, due_ms } => {
                Ok(Effect::persist(AlarmEvent::Rang { id, due_ms, at_ms: ctx.now_ms() }, s.rings + 1))
            }
            AlarmCommand::Ask { entity_type, id, command } => Ok(Effect::reply(s.rings).and_ask(
                EntityRef::new(entity_type, id),
                &serde_json::Value::String(command),
                "answered",
            )),
            AlarmCommand::Answered(r) => {
                let outcome = r.result.map_or_else(|e| e.code, |_| "ok".into());
                Ok(Effect::persist(AlarmEvent::Answered { outcome }, s.rings))
            }
            AlarmCommand::Get => Ok(Effect::reply(s.rings)),
        }
    }

    fn apply(&self, s: &mut AlarmState, e: &AlarmEvent) {
        if matches!(e, AlarmEvent::Rang { .. }) {
            s.rings += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use tessera_entities::TestKit;

    use super::*;

    fn started(amount: i64) -> TestKit<Transfer> {
        let mut kit = TestKit::new(Transfer).with_id("t1");
        let out = kit.accept(TransferCommand::Start { from: "a".into(), to: "b".into(), amount, timeout_ms: 5_000 });
        assert_eq!(out.sent()[0].target, account("a"), "the debit goes first");
        assert_eq!(out.scheduled()[0].at_ms, 5_000, "with a deadline");
        kit
    }

    fn answer(correlation: &str, result: Result<i64, Rejection>) -> Response<i64> {
        Response { correlation: correlation.into(), result }
    }

    #[test]
    fn a_debit_then_a_credit_completes_the_transfer() {
        let mut kit = started(30);
        let out = kit.accept(TransferCommand::Debited(answer("account/a", Ok(70))));
        let credit = out.sent()[0].command.decode::<AccountCommand>().unwrap();
        assert!(matches!(credit, AccountCommand::Credit { amount: 30, .. }));
        assert!(kit.pending_timers().is_empty(), "the deadline is cancelled once debited");
        kit.accept(TransferCommand::Credited(answer("account/b", Ok(30))));
        assert_eq!(kit.state().status, Status::Completed);
    }

    #[test]
    fn a_refused_debit_fails_with_nothing_moved() {
        let mut kit = started(30);
        kit.accept(TransferCommand::Debited(answer("account/a", Err(Rejection::new("insufficient_funds", "")))));
        assert_eq!(
            (kit.state().status.clone(), kit.state().reason.as_deref()),
            (Status::Failed, Some("insufficient_funds"))
        );
        assert!(kit.outbox().len() == 1, "no credit was sent");
    }

    #[test]
    fn a_refused_credit_refunds_the_debit() {
        let mut kit = started(30);
        kit.accept(TransferCommand::Debited(answer("account/a", Ok(70))));
        let out = kit.accept(TransferCommand::Credited(answer("account/b", Err(Rejection::new("frozen", "")))));
        assert_eq!(out.sent()[0].target, account("a"), "the refund goes back to the source");
        kit.accept(TransferCommand::Refunded(answer("account/a", Ok(100))));
        assert_eq!(kit.state().status, Status::Compensated);
    }

    #[test]
    fn a_debit_after_the_deadline_is_refunded() {
        let mut kit = started(30);
        let fired = kit.advance(Duration::from_secs(6));
        assert!(matches!(&fired[..], [Ok(_)]), "the deadline fires");
        assert!(kit.state().expired);
        let out = kit.accept(TransferCommand::Debited(answer("account/a", Ok(70))));
        let refund = out.sent()[0].command.decode::<AccountCommand>().unwrap();
        assert!(matches!(refund, AccountCommand::Credit { ref transfer, amount: 30 } if transfer == "t1:refund"));
        kit.accept(TransferCommand::Refunded(answer("account/a", Ok(100))));
        assert_eq!((kit.state().status.clone(), kit.state().reason.as_deref()), (Status::Compensated, Some("expired")));
    }

    #[test]
    fn a_late_answer_changes_nothing() {
        let mut kit = started(30);
        kit.accept(TransferCommand::Debited(answer("account/a", Err(Rejection::new("insufficient_funds", "")))));
        let out = kit.accept(TransferCommand::Credited(answer("account/b", Ok(30))));
        assert!(out.events.is_empty() && out.actions.is_empty());
    }
}
