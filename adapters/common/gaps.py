"""What the built-in backends do not do yet, as conformance gaps (``Backend.known_gaps``).

Placement groups, node affinity and SPREAD over nodes (issue 15): the API is in place and checks its
input on every backend, the 'ray' backend runs them as Ray's own, 'local' and 'multiprocess' reserve
bundles on their one node (``placement_groups.py``: no gaps left), and the cluster refuses a group or a
placement strategy with ``NotImplementedError`` until it reserves bundles across nodes. Each gap is
strict: once a backend does what a test asks, the test fails until its gap is removed.
"""

from __future__ import annotations

from anyray.ports.backend import notimpl

_PLACEMENT = notimpl("placement groups and node affinity are not built on this backend yet (the 'ray' backend "
                     "has them): placement_group() and those scheduling strategies raise NotImplementedError")

# The tests the cluster fails today: on one node, then those only a backend with processes, or with more than
# one node, runs.
_ONE_NODE = [
    "test_placement_groups::test_a_bundle_index_out_of_range_is_rejected_at_the_call",
    "test_placement_groups::test_a_child_with_a_strategy_of_its_own_is_not_captured",
    "test_placement_groups::test_a_detached_group_is_created_like_any_other",
    "test_placement_groups::test_a_group_handle_is_a_value_equal_by_id",
    "test_placement_groups::test_a_group_handle_passed_to_a_task_arrives_equal",
    "test_placement_groups::test_a_group_is_created_all_or_nothing",
    "test_placement_groups::test_a_group_no_node_can_hold_stays_pending",
    "test_placement_groups::test_a_name_taken_by_a_live_group_is_rejected",
    "test_placement_groups::test_a_removed_group_is_gone",
    "test_placement_groups::test_an_actor_captures_the_tasks_it_starts_only_when_asked",
    "test_placement_groups::test_an_actor_runs_in_its_group",
    "test_placement_groups::test_bundle_specs_and_count_are_known_at_once",
    "test_placement_groups::test_captured_child_tasks_run_in_the_group_and_so_do_theirs",
    "test_placement_groups::test_child_tasks_stay_out_of_the_group_unless_captured",
    "test_placement_groups::test_get_current_placement_group_inside_a_group_is_that_group",
    "test_placement_groups::test_get_placement_group_finds_a_named_group_from_anywhere",
    "test_placement_groups::test_get_placement_group_of_an_unknown_or_empty_name_raises",
    "test_placement_groups::test_get_with_a_timeout_on_a_pending_group_times_out",
    "test_placement_groups::test_hard_node_affinity_runs_on_that_node",
    "test_placement_groups::test_hard_node_affinity_to_an_unknown_node_fails",
    "test_placement_groups::test_placement_group_table_of_a_created_group",
    "test_placement_groups::test_ready_resolves_to_the_group_once_created",
    "test_placement_groups::test_removing_a_group_fails_its_queued_tasks",
    "test_placement_groups::test_removing_a_group_kills_its_actors",
    "test_placement_groups::test_removing_a_pending_group_fails_its_ready_ref",
    "test_placement_groups::test_reserved_resources_are_used_only_by_work_in_the_group",
    "test_placement_groups::test_soft_node_affinity_to_an_unknown_node_runs_elsewhere",
    "test_placement_groups::test_strategies_that_fit_one_node_create_the_group",
    "test_placement_groups::test_strict_spread_over_bundles_only_one_node_can_hold_stays_pending",
    "test_placement_groups::test_the_default_strategy_is_pack",
    "test_placement_groups::test_the_old_placement_group_option_with_a_scheduling_strategy_is_rejected",
    "test_placement_groups::test_the_old_placement_group_options_still_work_and_warn",
    "test_placement_groups::test_work_runs_in_the_bundle_it_names",
    "test_placement_groups::test_work_that_fits_no_bundle_is_rejected_at_the_call",
]
_PROCESSES = [
    "test_placement_groups::test_removing_a_group_kills_its_running_tasks",
]
_MANY_NODES = [
    "test_placement_groups::test_hard_node_affinity_runs_on_each_named_node",
    "test_placement_groups::test_pack_that_fits_one_node_uses_one_node",
    "test_placement_groups::test_spread_actors_run_on_every_node",
    "test_placement_groups::test_spread_puts_bundles_on_different_nodes_when_it_can",
    "test_placement_groups::test_spread_tasks_run_on_every_node",
    "test_placement_groups::test_strict_pack_larger_than_any_node_stays_pending_while_pack_spans_nodes",
    "test_placement_groups::test_strict_pack_puts_every_bundle_on_one_node",
    "test_placement_groups::test_strict_spread_puts_each_bundle_on_a_node_of_its_own",
    "test_placement_groups::test_strict_spread_with_more_bundles_than_nodes_stays_pending",
]

LOCAL_GAPS: dict = {}
MULTIPROCESS_GAPS: dict = {}
CLUSTER_GAPS = {**dict.fromkeys(_ONE_NODE + _PROCESSES + _MANY_NODES, _PLACEMENT),
                "test_placement_groups::test_spread_tasks_run_on_every_node": notimpl(
                    "SPREAD does not spread yet: a task runs on the driver's node while it fits"),
                "test_placement_groups::test_spread_actors_run_on_every_node": notimpl(
                    "SPREAD does not spread yet: an actor is placed on the driver's node while it fits")}
