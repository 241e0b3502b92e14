//! Shard allocation: the least-shard strategy with a cap on moves per round.
//!
//! Given who owns each shard now and which nodes are alive, [`plan`] returns
//! the moves of one round: unowned shards (or shards of dead nodes) go to the
//! least-loaded live nodes first, then shards move from the most- to the
//! least-loaded node while the difference is more than one, at most
//! `max_moves` moves of owned shards per round so that a joining node takes
//! shards gradually (no rebalance storms). The plan is a pure function, so
//! every node computes the same one.

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
        let shard = load.get_mut(most.as_str()).and_then(Vec::pop).unwrap_or_default();
        if let Some(s) = load.get_mut(to.as_str()) {
            s.push(shard);
        }
        moves.push(Move { shard, from: Some(most), to });
    }
    moves
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
}
