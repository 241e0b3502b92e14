//! Appends and fence raises: the conditional writes that make "no seq is
//! committed twice" and "no stale owner's write lands" true (the argument
//! is in the module doc of `scylla`; the decisions are in `bucket.rs`).

use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

use super::bucket::{self, Raise, Refused};
use super::rows::{Named, Statics, event_crc, lwt_outcome};
use super::session::unavailable;
use super::{ScyllaJournal, counts};
use crate::error::{AppendError, JournalError};
use crate::memory::now_ms;
use crate::types::{AppendRequest, EntityKey, IdempotencyKey, NewEvent, Snapshot};

/// The condition of one head write.
#[derive(Clone, Copy)]
enum Cond {
    /// The partition holds the entity's last event: `last_seq = expected`.
    Eq,
    /// A new partition: `last_seq = null`.
    New,
    /// No condition (the opt-in unconditional mode).
    Plain,
}

/// What one append writes.
#[derive(Clone, Copy)]
pub(crate) struct Append<'a> {
    pub(crate) expected: u64,
    pub(crate) events: &'a [NewEvent],
    pub(crate) snapshot: Option<&'a Snapshot>,
    pub(crate) fence: Option<u64>,
    pub(crate) ts: i64,
    /// The feed intent the event rows carry (none: a type without a feed).
    pub(crate) intent: Option<u64>,
    /// The idempotency keys, each stored on the event it names.
    pub(crate) keys: &'a [IdempotencyKey],
}

impl ScyllaJournal {
    /// Writes one append into `bucket` as one single-partition batch; returns
    /// whether it applied and the current statics when it did not.
    async fn write(
        &self,
        key: &EntityKey,
        bucket: u64,
        cond: Cond,
        a: &Append<'_>,
    ) -> Result<(bool, Statics), JournalError> {
        let st = &self.inner.st;
        let fence = a.fence.filter(|_| !matches!(cond, Cond::Plain));
        let heads = if fence.is_some() { &st.head_fenced } else { &st.head };
        let head_stmt: &PreparedStatement = match (cond, a.snapshot.is_some()) {
            (Cond::Eq, false) => &heads.eq,
            (Cond::Eq, true) => &heads.eq_snap,
            (Cond::New, false) => &heads.new,
            (Cond::New, true) => &heads.new_snap,
            (Cond::Plain, false) => &st.head_plain,
            (Cond::Plain, true) => &st.head_plain_snap,
        };
        let mut head = Named::partition(&key.entity_type, &key.entity_id, bucket)
            .big("last_seq", (a.expected + a.events.len() as u64) as i64)
            .big("expected", a.expected as i64);
        if let Some(f) = fence {
            head = head.big("fence", f as i64);
        }
        if let Some(s) = a.snapshot {
            head = head
                .big("snap_seq", s.seq as i64)
                .with("snap_version", CqlValue::Int(s.version as i32))
                .big("snap_ts", s.timestamp_ms)
                .with("snap_payload", CqlValue::Blob(s.payload.clone()));
        }
        let plain = matches!(cond, Cond::Plain);
        let mut batch = Batch::new(if plain { BatchType::Unlogged } else { BatchType::Logged });
        batch.set_consistency(self.inner.config.consistency);
        batch.set_serial_consistency(Some(self.inner.config.serial_consistency));
        batch.set_request_timeout(Some(self.inner.config.timeout));
        batch.append_statement(head_stmt.clone());
        let mut values = Vec::with_capacity(a.events.len() + 1);
        values.push(head);
        for (i, e) in a.events.iter().enumerate() {
            batch.append_statement(st.insert_event.clone());
            let seq = a.expected + 1 + i as u64;
            let idem = a.keys.iter().find(|k| k.seq == seq).map_or(CqlValue::Empty, |k| CqlValue::Text(k.key.clone()));
            values.push(
                Named::partition(&key.entity_type, &key.entity_id, bucket)
                    .big("seq", seq as i64)
                    .big("crc", i64::from(event_crc(seq, &e.type_name, e.version, &e.payload, &e.metadata)))
                    .big("ts", a.ts)
                    .text("type_name", &e.type_name)
                    .with("version", CqlValue::Int(e.version as i32))
                    .with("payload", CqlValue::Blob(e.payload.clone()))
                    .with("metadata", CqlValue::Blob(e.metadata.clone()))
                    .big_or_null("feed_intent", a.intent.map(|id| id as i64))
                    .with("idem_key", idem),
            );
        }
        let c = &self.inner.counts;
        counts::Counters::bump(if plain { &c.plain_appends } else { &c.conditional_appends });
        let r = self.inner.session.batch(&batch, values).await.map_err(unavailable)?;
        if plain {
            return Ok((true, Statics::default()));
        }
        let (applied, cols) = lwt_outcome(r)?;
        Ok((applied, Statics::from_cols(&cols)))
    }

    /// The error for an append that was not applied, from the head's statics now.
    async fn refusal(&self, key: &EntityKey, expected: u64, fence: Option<u64>) -> AppendError {
        match self.head_statics(key).await {
            Ok((_, statics)) => {
                let actual = statics.map_or(0, |s| s.last());
                match (fence, statics) {
                    (Some(epoch), None) => AppendError::Fenced { entity: key.to_string(), epoch, current: 0 },
                    (Some(epoch), Some(s)) if s.fence() != epoch => {
                        AppendError::Fenced { entity: key.to_string(), epoch, current: s.fence() }
                    }
                    _ => AppendError::Conflict { entity: key.to_string(), expected, actual },
                }
            }
            Err(e) => e.into(),
        }
    }

    /// Seals partition `target - 1` at `expected` (under the fence when given).
    async fn seal(
        &self,
        key: &EntityKey,
        target: u64,
        expected: u64,
        fence: Option<u64>,
    ) -> Result<bool, JournalError> {
        let mut v = Named::partition(&key.entity_type, &key.entity_id, target - 1)
            .big("sealed", target as i64)
            .big("expected", expected as i64);
        let stmt = match fence {
            None => &self.inner.st.seal,
            Some(f) => {
                v = v.big("fence", f as i64);
                &self.inner.st.seal_fenced
            }
        };
        let r = self.inner.session.execute_unpaged(stmt, v).await.map_err(unavailable)?;
        Ok(lwt_outcome(r)?.0)
    }

    /// The seq at which the entity committed `idem` (within its retention):
    /// the key's row, confirmed by the event it names (a row written ahead
    /// of an append that then failed names an event of another invocation).
    pub(crate) async fn remembered(&self, key: &EntityKey, idem: &str) -> Result<Option<u64>, JournalError> {
        let v = Named::new().text("entity_type", &key.entity_type).text("entity_id", &key.entity_id).text("key", idem);
        let Some((Some(seq),)) = self.first_row::<(Option<i64>,)>(&self.inner.st.key_get, v).await? else {
            return Ok(None);
        };
        let seq = seq.max(0) as u64;
        let at = Named::partition(&key.entity_type, &key.entity_id, bucket::bucket_of(seq, self.inner.bucket))
            .big("seq", seq as i64);
        let stored = self.first_row::<(Option<String>,)>(&self.inner.st.event_key, at).await?;
        Ok(stored.and_then(|(k,)| k).filter(|k| k == idem).map(|_| seq))
    }

    /// Records a key ahead of its append (its own partition, so not in the
    /// append's transaction; `remembered` confirms it against the event).
    async fn remember(&self, key: &EntityKey, k: &IdempotencyKey) -> Result<(), JournalError> {
        let ttl = (k.retain_ms / 1000).clamp(1, i32::MAX as i64) as i32;
        let v = Named::new()
            .text("entity_type", &key.entity_type)
            .text("entity_id", &key.entity_id)
            .text("key", &k.key)
            .big("seq", k.seq as i64)
            .with("ttl", CqlValue::Int(ttl));
        self.inner.session.execute_unpaged(&self.inner.st.key_put, v).await.map_err(unavailable)?;
        Ok(())
    }

    /// Commits one append with its feed intent and keys: the keys checked
    /// and recorded, the intent written, the lease asked, then the
    /// conditional append; offsets are given to it once it is known to have
    /// committed (`feed`).
    pub(crate) async fn commit_fed(&self, key: &EntityKey, req: AppendRequest) -> Result<(u64, i64), AppendError> {
        if req.events.is_empty() {
            return Err(JournalError::Invalid("append of no events".into()).into());
        }
        req.check_keys()?;
        let AppendRequest { expected_seq: expected, events, snapshot, fence, keys: idem, lease } = req;
        if !idem.is_empty() {
            let seen = futures::future::try_join_all(idem.iter().map(|k| self.remembered(key, &k.key))).await?;
            if let Some((k, seq)) = idem.iter().zip(seen).find_map(|(k, s)| s.map(|s| (k, s))) {
                return Err(AppendError::Duplicate { entity: key.to_string(), key: k.key.clone(), seq });
            }
            futures::future::try_join_all(idem.iter().map(|k| self.remember(key, k))).await?;
        }
        let mut a = Append {
            expected,
            events: &events,
            snapshot: snapshot.as_ref(),
            fence,
            ts: now_ms(),
            intent: None,
            keys: &idem,
        };
        if key.entity_type.starts_with(crate::INTERNAL_TYPE_PREFIX) {
            // Runtime bookkeeping (e.g. projection checkpoints): no feed.
            return self.append_inner(key, &a).await;
        }
        let unit = (key.entity_type.clone(), key.shard(self.inner.shards));
        let feed = self.unit_feed(unit, fence).await?;
        self.wait_settled(&feed, key).await?;
        let target = bucket::target(expected, self.inner.bucket);
        let records = events.iter().map(|e| crate::is_internal_type(&e.type_name)).collect();
        let intent = self.intend(&feed, key, target, expected + 1, records).await?;
        crate::fault::point("scylla.after_intent");
        // The lease, asked now that the intent is durable: an append sent
        // after this has its intent where a successor's settle finds it.
        if lease.as_ref().is_some_and(|l| !l()) {
            self.refused(&feed, &intent);
            let epoch = fence.unwrap_or(feed.epoch());
            return Err(AppendError::Fenced { entity: key.to_string(), epoch, current: epoch });
        }
        (a.ts, a.intent) = (now_ms(), Some(intent.id));
        let r = self.append_inner(key, &a).await;
        match &r {
            Ok(_) => {
                crate::fault::point("scylla.after_append");
                self.committed(&feed, intent).await;
            }
            // The driver could not tell whether it applied.
            Err(AppendError::Journal(JournalError::Unavailable(_))) => self.settle_unknown(feed, intent),
            Err(_) => self.refused(&feed, &intent),
        }
        r
    }

    /// Commits one append; returns the partition it went to and its commit time.
    pub(crate) async fn append_inner(&self, key: &EntityKey, a: &Append<'_>) -> Result<(u64, i64), AppendError> {
        let Append { expected, events, snapshot, fence, .. } = *a;
        if events.is_empty() {
            return Err(JournalError::Invalid("append of no events".into()).into());
        }
        if events.len() as u64 > self.inner.bucket {
            return Err(JournalError::Invalid(format!(
                "an append holds at most {} events (the bucket size)",
                self.inner.bucket
            ))
            .into());
        }
        let last = expected + events.len() as u64;
        if let Some(s) = snapshot.filter(|s| s.seq > last) {
            return Err(JournalError::Invalid(format!("snapshot seq {} is past {last}", s.seq)).into());
        }
        let target = bucket::target(expected, self.inner.bucket);
        let done = Ok((target, a.ts));
        if !self.inner.config.conditional {
            self.write(key, target, Cond::Plain, a).await?;
            return done;
        }
        // An unfenced writer's first append creates partition 0; a fenced
        // writer's partition exists already (its fence raise opened it).
        if expected == 0 && fence.is_none() {
            let (applied, seen) = self.write(key, target, Cond::New, a).await?;
            if applied {
                return done;
            }
            if seen.last_seq != Some(0) {
                return Err(self.refusal(key, expected, fence).await);
            }
            // Partition 0 was opened empty by a fence raise: append after seq 0.
        }
        let (applied, seen) = self.write(key, target, Cond::Eq, a).await?;
        if applied {
            return done;
        }
        let entity = key.to_string();
        match bucket::refused(target, seen, fence) {
            Refused::Fenced { current } => {
                return Err(AppendError::Fenced { entity, epoch: fence.unwrap_or(0), current });
            }
            Refused::NeverFenced => return Err(AppendError::Fenced { entity, epoch: fence.unwrap_or(0), current: 0 }),
            Refused::Conflict => return Err(self.refusal(key, expected, fence).await),
            Refused::SealPrevious => {}
        }
        // The first append of a new partition: seal the previous one at `expected`, then open this one.
        if !self.seal(key, target, expected, fence).await? {
            return Err(self.refusal(key, expected, fence).await);
        }
        let (applied, seen) = self.write(key, target, Cond::New, a).await?;
        if applied {
            return done;
        }
        if fence.is_none() && seen.last_seq == Some(expected as i64) {
            // A fence raise opened it empty since: append after `expected` there.
            if self.write(key, target, Cond::Eq, a).await?.0 {
                return done;
            }
        }
        Err(self.refusal(key, expected, fence).await)
    }

    /// Raises the entity's fence to `epoch` (see `bucket::raise`).
    pub(crate) async fn raise_fence_inner(&self, key: &EntityKey, epoch: u64) -> Result<(), AppendError> {
        let st = &self.inner.st;
        for _ in 0..32 {
            let (head, statics) = self.head_statics(key).await?;
            let pk = |b: u64| Named::partition(&key.entity_type, &key.entity_id, b).big("fence", epoch as i64);
            let r = match bucket::raise(head, statics, epoch) {
                Raise::Done => return Ok(()),
                Raise::Fenced { current } => {
                    return Err(AppendError::Fenced { entity: key.to_string(), epoch, current });
                }
                Raise::OpenEmpty { bucket, last_seq } => {
                    let v = pk(bucket).big("last_seq", last_seq);
                    self.inner.session.execute_unpaged(&st.head_fenced.new, v).await
                }
                Raise::Cas { bucket, from: None } => {
                    self.inner.session.execute_unpaged(&st.raise_fence_from_null, pk(bucket)).await
                }
                Raise::Cas { bucket, from: Some(current) } => {
                    self.inner.session.execute_unpaged(&st.raise_fence, pk(bucket).big("current", current)).await
                }
            };
            if lwt_outcome(r.map_err(unavailable)?)?.0 {
                return Ok(());
            }
        }
        Err(JournalError::Unavailable(format!("scylla: could not raise the fence of {key}: its head keeps moving"))
            .into())
    }
}
