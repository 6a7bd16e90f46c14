//! Conformance suites for Pulse's ports, written once and run against every adapter.
//!
//! Each suite is a module of `async fn` cases taking the port under test, plus a macro that stamps
//! out one `#[tokio::test]` per case for an adapter, given a factory expression:
//!
//! ```text
//! pulse_conformance::event_log_suite!(async { pulse_kafka::KafkaLog::connect(&url()).await.unwrap() });
//! ```
//!
//! Adapter crates call the macros from their own tests, so `cargo test -p pulse-kafka` shows
//! `event_log_conformance::append_keeps_per_key_order ... ok` for Kafka, and the same names for the
//! embedded log (`rate_limiter_suite!` likewise for the in-process and Redis rate limiters, and
//! `geo_index_suite!` for the in-process and Redis geo indexes).
//! The [`services`] module finds the real PostgreSQL, Kafka and Redis started by
//! `scripts/services`, and fails loudly when one is missing. The [`faults`] module wraps any
//! adapter to inject the failures the guarantees are about (failed, hung and unacknowledged
//! appends, redelivery, cache writes failing mid-batch).

pub mod cache;
pub mod event_log;
pub mod faults;
pub mod gateway_store;
pub mod geo_index;
pub mod job_queue;
pub mod ledger;
pub mod outbox;
pub mod profiles;
pub mod rate_limit;
pub mod ride_store;
pub mod services;
pub mod store;

/// The port under test, plus whatever must live as long as it (a temporary directory).
#[derive(Debug)]
pub struct Fixture<P> {
    /// The adapter under test.
    pub port: P,
    _guard: Option<Box<dyn std::any::Any + Send>>,
}

impl<P> Fixture<P> {
    /// A fixture that needs nothing kept alive.
    pub fn new(port: P) -> Self {
        Self { port, _guard: None }
    }

    /// A fixture that keeps `guard` alive (and drops it after the test).
    pub fn with_guard(port: P, guard: impl std::any::Any + Send) -> Self {
        Self {
            port,
            _guard: Some(Box::new(guard)),
        }
    }
}

/// A name no other test run uses, for topics, groups, keys and databases on shared services.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

#[doc(hidden)]
#[macro_export]
macro_rules! __stamp_cases {
    ($suite:ident, $factory:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture: $crate::Fixture<_> = $factory.await;
                $crate::$suite::$case(&fixture.port).await;
            }
        )+
    };
}

/// Stamps out the event log suite in a module `event_log_conformance`.
#[macro_export]
macro_rules! event_log_suite {
    ($factory:expr) => {
        mod event_log_conformance {
            #[allow(unused_imports)]
            use super::*;
            $crate::__stamp_cases!(event_log, $factory;
                create_topic_is_idempotent_and_reports_partitions,
                append_returns_positions_and_consumer_reads_records_back,
                append_keeps_per_key_order_under_concurrency,
                poll_returns_empty_after_timeout_when_idle,
                group_resumes_after_last_commit,
                uncommitted_records_are_redelivered,
                groups_consume_independently,
                members_of_one_group_share_partitions,
                seek_to_offset_replays,
                seek_to_timestamp_replays_from_that_time,
                lag_counts_the_records_behind_the_position,
            );
        }
    };
}

/// Stamps out the cache suite in a module `cache_conformance`.
#[macro_export]
macro_rules! cache_suite {
    ($factory:expr) => {
        mod cache_conformance {
            #[allow(unused_imports)]
            use super::*;
            $crate::__stamp_cases!(cache, $factory;
                set_get_delete_round_trip,
                entries_expire_after_their_ttl,
                ttl_reports_missing_persistent_and_expiring_keys,
                incr_by_is_atomic_under_concurrency,
                incr_by_sets_the_ttl,
                incr_by_on_a_non_integer_fails_without_retry,
                get_many_keeps_order_and_reports_missing,
                apply_writes_a_batch,
                apply_if_absent_applies_once_per_guard,
                apply_if_absent_many_applies_each_item_once,
                index_ranges_by_score,
                index_writes_apply_under_a_guard,
                indexes_and_values_do_not_mix,
            );
        }
    };
}

/// Stamps out the rate limiter suite in a module `rate_limiter_conformance`, for a factory of
/// [`rate_limit::LimiterUnderTest`]s (the limiter, and whether the suite moves its clock or
/// sleeps).
#[macro_export]
macro_rules! rate_limiter_suite {
    ($factory:expr) => {
        mod rate_limiter_conformance {
            #[allow(unused_imports)]
            use super::*;
            $crate::__stamp_cases!(rate_limit, $factory;
                a_fresh_key_allows_burst_calls_then_denies_for_one_interval,
                a_denied_call_passes_once_its_retry_after_has_passed,
                cost_spends_that_many_cells_and_a_batch_above_remaining_spends_none,
                a_cost_above_burst_is_always_denied,
                keys_are_independent,
                remaining_and_reset_track_spending_and_refill,
                a_cost_of_zero_reads_without_spending,
                concurrent_calls_spend_each_cell_once,
                an_invalid_quota_is_refused_without_retry,
            );
        }
    };
}

/// Stamps out the geo index suite (nearest first within radius and limit; stale, unavailable,
/// busy and other-vehicle drivers never returned; updates and busy flags ordered by their own
/// times; tenants isolated; housekeeping) in a module `geo_index_conformance`, for a factory of
/// [`GeoIndex`](pulse_core::geo_index::GeoIndex) adapters (every case uses fresh tenants, so one
/// adapter may serve them all).
#[macro_export]
macro_rules! geo_index_suite {
    ($factory:expr) => {
        mod geo_index_conformance {
            #[allow(unused_imports)]
            use super::*;
            $crate::__stamp_cases!(geo_index, $factory;
                nearest_drivers_come_first_with_their_distances,
                the_radius_excludes_farther_drivers,
                at_most_limit_drivers_come_back,
                a_stale_driver_is_never_returned,
                an_older_update_is_ignored_and_does_not_move_the_driver,
                a_duplicate_update_is_ignored,
                an_unavailable_ping_hides_the_driver_until_an_available_one,
                busy_hides_a_driver_until_a_newer_event_frees_it,
                a_busy_flag_set_before_the_first_position_is_kept,
                the_vehicle_type_filter_keeps_only_that_type,
                tenants_are_isolated,
                free_drivers_beyond_many_filtered_ones_are_found,
                the_nearest_of_many_come_back_in_order,
                forget_older_than_removes_only_older_drivers,
                a_batch_applies_in_order,
                invalid_positions_and_queries_are_refused,
            );
        }
    };
}

/// Stamps out the relational store suite in a module `store_conformance`.
#[macro_export]
macro_rules! store_suite {
    ($factory:expr) => {
        mod store_conformance {
            #[allow(unused_imports)]
            use super::*;
            $crate::__stamp_cases!(store, $factory;
                migrations_are_idempotent,
                seed_tables_accept_seed_rows,
                rolled_back_transactions_leave_nothing,
                concurrent_transactions_all_commit,
                a_failing_unit_rolls_back_alone_among_concurrent_ones,
                an_order_and_its_outbox_row_land_together_once_per_key,
                orders_are_seen_only_by_their_tenant,
                a_quote_pays_for_one_order_of_its_tenant,
                tenants_and_keys_round_trip,
                a_revoked_key_is_refused_within_the_cache_ttl,
                a_job_enqueued_in_a_unit_commits_or_rolls_back_with_it,
                a_closed_store_refuses_writes,
                ping_answers,
            );
        }
    };
}

/// Stamps out the rides' storage suite ([`ride_store`]) for an adapter: `$factory` is an async
/// expression returning a [`Fixture`] of an empty `pulse_store::Database`.
#[macro_export]
macro_rules! ride_store_suite {
    ($factory:expr) => {
        mod ride_store_conformance {
            #[allow(unused_imports)]
            use super::*;
            $crate::__stamp_cases!(ride_store, $factory;
                a_match_claims_the_driver_and_writes_its_step_and_event,
                a_driver_not_available_is_not_claimed_and_nothing_is_written,
                a_claim_takes_the_first_available_candidate_in_order,
                orders_racing_for_one_driver_get_it_once,
                an_answer_writes_nothing_and_tenants_are_apart,
                the_end_of_a_ride_frees_only_its_own_driver,
                reports_follow_pings_except_on_a_ride_and_fill_the_trail,
                dispatch_attempts_are_taken_once_and_given_up,
                histories_page_newest_first_per_rider_and_driver,
            );
        }
    };
}

/// Stamps out the wallet's storage suite ([`ledger`]) for an adapter: `$factory` is an async
/// expression returning a [`Fixture`] of an empty `pulse_store::Database`.
#[macro_export]
macro_rules! ledger_suite {
    ($factory:expr) => {
        mod ledger_conformance {
            #[allow(unused_imports)]
            use super::*;
            $crate::__stamp_cases!(ledger, $factory;
                a_top_up_is_written_once_per_reference,
                a_hold_is_written_with_the_match_and_posted_once_with_its_split,
                a_batch_posts_each_hold_once_and_answers_each_payment,
                a_cancelled_ride_voids_its_hold_which_is_never_posted,
                holds_that_must_be_covered_never_take_a_wallet_below_zero,
                a_refused_hold_claims_no_driver,
                verify_names_each_broken_invariant,
                a_match_without_a_hold_and_a_cancellation_without_a_void_are_named,
                entries_page_newest_first,
            );
        }
    };
}

/// Stamps out the profiles' suite in a module `profile_conformance`.
#[macro_export]
macro_rules! profile_suite {
    ($factory:expr) => {
        mod profile_conformance {
            #[allow(unused_imports)]
            use super::*;
            $crate::__stamp_cases!(profiles, $factory;
                an_anonymous_visitor_who_signs_up_keeps_their_page_views,
                events_applied_again_change_no_count,
                concurrent_writers_over_one_profile_lose_nothing,
                merges_follow_the_rules_and_an_unmerge_restores_both_exactly,
                a_rebuild_from_the_archive_equals_the_live_path,
                the_reconciliation_repairs_corrupted_hot_copies,
                reads_fall_back_to_the_store_while_the_cache_is_down,
                profiles_created_from_traits_are_listed_by_trait,
                a_stale_commit_is_a_conflict,
                an_unmerge_keeps_the_pair_apart_after_later_merges,
                the_archive_keeps_every_writers_versions,
            );
        }
    };
}

/// Stamps out the gateway's storage suite (dedup, delivery ledger, parked deliveries, dead
/// letters, pipelines, the `events_raw` archive) in a module `gateway_store_conformance`, for a
/// factory of fresh, empty stores implementing the gateway's ports and
/// [`gateway_store::EventArchive`].
#[macro_export]
macro_rules! gateway_store_suite {
    ($factory:expr) => {
        mod gateway_store_conformance {
            #[allow(unused_imports)]
            use super::*;
            $crate::__stamp_cases!(gateway_store, $factory;
                dedup_keys_are_found_only_for_their_tenant,
                an_expired_dedup_key_is_not_found_and_is_taken_over,
                a_live_dedup_key_keeps_its_first_event,
                expire_deletes_expired_keys_and_deliveries_and_counts_them,
                many_dedup_keys_in_one_call,
                delivered_returns_only_ids_marked_for_that_tenant_and_sink,
                parking_the_same_event_twice_keeps_one,
                backlogged_is_per_tenant_and_sink,
                claim_due_returns_due_items_oldest_first_at_most_limit,
                a_claimed_item_is_not_claimed_again_until_its_lease_passes,
                retry_later_updates_attempts_and_last_error_and_keeps_the_first,
                bury_writes_the_dead_letter_and_removes_the_parked_item,
                backlog_counts_per_tenant_and_sink,
                delivered_removes_parked_items,
                putting_the_same_open_dead_letter_twice_keeps_one,
                list_filters_by_time_event_type_sink_and_reason,
                dead_letters_are_listed_and_redriven_only_by_their_tenant,
                dead_letters_page_with_after_and_limit,
                mark_redriven_hides_letters_and_lets_the_event_die_again,
                put_pipeline_numbers_versions_per_tenant,
                current_pipelines_returns_only_the_latest_per_tenant,
                archiving_an_event_twice_keeps_one_row,
                an_archived_payload_keeps_a_big_integer_exactly,
                two_tenants_may_share_an_event_id_in_the_archive,
            );
        }
    };
}

/// Stamps out the outbox suite (claims, leases, per-aggregate order) in a module
/// `outbox_conformance`, for a factory of migrated [`pulse_store::Database`]s.
#[macro_export]
macro_rules! outbox_suite {
    ($factory:expr) => {
        mod outbox_conformance {
            #[allow(unused_imports)]
            use super::*;
            $crate::__stamp_cases!(outbox, $factory;
                a_claimed_row_is_leased_to_one_relay,
                a_lapsed_lease_is_claimed_again,
                events_of_an_aggregate_stay_in_order_across_relays,
                a_batch_let_go_is_claimed_again_only_after_its_lease,
            );
        }
    };
}

/// Stamps out the job queue suite (enqueue, leases and fencing, lapses, delays, priorities,
/// fairness, races, retries and dead jobs, cancel, retry, redrive, release, listing, depths,
/// purge) in a module `job_queue_conformance`, for a factory of fresh, empty stores implementing
/// `JobQueue + JobBook + Clone`.
#[macro_export]
macro_rules! job_queue_suite {
    ($factory:expr) => {
        mod job_queue_conformance {
            #[allow(unused_imports)]
            use super::*;
            $crate::__stamp_cases!(job_queue, $factory;
                enqueue_is_idempotent_per_tenant_and_key,
                a_lease_holds_the_job_against_other_workers,
                a_heartbeat_extends_the_lease,
                a_stale_lease_can_neither_heartbeat_complete_nor_fail,
                a_delayed_job_waits_for_its_time,
                priorities_then_time_order_a_lease,
                one_lease_shares_among_tenants,
                excluded_job_types_are_not_leased,
                racing_workers_never_share_a_job,
                a_job_failing_every_attempt_dies_with_each_error,
                cancel_stops_a_queued_job_and_fences_a_running_one,
                retry_and_redrive_queue_dead_jobs_again,
                release_hands_a_job_back_without_counting_the_attempt,
                listing_filters_and_pages,
                depths_count_backlogs_and_purge_honours_retention,
                heartbeats_racing_completions_never_deadlock,
            );
        }
    };
}
