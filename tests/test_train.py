"""The training loop through its real pipeline: determinism, resume, divergence, run directory."""

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import tiny_config, without_timing

from trmrl import checkpoint
from trmrl.errors import CheckpointError, DivergenceError
from trmrl.log import MetricLogger, read_metrics
from trmrl.plot import load_run
from trmrl.rundir import RunDir
from trmrl.train import train


def test_run_directory_is_self_describing(tmp_path):
    summary = train(tiny_config(), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model"]["window"] == 3
    assert "torch" in json.loads((tmp_path / "versions.json").read_text())
    records = read_metrics(tmp_path)
    trained = [(r["epoch"], r["charts/env_steps"]) for r in records if "losses/policy_loss" in r]
    tested = [(r["epoch"], r["charts/env_steps"]) for r in records if "meta_test/episode_1/return" in r]
    assert trained == [(0, 80), (1, 160), (2, 240), (3, 320)]
    assert tested == [(0, 0), (2, 160), (4, 320)]  # every 2 epochs, at the steps seen, and at the end
    assert load_run(tmp_path, "adaptation").curve[0].tolist() == [0, 160, 320]  # plotted where measured
    assert load_run(tmp_path, "adaptation").preset == tiny_config().preset  # picks the paper's reference
    assert list((tmp_path / "tb").iterdir())
    assert checkpoint.load(RunDir(tmp_path).checkpoint)["epoch"] == 4
    assert len(summary["return_per_episode"]) == 3
    assert json.loads((tmp_path / "eval" / "adaptation.json").read_text())["n_tasks"] == 4
    assert (tmp_path / "eval" / "adaptation-random.csv").exists()
    # point-nav has an oracle: the top of the scale beside the floor, and the gap closed between them
    oracle = json.loads((tmp_path / "eval" / "adaptation-oracle.json").read_text())
    assert oracle["tasks"] == json.loads((tmp_path / "eval" / "adaptation.json").read_text())["tasks"]
    top, floor, ours = (summary[f"{k}return_per_episode"] for k in ("oracle_", "random_", ""))
    assert all(t > f for t, f in zip(top, floor))
    assert summary["gap_closed_per_episode"] == pytest.approx([(o - f) / (t - f) for o, f, t in zip(ours, floor, top)])
    assert load_run(tmp_path, "adaptation").oracle is not None


def test_same_seed_gives_identical_metrics(tmp_path):
    train(tiny_config(), tmp_path / "a")
    train(tiny_config(), tmp_path / "b")
    train(tiny_config(seed=4), tmp_path / "c")
    a, b, c = (without_timing(read_metrics(tmp_path / x)) for x in "abc")
    assert a == b
    assert a != c
    # the meta-tests of both training seeds ran on the same held-out tasks (eval.seed)
    tasks = [json.loads((tmp_path / x / "eval" / "adaptation.json").read_text())["tasks"] for x in "ac"]
    assert tasks[0] == tasks[1]


def test_resume_matches_an_uninterrupted_run(tmp_path):
    full = train(tiny_config(), tmp_path / "full")
    assert train(tiny_config(), tmp_path / "split", max_epochs=2) == {}
    resumed = train(tiny_config(), tmp_path / "split", resume=True)
    assert resumed == full
    assert without_timing(read_metrics(tmp_path / "split")) == without_timing(read_metrics(tmp_path / "full"))
    a = checkpoint.load(RunDir(tmp_path / "full").checkpoint)["model"]
    b = checkpoint.load(RunDir(tmp_path / "split").checkpoint)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


DECAYING = dict(policy_lr_decay=True, value_lr_decay=True, decay_epoch_start=1, decay_epoch_end=8, min_lr_factor=0.1)


@pytest.mark.parametrize("algo", ["trmrl", "rl2", "varibad"])
def test_resume_after_the_learning_rate_started_decaying_matches_an_uninterrupted_run(tmp_path, algo):
    """Every paper preset decays its learning rates by gradient step; a resumed run must pick the
    schedule up where it stood (the step count comes from the checkpoint's epoch), not restart it."""
    config = tiny_config(algo=algo, total_env_steps=5 * 80, ppo=dataclasses.replace(tiny_config().ppo, **DECAYING))
    full = train(config, tmp_path / "full")
    assert train(config, tmp_path / "split", max_epochs=3) == {}  # stopped inside the decay
    resumed = train(config, tmp_path / "split", resume=True)
    records = without_timing(read_metrics(tmp_path / "split"))
    rates = [r["charts/policy_lr"] for r in records if "charts/policy_lr" in r]
    # the rate falls at every epoch, before and after the resume (the decay runs to epoch 8)
    assert len(rates) == 5 and all(a > b for a, b in zip(rates, rates[1:])) and rates[0] < 3e-4, rates
    assert records == without_timing(read_metrics(tmp_path / "full"))
    assert resumed == full


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import trmrl.ppo as ppo

    calls = {"n": 0}
    real = ppo.clipped_surrogate

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 10 else loss  # 6 calls per epoch (2 passes x 3 minibatches): epoch 1 fails

    monkeypatch.setattr(ppo, "clipped_surrogate", poisoned)
    with pytest.raises(DivergenceError, match="non-finite policy loss.*last good checkpoint kept"):
        train(tiny_config(), tmp_path)
    state = checkpoint.load(RunDir(tmp_path).checkpoint)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_corrupt_and_missing_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoint.load(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        checkpoint.load(bad)


def test_a_cut_last_metrics_line_survives_resume_and_plot(tmp_path, capsys):
    full = tmp_path / "full"
    train(tiny_config(), full)
    split = tmp_path / "split"
    train(tiny_config(), split, max_epochs=2)
    with RunDir(split).metrics.open("a") as f:
        f.write('{"epoch": 2, "charts/env_steps": 240, "losses/pol')  # killed mid-write
    assert len(read_metrics(split)) == 3  # epochs 0 and 1 and the first meta-test; the cut record is skipped...
    assert "skipped its last line" in capsys.readouterr().err  # ...with a warning
    load_run(split, "adaptation")  # plot reads it
    train(tiny_config(), split, resume=True)
    assert without_timing(read_metrics(split)) == without_timing(read_metrics(full))

    lines = RunDir(split).metrics.read_text().splitlines()
    lines[1] = lines[1][:20]
    RunDir(split).metrics.write_text("\n".join(lines) + "\n")
    with pytest.raises(CheckpointError, match="line 2 is not a JSON record"):
        read_metrics(split)


def scalars(run):
    """TensorBoard's view of a run: {tag: [(step, value), ...]} as its reader resolves purges."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(RunDir(run).tensorboard))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
            if not (tag.startswith("time/") or tag.endswith("sps") or "per_s" in tag)}


def test_a_resume_after_a_kill_leaves_tensorboard_as_an_uninterrupted_run(tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    train(tiny_config(), full)
    train(tiny_config(), split, max_epochs=2)  # checkpoint after epoch 1 (80 steps per epoch)
    # killed after logging epoch 2's meta-test (at 160 steps, the step of epoch 1's training
    # record, which the checkpoint covers) and epoch 2's training record
    logger = MetricLogger(RunDir(split))
    for record in read_metrics(full):
        if record["epoch"] == 2:
            logger.log(record["epoch"], record["charts/env_steps"], {k: v for k, v in record.items()
                                                                     if k not in ("epoch", "charts/env_steps")})
    logger.close()
    assert [(s, n) for s, n in Counter(s for s, _ in scalars(split)["meta_test/episode_0/return"]).items()] \
        == [(0, 1), (160, 1)]
    train(tiny_config(), split, resume=True)
    after = scalars(split)
    assert after == scalars(full)  # nothing duplicated, nothing lost
    assert [s for s, _ in after["meta_test/episode_0/return"]] == [0, 160, 320]
    assert [s for s, _ in after["losses/policy_loss"]] == [80, 160, 240, 320]


def test_a_restart_after_a_kill_before_the_first_checkpoint_leaves_no_stale_records(tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    train(tiny_config(), uninterrupted)
    run = tmp_path / "run"
    train(tiny_config(checkpoint_every=10), run, max_epochs=2)  # no checkpoint before the "kill"
    RunDir(run).checkpoint.unlink()  # (the end of an interrupted run writes one: remove it)
    (run / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    train(tiny_config(), run)
    assert without_timing(read_metrics(run)) == without_timing(read_metrics(uninterrupted))
    assert len(list(RunDir(run).tensorboard.iterdir())) == 1
    assert not list(run.glob(".checkpoint.pt.*.tmp"))
    with pytest.raises(CheckpointError, match="already holds a run; continue it with: trmrl train --resume"):
        train(tiny_config(), run)  # a run with a checkpoint is resumed, never restarted over


def test_partial_checkpoints_are_removed_on_resume_and_result_files_are_read_clearly(tmp_path):
    train(tiny_config(), tmp_path, max_epochs=1)
    (tmp_path / ".checkpoint.pt.x9.tmp").write_bytes(b"")
    train(tiny_config(), tmp_path, resume=True)
    assert not list(tmp_path.glob(".checkpoint.pt.*.tmp"))
    (tmp_path / "eval" / "adaptation.json").write_text('{"protocol": "adapt')  # cut by a kill
    with pytest.raises(CheckpointError, match="unreadable .*adaptation.json"):
        load_run(tmp_path, "adaptation")


def test_plot_splits_a_group_whose_runs_are_different_experiments(tmp_path, capsys):
    from trmrl.plot import plot_runs

    for seed, window in ((1, 3), (2, 3), (3, 1)):
        train(tiny_config(seed=seed, total_env_steps=160, model=dataclasses.replace(tiny_config().model, window=window)),
              tmp_path / f"pn-s{seed}")
    runs = [load_run(tmp_path / f"pn-s{s}", "adaptation") for s in (1, 2, 3)]
    assert {r.label for r in runs} == {"trmrl: pn"}  # one group by name...
    from trmrl.plot import split_mixed_groups

    labels = [r.label for r in split_mixed_groups(runs)]
    assert labels == ["trmrl: pn (model.window=3)"] * 2 + ["trmrl: pn (model.window=1)"]  # ...two experiments
    assert "differ in model.window" in capsys.readouterr().err
    plot_runs([tmp_path / f"pn-s{s}" for s in (1, 2)], tmp_path / "plots")  # one experiment: no warning
    assert "differ" not in capsys.readouterr().err
    # seed 2's config.json in the layout written before a run held one algorithm's config (every
    # algorithm's section), its update compiled: still the same experiment as seed 1
    from trmrl.algos import make_config
    from trmrl.config import to_dict

    written = json.loads((tmp_path / "pn-s2" / "config.json").read_text())
    legacy = {name: to_dict(make_config(name))[name] for name in ("maml", "pearl", "rl2", "varibad")}
    legacy["ppo"] = written["ppo"] | {"compile": True}
    (tmp_path / "pn-s2" / "config.json").write_text(json.dumps(written | legacy))
    runs = [load_run(tmp_path / f"pn-s{s}", "adaptation") for s in (1, 2)]
    assert [r.label for r in split_mixed_groups(runs)] == ["trmrl: pn"] * 2


def test_a_runs_other_protocols_run_beside_the_meta_test_and_at_the_end(tmp_path):
    """eval.also: logged at every meta-test as meta_test/<protocol>/return, run after training as
    defined (its own action mode and trials) beside the final protocols, and drawn by plot."""
    from conftest import tiny_config

    from trmrl.config import EvalConfig
    from trmrl.errors import ConfigError
    from trmrl.log import read_metrics
    from trmrl.plot import load_run, quantity_curves

    evaluation = EvalConfig(every_epochs=2, n_tasks=4, episodes=2, final_n_tasks=4, final_episodes=3,
                            also=("paper-metaworld",))
    summary = train(tiny_config(eval=evaluation), tmp_path / "run")
    paper = summary["paper-metaworld"]
    assert (paper["n_tasks"], paper["trials_per_task"], paper["episodes"], paper["deterministic"]) == (10, 10, 1, False)
    saved = json.loads((tmp_path / "run" / "eval" / "paper-metaworld.json").read_text())
    assert np.array(saved["returns"]).shape == (10, 10)
    assert [r["epoch"] for r in read_metrics(tmp_path / "run") if "meta_test/paper-metaworld/return" in r] == [0, 2, 4]
    labels = sorted(quantity_curves([load_run(tmp_path / "run", "adaptation")], "return"))
    assert [label.split(" · ")[1] for label in labels] == [
        "held-out meta-test, mean actions", "paper-metaworld protocol", "training episodes, sampled actions"]
    with pytest.raises(ConfigError, match="unknown protocol 'nosuch'"):
        train(tiny_config(eval=EvalConfig(also=("nosuch",))), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # refused before anything was written


@pytest.mark.parametrize("same_tasks", [True, False])
def test_during_training_meta_tests_are_on_the_same_tasks_unless_fresh_ones_are_asked_for(tmp_path, monkeypatch,
                                                                                        same_tasks):
    """eval.same_tasks: every meta-test of the curve on the held-out tasks `trmrl eval --protocol
    during-training` uses (so curves of runs of any epoch size compare task for task); off, fresh
    tasks per meta-test. A config.json from before the field reads back as fresh tasks."""
    from trmrl.algos import load_config
    from trmrl.config import EvalConfig, to_dict
    from trmrl.evaluate import MetaTester

    drawn, run = [], MetaTester.run

    def recording(self, learner, index=0, tasks=None):
        drawn.append((index, [tuple(t.params) for t in self.tasks(index)]))
        return run(self, learner, index, tasks)

    monkeypatch.setattr(MetaTester, "run", recording)
    evaluation = EvalConfig(every_epochs=1, n_tasks=4, episodes=2, final=False, same_tasks=same_tasks)
    config = tiny_config(eval=evaluation, total_env_steps=3 * 80)
    train(config, tmp_path / "run")
    assert [index for index, _ in drawn] == ([0, 0, 0, 0] if same_tasks else [0, 1, 2, 3])
    task_sets = {tuple(tasks) for _, tasks in drawn}
    assert len(task_sets) == (1 if same_tasks else 4)
    written = to_dict(config)
    del written["eval"]["same_tasks"]
    assert load_config(written).eval.same_tasks is False
