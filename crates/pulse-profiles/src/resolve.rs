//! Identity resolution over one batch: each event finds its profile by its identifiers
//! (strongest first), gives the profile the identifiers it did not have yet, merges the other
//! profiles it names when the tenant's rules allow, and applies its effect — in memory, over
//! what [`crate::ports::ProfileStore::load`] read, ending in the [`Changes`] one commit writes.
//!
//! The rules, per tenant (Segment's identity resolution):
//! * an event whose strongest identifier is known belongs to its holder;
//! * an unknown strongest identifier joins the holder of the event's next known identifier if
//!   that holder has room for it (at most `max_user_ids` user ids, …), else gets a new profile;
//! * every other identifier the event names either joins that profile (room permitting) or, when
//!   another profile holds it, that profile is merged in — unless the merge would break a limit
//!   or an unmerge blocked the pair; either way the event is applied once, to one profile.

use std::collections::{BTreeSet, HashMap, HashSet};

use pulse_core::TenantId;
use pulse_gateway::envelope::CanonicalEvent;
use uuid::Uuid;

use crate::event::{EventKind, ProfileEvent};
use crate::model::{profile_id_for, Identifier, IdentityKind, Merge, MergeReason, Profile};
use crate::ports::{AppliedEvent, Changes, Loaded, NewIdentity, Outcome, StoredProfile, Touched};
use crate::settings::IdentitySettings;

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Applied to this profile.
    Applied(Uuid),
    /// Already applied (by an earlier batch, or earlier in this one).
    Duplicate,
}

#[derive(Debug)]
struct Slot {
    profile: Profile,
    read_version: Option<i64>,
    merged_into: Option<Uuid>,
    changed: bool,
}

/// A batch being resolved.
#[derive(Debug)]
pub struct Working<'r> {
    tenant: TenantId,
    rules: &'r IdentitySettings,
    loaded_seen: HashSet<String>,
    owners: HashMap<Identifier, Uuid>,
    slots: HashMap<Uuid, Slot>,
    order: Vec<Uuid>,
    blocks: HashSet<(Uuid, Uuid)>,
    new_blocks: Vec<(Uuid, Uuid)>,
    identities: Vec<NewIdentity>,
    events: Vec<AppliedEvent>,
    merges: Vec<Merge>,
    archive: Vec<CanonicalEvent>,
    refused_identifiers: u64,
    version_floor: i64,
    now_ms: i64,
}

/// What a batch did, beside its [`Changes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events applied.
    pub applied: u64,
    /// Events already applied.
    pub duplicates: u64,
    /// Merges made.
    pub merges: u64,
    /// Identifiers not given because a profile had no room for them.
    pub refused_identifiers: u64,
    /// Profiles created.
    pub created: u64,
}

fn pair(a: Uuid, b: Uuid) -> (Uuid, Uuid) {
    if a < b {
        (a, b)
    } else {
        (b, a)
    }
}

impl<'r> Working<'r> {
    /// A batch of `tenant` resolved by `rules` over `loaded`.
    pub fn new(tenant: TenantId, rules: &'r IdentitySettings, loaded: Loaded, now_ms: i64) -> Self {
        let mut slots = HashMap::with_capacity(loaded.profiles.len());
        for (id, stored) in loaded.profiles {
            slots.insert(
                id,
                Slot {
                    profile: stored.profile,
                    read_version: Some(stored.version),
                    merged_into: stored.merged_into,
                    changed: false,
                },
            );
        }
        Self {
            tenant,
            rules,
            version_floor: loaded.version_floor,
            loaded_seen: loaded.seen,
            owners: loaded.owners,
            slots,
            order: Vec::new(),
            blocks: loaded.blocks,
            new_blocks: Vec::new(),
            identities: Vec::new(),
            events: Vec::new(),
            merges: Vec::new(),
            archive: Vec::new(),
            refused_identifiers: 0,
            now_ms,
        }
    }

    fn live(&self, id: Uuid) -> Uuid {
        let mut id = id;
        // A chain made in this batch; bounded by the profiles it touched.
        for _ in 0..=self.slots.len() {
            match self.slots.get(&id).and_then(|slot| slot.merged_into) {
                Some(into) => id = into,
                None => break,
            }
        }
        id
    }

    fn owner(&self, identifier: &Identifier) -> Option<Uuid> {
        self.owners.get(identifier).map(|id| self.live(*id))
    }

    fn touch(&mut self, id: Uuid) -> &mut Slot {
        let slot = self
            .slots
            .get_mut(&id)
            .expect("touched profiles are loaded or created");
        if !slot.changed {
            slot.changed = true;
            self.order.push(id);
        }
        slot
    }

    fn room(&self, profile: Uuid, kind: IdentityKind, adding: usize) -> bool {
        self.slots
            .get(&profile)
            .is_some_and(|slot| slot.profile.count_of(kind) + adding <= self.rules.limit(kind))
    }

    fn give(&mut self, identifier: Identifier, profile: Uuid, event_id: &str) {
        self.owners.insert(identifier.clone(), profile);
        self.touch(profile)
            .profile
            .identifiers
            .insert(identifier.clone());
        self.identities.push(NewIdentity {
            identifier,
            profile,
            origin: profile,
            event_id: event_id.to_owned(),
        });
    }

    fn create(&mut self, event: &ProfileEvent) -> Uuid {
        let id = profile_id_for(self.tenant.as_str(), &event.event_id);
        self.slots.insert(
            id,
            Slot {
                profile: Profile::new(id, event.occurred_at_ms.min(self.now_ms)),
                read_version: None,
                merged_into: None,
                changed: false,
            },
        );
        self.touch(id);
        id
    }

    fn try_merge(
        &mut self,
        into: Uuid,
        from: Uuid,
        identifier: &Identifier,
        reason: MergeReason,
        event: &ProfileEvent,
    ) -> bool {
        if self.blocks.contains(&pair(into, from)) {
            return false;
        }
        let (Some(a), Some(b)) = (self.slots.get(&into), self.slots.get(&from)) else {
            return false;
        };
        let fits = IdentityKind::ALL.into_iter().all(|kind| {
            let union: BTreeSet<&Identifier> = a
                .profile
                .identifiers
                .iter()
                .chain(&b.profile.identifiers)
                .filter(|id| id.kind == kind)
                .collect();
            union.len() <= self.rules.limit(kind)
        });
        if !fits {
            return false;
        }
        let absorbed = b.profile.clone();
        let limits = self.rules.traits.clone();
        self.touch(into).profile.absorb(&absorbed, &limits);
        self.touch(from).merged_into = Some(into);
        for id in &absorbed.identifiers {
            self.owners.insert(id.clone(), into);
        }
        // Blocks of the merged profile now hold for the one it joined, in later batches too:
        // a later load finds blocks by live profile, never by one merged away.
        let inherited: Vec<(Uuid, Uuid)> = self
            .blocks
            .iter()
            .filter_map(|&(x, y)| match (x == from, y == from) {
                (true, _) => Some(pair(into, y)),
                (_, true) => Some(pair(into, x)),
                _ => None,
            })
            .collect();
        for block in inherited {
            if self.blocks.insert(block) {
                self.new_blocks.push(block);
            }
        }
        self.merges.push(Merge {
            id: Uuid::now_v7(),
            into,
            from,
            event_id: event.event_id.clone(),
            identifier: identifier.clone(),
            reason,
            merged_at_ms: self.now_ms,
            undone_at_ms: None,
        });
        true
    }

    /// Resolves and applies one event (archived with the batch when `canonical` is given).
    pub fn apply(
        &mut self,
        event: &ProfileEvent,
        canonical: Option<&CanonicalEvent>,
    ) -> Resolution {
        if self.loaded_seen.contains(&event.event_id) || !self.seen_in_batch_insert(&event.event_id)
        {
            return Resolution::Duplicate;
        }
        let mut ids = event.identifiers.clone();
        let reason = match event.kind {
            EventKind::Identify => MergeReason::Identify,
            EventKind::Alias => MergeReason::Alias,
            _ => MergeReason::SharedIdentifier,
        };
        if let Some(previous) = &event.previous_id {
            let as_user = Identifier::new(IdentityKind::UserId, previous.clone());
            let linked = if self.owners.contains_key(&as_user) {
                as_user
            } else {
                Identifier::new(IdentityKind::AnonymousId, previous.clone())
            };
            if !ids.contains(&linked) {
                ids.push(linked);
            }
        }
        let Some(key) = ids.first().cloned() else {
            return Resolution::Duplicate;
        };
        let target = match self.owner(&key) {
            Some(holder) => holder,
            None => {
                let candidate = ids[1..].iter().find_map(|id| self.owner(id));
                match candidate {
                    Some(holder) if self.room(holder, key.kind, 1) => {
                        self.give(key.clone(), holder, &event.event_id);
                        holder
                    }
                    _ => {
                        let created = self.create(event);
                        self.give(key.clone(), created, &event.event_id);
                        created
                    }
                }
            }
        };
        for id in &ids[1..] {
            match self.owner(id) {
                Some(holder) if holder == target => {}
                Some(holder) => {
                    self.try_merge(target, holder, id, reason, event);
                }
                None if self.room(target, id.kind, 1) => {
                    self.give(id.clone(), target, &event.event_id);
                }
                None => self.refused_identifiers += 1,
            }
        }
        let limits = self.rules.traits.clone();
        self.touch(target).profile.apply(event, &limits);
        self.events.push(AppliedEvent {
            event_id: event.event_id.clone(),
            profile: target,
            key,
            event_type: event.kind.as_str().to_owned(),
            occurred_at_ms: event.occurred_at_ms,
        });
        if let Some(canonical) = canonical {
            self.archive.push(canonical.clone());
        }
        Resolution::Applied(target)
    }

    fn seen_in_batch_insert(&mut self, event_id: &str) -> bool {
        // Reuses the loaded set: an id applied earlier in this batch is a duplicate too.
        self.loaded_seen.insert(event_id.to_owned())
    }

    /// The batch's writes (without outbox records) and what it did.
    pub fn finish(mut self) -> (Changes, Summary) {
        let summary = Summary {
            applied: self.events.len() as u64,
            duplicates: 0,
            merges: self.merges.len() as u64,
            refused_identifiers: self.refused_identifiers,
            created: self
                .order
                .iter()
                .filter(|id| self.slots[*id].read_version.is_none())
                .count() as u64,
        };
        let finals: HashMap<Uuid, Uuid> =
            self.order.iter().map(|id| (*id, self.live(*id))).collect();
        let live_of = |id: Uuid| finals.get(&id).copied().unwrap_or(id);
        for identity in &mut self.identities {
            identity.profile = live_of(identity.profile);
        }
        for event in &mut self.events {
            event.profile = live_of(event.profile);
        }
        let mut touched = Vec::with_capacity(self.order.len());
        for id in &self.order {
            let slot = &self.slots[id];
            let outcome = match slot.merged_into {
                Some(_) => Outcome::MergedInto(live_of(*id)),
                None => Outcome::Live(Box::new(slot.profile.clone())),
            };
            touched.push(Touched {
                id: *id,
                read_version: slot.read_version,
                version: slot
                    .read_version
                    .map_or(self.version_floor + 1, |read| read + 1),
                outcome,
            });
        }
        (
            Changes {
                touched,
                identities: self.identities,
                events: self.events,
                merges: self.merges,
                blocks: self.new_blocks,
                archive: self.archive,
                outbox: Vec::new(),
                now_ms: self.now_ms,
            },
            summary,
        )
    }
}

/// A profile as a batch leaves it.
pub fn after_batch(touched: &Touched, now_ms: i64) -> StoredProfile {
    let (profile, merged_into) = match &touched.outcome {
        Outcome::Live(profile) => ((**profile).clone(), None),
        Outcome::MergedInto(into) => (Profile::new(touched.id, now_ms), Some(*into)),
    };
    StoredProfile {
        profile,
        version: touched.version,
        updated_at_ms: now_ms,
        merged_into,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::event;

    fn with_ids(mut event: ProfileEvent, ids: &[(IdentityKind, &str)]) -> ProfileEvent {
        event.identifiers = ids
            .iter()
            .map(|(kind, value)| Identifier::new(*kind, *value))
            .collect();
        event.identifiers.sort_by_key(|id| id.kind);
        event
    }

    const ANON: IdentityKind = IdentityKind::AnonymousId;
    const USER: IdentityKind = IdentityKind::UserId;

    #[test]
    fn an_anonymous_visitor_who_signs_up_keeps_their_page_views() {
        let rules = IdentitySettings::default();
        let mut batch = Working::new(TenantId::default(), &rules, Loaded::default(), 10);
        let views: Vec<_> = (0..3)
            .map(|n| with_ids(event(&format!("p{n}"), EventKind::Page, n), &[(ANON, "a1")]))
            .collect();
        for view in &views {
            batch.apply(view, None);
        }
        let signup = with_ids(
            event("i1", EventKind::Identify, 5),
            &[(USER, "u1"), (ANON, "a1")],
        );
        let Resolution::Applied(profile) = batch.apply(&signup, None) else {
            panic!("not applied")
        };
        assert_eq!(batch.apply(&views[0], None), Resolution::Duplicate);
        let (changes, summary) = batch.finish();
        let outcomes = &changes.touched;
        assert_eq!(summary.applied, 4);
        assert_eq!(summary.merges, 0);
        assert_eq!(outcomes.len(), 1);
        let Outcome::Live(state) = &outcomes[0].outcome else {
            panic!("merged")
        };
        assert_eq!(state.id, profile);
        assert_eq!(state.page_views, 3);
        assert_eq!(state.values_of(USER), vec!["u1"]);
        assert_eq!(changes.identities.len(), 2);
    }

    #[test]
    fn two_profiles_named_by_one_identify_merge_unless_a_limit_forbids_it() {
        let rules = IdentitySettings::default();
        let mut batch = Working::new(TenantId::default(), &rules, Loaded::default(), 10);
        batch.apply(
            &with_ids(event("p1", EventKind::Page, 1), &[(ANON, "a1")]),
            None,
        );
        batch.apply(
            &with_ids(event("t1", EventKind::Track, 2), &[(USER, "u1")]),
            None,
        );
        let Resolution::Applied(merged) = batch.apply(
            &with_ids(
                event("i1", EventKind::Identify, 3),
                &[(USER, "u1"), (ANON, "a1")],
            ),
            None,
        ) else {
            panic!()
        };
        // A second user id for a1's profile would break max_user_ids = 1: u2 gets its own.
        let Resolution::Applied(other) = batch.apply(
            &with_ids(
                event("i2", EventKind::Identify, 4),
                &[(USER, "u2"), (ANON, "a1")],
            ),
            None,
        ) else {
            panic!()
        };
        assert_ne!(merged, other);
        let (changes, summary) = batch.finish();
        let outcomes = &changes.touched;
        assert_eq!(summary.merges, 1);
        assert_eq!(changes.merges[0].into, merged);
        assert_eq!(changes.merges[0].reason, MergeReason::Identify);
        let live: Vec<&Profile> = outcomes
            .iter()
            .filter_map(|touched| match &touched.outcome {
                Outcome::Live(profile) => Some(profile.as_ref()),
                Outcome::MergedInto(_) => None,
            })
            .collect();
        assert_eq!(live.len(), 2);
        let kept = live.iter().find(|p| p.id == merged).unwrap();
        assert_eq!(kept.page_views, 1);
        assert_eq!(kept.event_counts["track"], 1);
        assert_eq!(kept.event_counts["identify"], 1);
        // Every event ends on a live profile.
        assert!(changes
            .events
            .iter()
            .all(|e| e.profile == merged || e.profile == other));
    }

    #[test]
    fn a_blocked_pair_is_not_merged_again() {
        let rules = IdentitySettings::default();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut loaded = Loaded::default();
        for (id, ident) in [
            (a, Identifier::new(USER, "u1")),
            (b, Identifier::new(ANON, "a1")),
        ] {
            let mut profile = Profile::new(id, 0);
            profile.identifiers.insert(ident.clone());
            loaded.owners.insert(ident, id);
            loaded.profiles.insert(
                id,
                StoredProfile {
                    profile,
                    version: 3,
                    updated_at_ms: 0,
                    merged_into: None,
                },
            );
        }
        loaded.blocks.insert(pair(a, b));
        let mut batch = Working::new(TenantId::default(), &rules, loaded, 10);
        let applied = batch.apply(
            &with_ids(
                event("i1", EventKind::Identify, 3),
                &[(USER, "u1"), (ANON, "a1")],
            ),
            None,
        );
        assert_eq!(applied, Resolution::Applied(a));
        let (changes, _) = batch.finish();
        assert!(changes.merges.is_empty());
        assert_eq!(changes.touched.len(), 1);
        assert_eq!(changes.touched[0].read_version, Some(3));
    }

    #[test]
    fn an_alias_links_a_previous_id_to_the_user() {
        let rules = IdentitySettings::default();
        let mut batch = Working::new(TenantId::default(), &rules, Loaded::default(), 10);
        batch.apply(
            &with_ids(event("p1", EventKind::Page, 1), &[(ANON, "old")]),
            None,
        );
        batch.apply(
            &with_ids(event("t1", EventKind::Track, 2), &[(USER, "u1")]),
            None,
        );
        let mut alias = with_ids(event("al", EventKind::Alias, 3), &[(USER, "u1")]);
        alias.previous_id = Some("old".into());
        batch.apply(&alias, None);
        let (changes, _) = batch.finish();
        assert_eq!(changes.merges.len(), 1);
        assert_eq!(changes.merges[0].reason, MergeReason::Alias);
        assert_eq!(changes.merges[0].identifier, Identifier::new(ANON, "old"));
    }
}
