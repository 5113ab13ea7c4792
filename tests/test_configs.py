"""Every shipped flagfile parses into a config the trainer accepts, as users run them:
from the repository root, by relative path. A typo in a config, or an experiment that
names a missing variant, would otherwise first show up hours into a run."""

import pathlib

import pytest
from absl import flags

from gali_tf import model
from trainers import experiment

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAINER_CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in REPO.glob("configs/*.flags"))
EXPERIMENT_CONFIGS = sorted(
    p.relative_to(REPO).as_posix() for p in REPO.glob("configs/experiments/*.flags"))


def _config(trainer_flags, *args):
    trainer = trainer_flags(list(args))
    config = trainer.config_from_flags()
    # GALI-PT's M is a file the user trains first (README): its presence is not the
    # config's business; every other option is checked as training checks it.
    model.check_model_config(config.model, has_feature_model=True)
    return config


@pytest.mark.parametrize("path", TRAINER_CONFIGS)
def test_trainer_config_parses_and_validates(path, trainer_flags, monkeypatch):
    monkeypatch.chdir(REPO)
    config = _config(trainer_flags, f"--flagfile={path}")
    assert config.model_dir.startswith("runs/"), config.model_dir


def test_trainer_configs_write_to_runs_of_their_own(trainer_flags, monkeypatch):
    monkeypatch.chdir(REPO)
    model_dirs = {}
    for path in TRAINER_CONFIGS:
        model_dirs.setdefault(_config(trainer_flags, f"--flagfile={path}").model_dir,
                              []).append(path)
    shared = {d: paths for d, paths in model_dirs.items() if len(paths) > 1}
    assert not shared, shared


def _experiment_args(path):
    """The experiment flagfile's flags as {name: value} (absl expands the file)."""
    expanded = flags.FlagValues().read_flags_from_files(["experiment", f"--flagfile={path}"],
                                                        force_gnu=True)[1:]
    return dict(arg[2:].partition("=")[::2] for arg in expanded)


@pytest.mark.parametrize("path", EXPERIMENT_CONFIGS)
def test_experiment_config_names_variants_the_trainer_accepts(path, trainer_flags,
                                                              monkeypatch):
    monkeypatch.chdir(REPO)
    args = _experiment_args(path)
    variants = experiment.parse_variants(args["variants"].split(","))
    train_flags = [f for f in args.get("train_flags", "").split(",") if f]
    # OUT/... values (e.g. --feature_model=OUT/classifier) are put in --out, as the
    # experiment does before it starts the trainer.
    resolved = [experiment.in_out(f, args["out"]) for f in train_flags]
    for _, flagfile in variants:
        _config(trainer_flags, f"--flagfile={flagfile}", *resolved)
    assert args.get("classifier", "") in ("", *experiment.classifier.DATASETS)
    assert int(args["seeds"]) >= 1 and int(args.get("eval_points", 1)) >= 1
