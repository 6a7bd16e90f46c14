//! Where each partition ends: the next offset the writer will give it, as last committed.
//!
//! The writer is the only one appending (the data directory is locked to one process), so the
//! ends it publishes after each commit are the log's. Consumers compare their position with them
//! and query only partitions holding records they have not read: without it, every consumer
//! queried every partition it holds on each wake-up (any append, any topic) and every 100 ms
//! while idle — about a thousand empty queries a second in a `pulse up` at rest, taken from the
//! same two cores as the requests.

use std::collections::HashMap;
use std::sync::RwLock;

use pulse_core::PortResult;
use sqlx::{Row, SqliteConnection};

use crate::schema::storage_error;

/// Per topic, per partition, the next offset to be written.
#[derive(Debug, Default)]
pub(crate) struct CommittedEnds {
    by_topic: RwLock<HashMap<String, Vec<i64>>>,
}

impl CommittedEnds {
    /// The ends recorded in the `partitions` table (the writer updates it in each append's
    /// transaction), read when the log opens.
    pub(crate) async fn load(conn: &mut SqliteConnection) -> PortResult<Self> {
        let rows = sqlx::query("SELECT topic, partition, next_offset FROM partitions")
            .fetch_all(conn)
            .await
            .map_err(storage_error)?;
        let ends = Self::default();
        {
            let mut by_topic = ends.write();
            for row in rows {
                let topic: String = row.get(0);
                let partition: u32 = row.get(1);
                raise(&mut by_topic, &topic, partition, row.get(2));
            }
        }
        Ok(ends)
    }

    /// A topic just created, its partitions empty (ends already known are kept).
    pub(crate) fn add_topic(&self, topic: &str, partitions: u32) {
        let mut by_topic = self.write();
        for partition in 0..partitions {
            raise(&mut by_topic, topic, partition, 0);
        }
    }

    /// The ends of a committed append batch. An end never moves back.
    pub(crate) fn advance(&self, committed: &HashMap<(String, u32), i64>) {
        let mut by_topic = self.write();
        for ((topic, partition), end) in committed {
            raise(&mut by_topic, topic, *partition, *end);
        }
    }

    /// The next offset `partition` of `topic` will get; `None` when unknown (read it instead).
    pub(crate) fn end(&self, topic: &str, partition: u32) -> Option<i64> {
        let by_topic = self
            .by_topic
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let end = *by_topic.get(topic)?.get(partition as usize)?;
        (end != i64::MAX).then_some(end)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Vec<i64>>> {
        self.by_topic
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Raises the end of `partition` to `end`. Partitions below it that were never seen get
/// `i64::MAX`, "unknown": never a reason to skip a read.
fn raise(by_topic: &mut HashMap<String, Vec<i64>>, topic: &str, partition: u32, end: i64) {
    let ends = match by_topic.get_mut(topic) {
        Some(ends) => ends,
        None => by_topic.entry(topic.to_owned()).or_default(),
    };
    let index = partition as usize;
    if ends.len() <= index {
        ends.resize(index + 1, i64::MAX);
    }
    let slot = &mut ends[index];
    *slot = if *slot == i64::MAX {
        end
    } else {
        (*slot).max(end)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_end_never_moves_back_and_gaps_stay_unknown() {
        let ends = CommittedEnds::default();
        assert_eq!(ends.end("t", 0), None);
        ends.advance(&HashMap::from([(("t".to_owned(), 2), 7)]));
        assert_eq!(ends.end("t", 2), Some(7));
        // Partitions 0 and 1 were never seen: unknown, so a consumer reads them.
        assert_eq!(ends.end("t", 0), None);
        ends.add_topic("t", 3);
        assert_eq!(ends.end("t", 0), Some(0));
        assert_eq!(
            ends.end("t", 2),
            Some(7),
            "creating a known topic keeps its ends"
        );
        ends.advance(&HashMap::from([(("t".to_owned(), 2), 5)]));
        assert_eq!(ends.end("t", 2), Some(7));
        ends.advance(&HashMap::from([(("t".to_owned(), 2), 9)]));
        assert_eq!(ends.end("t", 2), Some(9));
    }
}
