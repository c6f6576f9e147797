"""Meta-evaluation: held-out streams, per-episode bookkeeping, the shared contract, statistics,
attention, and eval/plot from the command line on a run written by another process."""

import csv
import json
import re
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from trmrl.evaluate import EvalProtocol, InMemoryLearner, MetaTester, resolve_protocol
from trmrl.nets.policy import ActorCritic, ModelConfig
from trmrl.nets.transformer import CausalSelfAttention
from trmrl.protocols import Step
from trmrl.seeding import Stream, numpy_rng
from trmrl.stats import aggregate, iqm, stratified_bootstrap_ci
from trmrl.tasks import make_task_distribution


def test_held_out_tasks_never_come_from_the_training_stream():
    dist = make_task_distribution("cheetah-vel")
    train = {t.params for epoch in range(200) for t in dist.sample(numpy_rng(1, Stream.TRAIN_TASKS, epoch), 20, "train")}
    for stream in (Stream.TEST_TASKS, Stream.EVAL_TASKS):
        held_out = {t.params for t in dist.sample(numpy_rng(1, stream, 0), 20, "test")}
        assert not held_out & train


def test_protocols_follow_the_paper():
    assert (resolve_protocol("adaptation", "cheetah-vel").n_tasks, resolve_protocol("adaptation", "x").episodes) == (20, 6)
    assert resolve_protocol("during-training", "x").n_tasks == 30
    ood = resolve_protocol("ood", "cheetah-vel", n_tasks=7)
    tester = MetaTester(make_task_distribution("cheetah-vel"), ood, 5, seed=0)
    velocities = [t.params[0] for t in tester.tasks()]
    assert len(velocities) == 7 and all(3 <= v <= 4 for v in velocities)


class Up:
    """Moves up at full speed; with the goal straight up, distances are 1 - 0.1 t."""

    def __init__(self, speed=1.0):
        self.speed = speed

    def initial_state(self, n):
        return None

    def act(self, inputs, state, starts, generators, deterministic=False):
        n = len(inputs)
        return Step(torch.tensor([[0.0, self.speed]]).repeat(n, 1), torch.zeros(n), torch.zeros(n)), None

    def value(self, inputs, state, starts):
        return torch.zeros(len(inputs))


def scripted_tester(episodes, **kwargs):
    protocol = EvalProtocol("adaptation", n_tasks=3, episodes=episodes, **kwargs)
    tester = MetaTester(make_task_distribution("point-nav"), protocol, max_episode_steps=4, seed=0)
    return tester


def expected_return(goal, speed):
    return -sum(math.dist((0.0, 0.1 * speed * t), goal) for t in range(1, 5))


def test_per_episode_bookkeeping_with_a_scripted_policy(tmp_path):
    tester = scripted_tester(episodes=3)
    result = tester.run(Up())
    goals = [t.params for t in result.tasks]
    expected = np.array([[expected_return(g, 1.0)] * 3 for g in goals])
    assert np.allclose(result.returns, expected)
    assert np.allclose(result.first_episode_rewards[0], [-math.dist((0, 0.1 * t), goals[0]) for t in range(1, 5)])
    assert result.successes is None
    rows = result.per_episode()
    assert rows[2]["return_mean"] == pytest.approx(expected[:, 2].mean())
    json_path, csv_path = result.write(tmp_path)
    assert json.loads(json_path.read_text())["per_episode"][0]["episode"] == 0
    table = list(csv.DictReader(csv_path.open()))
    assert len(table) == 9 and float(table[4]["return"]) == pytest.approx(expected[1, 1])


class SpeedUpLearner:
    """An episode-by-episode learner (like MAML): each adaptation doubles the speed."""

    adapts_in_memory = False

    def exploration_policy(self):
        return Up(0.25)

    def adapt(self, policy, exploration):
        assert exploration.rewards.shape == (4, 1)  # one episode of one task
        return Up(policy.speed * 2)


def test_the_contract_runs_gradient_style_learners_episode_by_episode():
    result = scripted_tester(episodes=3).run(SpeedUpLearner())
    goal = result.tasks[0].params
    assert np.allclose(result.returns[0], [expected_return(goal, s) for s in (0.25, 0.5, 1.0)])
    in_memory = scripted_tester(episodes=3).run(InMemoryLearner(Up(0.25)))
    assert np.allclose(in_memory.returns[0], [expected_return(goal, 0.25)] * 3)


def test_a_tasks_trials_start_from_an_empty_memory(tmp_path):
    """trials_per_task: each of a task's trials is its own trial (memory emptied), columns side by
    side; under mean actions a task's trials repeat the one-trial protocol's trial exactly."""
    from conftest import tiny_config

    from trmrl.algos import make_algorithm

    config = tiny_config()  # a memory over the whole trial, so a leak between trials would show
    dist = make_task_distribution("point-nav")
    learner = make_algorithm(config, dist).meta_learner()
    one = MetaTester(dist, EvalProtocol("one", n_tasks=3, episodes=2), 5, seed=0)
    three = MetaTester(dist, EvalProtocol("three", n_tasks=3, episodes=2, trials_per_task=3, adaptation_episodes=1), 5,
                       seed=0)
    sampled = MetaTester(dist, EvalProtocol("three", n_tasks=3, episodes=2, trials_per_task=3, deterministic=False), 5,
                         seed=0)
    single, repeated, noisy = (t.run(learner) for t in (one, three, sampled))
    assert repeated.returns.shape == (3, 6) and [t.params for t in repeated.tasks] == [t.params for t in single.tasks]
    for trial in range(3):
        assert np.allclose(repeated.returns[:, 2 * trial : 2 * trial + 2], single.returns)
    assert not np.allclose(noisy.returns[:, 0:2], noisy.returns[:, 2:4])  # each trial its own action stream
    assert repeated.evaluation_episodes().tolist() == [1, 3, 5]  # after the adaptation episode of each trial
    assert repeated.summary()["return_mean"] == pytest.approx(repeated.returns[:, 1::2].mean())
    assert three.same_as(repeated.to_dict()) and not one.same_as(repeated.to_dict())


def test_probability_of_improvement_by_hand():
    from trmrl.stats import probability_of_improvement

    x, y = np.array([[3.0, 1.0], [5.0, 1.0]]), np.array([[4.0, 1.0], [2.0, 0.0]])
    # task 0: 3<4, 3>2, 5>4, 5>2 -> 3/4; task 1: tie, 1>0, tie, 1>0 -> (0.5 + 1 + 0.5 + 1)/4
    p, (low, high) = probability_of_improvement(x, y)
    assert p == 0.75 and low <= p <= high
    assert probability_of_improvement(y, x)[0] == 0.25  # P(X > Y) + P(Y > X) = 1


def test_iqm_and_bootstrap_by_hand():
    assert iqm(np.arange(1.0, 9.0)) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert iqm(np.array([1.0, 2.0, 3.0])) == pytest.approx(2.0)  # floor(3/4) = 0 cut
    rng = np.random.default_rng(0)
    # runs {0, 1} in one task: bootstrap means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    assert stratified_bootstrap_ci(np.array([[0.0], [1.0]]), lambda x: x.mean(-1), rng) == (0.0, 1.0)
    # stratified: each task keeps its own runs, so a task whose runs agree adds no spread
    low, high = stratified_bootstrap_ci(np.array([[0.0, 5.0], [1.0, 5.0]]), lambda x: x.mean(-1), rng)
    assert (low, high) == (2.5, 3.0)
    agg = aggregate(np.array([[1.0, 2.0], [3.0, np.nan]]))
    assert agg.n == 2 and agg.mean == 1.5  # the run with a missing episode is left out


def test_explicit_attention_equals_the_fused_path_and_is_causal():
    attn = CausalSelfAttention(16, 4)
    x = torch.randn(3, 5, 16)
    explicit, weights = attn(x, need_weights=True)
    attn.fused = True
    fused, _ = attn(x)
    assert torch.allclose(fused, explicit, atol=1e-5)
    lengths = torch.tensor([1, 3, 5])
    newest_fused = attn.newest(x, lengths)
    attn.fused = False
    assert torch.allclose(attn.newest(x, lengths), newest_fused, atol=1e-5)
    assert torch.allclose(weights.sum(-1), torch.ones(3, 4, 5))
    assert (weights.triu(1) == 0).all()


def test_attention_by_age_masks_memories_that_do_not_exist():
    from trmrl.attention import attention_by_age

    model = ActorCritic(4, 2, ModelConfig(d_model=16, n_heads=2, d_ff=16, n_layers=2, window=3),
                        torch.Generator().manual_seed(0))
    weights = attention_by_age(model, torch.randn(2, 3, 4), torch.tensor([2, 3]))
    assert weights.shape == (2, 2, 2, 3)
    assert np.isnan(weights[0, :, :, 2]).all() and not np.isnan(weights[1]).any()
    assert np.allclose(np.nansum(weights, axis=-1), 1.0, atol=1e-5)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "trmrl.cli", *args], capture_output=True, text=True, timeout=300)


def test_train_eval_plot_end_to_end(tmp_path):
    small = ["--total-env-steps", "640", "--task.tasks-per-epoch", "8", "--eval.every-epochs", "1",
             "--eval.n-tasks", "4", "--eval.final-n-tasks", "4", "--model.d-model", "16", "--no-progress"]
    for seed in (1, 2):
        result = cli("train", "point-nav", *small, "--seed", str(seed), "--run-dir", str(tmp_path / f"pn-s{seed}"))
        assert result.returncode == 0, result.stderr
    run = tmp_path / "pn-s1"
    own = (run / "eval" / "adaptation.json").read_text()  # the end of training's: 4 tasks x 4 episodes
    result = cli("eval", str(run / "checkpoint.pt"), "--n-tasks", "5", "--episodes", "3", "--attention")
    assert result.returncode == 0, result.stderr
    assert "adaptation: 5 held-out tasks" in result.stdout
    assert (run / "eval" / "adaptation.json").read_text() == own  # another protocol: never overwritten
    saved = json.loads((run / "eval" / "adaptation-5x3-seed0.json").read_text())
    assert saved["n_tasks"] == 5 and len(saved["per_episode"]) == 3
    assert (run / "eval" / "adaptation-5x3-seed0-random.json").exists()
    result = cli("eval", str(run), "--n-tasks", "4", "--episodes", "4")  # the run's own protocol again
    assert result.returncode == 0 and "adaptation-4x4" not in result.stdout and "was kept" not in result.stdout
    assert (run / "eval" / "attention.png").stat().st_size > 0
    result = cli("plot", str(tmp_path / "pn-s1"), str(tmp_path / "pn-s2"), "--out", str(tmp_path / "plots"))
    assert result.returncode == 0, result.stderr
    for name in ("learning_curves", "adaptation_curves"):
        assert (tmp_path / "plots" / f"{name}.png").stat().st_size > 0
        assert (tmp_path / "plots" / f"{name}.svg").stat().st_size > 0


def test_eval_errors_are_one_line(tmp_path):
    for args, fragment in ((["eval", str(tmp_path / "missing")], "does not exist"),
                           (["eval", str(tmp_path)], "no checkpoint"),
                           (["plot", str(tmp_path)], "not a run directory")):
        result = cli(*args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert fragment in result.stderr


def test_incompatible_checkpoint_is_a_clear_error(tmp_path):
    from conftest import tiny_config

    from trmrl import checkpoint
    from trmrl.errors import CheckpointError
    from trmrl.train import load_trained, train

    train(tiny_config(total_env_steps=80), tmp_path)
    state = checkpoint.load(tmp_path / "checkpoint.pt")
    state["config"]["model"]["d_model"] = 32
    del state["format"]
    checkpoint.save(tmp_path / "checkpoint.pt", state)
    with pytest.raises(CheckpointError, match="does not match"):
        load_trained(tmp_path)


def test_paper_references_are_drawn_only_for_runs_of_one_preset(tmp_path):
    from trmrl.paper import adaptation_reference, learning_references
    from trmrl.plot import Run, shared_preset

    def run(preset, task=None):
        return Run("trmrl: x", tmp_path, preset, "trmrl", (np.array([0]), np.array([0.0])), (np.array([]), np.array([])),
                   None, None, config={"task": {"name": task or preset}})

    assert shared_preset([run("cheetah-vel"), run("cheetah-vel")]) == "cheetah-vel"
    assert shared_preset([run("cheetah-vel"), run("ant-dir")]) is None  # no reference fits both
    assert shared_preset([run("cheetah-vel", "my-cheetah")]) is None  # the preset's settings on a task of one's own
    # the values of docs/paper.md section 5, read from the paper's figures 4-6 and appendix E
    paper, no_tfixup = learning_references("cheetah-vel")
    assert (paper.at(2e6), paper.at(4e6), paper.at(1e7)) == (-70, -34, -25)
    assert no_tfixup.at(2e6) == -268 and paper.at(3e6) is None
    assert adaptation_reference("cheetah-vel", "ood").y == (-100, -125, -114, -99, -134, -106)
    assert adaptation_reference("ant-dir", "adaptation").at(5) == 1160
    assert adaptation_reference("point-nav", "adaptation") is None and learning_references(None) == ()
    # each algorithm is put beside its own curve in the paper, never beside TrMRL's
    assert adaptation_reference("cheetah-vel", "adaptation", "maml").y == (-167, -155)
    assert adaptation_reference("cheetah-vel", "ood", "rl2") is None
    assert learning_references("ml1-reach", "success", "maml")[0].at(2.5e7) == 0.98
    # a short run keeps its own axis; the legend says where the paper's curve goes past it
    from trmrl.paper import Reference
    from trmrl.plot import reference_label
    curve = Reference("TrMRL (Fig. 4)", (1e6, 2e6, 1e7), (-100.0, -70.0, -25.0))
    assert reference_label(curve, 2.1e6) == "paper: TrMRL (Fig. 4) (to 1e+07 steps: -25, 1 point(s) off the axis)"
    assert reference_label(curve, 1.1e7) == reference_label(curve, None) == "paper: TrMRL (Fig. 4)"


def test_a_run_with_an_ood_pair_ends_with_both_protocols(tmp_path):
    """cheetah-vel's training ends with the fast-adaptation and the OOD protocol (the paper's
    Fig. 5 and 6), each beside a random policy; point-nav has no OOD pair."""
    import dataclasses

    from trmrl.evaluate import final_protocols
    from trmrl.presets import get_preset
    from trmrl.train import train

    config = get_preset("cheetah-vel")
    config = dataclasses.replace(
        config, total_env_steps=40, progress=False, torch_threads=1,
        task=dataclasses.replace(config.task, tasks_per_epoch=2, max_episode_steps=10),
        model=dataclasses.replace(config.model, d_model=16, n_heads=2, d_ff=32, n_layers=1),
        ppo=dataclasses.replace(config.ppo, minibatch_size=20),
        eval=dataclasses.replace(config.eval, every_epochs=0, final_n_tasks=3, final_episodes=2))
    summary = train(config, tmp_path)
    assert final_protocols("point-nav") == ["adaptation"]
    assert final_protocols("point-nav", explores_first=True) == ["adaptation", "meta-evaluator"]  # MAML, PEARL
    assert summary["distribution"] == "cheetah-vel" and summary["ood"]["distribution"] == "cheetah-vel-ood"
    ood = json.loads((tmp_path / "eval" / "ood.json").read_text())
    velocities = [task["params"][0] for task in ood["tasks"]]
    assert len(velocities) == 3 and all(3.0 <= v <= 4.0 for v in velocities)
    assert np.allclose(np.mean(ood["returns"], axis=0), summary["ood"]["return_per_episode"])
    assert (tmp_path / "eval" / "ood-random.json").exists()


def test_plots_draw_intervals_only_over_enough_runs_and_whole_episode_ticks(tmp_path, monkeypatch):
    """Two runs get no band (a bootstrap over two is their min-max range) and the probability of
    improvement of one run against another no interval; episode axes have whole-number ticks."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trmrl.plot import _band, improvement_table
    from trmrl.stats import aggregate

    stats = [aggregate(np.array([[1.0], [2.0], [4.0]])[:n]) for n in (3,)] * 4
    fig, ax = plt.subplots()
    _band(ax, np.arange(4), stats, "mean", "three", "C0", 3)
    _band(ax, np.arange(4), stats, "mean", "two", "C1", 2)
    assert len(ax.collections) == 1  # only the three-run curve has a band
    plt.close(fig)

    import dataclasses

    from conftest import tiny_config

    from trmrl.plot import load_run
    from trmrl.train import train

    for name, window in (("a", 3), ("b", 1)):
        train(tiny_config(model=dataclasses.replace(tiny_config().model, window=window)), tmp_path / name)
    runs = [load_run(tmp_path / name, "adaptation") for name in "ab"]
    runs[1].label = "other"
    rows = list(csv.DictReader(improvement_table(runs, tmp_path / "plots")[0].open()))
    assert rows and all(r["ci_low"] == "nan" and r["ci_high"] == "nan" and r["p_x_beats_y"] != "nan" for r in rows)

    from trmrl.plot import plot_runs

    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))
    plot_runs([tmp_path / "a"], tmp_path / "figs")
    adaptation = next(f for f in figures if "Fast adaptation" in f._suptitle.get_text())
    fig_ticks = adaptation.axes[0].get_xticks()
    assert len(fig_ticks) and all(float(t).is_integer() for t in fig_ticks), fig_ticks


def test_plot_refuses_runs_of_different_task_distributions(tmp_path):
    from conftest import tiny_config

    from trmrl.config import TaskConfig
    from trmrl.errors import ConfigError
    from trmrl.plot import plot_runs
    from trmrl.train import train

    train(tiny_config(total_env_steps=80), tmp_path / "pn")
    task = TaskConfig(name="point-nav-xy", episodes_per_trial=2, max_episode_steps=5, tasks_per_epoch=8)
    train(tiny_config(total_env_steps=80, task=task), tmp_path / "xy")
    with pytest.raises(ConfigError, match="different task distributions cannot share an axis: point-nav: pn; "
                                          "point-nav-xy: xy"):
        plot_runs([tmp_path / "pn", tmp_path / "xy"], tmp_path / "plots")
    assert not (tmp_path / "plots").exists()


def test_the_python_api_acts_across_a_trial_as_the_evaluator_does(tmp_path):
    """trmrl.Agent: load a run, act step by step across a trial on a chosen task (the agent keeps
    its memory, emptied at reset), and the returns are the evaluator's on the same task."""
    from conftest import tiny_config

    from trmrl import Agent
    from trmrl.train import train

    train(tiny_config(total_env_steps=160), tmp_path)
    agent = Agent.load(tmp_path)
    tasks = agent.held_out_tasks(3)
    assert len(tasks) == 3 and all(len(t.params) == 2 for t in tasks)
    result = agent.evaluate(tasks, episodes=3)
    assert result.returns.shape == (3, 3) and [t.params for t in result.tasks] == [t.params for t in tasks]
    for i, task in enumerate(tasks):
        env = agent.make_env(task, episodes=3)
        obs, _ = env.reset(seed=0)
        agent.reset()
        returns, episode, done = [0.0, 0.0, 0.0], 0, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(agent.act(obs))
            returns[episode] += reward
            episode += info["episode_end"]
            done = terminated or truncated
        assert np.allclose(returns, result.returns[i], atol=1e-5), (returns, result.returns[i])
    sampled = [agent.act(np.zeros(agent.make_env(tasks[0]).observation_space.shape), deterministic=False)
               for _ in range(2)]
    assert not np.allclose(*sampled)  # sampled actions draw from the agent's own stream


def test_plot_style_picks_panels_curves_and_size(tmp_path):
    from conftest import tiny_config

    from trmrl.plot import Style, plot_runs
    from trmrl.train import train

    train(tiny_config(total_env_steps=160), tmp_path / "run")
    plot_runs([tmp_path / "run"], tmp_path / "all")
    plot_runs([tmp_path / "run"], tmp_path / "one", style=Style(size=(4.0, 3.0), statistics=("iqm",), curves=("training",)))
    full, one = ((tmp_path / d / "learning_curves.svg").read_text() for d in ("all", "one"))
    assert "<!-- Mean -->" in full and "<!-- IQM -->" in full and "held-out meta-test" in full and "training episodes" in full
    assert "<!-- Mean -->" not in one and "<!-- IQM -->" in one and "held-out meta-test" not in one and "training episodes" in one
    import matplotlib as mpl

    # the one panel's axes: 4 x 3 inches at 72 pt, less matplotlib's default margins
    w, h = (float(v) for v in re.search(r'<clipPath[^>]*>\s*<rect x="[0-9.]+" y="[0-9.]+" width="([0-9.]+)" '
                                            r'height="([0-9.]+)"', one).groups())
    p = mpl.rcParams
    assert w == pytest.approx(4 * 72 * (p["figure.subplot.right"] - p["figure.subplot.left"]), abs=0.1)
    assert h == pytest.approx(3 * 72 * (p["figure.subplot.top"] - p["figure.subplot.bottom"]), abs=0.1)


def test_probability_of_improvement_scores_the_evaluation_episodes_of_every_trial(tmp_path):
    """A protocol with adaptation episodes is scored on the episodes after them (MAML explores
    badly in its 10 and is then the better agent), and one of several trials per task on all of
    its trials, not the first one's episodes alone."""
    import csv
    from types import SimpleNamespace

    from trmrl.plot import evaluation_score, improvement_table

    tasks = [{"name": "t", "params": [float(i)]} for i in range(4)]
    explores = np.array([[-20.0] * 10 + [-5.0] * 3] * 4)  # bad while exploring, good after
    in_memory = np.array([[-8.0] * 13] * 4)
    runs = [SimpleNamespace(label=label, adaptation={"returns": (r + 0.1 * s).tolist(), "episodes": 13,
                                                     "adaptation_episodes": 10, "tasks": tasks})
            for label, r in (("maml", explores), ("trmrl", in_memory)) for s in range(3)]
    rows = {(r["x"], r["y"]): float(r["p_x_beats_y"])
            for r in csv.DictReader(improvement_table(runs, tmp_path)[0].open())}
    assert rows[("maml", "trmrl")] == 1.0 and rows[("trmrl", "maml")] == 0.0
    trials = {"returns": [[0.0, 1.0, 10.0, 11.0]], "episodes": 2, "adaptation_episodes": 1}  # 2 trials of 2
    assert evaluation_score(trials, 2).tolist() == [6.0]  # episode 1 of each trial
