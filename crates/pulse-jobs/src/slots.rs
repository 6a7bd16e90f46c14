//! The worker's `concurrency` slots, handed out fairly: a worker holds more leases than it runs
//! (the next attempt starts without a round trip), and when a slot frees it goes to the tenant
//! whose turn it is — round-robin over the tenants with attempts waiting — not to whichever
//! attempt asked first, so the jobs a worker already holds of a tenant with a deep backlog do
//! not queue another tenant's job behind them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use pulse_core::TenantId;
use tokio::sync::oneshot;

/// See the module docs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FairSlots {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    free: usize,
    /// Per tenant, the attempts waiting for a slot, oldest first.
    waiting: HashMap<TenantId, VecDeque<oneshot::Sender<Slot>>>,
    /// The tenants with attempts waiting, in turn order.
    turns: VecDeque<TenantId>,
}

/// A slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Option<Arc<Mutex<State>>>,
}

impl FairSlots {
    /// `count` slots.
    pub fn new(count: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(State {
                free: count,
                waiting: HashMap::new(),
                turns: VecDeque::new(),
            })),
        }
    }

    /// A slot for an attempt of `tenant`: at once when one is free and nobody waits, else when
    /// the tenant's turn comes. Dropping the future gives up the place in line.
    pub async fn acquire(&self, tenant: &TenantId) -> Slot {
        let receiver = {
            let mut state = lock(&self.inner);
            if state.free > 0 && state.turns.is_empty() {
                state.free -= 1;
                return Slot {
                    slots: Some(self.inner.clone()),
                };
            }
            let (sender, receiver) = oneshot::channel();
            let queue = state.waiting.entry(tenant.clone()).or_default();
            if queue.is_empty() {
                state.turns.push_back(tenant.clone());
            }
            state
                .waiting
                .get_mut(tenant)
                .expect("inserted above")
                .push_back(sender);
            receiver
        };
        // The sender side only ever sends a slot; it is dropped unsent only with the slots.
        receiver.await.unwrap_or(Slot { slots: None })
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(slots) = self.slots.take() else {
            return;
        };
        let mut state = lock(&slots);
        // The next tenant in turn whose waiting attempt is still there gets the slot; one that
        // gave up (its future dropped) is skipped.
        while let Some(tenant) = state.turns.pop_front() {
            let Some(queue) = state.waiting.get_mut(&tenant) else {
                continue;
            };
            let mut handed = false;
            while let Some(sender) = queue.pop_front() {
                let slot = Slot {
                    slots: Some(slots.clone()),
                };
                match sender.send(slot) {
                    Ok(()) => {
                        handed = true;
                        break;
                    }
                    // Gave up: the slot came back unsent; disarm it and try the next.
                    Err(mut unsent) => unsent.slots = None,
                }
            }
            let more = !queue.is_empty();
            if more {
                state.turns.push_back(tenant);
            } else {
                state.waiting.remove(&tenant);
            }
            if handed {
                return;
            }
        }
        state.free += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::parse(name).unwrap()
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_next_tenant_in_turn_not_the_oldest_waiter() {
        let slots = FairSlots::new(1);
        let held = slots.acquire(&tenant("big")).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiting = Vec::new();
        for (n, name) in ["big", "big", "big", "small"].into_iter().enumerate() {
            let slots = slots.clone();
            let order = order.clone();
            waiting.push(tokio::spawn(async move {
                let slot = slots.acquire(&tenant(name)).await;
                order.lock().unwrap().push(format!("{name}{n}"));
                tokio::task::yield_now().await;
                drop(slot);
            }));
            tokio::task::yield_now().await;
        }
        drop(held);
        for task in waiting {
            task.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            vec!["big0", "small3", "big1", "big2"],
            "the small tenant's attempt runs second, not last"
        );
    }

    #[tokio::test]
    async fn a_waiter_that_gave_up_does_not_lose_the_slot() {
        let slots = FairSlots::new(1);
        let held = slots.acquire(&tenant("a")).await;
        let gave_up = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire(&tenant("b")).await })
        };
        tokio::task::yield_now().await;
        gave_up.abort();
        let _ = gave_up.await;
        drop(held);
        // The slot is free again: taken at once.
        let again = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            slots.acquire(&tenant("c")),
        )
        .await
        .expect("a free slot");
        drop(again);
        let state = lock(&slots.inner);
        assert_eq!(state.free, 1);
        assert!(state.turns.is_empty());
    }
}
