"""RL^2: the chunked-BPTT update path replays the sampling-time numbers, the hidden state spans
the episodes of a trial and resets at trial starts, and RL^2 meta-learns point-nav."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import memoryless_return, without_timing

from trmrl.algos.rl2 import RL2Policy, _ChunkStartRecorder, make_chunks
from trmrl.config import PPOConfig
from trmrl.nets.recurrent import RecurrentActorCritic, RL2Config
from trmrl.protocols import Starts
from trmrl.sampler import TrialSampler
from trmrl.seeding import Stream, task_streams
from trmrl.tasks import make_task_distribution


def model(cell="gru", obs_dim=4, act_dim=2, **changes):
    config = RL2Config(**{"cell": cell, "hidden_size": 8, "bptt_chunk": 4, "encoder_hidden": (8,), **changes})
    return RecurrentActorCritic(obs_dim, act_dim, config, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_chunked_replay_reproduces_step_by_step_acting(cell):
    """Trials of 2 episodes x 3 steps, 14 steps collected, chunks of 4: an inner episode boundary
    (after steps 2 and 8) and a trial start (steps 6 and 12) fall inside chunks of 4."""
    dist = make_task_distribution("point-nav")
    sampler = TrialSampler(dist, 3, episodes_per_trial=2, max_episode_steps=3)
    m = model(cell, sampler.obs_dim, sampler.act_dim)
    recorder = _ChunkStartRecorder(RL2Policy(m), chunk=4)
    tasks = dist.sample(np.random.default_rng(0), 3, "train")
    rollout = sampler.collect(recorder, tasks, *task_streams(1, Stream.TRAIN_ENVS, Stream.TRAIN_ACTIONS, 0, range(3)),
                              steps=14)
    chunks = make_chunks(rollout, recorder.states, 4, PPOConfig())
    # chunks cut at multiples of 4 and at trial starts: 0-3 | 4-5 | 6-7 | 8-11 | 12-13, for each env
    assert chunks.valid.sum(0).tolist() == [4, 2, 2, 4, 2] * 3
    actor, critic = m.split(chunks.initial)
    with torch.no_grad():
        mean, _ = m.actor_forward(chunks.inputs, actor)
        values, _ = m.critic_forward(chunks.inputs, critic)
        log_probs = m.distribution(mean, values).log_prob(chunks.actions)
    valid = chunks.valid
    assert torch.allclose(log_probs[valid], chunks.log_probs[valid], atol=1e-5)
    assert torch.allclose(values[valid], chunks.values[valid], atol=1e-5)
    assert torch.equal(chunks.log_probs[valid].sort().values, rollout.log_probs.flatten().sort().values)


def test_hidden_state_spans_episodes_and_resets_at_trial_starts():
    policy = RL2Policy(model())
    no = torch.tensor([False])
    first = [torch.randn(1, 4), torch.randn(1, 4)]
    later = torch.randn(1, 4)

    def act_after(first_input, starts):
        state = policy.initial_state(1)
        for x in (first_input, later):
            _, state = policy.act(x, state, Starts(no, no), None, deterministic=True)
        step, _ = policy.act(later, state, starts, None, deterministic=True)
        return step.actions

    inner_episode = Starts(episode=torch.tensor([True]), trial=no)
    new_trial = Starts(episode=torch.tensor([True]), trial=torch.tensor([True]))
    assert not torch.allclose(act_after(first[0], inner_episode), act_after(first[1], inner_episode))
    assert torch.equal(act_after(first[0], new_trial), act_after(first[1], new_trial))


def test_memoryless_ablation_forgets_every_step():
    policy = RL2Policy(model(bptt_chunk=1, reset_every_step=True))
    no = torch.tensor([False])
    state = policy.initial_state(1)
    _, state = policy.act(torch.randn(1, 4), state, Starts(no, no), None, deterministic=True)
    fresh, _ = policy.act(torch.ones(1, 4), policy.initial_state(1), Starts(no, no), None, deterministic=True)
    after, _ = policy.act(torch.ones(1, 4), state, Starts(no, no), None, deterministic=True)
    assert torch.equal(fresh.actions, after.actions)


def test_presets_pick_the_rl2_settings():
    from trmrl.errors import ConfigError
    from trmrl.presets import get_preset

    for name in ("point-nav", "cheetah-vel", "cheetah-dir", "ant-dir"):
        config = get_preset(name, "rl2")
        assert config.algo == "rl2" and config.task == get_preset(name).task  # same trials as TrMRL
    c = get_preset("cheetah-vel", "rl2")  # garage's RL2PPO HalfCheetahVel example
    assert (c.rl2.cell, c.rl2.hidden_size, c.rl2.init_std) == ("gru", 64, 1.0)
    assert (c.ppo.gamma, c.ppo.gae_lambda, c.ppo.clip_coef, c.ppo.policy_lr, c.ppo.ent_coef) == (0.99, 0.95, 0.2, 1e-3, 0.02)
    # garage's batch_size=32 counts whole padded trials: backpropagation through the whole trial,
    # and with 20 trials per epoch one minibatch of all of them
    assert c.rl2.bptt_chunk == c.task.steps_per_trial == 400 and c.ppo.minibatch_size == 20 * 400
    assert not c.ppo.norm_adv and c.rl2.baseline == "linear" and not c.ppo.bootstrap_truncation
    assert get_preset("point-nav", "rl2").rl2.baseline == "critic"  # the runs of docs/results.md
    with pytest.raises(ConfigError, match="unknown algorithm"):
        get_preset("point-nav", "nosuch")


def test_train_resume_and_eval_an_rl2_run_from_the_command_line(tmp_path):
    import json
    import subprocess
    import sys

    run = tmp_path / "rl2"
    small = ["--total-env-steps", "640", "--task.tasks-per-epoch", "8", "--eval.n-tasks", "4", "--eval.final-n-tasks",
             "4", "--rl2.hidden-size", "16", "--no-progress", "--torch-threads", "1"]
    cli = lambda *a: subprocess.run([sys.executable, "-m", "trmrl.cli", *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=300)
    result = cli("train", "point-nav", "--algo", "rl2", "--run-dir", str(run), *small)
    assert result.returncode == 0, result.stderr
    assert json.loads((run / "config.json").read_text())["rl2"]["bptt_chunk"] == 40  # the rl2 preset
    result = cli("train", "--resume", str(run), "--total-env-steps", "1280", "--no-progress")
    assert result.returncode == 0, result.stderr
    # the resumed run's numbers are those of one uninterrupted run of its config
    from trmrl.algos import load_config
    from trmrl.log import read_metrics
    from trmrl.train import train

    train(load_config(json.loads((run / "config.json").read_text())).replace(total_env_steps=1280),
          tmp_path / "uninterrupted")
    assert without_timing(read_metrics(run)) == without_timing(read_metrics(tmp_path / "uninterrupted"))
    result = cli("eval", str(run), "--n-tasks", "3", "--episodes", "2")
    assert result.returncode == 0 and "adaptation: 3 held-out tasks" in result.stdout, result.stderr
    result = cli("eval", str(run), "--attention")
    assert result.returncode == 2 and "TrMRL's attention" in result.stderr


def rl2_point_nav(tmp_path, steps: int, final_tasks: int = 50, final_episodes: int = 4, **rl2):
    """The point-nav rl2 preset (seed 1, one thread): its final meta-test summary and config."""
    from trmrl.presets import get_preset
    from trmrl.train import train

    config = get_preset("point-nav", "rl2").replace(
        seed=1, total_env_steps=steps, progress=False, torch_threads=1, rl2=rl2,
        eval={"every_epochs": 0, "final_n_tasks": final_tasks, "final_episodes": final_episodes})
    return train(config, tmp_path / f"rl2-{len(rl2)}"), config


def test_rl2_meta_learns_point_nav_in_a_short_run(tmp_path):
    """Beats the best agent without memory on the same held-out tasks, and does better in the
    trial's second episode than in its first: it uses what the first one showed."""
    # measured (seed 1, 300k steps, 20 tasks x 2 episodes): -12.79 / -10.01 per episode, the best
    # constant action -14.00, random -20.66; the reset-every-step ablation scores about the
    # constant action (-14.26 at 100k steps on 50 tasks) with equal episodes
    summary, config = rl2_point_nav(tmp_path, 300_000, final_tasks=20, final_episodes=2)
    first, second = summary["return_per_episode"]
    floor = memoryless_return(config)
    assert np.mean([first, second]) > floor + 1.5, (first, second, floor)
    assert second > first + 1.0, (first, second)


@pytest.mark.slow
def test_rl2_beats_its_memoryless_ablation(tmp_path):
    # measured: 400k steps RL^2 -8.05, reset every step -13.78, random -20.44 (same 50 held-out tasks)
    rl2, _ = rl2_point_nav(tmp_path, 400_000)
    reset, _ = rl2_point_nav(tmp_path, 400_000, reset_every_step=True, bptt_chunk=1)
    rl2, reset, random = (np.mean(s[key]) for s, key in ((rl2, "return_per_episode"), (reset, "return_per_episode"),
                                                        (rl2, "random_return_per_episode")))
    assert rl2 > reset + 3 and reset > random, (rl2, reset, random)


def optimizer_steps(algorithm, tasks) -> dict[str, int]:
    """Adam steps of each phase in one train_iteration."""
    steps = {"policy": 0, "value": 0}
    for phase in steps:
        optimizer = getattr(algorithm.optimizers, phase)

        def counting(*args, _step=optimizer.step, _phase=phase, **kwargs):
            steps[_phase] += 1
            return _step(*args, **kwargs)

        optimizer.step = counting
    algorithm.train_iteration(tasks, 0)
    return steps


def test_the_garage_schedule_takes_ten_adam_steps_per_phase_over_whole_trials():
    """RL^2 on a MuJoCo preset: update_epochs x one minibatch of whole trials, each chunk a trial;
    no value steps over garage's linear baseline, as many as policy steps with the critic."""
    from trmrl.algos import make_algorithm
    from trmrl.presets import get_preset
    from trmrl.seeding import Stream, numpy_rng
    from trmrl.tasks import make_task_distribution

    config = get_preset("cheetah-vel", "rl2").replace(task={"tasks_per_epoch": 2, "max_episode_steps": 20},
                                                      ppo={"minibatch_size": 2 * 40}, rl2={"bptt_chunk": 40},
                                                      torch_threads=1)
    dist = make_task_distribution("cheetah-vel")
    tasks = dist.sample(numpy_rng(1, Stream.TRAIN_TASKS, 0), 2, "train")
    algorithm = make_algorithm(config, dist)
    assert optimizer_steps(algorithm, tasks) == {"policy": 10, "value": 0} and algorithm.steps_per_epoch == 10
    critic = make_algorithm(config.replace(rl2={"baseline": "critic"}), dist)
    assert optimizer_steps(critic, tasks) == {"policy": 10, "value": 10}


def test_without_carrying_the_previous_episode_a_new_episode_starts_from_zeros_for_a_and_r():
    """rl2.carry_previous_episode False (garage's RL2Env): at a new episode of a trial the agent sees
    zeros for the previous action and reward, so what they were cannot change its step; with the
    default it can. The hidden state carries the trial either way."""
    from trmrl.nets.recurrent import RecurrentActorCritic
    from trmrl.protocols import Starts

    from trmrl.algos.rl2 import RL2Policy

    obs_dim, act_dim = 3, 2
    for carry in (True, False):
        model = RecurrentActorCritic(obs_dim + act_dim + 2, act_dim, RL2Config(hidden_size=8, carry_previous_episode=carry),
                                     torch.Generator().manual_seed(0))
        policy = RL2Policy(model)
        state = policy.initial_state(2)
        first = torch.randn(2, obs_dim + act_dim + 2)
        _, state = policy.act(first, state, Starts(torch.tensor([True, True]), torch.tensor([True, True])), None, True)
        new_episode = torch.randn(1, obs_dim + act_dim + 2).repeat(2, 1)
        new_episode[1, obs_dim : obs_dim + act_dim + 1] += 1.0  # another last action and reward, nothing else
        same_state = tuple(s[:, :1].repeat(1, 2, 1) for s in state)  # both envs from env 0's hidden state
        step, _ = policy.act(new_episode, same_state, Starts(torch.tensor([True, True]), torch.tensor([False, False])),
                             None, True)
        assert torch.allclose(step.actions[0], step.actions[1]) == (not carry)
    from trmrl.presets import get_preset

    assert not get_preset("cheetah-vel", "rl2").rl2.carry_previous_episode
    assert get_preset("point-nav", "rl2").rl2.carry_previous_episode  # the runs of docs/results.md


def test_the_linear_baseline_predicts_from_the_last_fit_and_refits_on_whole_trial_returns():
    """rl2.baseline linear (garage's RL^2): values from the previous epoch's coefficients (0 at the
    first), then a ridge fit of this epoch's discounted returns, which run over the whole trial
    (across its inner episode boundary) and stop at the trial's end: with the return in the
    input, the fit reproduces it, and the next epoch's values are those returns."""
    from trmrl.algos.rl2 import linear_baseline
    from trmrl.sampler import Rollout

    T, B, gamma = 6, 2, 0.9
    t = torch.arange(T)[:, None].expand(T, B) % 3  # trials of 3 steps: 0 1 2 0 1 2
    start = t == 0
    episode_start = start | (t == 2)  # an inner episode boundary inside each trial
    expected = torch.tensor([1 + gamma + gamma**2, 1 + gamma, 1.0]).repeat(2)[:, None].expand(T, B)  # rewards of 1
    obs = torch.cat([expected[..., None], torch.zeros(T, B, 2)], dim=-1)
    flags = torch.zeros(T, B, dtype=torch.bool)
    rollout = Rollout(obs=obs, actions=torch.zeros(T, B, 1), log_probs=torch.zeros(T, B),
                      values=torch.full((T, B), 99.0), rewards=torch.ones(T, B), episode_start=episode_start,
                      trial_start=start, episode_end=torch.roll(episode_start, -1, 0), terminated=flags,
                      trial_end=t == 2, bootstrap_values=torch.full((T, B), 99.0), cut_values=torch.full((B,), 99.0))
    first, coefficients = linear_baseline(rollout, None, gamma)
    assert torch.equal(first.values, torch.zeros(T, B)) and torch.equal(first.cut_values, torch.zeros(B))
    assert torch.equal(first.bootstrap_values, torch.zeros(T, B))
    second, again = linear_baseline(rollout, coefficients, gamma)
    torch.testing.assert_close(second.values, expected, atol=1e-3, rtol=0)
    torch.testing.assert_close(again, coefficients)
    # from t alone (the input blank): the step of the trial tells the three returns apart (up to
    # the ridge's pull on the small t features); the step of the episode would not (steps 0 and 2
    # both start an episode)
    blank = dataclasses.replace(rollout, obs=torch.zeros(T, B, 3))
    _, from_t = linear_baseline(blank, None, gamma)
    torch.testing.assert_close(linear_baseline(blank, from_t, gamma)[0].values, expected, atol=0.05, rtol=0)
    # a trial still running when the rollout stops (a 7th step starts a third trial): left out of
    # the fit, its last step bootstraps from the previous fit at the next observation, step 1
    longer = Rollout(**{f.name: torch.cat([getattr(rollout, f.name), getattr(rollout, f.name)[:1]])
                        for f in dataclasses.fields(Rollout) if getattr(rollout, f.name) is not None
                        and f.name != "cut_values"}, cut_values=torch.zeros(B))
    longer = dataclasses.replace(longer, trial_end=torch.cat([rollout.trial_end, torch.zeros(1, B, dtype=torch.bool)]),
                                 episode_end=torch.cat([rollout.episode_end, torch.zeros(1, B, dtype=torch.bool)]),
                                 next_obs=torch.randn(T + 1, B, 3))
    _, with_running = linear_baseline(longer, None, gamma)
    longer.rewards[-1] = 1000.0
    out, unmoved = linear_baseline(longer, coefficients, gamma)
    torch.testing.assert_close(linear_baseline(longer, None, gamma)[1], with_running)
    torch.testing.assert_close(with_running, coefficients)
    features = torch.cat([longer.next_obs[-1].clamp(-10, 10), longer.next_obs[-1].clamp(-10, 10) ** 2,
                          torch.full((B, 1), 0.01), torch.full((B, 1), 1e-4), torch.full((B, 1), 1e-6), torch.ones(B, 1)], 1)
    torch.testing.assert_close(out.cut_values, (features.double() @ coefficients).float())
    assert coefficients.dtype == torch.float64 and coefficients.shape == (2 * 3 + 4,)


def test_with_the_linear_baseline_the_critic_is_not_trained_and_a_resume_keeps_the_fit(tmp_path):
    """Only the policy phase steps; the coefficients travel in the checkpoint, so a resumed run
    is the uninterrupted one; the option is refused with a bootstrapped time limit."""
    from trmrl.algos import make_algorithm
    from trmrl.errors import ConfigError
    from trmrl.log import read_metrics
    from trmrl.presets import get_preset
    from trmrl.seeding import numpy_rng
    from trmrl.train import train

    config = get_preset("cheetah-vel", "rl2").replace(
        task={"tasks_per_epoch": 2, "max_episode_steps": 20}, ppo={"minibatch_size": 80}, rl2={"bptt_chunk": 40,
        "baseline": "linear"}, torch_threads=1, eval={"every_epochs": 0, "final": False}, total_env_steps=240)
    dist = make_task_distribution("cheetah-vel")
    algorithm = make_algorithm(config, dist)
    critic = [p.clone() for p in algorithm.model.value_parameters()]
    algorithm.train_iteration(dist.sample(numpy_rng(1, Stream.TRAIN_TASKS, 0), 2, "train"), 0)
    assert all(torch.equal(a, b) for a, b in zip(critic, algorithm.model.value_parameters()))
    assert algorithm.baseline is not None and "baseline" in algorithm.state_dict()
    train(config.replace(total_env_steps=160), tmp_path / "run")
    train(config, tmp_path / "run", resume=True)
    train(config, tmp_path / "uninterrupted")
    records = without_timing(read_metrics(tmp_path / "run"))
    assert records == without_timing(read_metrics(tmp_path / "uninterrupted"))
    with pytest.raises(ConfigError, match="no-bootstrap-truncation"):
        config.replace(ppo={"bootstrap_truncation": True})
    with pytest.raises(ConfigError, match="gae-across-episodes"):
        config.replace(ppo={"gae_across_episodes": False})
