"""The multimodal closed-loop task `peg-insert-side-obstacle-v3` (vla_training/data/obstacle.py):
the post is where the straight path goes, both scripted detours insert without touching it, and
success means inserted *and* untouched (MuJoCo contacts)."""

import numpy as np
import pytest

from vla_models import ConfigError
from vla_training.data.episodes import list_episodes
from vla_training.data.obstacle import CLOSED_GRIP, OBSTACLE_TASK, SETTLED_GRIP, DetourExpert, placement_layout
from vla_training.cli import main as vla
from vla_training.data.sim import SimEnv, generate_demos

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def env():
    env = SimEnv(OBSTACLE_TASK, seed=5, render=False)
    yield env
    env.close()


def _run(env, expert, placement: int, max_steps: int = 260, before_step=None):
    record = env.reset(placement)
    for step in range(max_steps):
        if before_step is not None:
            before_step(step, record)
        record = env.step(expert(record.state))
        if record.success:
            return True, record
    return False, record


@pytest.mark.parametrize("mode", [-1, 1])
def test_each_detour_inserts_without_touching_the_post(env, mode):
    for placement in (0, 1):
        expert = DetourExpert(mode)
        success, record = _run(env, expert, placement)
        assert success and not env.touched_obstacle, (mode, placement, expert.stages)
        assert record.info["obstacle_contact"] is False


def test_the_lift_starts_when_the_observation_shows_the_fingers_settled(env):
    """The demonstrator descends open, closes at the peg and lifts at the first grasp step whose observation
    shows the fingers closed and no longer closing (the gripper opening against its previous frame's), not
    after a count of steps the observation does not carry: a policy that sees the state, late or not, can
    tell when the fingers close and when the lift comes."""
    for placement, mode in ((0, -1), (1, 1), (2, -1)):
        expert, states = DetourExpert(mode), []
        _run(env, expert, placement, before_step=lambda step, record: states.append(record.state))
        grasp, lift = expert.stages["grasp"], expert.stages["lift"]
        settled = [s[3] < CLOSED_GRIP and abs(s[3] - s[21]) < SETTLED_GRIP for s in states[grasp:lift]]
        assert states[grasp][3] > 0.95  # still open at the peg: it descended open
        assert settled[-1] and not any(settled[:-1]), (placement, settled)


def test_the_straight_path_meets_the_post(env):
    """Crossing to the hole's line where the peg was lifted (no detour) touches the post: the task
    cannot be done by the average of the two modes."""
    for placement in (0, 1):
        success, record = _run(env, DetourExpert(0), placement)
        assert env.touched_obstacle and not success
        assert record.info["obstacle_contact"] is True


def test_an_insertion_after_touching_the_post_is_no_success(env):
    """The contact rule: put the post against the peg's side for the first steps, then back where it
    belongs; the detour then inserts (Meta-World says success) and the episode still fails."""
    expert = DetourExpert(-1)
    post = env.env.model.body("obstacle")
    home = None

    def brush(step, record):
        nonlocal home
        if step == 0:
            home = post.pos.copy()
            peg = record.state[4:7]
            post.pos = [peg[0], peg[1] + 0.028, 0.125]  # 2 mm into the peg's side (both 15 mm half-width)
        elif step == 3:
            post.pos = home

    inserted = False
    record = env.reset(0)
    for step in range(260):
        brush(step, record)
        record = env.step(expert(record.state))
        if record.info.get("success"):
            inserted = True
            break
    assert inserted, "the detour should still insert after the brush"
    assert env.touched_obstacle and not record.success


def test_placements_move_the_post_with_the_hole_and_depend_on_the_seed(env):
    layouts = np.array([placement_layout(5, p) for p in range(20)])
    assert np.all(layouts[:, 1] - layouts[:, 4] >= 0.18)  # the peg beyond the post's line
    assert np.ptp(layouts[:, 4]) > 0.04  # the hole (and with it the post) moves
    np.testing.assert_array_equal(placement_layout(5, 3), placement_layout(5, 3))
    assert not np.allclose(placement_layout(5, 3), placement_layout(6, 3))  # another seed: held-out placements
    record = env.reset(3)
    post = env.env.model.body("obstacle").pos
    assert post[1] == pytest.approx(record.state[37] + 0.09)  # observed through the goal


def test_demonstrations_pass_on_both_sides(tmp_path):
    summary = generate_demos(tmp_path / "demos", OBSTACLE_TASK, episodes=4, seed=1, views=(), image_size=32,
                             modes=2, progress=False)
    assert summary["kept"] == 4
    episodes = list_episodes(tmp_path / "demos")
    assert [(ep.meta["placement"], ep.meta["mode"]) for ep in episodes] == [(0, -1), (0, 1), (1, -1), (1, 1)]
    first, second = (np.asarray(ep.array("state")) for ep in episodes[:2])
    np.testing.assert_array_equal(first[0], second[0])  # the same start, answered both ways
    assert first[:, 0].min() < 0.05 and second[:, 0].max() > 0.3  # in front of the post / behind it
    with pytest.raises(ConfigError, match="--modes 2"):
        generate_demos(tmp_path / "other", OBSTACLE_TASK, episodes=1, seed=1, views=(), image_size=32, modes=1,
                       progress=False)


def test_closed_loop_reports_contacts_and_sides(tmp_path):
    import json

    from conftest import make_policy
    from vla_training.cli import main as vla

    make_policy("cpu", "regression").save(tmp_path / "ckpt")
    out = tmp_path / "eval.json"
    assert vla(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--sim", OBSTACLE_TASK, "--episodes", "1",
                "--placement-seeds", "1,2", "--max-steps", "10", "--json", str(out), "--no-progress"]) == 0
    (result,) = json.loads(out.read_text())["closed_loop"].values()
    assert result["obstacle_contacts"] == sum(e["obstacle_contact"] for e in result["per_episode"])
    assert sum(result["passed"].values()) == 2
    assert all(e["passed"] == "not yet" and e["length"] == 10 for e in result["per_episode"])


def test_a_twin_set_to_the_state_steps_alike_and_a_hold_keeps_the_gripper(env):
    """get_state / set_state carry the physics to a twin of the same placement (the look-ahead of
    bench/demonstrator_chunks.py): the same actions give the same states. hold_action keeps the setpoint and
    the gripper's command (a zero action would move the fingers toward half closed)."""
    record = env.reset(3)
    expert = DetourExpert(1)
    for _ in range(30):
        record = env.step(expert(record.state))
    twin = SimEnv(OBSTACLE_TASK, seed=5, render=False)
    try:
        twin.reset(3)
        twin.set_state(env.get_state())
        for _ in range(5):
            action = expert(record.state)
            record, mirrored = env.step(action), twin.step(action)
            np.testing.assert_allclose(mirrored.state[:18], record.state[:18], atol=1e-9)
    finally:
        twin.close()
    hold = env.hold_action()
    assert hold[3] == env.env.data.ctrl[0] and not hold[:3].any()
    setpoint = env.setpoint
    env.step(hold)
    np.testing.assert_allclose(env.setpoint, setpoint)


def test_dart_demonstrations_record_the_demonstrators_action_on_a_perturbed_path(tmp_path):
    """--action-noise (DART): the simulator executes a perturbed action, so the path leaves the clean
    demonstration's, and every recorded action is the demonstrator's own answer to the recorded state."""
    clean, noisy = tmp_path / "clean", tmp_path / "noisy"
    generate_demos(clean, OBSTACLE_TASK, 2, 0, (), 32, modes=2, progress=False)
    assert vla(["data", "sim", "--out", str(noisy), "--task", OBSTACLE_TASK, "--episodes", "2", "--seed", "0",
                "--modes", "2", "--views", "", "--action-noise", "0.3", "--no-progress"]) == 0
    for a, b in zip(list_episodes(clean), list_episodes(noisy)):
        assert (a.meta["placement"], a.meta["mode"]) == (b.meta["placement"], b.meta["mode"])
        assert b.meta["action_noise"] == 0.3 and a.meta["action_noise"] == 0.0
        states, actions = np.asarray(b.array("state")), np.asarray(b.array("actions"))
        n = min(len(states), len(np.asarray(a.array("state"))))
        assert np.abs(states[:n, :3] - np.asarray(a.array("state"))[:n, :3]).max() > 0.005  # another path (m)
        expert = DetourExpert(b.meta["mode"])
        np.testing.assert_array_equal(np.stack([expert(s) for s in states]), actions)  # its labels


def test_dart_noise_out_of_range_is_a_named_error(tmp_path):
    with pytest.raises(ConfigError, match="--action-noise: expected a standard deviation in"):
        generate_demos(tmp_path / "x", OBSTACLE_TASK, 1, 0, (), 32, modes=2, progress=False, action_noise=2.0)
    assert not (tmp_path / "x").exists()
