"""Deploys tick by tick: the real engine (``controller.engine.deploy``) and the real shell
(``controller.deploys``) on a fake runtime and fake releases (``tests/fakes.py``), with the clock passed in:
no socket, no process, no sleep. The same deploys on a real engine: tests/integration/test_docker_deploys.py."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from controller.deploys import Deploys
from controller.engine import deploy as engine
from controller.engine.deploy import (
    ACTIVE,
    DRAIN_FOR,
    HEALTHY_WITHIN,
    ROUTED_WITHIN,
    TRANSITIONS,
    Container,
    Deploy,
    DeployError,
    Phase,
    Routed,
    World,
    advance,
    move,
)
from tests.fakes import FakeReleases, FakeRuntime


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def world_of(runtime: FakeRuntime, labels: dict[str, str]) -> list[str]:
    return sorted(c.id for c in runtime.containers.values()
                  if all(c.labels.get(k) == v for k, v in labels.items()))


def setup(old_version: str = "v1", old: int = 2) -> tuple[Deploys, FakeRuntime, FakeReleases, Clock]:
    runtime = FakeRuntime()
    for _ in range(old):
        runtime.add("app:1", {"turnout.service": "shop", "turnout.version": old_version})
    releases = FakeReleases(runtime)
    clock = Clock()
    deploys = Deploys(releases, runtime, clock)
    releases.draining = deploys.draining_ids
    return deploys, runtime, releases, clock


async def run(deploys: Deploys, clock: Clock, until: set[Phase] | None = None, limit: int = 500,
              check: Callable[[], None] | None = None) -> None:
    """Step the shop deploy at each wake-up time until it is in ``until`` (default: not active)."""
    for _ in range(limit):
        deploy = deploys.get("shop")
        if (until is None and not deploy.active) or (until is not None and deploy.phase in until):
            return
        wake = await deploys.step("shop")
        if check is not None:
            check()
        clock.now = max(clock.now + 0.001, wake if wake is not None else clock.now)
    raise AssertionError(f"still {deploys.get('shop').phase}: {deploys.get('shop').reason}")


async def test_a_canary_deploy_creates_waits_for_health_and_routing_releases_and_retires_the_old() -> None:
    deploys, runtime, releases, clock = setup()
    old = world_of(runtime, {"turnout.version": "v1"})
    started = await deploys.start("shop", "app:2", "v2", 3, "canary", False, "tester")
    assert started.phase == Phase.CREATING and set(started.replaced) == set(old)
    await run(deploys, clock, until={Phase.RELEASING})
    new = world_of(runtime, {"turnout.version": "v2"})
    assert len(new) == 3 and all(runtime.containers[c].labels["turnout.deploy"] == "shop-1" for c in new)
    assert releases.started == [("shop", "v2", "canary", "deploy shop-1")]
    for _ in range(5):  # the rollout runs: the deploy waits and touches nothing
        clock.now += 1
        await deploys.step("shop")
    assert deploys.get("shop").phase == Phase.RELEASING and world_of(runtime, {"turnout.version": "v1"}) == old
    releases.finish("shop", "Succeeded")
    await run(deploys, clock)
    assert deploys.get("shop").phase == Phase.SUCCEEDED
    assert world_of(runtime, {"turnout.version": "v1"}) == [] and sorted(runtime.removed) == old
    assert world_of(runtime, {"turnout.version": "v2"}) == new
    assert releases.saved["shop"]["phase"] == "Succeeded"  # persisted with each step


async def test_an_aborted_rollout_removes_the_new_containers_and_never_touches_the_old() -> None:
    deploys, runtime, releases, clock = setup()
    old = world_of(runtime, {"turnout.version": "v1"})
    await deploys.start("shop", "app:2", "v2", 2, "blueGreen", False, "tester")
    await run(deploys, clock, until={Phase.RELEASING})
    new = world_of(runtime, {"turnout.version": "v2"})
    releases.finish("shop", "Aborted")
    await run(deploys, clock)
    assert deploys.get("shop").phase == Phase.ABORTED
    assert releases.retired == ["shop"]  # the canary left the split before its containers went
    assert sorted(runtime.removed) == new and world_of(runtime, {"turnout.version": "v1"}) == old


async def test_a_deploy_waits_for_the_fleet_before_removing_anything() -> None:
    deploys, runtime, releases, clock = setup()
    await deploys.start("shop", "app:2", "v2", 1, "canary", False, "tester")
    await run(deploys, clock, until={Phase.RELEASING})
    releases.finish("shop", "Succeeded")
    releases.lagging = True
    for _ in range(20):
        clock.now += 1
        await deploys.step("shop")
    assert runtime.removed == [] and deploys.get("shop").phase == Phase.CLEANING_UP
    releases.lagging = False
    await run(deploys, clock)
    assert deploys.get("shop").phase == Phase.SUCCEEDED and len(runtime.removed) == 2


async def test_an_image_that_never_gets_healthy_fails_in_time_and_only_its_containers_go() -> None:
    deploys, runtime, releases, clock = setup()
    runtime.sick.add("app:2")
    start = clock.now
    await deploys.start("shop", "app:2", "v2", 2, "canary", False, "tester")
    await run(deploys, clock)
    failed = deploys.get("shop")
    assert failed.phase == Phase.FAILED and "did not get healthy" in failed.reason
    assert start + HEALTHY_WITHIN <= clock.now <= start + HEALTHY_WITHIN + 1
    assert world_of(runtime, {"turnout.version": "v2"}) == [] and len(world_of(runtime, {})) == 2
    assert releases.started == []


async def test_a_fleet_that_never_routes_the_new_version_fails_the_deploy() -> None:
    deploys, _, releases, clock = setup()
    releases.lagging = True
    await deploys.start("shop", "app:2", "v2", 1, "canary", False, "tester")
    await run(deploys, clock)
    assert deploys.get("shop").phase == Phase.FAILED and "did not route" in deploys.get("shop").reason
    assert releases.started == []


async def test_a_restart_at_every_step_never_starts_a_container_twice() -> None:
    deploys, runtime, releases, clock = setup()
    await deploys.start("shop", "app:2", "v2", 3, "canary", False, "tester")
    for _ in range(40):
        if deploys.get("shop").phase == Phase.RELEASING:
            releases.finish("shop", "Succeeded")
        if not deploys.get("shop").active:
            break
        restarted = Deploys(releases, runtime, clock)  # a new controller process on the persisted state
        restarted.restore(releases.saved)
        releases.draining = restarted.draining_ids
        wake = await restarted.step("shop")
        deploys = restarted
        clock.now = max(clock.now + 0.001, wake or clock.now)
    assert deploys.get("shop").phase == Phase.SUCCEEDED
    assert len(world_of(runtime, {"turnout.version": "v2"})) == 3 and runtime.calls.count("run") == 3


async def test_a_rolling_deploy_replaces_one_at_a_time_never_below_its_replicas() -> None:
    deploys, runtime, releases, clock = setup(old=3)
    old = world_of(runtime, {"turnout.version": "v1"})
    drained_at: dict[str, float] = {}

    def check() -> None:
        routed = releases.routed("shop", "v1")
        assert routed is not None and len(routed.endpoints) >= 3  # max unavailable 0
        assert len(runtime.containers) <= 4  # max surge 1
        for cid in deploys.draining_ids():
            drained_at.setdefault(cid, clock.now)

    started = await deploys.start("shop", "app:2", "v1", 1, "rolling", False, "tester")
    assert started.phase == Phase.ROLLING and started.replicas == 3 and releases.numbers == {"shop": 1}
    removed_at: dict[str, float] = {}
    for _ in range(500):
        if not deploys.get("shop").active:
            break
        before = set(runtime.removed)
        wake = await deploys.step("shop")
        for cid in set(runtime.removed) - before:
            removed_at[cid] = clock.now
        check()
        clock.now = max(clock.now + 0.001, wake or clock.now)
    assert deploys.get("shop").phase == Phase.SUCCEEDED
    assert sorted(runtime.removed) == old and all(c.image == "app:2" for c in runtime.containers.values())
    assert all(removed_at[cid] - drained_at[cid] >= DRAIN_FOR for cid in old)  # drained, then kept for in-flight
    assert deploys.draining_ids() == frozenset()


def capacity_check(deploys: Deploys, runtime: FakeRuntime, releases: FakeReleases, replicas: int,
                   surge: int = 1) -> Callable[[], None]:
    def check() -> None:
        routed = releases.routed("shop", "v1")
        assert routed is not None and len(routed.endpoints) >= replicas  # max unavailable 0
        assert len(runtime.containers) <= replicas + surge
    return check


async def test_a_rolling_deploy_of_a_sick_image_rolls_back_in_its_first_batch() -> None:
    deploys, runtime, releases, clock = setup(old=3)
    old = world_of(runtime, {"turnout.version": "v1"})
    runtime.sick.add("app:2")
    started = await deploys.start("shop", "app:2", "v1", 1, "rolling", False, "tester")
    assert started.previous_image == "app:1"
    await run(deploys, clock, check=capacity_check(deploys, runtime, releases, 3))
    done = deploys.get("shop")
    assert done.phase == Phase.ABORTED and "rolled back" in done.reason
    assert runtime.calls.count("run") == 1  # one batch, never a second
    assert world_of(runtime, {}) == old and deploys.draining_ids() == frozenset()


async def test_a_batch_that_fails_while_watched_rolls_back_to_the_previous_image_with_care() -> None:
    deploys, runtime, releases, clock = setup(old=3)
    check = capacity_check(deploys, runtime, releases, 3, surge=2)  # the failed batch, and one restored
    await deploys.start("shop", "app:2", "v1", 1, "rolling", False, "tester", {"monitor": 5})
    for _ in range(500):  # the first batch goes through: one old container replaced
        if len(runtime.removed) == 1:
            break
        clock.now = max(clock.now + 0.001, await deploys.step("shop") or clock.now)
        check()
    assert len(runtime.removed) == 1 and deploys.get("shop").phase == Phase.ROLLING
    runtime.sick.add("app:2")  # the new image starts failing its health check
    await run(deploys, clock, check=check)
    done = deploys.get("shop")
    assert done.phase == Phase.ABORTED and "app:1 serves everywhere" in done.reason
    images = sorted(c.image for c in runtime.containers.values())
    assert images == ["app:1", "app:1", "app:1"]  # the retired one was started again, the new ones went
    assert any(c.labels.get("turnout.deploy") == "shop-1-rollback" for c in runtime.containers.values())


async def test_batches_of_two_wait_their_delay_between_them() -> None:
    deploys, runtime, releases, clock = setup(old=4)
    check = capacity_check(deploys, runtime, releases, 4, surge=2)
    await deploys.start("shop", "app:2", "v1", 1, "rolling", False, "tester",
                        {"parallelism": 2, "delay": 30, "monitor": 1})
    removed_at: list[float] = []
    for _ in range(500):
        if not deploys.get("shop").active:
            break
        before = len(runtime.removed)
        wake = await deploys.step("shop")
        removed_at += [clock.now] * (len(runtime.removed) - before)
        check()
        clock.now = max(clock.now + 0.001, wake or clock.now)
    assert deploys.get("shop").phase == Phase.SUCCEEDED and len(removed_at) == 4
    assert removed_at[1] - removed_at[0] < 1 and removed_at[2] - removed_at[1] >= 30  # two at once, then the delay


async def test_failure_action_stop_leaves_what_serves() -> None:
    deploys, runtime, _, clock = setup(old=2)
    old = world_of(runtime, {})
    runtime.sick.add("app:2")
    await deploys.start("shop", "app:2", "v1", 1, "rolling", False, "tester", {"failureAction": "stop"})
    await run(deploys, clock)
    assert deploys.get("shop").phase == Phase.FAILED and "stopped" in deploys.get("shop").reason
    assert runtime.removed == [] and set(old) < set(world_of(runtime, {}))


async def test_every_deploy_is_a_revision_and_undo_deploys_an_earlier_one_through_the_same_gates() -> None:
    deploys, runtime, releases, clock = setup(old=2)
    await deploys.start("shop", "app:2", "v1", 1, "rolling", False, "alice")
    await run(deploys, clock)
    runtime.images.add("app:3")
    await deploys.start("shop", "app:3", "v1", 1, "rolling", False, "bob")
    await run(deploys, clock)
    assert [(r.revision, r.image, r.phase) for r in deploys.revisions("shop")] == [
        (1, "app:2", Phase.SUCCEEDED), (2, "app:3", Phase.SUCCEEDED)]
    undone = await deploys.undo("shop", 1, "carol")
    assert (undone.revision, undone.image, undone.strategy, undone.version) == (3, "app:2", "rolling", "v1")
    await run(deploys, clock, check=capacity_check(deploys, runtime, releases, 2))
    assert sorted(c.image for c in runtime.containers.values()) == ["app:2", "app:2"]
    await deploys.undo("shop", None, "dave")  # the one before the latest: revision 2
    await run(deploys, clock)
    assert sorted(c.image for c in runtime.containers.values()) == ["app:3", "app:3"]
    with pytest.raises(DeployError) as refused:
        await deploys.undo("shop", 9, "erin")
    assert refused.value.status == 404
    restarted = Deploys(releases, runtime, clock)
    restarted.restore(releases.saved)
    assert [r.revision for r in restarted.revisions("shop")] == [1, 2, 3, 4]


async def test_undo_of_the_first_rolling_deploy_brings_back_the_image_it_replaced() -> None:
    deploys, runtime, _, clock = setup(old=2)
    await deploys.start("shop", "app:2", "v1", 1, "rolling", False, "alice")
    await run(deploys, clock)
    await deploys.undo("shop", None, "bob")
    await run(deploys, clock)
    assert deploys.get("shop").phase == Phase.SUCCEEDED
    assert sorted(c.image for c in runtime.containers.values()) == ["app:1", "app:1"]


async def test_bad_starts_are_refused_and_change_nothing() -> None:
    deploys, runtime, releases, _ = setup()
    with pytest.raises(DeployError) as refused:
        await deploys.start("shop", "app:9", "v2", 1, "canary", False, "tester")
    assert refused.value.status == 422 and refused.value.field == "image"
    with pytest.raises(DeployError) as refused:
        await deploys.start("shop", "app:2", "v2", 0, "canary", False, "tester")
    assert refused.value.field == "replicas"
    with pytest.raises(DeployError) as refused:
        await deploys.start("shop", "app:2", "v2", 1, "sideways", False, "tester")
    assert refused.value.field == "strategy"
    with pytest.raises(DeployError) as refused:
        await deploys.start("shop", "app:2", "v9", 1, "rolling", False, "tester")
    assert refused.value.field == "version"
    for options, field in (({"parallelism": 0}, "rolling.parallelism"), ({"delay": -1}, "rolling.delay"),
                           ({"progressDeadline": 0}, "rolling.progressDeadline"),
                           ({"failureAction": "pray"}, "rolling.failureAction")):
        with pytest.raises(DeployError) as refused:
            await deploys.start("shop", "app:2", "v1", 1, "rolling", False, "tester", options)
        assert refused.value.field == field
    assert deploys.deploys == {} and runtime.calls.count("run") == 0 and releases.numbers == {}
    await deploys.start("shop", "app:9", "v2", 1, "canary", True, "tester")  # --pull
    with pytest.raises(DeployError) as refused:
        await deploys.start("shop", "app:2", "v3", 1, "canary", False, "tester")
    assert refused.value.status == 409


async def test_an_engine_that_fails_fails_the_deploy_with_its_reason() -> None:
    deploys, runtime, _, _ = setup()
    await deploys.start("shop", "app:2", "v2", 1, "canary", False, "tester")
    runtime.broken = True
    assert await deploys.step("shop") is None
    assert deploys.get("shop").phase == Phase.FAILED and "fake engine is down" in deploys.get("shop").reason


def test_every_move_outside_the_table_is_refused_and_changes_nothing() -> None:
    base = Deploy("shop-1", "shop", "v2", "app:2", 1, "canary", "/")
    for phase, target in itertools.product(Phase, Phase):
        deploy = Deploy("shop-1", "shop", "v2", "app:2", 1, "canary", "/", phase=phase)
        if target in TRANSITIONS[phase]:
            assert move(deploy, target, "why", 1.0).phase == target
        else:
            with pytest.raises(DeployError):
                move(deploy, target, "why", 1.0)
    assert frozenset({Phase.CREATING, Phase.RELEASING, Phase.ROLLING, Phase.ROLLING_BACK,
                      Phase.CLEANING_UP}) == ACTIVE
    assert base.phase == Phase.CREATING


def test_the_engine_reads_no_clock_a_pause_of_the_world_changes_nothing() -> None:
    """The same deploy, world and ``now`` give the same answer; nothing happens between calls."""
    deploy = engine.new_deploy("shop-1", "shop", "v2", "app:2", 2, "canary", "/", {"a": ("v1", "app:1")}, "t", 0.0)
    world = World((Container("n1", 1, "running", True), Container("n2", 2, "created")), (Container("a", 3),),
                  Routed(frozenset(), frozenset()))
    assert advance(deploy, world, 5.0) == advance(deploy, world, 5.0)
    _, actions, wake = advance(deploy, world, 5.0)
    assert actions == [engine.Start("n2")] and wake is not None and wake > 5.0
    healthy = World((Container("n1", 1, "running", True), Container("n2", 2, "running", True)), (Container("a", 3),),
                    Routed(frozenset(), frozenset()))
    noted, _, _ = advance(deploy, healthy, 6.0)
    assert noted.healthy and noted.deadline == 6.0 + ROUTED_WITHIN
    routed = World(healthy.mine, healthy.old, Routed(frozenset({"127.0.0.1:1", "127.0.0.1:2"}), frozenset()))
    released, actions, _ = advance(noted, routed, 7.0)
    assert released.phase == Phase.RELEASING and actions == [engine.StartRollout()]


def test_a_deploy_survives_its_own_record() -> None:
    existing = {"a": ("v1", "app:1"), "b": ("v1", "app:1")}
    deploy = engine.new_deploy("shop-1", "shop", "v1", "app:2", 1, "rolling", "/health", existing, "t", 3.0)
    assert Deploy.restored(deploy.saved()) == deploy
    with pytest.raises((KeyError, TypeError, ValueError)):
        Deploy.restored({**deploy.saved(), "phase": "Sideways"})
