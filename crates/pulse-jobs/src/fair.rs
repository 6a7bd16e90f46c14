//! Weighted fair share of one lease across the tenants with ready jobs, so a tenant with a deep
//! backlog cannot make another wait behind it: every lease takes from every ready tenant, in
//! proportion to its weight (1 unless configured), within the room it has under its concurrency
//! cap. Pure, so every queue adapter leases the same way.

use std::collections::HashMap;

use pulse_core::TenantId;

use crate::model::TenantShare;

/// How many of `limit` jobs each of `ready` tenants gets: in proportion to `weights` (absent:
/// 1), at most its `room` (absent: no cap), each ready tenant with room at least one while
/// `limit` allows, and what a tenant cannot take handed to the others. `rotate` picks which
/// tenants get the remainder when it does not divide evenly (pass a counter, so none is always
/// last).
pub fn shares(
    ready: &[TenantId],
    limit: u32,
    weights: &HashMap<TenantId, u32>,
    room: &HashMap<TenantId, u32>,
    rotate: usize,
) -> Vec<TenantShare> {
    let mut open: Vec<(&TenantId, u32, u32)> = ready
        .iter()
        .map(|tenant| {
            let weight = weights.get(tenant).copied().unwrap_or(1).max(1);
            let room = room.get(tenant).copied().unwrap_or(u32::MAX);
            (tenant, weight, room)
        })
        .filter(|(_, _, room)| *room > 0)
        .collect();
    let mut given: HashMap<&TenantId, u32> = HashMap::new();
    let mut left = limit;
    // Each round hands out what is left in proportion to weight; a tenant that reaches its room
    // leaves, so the next round spreads its part over the others.
    // A round with nothing left hands nothing out and ends the loop below.
    while !open.is_empty() {
        let total_weight: u64 = open.iter().map(|(_, weight, _)| u64::from(*weight)).sum();
        let round = left;
        let mut handed = 0;
        for (tenant, weight, room) in &open {
            let have = given.get(tenant).copied().unwrap_or(0);
            let fair = (u64::from(round) * u64::from(*weight) / total_weight) as u32;
            // The floors of the parts never sum past the round: no check against `left`.
            let take = fair.min(room - have);
            *given.entry(tenant).or_default() += take;
            handed += take;
        }
        // The remainder, one each, starting at a rotating tenant.
        let count = open.len();
        for step in 0..count {
            if handed == round {
                break;
            }
            let (tenant, _, room) = open[(rotate + step) % count];
            let have = given.get(tenant).copied().unwrap_or(0);
            if have < room {
                *given.entry(tenant).or_default() += 1;
                handed += 1;
            }
        }
        left -= handed;
        open.retain(|(tenant, _, room)| given.get(tenant).copied().unwrap_or(0) < *room);
        if handed == 0 {
            break;
        }
    }
    ready
        .iter()
        .filter_map(|tenant| {
            let limit = given.get(tenant).copied().unwrap_or(0);
            (limit > 0).then(|| TenantShare {
                tenant: tenant.clone(),
                limit,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenants(names: &[&str]) -> Vec<TenantId> {
        names
            .iter()
            .map(|name| TenantId::parse(name).unwrap())
            .collect()
    }

    fn limits(shares: &[TenantShare]) -> Vec<(String, u32)> {
        shares
            .iter()
            .map(|share| (share.tenant.to_string(), share.limit))
            .collect()
    }

    #[test]
    fn equal_weights_split_evenly_and_the_remainder_rotates() {
        let ready = tenants(&["a", "b", "c"]);
        let none = HashMap::new();
        assert_eq!(
            limits(&shares(&ready, 10, &none, &none, 0)),
            vec![("a".into(), 4), ("b".into(), 3), ("c".into(), 3)]
        );
        assert_eq!(
            limits(&shares(&ready, 10, &none, &none, 1)),
            vec![("a".into(), 3), ("b".into(), 4), ("c".into(), 3)]
        );
    }

    #[test]
    fn weights_divide_in_proportion() {
        let ready = tenants(&["big", "small"]);
        let weights = HashMap::from([(ready[0].clone(), 3)]);
        assert_eq!(
            limits(&shares(&ready, 100, &weights, &HashMap::new(), 0)),
            vec![("big".into(), 75), ("small".into(), 25)]
        );
    }

    #[test]
    fn what_a_capped_tenant_cannot_take_goes_to_the_others() {
        let ready = tenants(&["a", "b"]);
        let room = HashMap::from([(ready[0].clone(), 2)]);
        assert_eq!(
            limits(&shares(&ready, 10, &HashMap::new(), &room, 0)),
            vec![("a".into(), 2), ("b".into(), 8)]
        );
        let full = HashMap::from([(ready[0].clone(), 0)]);
        assert_eq!(
            limits(&shares(&ready, 10, &HashMap::new(), &full, 0)),
            vec![("b".into(), 10)]
        );
    }

    #[test]
    fn a_tenant_left_open_after_a_round_never_gets_past_its_room() {
        // Round one gives each 10: `a` (room 11) stays open with 1 left, `c` is full; round two
        // splits the 9 left between `a` and `b`, and `a` may take only its last one.
        let ready = tenants(&["a", "b", "c"]);
        let room = HashMap::from([(ready[0].clone(), 11), (ready[2].clone(), 1)]);
        assert_eq!(
            limits(&shares(&ready, 30, &HashMap::new(), &room, 0)),
            vec![("a".into(), 11), ("b".into(), 18), ("c".into(), 1)]
        );
    }

    #[test]
    fn a_tenant_without_room_takes_no_turn_of_the_remainder() {
        // Two tenants with room share 3: the rotation (2) counts them alone, so the odd one goes
        // to `a` (2 % 2 = 0); counted with the full `z`, it would land on `b`.
        let ready = tenants(&["z", "a", "b"]);
        let room = HashMap::from([(ready[0].clone(), 0)]);
        assert_eq!(
            limits(&shares(&ready, 3, &HashMap::new(), &room, 2)),
            vec![("a".into(), 2), ("b".into(), 1)]
        );
    }

    #[test]
    fn a_tenant_that_reached_its_room_takes_no_turn_in_the_next_round() {
        // Round one: 4 each, `a` capped at 2, the remainder to `b` and `c` (rotation 1); round
        // two hands the last one by a rotation over `b` and `c` alone: to `c`.
        let ready = tenants(&["a", "b", "c"]);
        let room = HashMap::from([(ready[0].clone(), 2)]);
        assert_eq!(
            limits(&shares(&ready, 13, &HashMap::new(), &room, 1)),
            vec![("a".into(), 2), ("b".into(), 5), ("c".into(), 6)]
        );
    }

    #[test]
    fn a_small_limit_still_reaches_every_tenant_over_rotations() {
        let ready = tenants(&["a", "b", "c", "d"]);
        let none = HashMap::new();
        let mut seen = HashMap::new();
        for rotate in 0..4 {
            let given = shares(&ready, 1, &none, &none, rotate);
            assert_eq!(given.len(), 1);
            *seen.entry(given[0].tenant.to_string()).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 4, "{seen:?}");
    }

    #[test]
    fn the_shares_never_exceed_the_limit() {
        let ready = tenants(&["a", "b", "c"]);
        let weights = HashMap::from([(ready[1].clone(), 7)]);
        for limit in 0..50 {
            let total: u32 = shares(&ready, limit, &weights, &HashMap::new(), 2)
                .iter()
                .map(|share| share.limit)
                .sum();
            assert_eq!(total, limit);
        }
    }
}
