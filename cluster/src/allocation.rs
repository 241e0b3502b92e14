//! Shard allocation: the least-shard strategy with a cap on moves per round.
//!
//! Given who owns each shard now and which nodes are alive, [`plan`] returns
//! the moves of one round: unowned shards (or shards of dead nodes) go to the
//! least-loaded live nodes first, then shards move from the most- to the
//! least-loaded node while the difference is more than one, at most
//! `max_moves` moves of owned shards per round so that a joining node takes
//! shards gradually (no rebalance storms). A move takes the shard of the
//! entity type the giver holds the most more of than the taker
//! ([`plan_grouped`]), so every type spreads, not only the totals. The plan
//! is a pure function, so every node computes the same one.

use std::collections::BTreeMap;

/// One shard changing owner.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Move {
    /// The shard.
    pub shard: u32,
    /// Its current live owner, if any.
    pub from: Option<String>,
    /// Its new owner.
    pub to: String,
}

/// The moves of one allocation round. `owners[shard]` is the current owner;
/// `live` the live nodes (any order). Unowned shards are always assigned;
/// rebalancing moves of owned shards are capped at `max_moves`.
pub fn plan(owners: &[Option<String>], live: &[String], max_moves: usize) -> Vec<Move> {
    plan_grouped(owners, live, max_moves, owners.len())
}

/// [`plan`] where shards come in groups of `group_size` consecutive
/// indices (one group per entity type): a rebalancing move takes the shard
/// of the group where the giver has the most more than the taker, so each
/// type's shards spread over the nodes too, not only the totals (a node
/// that took every shard before another joined must not hand over whole
/// types). Ties go to the highest index, as in [`plan`].
pub fn plan_grouped(owners: &[Option<String>], live: &[String], max_moves: usize, group_size: usize) -> Vec<Move> {
    let group_size = group_size.max(1);
    if live.is_empty() {
        return Vec::new();
    }
    let mut load: BTreeMap<&str, Vec<u32>> = live.iter().map(|n| (n.as_str(), Vec::new())).collect();
    let mut orphans = Vec::new();
    for (shard, owner) in owners.iter().enumerate() {
        match owner.as_deref().and_then(|o| load.get_mut(o)) {
            Some(shards) => shards.push(shard as u32),
            None => orphans.push(shard as u32),
        }
    }
    let least = |load: &BTreeMap<&str, Vec<u32>>| {
        load.iter().min_by_key(|(n, s)| (s.len(), *n)).map(|(n, _)| (*n).to_owned()).unwrap_or_default()
    };
    let mut moves = Vec::new();
    for shard in orphans {
        let to = least(&load);
        if let Some(s) = load.get_mut(to.as_str()) {
            s.push(shard);
        }
        moves.push(Move { shard, from: None, to });
    }
    for _ in 0..max_moves {
        let (most, most_n) = match load.iter().max_by_key(|(n, s)| (s.len(), std::cmp::Reverse(*n))) {
            Some((n, s)) => ((*n).to_owned(), s.len()),
            None => break,
        };
        let to = least(&load);
        let to_n = load.get(to.as_str()).map_or(0, Vec::len);
        if most_n <= to_n + 1 {
            break;
        }
        let shard = match (load.get(most.as_str()), load.get(to.as_str())) {
            (Some(giver), Some(taker)) => pick(giver, taker, group_size),
            _ => break,
        };
        if let Some(s) = load.get_mut(most.as_str()) {
            s.retain(|&x| x != shard);
        }
        if let Some(s) = load.get_mut(to.as_str()) {
            s.push(shard);
        }
        moves.push(Move { shard, from: Some(most), to });
    }
    moves
}

/// The giver's shard to move: from the group where the giver has the most
/// more than the taker; the highest index among those.
fn pick(giver: &[u32], taker: &[u32], group_size: usize) -> u32 {
    let mut diff: BTreeMap<usize, i64> = BTreeMap::new();
    for &s in giver {
        *diff.entry(s as usize / group_size).or_default() += 1;
    }
    for &s in taker {
        *diff.entry(s as usize / group_size).or_default() -= 1;
    }
    giver
        .iter()
        .copied()
        .max_by_key(|&s| (diff.get(&(s as usize / group_size)).copied().unwrap_or(0), s))
        .unwrap_or_default()
}

/// Whether `me` holds its share: no move of an uncapped plan would give it
/// a shard. A node that just joined is not ready (for a load balancer)
/// until this holds once; moves away from `me` do not count (it still
/// serves what it holds).
pub fn holds_its_share(owners: &[Option<String>], live: &[String], me: &str) -> bool {
    plan(owners, live, usize::MAX).iter().all(|m| m.to != me)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(owners: &mut [Option<String>], moves: &[Move]) {
        for m in moves {
            owners[m.shard as usize] = Some(m.to.clone());
        }
    }

    fn counts(owners: &[Option<String>], node: &str) -> usize {
        owners.iter().filter(|o| o.as_deref() == Some(node)).count()
    }

    #[test]
    fn first_node_takes_everything() {
        let owners = vec![None; 16];
        let moves = plan(&owners, &["a".into()], 2);
        assert_eq!(moves.len(), 16);
        assert!(moves.iter().all(|m| m.to == "a" && m.from.is_none()));
    }

    #[test]
    fn joining_node_gets_shards_gradually_until_even() {
        let mut owners = vec![Some("a".to_owned()); 64];
        let live = vec!["a".to_owned(), "b".to_owned()];
        let mut rounds = 0;
        loop {
            let moves = plan(&owners, &live, 4);
            if moves.is_empty() {
                break;
            }
            assert!(moves.len() <= 4, "capped");
            apply(&mut owners, &moves);
            rounds += 1;
        }
        assert_eq!(rounds, 8);
        assert_eq!((counts(&owners, "a"), counts(&owners, "b")), (32, 32));
    }

    #[test]
    fn dead_nodes_shards_are_reassigned_at_once_and_evenly() {
        let mut owners: Vec<Option<String>> = (0..30).map(|i| Some(["a", "b", "c"][i % 3].to_owned())).collect();
        let live = vec!["a".to_owned(), "b".to_owned()];
        let moves = plan(&owners, &live, 0);
        assert_eq!(moves.len(), 10, "orphans are not capped");
        apply(&mut owners, &moves);
        assert_eq!((counts(&owners, "a"), counts(&owners, "b")), (15, 15));
        assert!(plan(&owners, &live, 10).is_empty(), "stable once balanced");
    }

    #[test]
    fn nobody_alive_means_no_moves() {
        assert!(plan(&[None, None], &[], 5).is_empty());
    }

    #[test]
    fn a_joining_node_holds_its_share_only_once_it_has_taken_it() {
        let live = vec!["a".to_owned(), "b".to_owned()];
        let all_a: Vec<Option<String>> = vec![Some("a".into()); 4];
        assert!(holds_its_share(&all_a, &live, "a"), "moves away from a node do not count");
        assert!(!holds_its_share(&all_a, &live, "b"), "b has not taken its two shards yet");
        let split = vec![Some("a".into()), Some("b".into()), Some("a".into()), Some("b".into())];
        assert!(holds_its_share(&split, &live, "b"));
    }

    #[test]
    fn an_orphaned_shard_is_a_share_not_yet_held() {
        let live = vec!["a".to_owned()];
        assert!(!holds_its_share(&[Some("a".into()), None], &live, "a"));
        assert!(holds_its_share(&[Some("a".into()), Some("a".into())], &live, "a"));
    }

    #[test]
    fn a_node_that_took_everything_hands_over_some_of_every_type() {
        // Two types of four shards each, all on `a`; `b` joins.
        let owners: Vec<Option<String>> = vec![Some("a".into()); 8];
        let live = vec!["a".to_owned(), "b".to_owned()];
        let moves = plan_grouped(&owners, &live, 8, 4);
        assert_eq!(moves.len(), 4);
        let to_b: Vec<u32> = moves.iter().map(|m| m.shard).collect();
        assert_eq!(to_b.iter().filter(|&&s| s < 4).count(), 2, "two of the first type: {to_b:?}");
        assert_eq!(to_b.iter().filter(|&&s| s >= 4).count(), 2, "two of the second type: {to_b:?}");
    }

    #[test]
    fn one_group_moves_the_highest_shards_as_before() {
        let owners: Vec<Option<String>> = vec![Some("a".into()); 4];
        let live = vec!["a".to_owned(), "b".to_owned()];
        let moved: Vec<u32> = plan(&owners, &live, 4).iter().map(|m| m.shard).collect();
        assert_eq!(moved, vec![3, 2]);
    }
}
