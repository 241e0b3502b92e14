//! The bucket decisions, pure: which partition an append goes to, what a
//! refused conditional write means, and the next step of a fence raise.
//! The IO in `append.rs` only carries them out.
//!
//! Invariant: an append of `expected + 1 ..= expected + n` goes whole into
//! partition `(expected + 1) / B`; a partition is opened only after the one
//! before it was sealed at the writer's `expected` (under its fence, for a
//! fenced writer), or by a fence raise that found its predecessor sealed.

use super::rows::Statics;

/// The partition (bucket) holding `seq`.
pub(crate) fn bucket_of(seq: u64, bucket_size: u64) -> u64 {
    seq / bucket_size.max(1)
}

/// The partition an append after `expected` goes to.
pub(crate) fn target(expected: u64, bucket_size: u64) -> u64 {
    bucket_of(expected + 1, bucket_size)
}

/// What a conditional write on the target partition that was not applied
/// means, from the statics it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The fence is not the writer's epoch: a newer owner took over.
    Fenced { current: u64 },
    /// The partition exists and its last seq is not `expected`: another
    /// writer got there first (or the caller's view is stale).
    Conflict,
    /// The fenced writer's entity was never fenced (it has no partition).
    NeverFenced,
    /// The partition does not exist yet: this is the first append of a new
    /// bucket — seal the previous one, then open this one.
    SealPrevious,
}

/// Classifies a refused conditional append on partition `target`.
pub(crate) fn refused(target: u64, seen: Statics, fence: Option<u64>) -> Refused {
    match (seen.last_seq, fence) {
        (Some(_), Some(epoch)) if seen.fence() != epoch => Refused::Fenced { current: seen.fence() },
        (Some(_), _) => Refused::Conflict,
        (None, Some(_)) if target == 0 => Refused::NeverFenced,
        (None, None) if target == 0 => Refused::Conflict,
        (None, _) => Refused::SealPrevious,
    }
}

/// The next step of raising an entity's fence to `epoch`, from its head
/// partition `head` and that partition's statics (`None`: no partition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Raise {
    /// Open partition `bucket` empty with the fence and `last_seq` (no
    /// partition yet, or the head is sealed and its successor not opened).
    OpenEmpty { bucket: u64, last_seq: i64 },
    /// Compare-and-set the fence of the unsealed head from its current value.
    Cas { bucket: u64, from: Option<i64> },
    /// Already raised to this epoch.
    Done,
    /// A newer epoch holds the entity.
    Fenced { current: u64 },
}

/// Decides the next step of a raise.
pub(crate) fn raise(head: u64, statics: Option<Statics>, epoch: u64) -> Raise {
    match statics {
        None => Raise::OpenEmpty { bucket: 0, last_seq: 0 },
        Some(s) if s.fence() > epoch => Raise::Fenced { current: s.fence() },
        Some(s) if s.sealed.is_some() => Raise::OpenEmpty { bucket: head + 1, last_seq: s.last_seq.unwrap_or(0) },
        Some(s) if s.fence == Some(epoch as i64) => Raise::Done,
        Some(s) => Raise::Cas { bucket: head, from: s.fence },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(last: Option<i64>, sealed: Option<i64>, fence: Option<i64>) -> Statics {
        Statics { last_seq: last, sealed, fence }
    }

    #[test]
    fn appends_go_whole_into_the_bucket_of_their_first_seq() {
        let cases = [(0, 10, 0), (8, 10, 0), (9, 10, 1), (13, 10, 1), (99, 100, 1), (5, 0, 6)];
        for (expected, b, want) in cases {
            assert_eq!(target(expected, b), want, "expected {expected}, bucket size {b}");
        }
    }

    #[test]
    fn a_refused_append_is_a_conflict_a_fence_or_a_new_bucket() {
        let cases = [
            ("partition has other last seq", 1, st(Some(7), None, None), None, Refused::Conflict),
            ("sealed partition, unfenced", 1, st(Some(9), Some(2), None), None, Refused::Conflict),
            ("a newer owner's fence", 1, st(Some(7), None, Some(9)), Some(5), Refused::Fenced { current: 9 }),
            ("right fence, wrong seq", 1, st(Some(7), None, Some(5)), Some(5), Refused::Conflict),
            ("unfenced head, fenced writer", 1, st(Some(7), None, None), Some(5), Refused::Fenced { current: 0 }),
            ("no partition 0, unfenced", 0, st(None, None, None), None, Refused::Conflict),
            ("no partition 0, fenced", 0, st(None, None, None), Some(5), Refused::NeverFenced),
            ("no partition 2 yet", 2, st(None, None, None), None, Refused::SealPrevious),
            ("no partition 2 yet, fenced", 2, st(None, None, None), Some(5), Refused::SealPrevious),
        ];
        for (what, t, seen, fence, want) in cases {
            assert_eq!(refused(t, seen, fence), want, "{what}");
        }
    }

    #[test]
    fn raising_a_fence_step_by_step() {
        let cases = [
            ("no partition", 0, None, 5, Raise::OpenEmpty { bucket: 0, last_seq: 0 }),
            ("unfenced head", 3, Some(st(Some(40), None, None)), 5, Raise::Cas { bucket: 3, from: None }),
            ("older fence", 3, Some(st(Some(40), None, Some(4))), 5, Raise::Cas { bucket: 3, from: Some(4) }),
            ("same fence", 3, Some(st(Some(40), None, Some(5))), 5, Raise::Done),
            ("newer fence", 3, Some(st(Some(40), None, Some(6))), 5, Raise::Fenced { current: 6 }),
            (
                "sealed head: a writer sealed and stalled",
                3,
                Some(st(Some(40), Some(4), Some(4))),
                5,
                Raise::OpenEmpty { bucket: 4, last_seq: 40 },
            ),
            ("sealed head, newer fence", 3, Some(st(Some(40), Some(4), Some(7))), 5, Raise::Fenced { current: 7 }),
        ];
        for (what, head, statics, epoch, want) in cases {
            assert_eq!(raise(head, statics, epoch), want, "{what}");
        }
    }
}
