//! In-process consumer groups: members of one group split each topic's partitions.
//!
//! The embedded log lives in exactly one process (it holds a lock on its data directory), so group
//! membership is a map behind a mutex rather than a coordination protocol. Every join or leave
//! bumps the group's generation; members notice on their next poll and adopt the new assignment,
//! resuming newly assigned partitions from the committed offsets (at-least-once, as in Kafka).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use pulse_core::log::TopicPartition;

#[derive(Debug, Default)]
struct Group {
    generation: u64,
    /// Member id → subscribed topics.
    members: BTreeMap<u64, Vec<String>>,
}

#[derive(Debug, Default)]
pub(crate) struct Groups {
    inner: Mutex<(u64, HashMap<String, Group>)>,
}

impl Groups {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<String, Group>)> {
        // Every mutation is a single map operation, so a poisoned lock holds consistent data.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a member subscribed to `topics`; returns its id.
    pub(crate) fn join(&self, group: &str, topics: Vec<String>) -> u64 {
        let mut guard = self.lock();
        let (next_id, groups) = &mut *guard;
        *next_id += 1;
        let member = *next_id;
        let entry = groups.entry(group.to_owned()).or_default();
        entry.members.insert(member, topics);
        entry.generation += 1;
        member
    }

    /// Removes a member; its partitions go to the others.
    pub(crate) fn leave(&self, group: &str, member: u64) {
        let mut guard = self.lock();
        let groups = &mut guard.1;
        if let Some(entry) = groups.get_mut(group) {
            if entry.members.remove(&member).is_some() {
                entry.generation += 1;
            }
            if entry.members.is_empty() {
                groups.remove(group);
            }
        }
    }

    /// The group's current generation.
    pub(crate) fn generation(&self, group: &str) -> u64 {
        self.lock().1.get(group).map_or(0, |entry| entry.generation)
    }

    /// The partitions `member` owns now, given each topic's partition count, and the generation
    /// that assignment belongs to. Partition `p` of a topic goes to the `p mod n`-th of the `n`
    /// members subscribed to that topic, ordered by join order.
    pub(crate) fn assignment(
        &self,
        group: &str,
        member: u64,
        partition_counts: &HashMap<String, u32>,
    ) -> (u64, Vec<TopicPartition>) {
        let guard = self.lock();
        let Some(entry) = guard.1.get(group) else {
            return (0, Vec::new());
        };
        let Some(own_topics) = entry.members.get(&member) else {
            return (entry.generation, Vec::new());
        };
        let mut assigned = Vec::new();
        for topic in own_topics {
            let subscribers: Vec<u64> = entry
                .members
                .iter()
                .filter(|(_, topics)| topics.contains(topic))
                .map(|(id, _)| *id)
                .collect();
            let Some(index) = subscribers.iter().position(|id| *id == member) else {
                continue;
            };
            let count = partition_counts.get(topic).copied().unwrap_or(0);
            assigned.extend(
                (0..count)
                    .filter(|partition| *partition as usize % subscribers.len() == index)
                    .map(|partition| TopicPartition {
                        topic: topic.clone(),
                        partition,
                    }),
            );
        }
        (entry.generation, assigned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts() -> HashMap<String, u32> {
        HashMap::from([("t".to_owned(), 4)])
    }

    #[test]
    fn members_split_partitions_and_take_them_back_on_leave() {
        let groups = Groups::default();
        let a = groups.join("g", vec!["t".into()]);
        let b = groups.join("g", vec!["t".into()]);
        let (generation, mine) = groups.assignment("g", a, &counts());
        let (_, theirs) = groups.assignment("g", b, &counts());
        assert_eq!(
            mine.iter().map(|tp| tp.partition).collect::<Vec<_>>(),
            vec![0, 2]
        );
        assert_eq!(
            theirs.iter().map(|tp| tp.partition).collect::<Vec<_>>(),
            vec![1, 3]
        );
        groups.leave("g", b);
        let (next_generation, mine) = groups.assignment("g", a, &counts());
        assert!(next_generation > generation);
        assert_eq!(mine.len(), 4);
    }

    #[test]
    fn groups_are_independent() {
        let groups = Groups::default();
        let a = groups.join("g1", vec!["t".into()]);
        let b = groups.join("g2", vec!["t".into()]);
        assert_eq!(groups.assignment("g1", a, &counts()).1.len(), 4);
        assert_eq!(groups.assignment("g2", b, &counts()).1.len(), 4);
    }
}
