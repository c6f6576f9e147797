"""The command line: one error line and exit 2 for bad input; train and resume end to end."""

import json
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import without_timing


def trmrl(*args, cwd=None, preexec_fn=None):
    return subprocess.run([sys.executable, "-m", "trmrl.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, preexec_fn=preexec_fn)


def file_size_limit(limit):
    """A child whose files cannot grow past `limit` bytes: writes beyond fail with EFBIG, as on a
    full disk (SIGXFSZ, which would kill it, ignored)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def assert_one_error_line(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trmrl: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["train", "cheetah-speed"], ["unknown preset 'cheetah-speed'", "point-nav"]),
        (["train", "point-nav", "--model.d-modle", "64"], ["unknown option --model.d-modle", "did you mean --model.d-model?"]),
        (["train", "point-nav", "--seed", "abc"], ["--seed", "abc"]),
        (["train", "point-nav", "--model.n-heads", "5"], ["divisible by model.n_heads"]),
        (["train", "point-nav", "--model.window", "0"], ["model.window must be >= 1"]),
        (["train", "point-nav", "--ppo.decay-epoch-start", "9", "--ppo.decay-epoch-end", "3"], ["decay_epoch_start"]),
        (["evaluate"], ["unknown command"]),
        (["train", "point-nav", "--algo", "nosuch"], ["unknown algorithm 'nosuch'", "trmrl"]),
        (["train", "point-nav", "--task.name", "nosuch"], ["unknown task 'nosuch'", "cheetah-vel"]),
        (["train", "point-nav", "--task.goal-arc", "400"], ["task.goal_arc must be in (0, 360]"]),
        (["train", "point-nav", "--model.share-network", "false"],
         ["--model.share-network is a flag and takes no value: write --model.share-network or --model.no-share-network"]),
        (["train", "point-nav", "--no-progress=1"], ["--no-progress is a flag", "write --progress or --no-progress"]),
        (["train", "point-nav", "--ppo.minibatch-size", "1000000", "--task.tasks-per-epoch", "8"],
         ["ppo.minibatch_size (1000000) is larger than an epoch's 320 samples"]),
    ],
)
def test_bad_input_gives_one_clear_line(args, fragments, capsys):
    # in this process (an interpreter start per case costs seconds); the real entry point below
    from trmrl.cli import main

    code = main(args)
    assert_one_error_line(subprocess.CompletedProcess(args, code, "", capsys.readouterr().err), *fragments)


def test_bad_input_through_the_installed_entry_point():
    assert_one_error_line(trmrl("train", "point-nav", "--model.d-modle", "64"), "did you mean --model.d-model?")


def test_train_then_resume_end_to_end(tmp_path):
    run = tmp_path / "run"
    small = ["--total-env-steps", "640", "--task.tasks-per-epoch", "8", "--eval.n-tasks", "4",
             "--eval.final-n-tasks", "4", "--model.d-model", "16", "--run-dir", str(run), "--no-progress",
             "--torch-threads", "1"]
    result = trmrl("train", "point-nav", "--algo", "trmrl", *small)
    assert result.returncode == 0, result.stderr
    assert "random policy" in result.stdout and f"run directory: {run}" in result.stdout
    assert json.loads((run / "config.json").read_text())["algo"] == "trmrl"
    assert len(json.loads((run / "eval" / "adaptation.json").read_text())["per_episode"]) == 4
    assert_one_error_line(trmrl("train", "point-nav", *small), "already holds a run", "--resume")

    result = trmrl("train", "--resume", str(run), "--total-env-steps", "1280", "--no-progress")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # training records at the steps seen after each epoch; meta-tests at the steps seen when they
    # ran: before epoch 0, and at the end (the dead final meta-test at epoch 2 was dropped)
    trained = [(r["epoch"], r["charts/env_steps"]) for r in records if "losses/policy_loss" in r]
    tested = [(r["epoch"], r["charts/env_steps"]) for r in records if "meta_test/episode_0/return" in r]
    assert trained == [(0, 320), (1, 640), (2, 960), (3, 1280)] and tested == [(0, 0), (4, 1280)]
    # ... the numbers of one uninterrupted run of the same config, and its final meta-test
    from trmrl.algos import load_config
    from trmrl.log import read_metrics
    from trmrl.train import train

    config = load_config(json.loads((run / "config.json").read_text())).replace(total_env_steps=1280)
    train(config, tmp_path / "uninterrupted")
    assert without_timing(read_metrics(run)) == without_timing(read_metrics(tmp_path / "uninterrupted"))
    assert json.loads((run / "eval" / "adaptation.json").read_text())["returns"] == \
        json.loads((tmp_path / "uninterrupted" / "eval" / "adaptation.json").read_text())["returns"]

    # a resumed run keeps its config: a change other than the budget is refused in one line
    assert_one_error_line(trmrl("train", "--resume", str(run), "--model.window", "3"),
                          "only --total-env-steps", "not --model.window 3")
    # file-system faults: one line that names the path and the cause
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_one_error_line(trmrl("train", "point-nav", "--total-env-steps", "1", "--run-dir", str(blocker / "run")),
                          str(blocker), "Not a directory")
    assert_one_error_line(trmrl("plot", str(run), "--out", str(blocker)), str(blocker))

    # a write that fails midway (a full disk): one line naming the checkpoint; the last good one
    # stays and loads, no temporary file is left
    size = (run / "checkpoint.pt").stat().st_size
    assert_one_error_line(trmrl("train", "--resume", str(run), "--total-env-steps", "1600", "--no-progress",
                                preexec_fn=file_size_limit(size // 2)), str(run / "checkpoint.pt"), "File too large")
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 4
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))

    (run / "checkpoint.pt").write_bytes(b"\x00garbage")
    assert_one_error_line(trmrl("train", "--resume", str(run), "--total-env-steps", "2000"), "corrupt checkpoint")
    assert_one_error_line(trmrl("train", "--resume", str(tmp_path / "nowhere")), "not a run directory")


def test_algos_and_presets_list_what_is_registered():
    result = trmrl("algos")
    assert result.returncode == 0 and result.stdout.startswith("trmrl ")
    result = trmrl("presets")
    assert result.returncode == 0
    for name in ("point-nav", "cheetah-vel-ood", "ant-dir"):
        assert f"  {name} " in result.stdout


def test_missing_simulator_is_one_clear_line():
    code = ("import sys; sys.modules['mujoco'] = None; from trmrl.cli import main; "
            "sys.exit(main(['train', 'cheetah-vel', '--total-env-steps', '1']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert_one_error_line(result, "needs MuJoCo")


def test_a_resume_cannot_shorten_a_run(tmp_path):
    """A budget below the run's steps is refused in one line, and the run is left as it was (no
    curve point deleted, no re-test logged at a step the agent has passed, no result rewritten)."""
    run = tmp_path / "run"
    result = trmrl("train", "point-nav", "--total-env-steps", "1280", "--task.tasks-per-epoch", "8",
                   "--eval.n-tasks", "4", "--eval.final-n-tasks", "4", "--model.d-model", "16", "--run-dir", str(run),
                   "--no-progress", "--torch-threads", "1")
    assert result.returncode == 0, result.stderr
    before = {p.name: p.read_bytes() for p in (run / "metrics.jsonl", run / "eval" / "adaptation.json")}
    assert_one_error_line(trmrl("train", "--resume", str(run), "--total-env-steps", "500"),  # 2 epochs of 320
                          "holds 1280 env steps", "--total-env-steps 500", "cannot shorten it", f"trmrl eval {run}")
    assert {p.name: p.read_bytes() for p in (run / "metrics.jsonl", run / "eval" / "adaptation.json")} == before


def test_an_immediate_interrupt_names_the_real_way_to_continue(tmp_path):
    """A second Ctrl-C (or one outside the epochs) stops at once: before any checkpoint the line
    gives the command that starts the run again in its directory, after one the resume command,
    each with the run's real path."""
    from trmrl.cli import interrupted_message

    run = tmp_path / "run"
    assert interrupted_message(run) == ("trmrl: interrupted; no checkpoint was written yet; the same command with "
                                        f"`--run-dir {run}` starts it again")
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"")
    assert interrupted_message(run) == f"trmrl: interrupted; it continues from its last checkpoint with `trmrl train --resume {run}`"


def test_a_checkpoint_of_another_algorithm_is_named(tmp_path):
    """An RL^2 checkpoint copied into a TrMRL run: resume and eval refuse it in one line naming
    both algorithms, and nothing is written to the run."""
    common = ["--total-env-steps", "320", "--task.tasks-per-epoch", "8", "--eval.n-tasks", "4", "--eval.final-n-tasks",
              "4", "--no-progress", "--torch-threads", "1"]
    for algo in ("trmrl", "rl2"):
        result = trmrl("train", "point-nav", "--algo", algo, *common, "--run-dir", str(tmp_path / algo))
        assert result.returncode == 0, result.stderr
    (tmp_path / "trmrl" / "checkpoint.pt").write_bytes((tmp_path / "rl2" / "checkpoint.pt").read_bytes())
    listing = sorted(p.name for p in (tmp_path / "trmrl" / "eval").iterdir())
    for args in (["train", "--resume", str(tmp_path / "trmrl"), "--total-env-steps", "640"],
                 ["eval", str(tmp_path / "trmrl"), "--n-tasks", "2"]):
        assert_one_error_line(trmrl(*args), "holds a 'rl2' agent", "is a 'trmrl' run")
    assert sorted(p.name for p in (tmp_path / "trmrl" / "eval").iterdir()) == listing


def test_a_checkpoint_that_does_not_fit_its_config_says_what_differs():
    from trmrl.checkpoint import restoring
    from trmrl.errors import CheckpointError

    with pytest.raises(CheckpointError) as caught, restoring():
        torch.nn.Linear(2, 2).load_state_dict({"weight": torch.zeros(2, 2), "extra": torch.zeros(1)})
    message = str(caught.value)
    assert "\n" not in message and "Missing key(s)" in message and '"bias"' in message and '"extra"' in message


def test_eval_help_explains_each_protocol(capsys):
    from trmrl.cli import main
    from trmrl.evaluate import PROTOCOLS

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    start = text.index("--protocol {", text.index("options:"))
    section = text[start:text.index("--n-tasks N_TASKS", start)]
    assert all(f"{name}:" in section or f"{name} (default):" in section for name in PROTOCOLS), section


def test_a_run_logged_to_a_file_gives_a_readable_line_per_epoch_and_each_meta_test(tmp_path):
    """stdout not a terminal (a batch job's log): plain lines, no carriage-return redraws; a line
    for the first and the last epoch (and between them at most one per 30 s), one per meta-test."""
    result = trmrl("train", "point-nav", "--total-env-steps", "640", "--task.tasks-per-epoch", "8",
                   "--eval.every-epochs", "1", "--eval.n-tasks", "4", "--eval.final-n-tasks", "4",
                   "--model.d-model", "16", "--run-dir", str(tmp_path / "run"), "--torch-threads", "1")
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("[point-nav] ")]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if "losses/policy_loss" in r]
    tested = [r for r in records if "meta_test/episode_0/return" in r]
    assert [line.split(" | ")[0] for line in lines if " | " in line] == ["[point-nav] epoch 1/2", "[point-nav] epoch 2/2"]
    assert [line for line in lines if "meta-test" in line] == [
        f"[point-nav] meta-test at {r['charts/env_steps']:,} steps: return per episode "
        f"{r['meta_test/episode_0/return']:.2f}, {r['meta_test/episode_1/return']:.2f}" for r in tested]
    for line, record in zip((line for line in lines if " | " in line), trained):
        assert f"{record['charts/env_steps']:,}/640 steps" in line
        assert f"return {record['charts/episode_return']:.2f}" in line and "policy loss" in line
    assert len(tested) == 3  # before epoch 0, after epoch 0, at the end


def test_plot_of_a_result_that_does_not_exist_says_so(tmp_path):
    small = ["--total-env-steps", "320", "--task.tasks-per-epoch", "8", "--eval.n-tasks", "4", "--eval.final-n-tasks",
             "4", "--model.d-model", "16", "--no-progress", "--torch-threads", "1"]
    for seed in (1, 2):
        assert trmrl("train", "point-nav", *small, "--seed", str(seed), "--run-dir", str(tmp_path / f"s{seed}")).returncode == 0
    assert_one_error_line(trmrl("plot", str(tmp_path / "s1"), "--protocol", "adaptation-9x9-seed0", "--out",
                                str(tmp_path / "plots")), "no run has a 'adaptation-9x9-seed0' result", "they have: adaptation")
    assert trmrl("eval", str(tmp_path / "s1"), "--n-tasks", "2", "--episodes", "2").returncode == 0
    result = trmrl("plot", str(tmp_path / "s1"), str(tmp_path / "s2"), "--protocol", "adaptation-2x2-seed0",
                   "--out", str(tmp_path / "plots"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == (f"trmrl: warning: {tmp_path / 's2'} has no 'adaptation-2x2-seed0' result; "
                                     "its adaptation curve is left out")


def test_a_budget_that_is_not_whole_epochs_is_announced():
    from trmrl.cli import budget_note
    from trmrl.presets import get_preset

    pearl = get_preset("point-nav", "pearl").replace(total_env_steps=2000)
    expected = pearl.initial_env_steps + pearl.steps_per_epoch
    assert budget_note(pearl) == (f"note: --total-env-steps 2,000 is not whole epochs; the run collects {expected:,} "
                                  f"steps: {pearl.initial_env_steps:,} initial steps and 1 epoch(s) of "
                                  f"{pearl.steps_per_epoch:,}")
    assert expected > 2000
    trmrl_config = get_preset("point-nav").replace(total_env_steps=1000, task={"tasks_per_epoch": 8})
    assert budget_note(trmrl_config) == ("note: --total-env-steps 1,000 is not whole epochs; the run collects 1,280 "
                                         "steps: 4 epoch(s) of 320")
    assert budget_note(trmrl_config.replace(total_env_steps=1280)) is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_after_the_epoch_with_a_checkpoint_and_the_resume_is_exact(tmp_path, sig):
    """A scheduler's SIGTERM (or Ctrl-C) mid-run: the epoch ends, a checkpoint is written although
    none was due, one line names the resume command; resumed, the run's numbers are those of an
    uninterrupted run."""
    from trmrl.algos import load_config
    from trmrl.log import read_metrics
    from trmrl.train import train

    run = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-m", "trmrl.cli", "train", "point-nav", "--total-env-steps", "12800",
                              "--task.tasks-per-epoch", "8", "--eval.every-epochs", "10", "--eval.n-tasks", "4",
                              "--eval.final-n-tasks", "4", "--model.d-model", "16", "--checkpoint-every", "1000",
                              "--no-progress", "--torch-threads", "1", "--run-dir", str(run)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not (run / "metrics.jsonl").exists()
                                           or (run / "metrics.jsonl").read_text().count("policy_loss") < 3):
        time.sleep(0.02)
    child.send_signal(sig)
    _, err = child.communicate(timeout=120)
    epochs = torch.load(run / "checkpoint.pt", weights_only=True)["epoch"]
    assert child.returncode == (143 if sig == signal.SIGTERM else 130), err
    assert err.strip().splitlines() == [f"trmrl: stopped by {signal.Signals(sig).name} after epoch {epochs}, checkpoint "
                                        f"written; continue with `trmrl train --resume {run}`"]
    assert 3 <= epochs < 40
    result = trmrl("train", "--resume", str(run), "--no-progress")
    assert result.returncode == 0, result.stderr
    config = load_config(json.loads((run / "config.json").read_text()))
    train(config, tmp_path / "uninterrupted")
    assert without_timing(read_metrics(run)) == without_timing(read_metrics(tmp_path / "uninterrupted"))


def test_a_config_file_under_the_flags_repeats_a_run_with_another_seed(tmp_path, capsys):
    """`--config RUN/config.json --seed 2`: the run's config with another seed (and its own run
    directory); a TOML or YAML file of a few fields sits over the preset it names and under the flags."""
    from trmrl.algos import read_run_config

    run = tmp_path / "run"
    small = ["--total-env-steps", "320", "--task.tasks-per-epoch", "8", "--eval.every-epochs", "0", "--eval.no-final",
             "--model.d-model", "16", "--torch-threads", "1", "--no-progress"]
    assert trmrl("train", "point-nav", *small, "--run-dir", str(run)).returncode == 0
    again = tmp_path / "again"
    result = trmrl("train", "--config", str(run / "config.json"), "--seed", "2", "--run-dir", str(again))
    assert result.returncode == 0, result.stderr
    first, second = (json.loads((d / "config.json").read_text()) for d in (run, again))
    assert second["seed"] == 2 and second["run_dir"] == str(again)
    assert {k: v for k, v in first.items() if k not in ("seed", "run_dir")} == \
           {k: v for k, v in second.items() if k not in ("seed", "run_dir")}

    (tmp_path / "mine.toml").write_text('preset = "cheetah-vel"\ntotal_env_steps = 4000\n[model]\nwindow = 3\n'
                                        'd_model = 16\nn_heads = 2\n[task]\ntasks_per_epoch = 2\n[ppo]\nminibatch_size = 64\n')
    (tmp_path / "mine.yaml").write_text("algo: rl2\nrl2:\n  hidden_size: 8\n")
    from trmrl.cli import _parse_config

    config = _parse_config(None, ["--config", str(tmp_path / "mine.toml"), "--model.window", "2"])
    assert (config.preset, config.total_env_steps, config.model.window, config.model.d_model) == ("cheetah-vel", 4000, 2, 16)
    assert config.model.n_layers == 4 and config.ppo.gamma == 0.9  # the rest: the cheetah-vel preset's
    config = _parse_config("point-nav", ["--config", str(tmp_path / "mine.yaml")])
    assert (config.algo, config.rl2.hidden_size, config.rl2.bptt_chunk) == ("rl2", 8, 40)  # point-nav's rl2 settings
    assert read_run_config(run).seed == 1

    (tmp_path / "bad.toml").write_text("[model]\nwindw = 3\n")
    (tmp_path / "broken.toml").write_text("[model\n")
    from trmrl.cli import main

    for args, fragment in ((["--config", str(tmp_path / "bad.toml")], "windw"),
                           (["--config", str(tmp_path / "broken.toml")], "not valid TOML"),
                           (["--config", str(tmp_path / "none.toml")], "No such file"),
                           (["--config", str(tmp_path / "mine.txt")], "a .toml, .yaml, .yml or .json file"),
                           (["--config"], "--config takes a value")):
        code = main(["train", *args])
        assert_one_error_line(subprocess.CompletedProcess(args, code, "", capsys.readouterr().err), fragment)


def test_the_config_is_in_tensorboards_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trmrl.train import train

    from conftest import tiny_config

    train(tiny_config(total_env_steps=80), tmp_path)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    assert content and any(b"model.window" in value for value in content.values())


def test_tracking_logs_the_same_keys_to_weights_and_biases_offline(tmp_path, monkeypatch):
    """--track (offline, as on a machine without a login): the run's keys, config and versions in
    W&B's own record of the run; a resume continues the same W&B run."""
    from trmrl.log import read_metrics
    from trmrl.train import train

    from conftest import tiny_config

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = tiny_config(total_env_steps=160, track=True)
    train(config, tmp_path / "run")
    (record,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    data = record.read_bytes()
    keys = {k for r in read_metrics(tmp_path / "run") for k in r if k != "epoch"}
    assert all(key.encode() in data for key in keys), [k for k in keys if k.encode() not in data]
    assert b"window" in data and b"torch" in data  # the config and the versions
    run_id = (tmp_path / "run" / "wandb-id").read_text().strip()
    def records() -> set[tuple[str, int, int]]:
        return {(str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in (tmp_path / "run" / "wandb").rglob("*.wandb")}

    before = records()
    train(config.replace(total_env_steps=240), tmp_path / "run", resume=True)
    assert records() - before  # the resume wrote a record
    assert (tmp_path / "run" / "wandb-id").read_text().strip() == run_id
    # the same run, continued: every start wrote under the run's id (one directory per start, named by its
    # second, so two starts within one second share one)
    starts = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert starts and all(d.name.endswith(f"-{run_id}") for d in starts), starts
