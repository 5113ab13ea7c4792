"""The README's commands as users type them: from the repository root, relative paths,
the default --model_dir, one after another (train, run again to resume, export,
evaluate).

The working directory is a temporary copy of the root's layout (configs/ linked), so
the runs land in its runs/ and hub/ instead of the repository's. Each command is
checked to appear in README.md verbatim and is run with tiny-size flags appended
(later flags override earlier ones, as the README says).
"""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--image_size=8", "--width=4", "--latent_dim=3", "--batch_size=50", "--verbose=0",
        "--jit_compile=false", "--image_every=0", "--checkpoint_every=2"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    directory = tmp_path_factory.mktemp("checkout")
    os.symlink(os.path.join(REPO, "configs"), directory / "configs")
    return directory


def _readme_command(command: str) -> list:
    with open(os.path.join(REPO, "README.md")) as f:
        assert command in f.read(), f"README.md no longer shows {command!r}"
    return [sys.executable, *command.split()[1:]]


def _run(root, command: str, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run([*_readme_command(command), *extra], cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_default_run_trains_then_resumes_when_run_again(root):
    first = _run(root, "python -m trainers.main", *TINY, "--steps=2")
    assert "runs/digits_gali4: step 2" in first.stdout
    again = _run(root, "python -m trainers.main", *TINY, "--steps=4", "--verbose=1")
    assert "runs/digits_gali4: resuming from ckpt-2 (step 2)" in again.stdout
    assert "runs/digits_gali4: step 4" in again.stdout
    assert (root / "runs" / "digits_gali4" / "checkpoints" / "ckpt-4.index").exists()


def test_export_and_evaluate_the_default_run_by_its_relative_path(root):
    exported = _run(root, "python -m export.main --model_dir=runs/digits_gali4 "
                          "--export_dir=hub/digits_gali4")
    assert "hub/digits_gali4/4" in exported.stdout
    assert (root / "hub" / "digits_gali4" / "4" / "encoder" / "saved_model.pb").exists()
    evaluated = _run(root, "python -m trainers.evaluate --model_dir=runs/digits_gali4",
                     "--metrics=reconstruction")
    assert "pixel" in evaluated.stdout.lower()
    assert list((root / "runs" / "digits_gali4" / "eval").glob("4.json"))


def test_a_config_of_the_readme_trains_into_its_own_run(root):
    done = _run(root, "python -m trainers.main --flagfile=configs/digits_ali.flags", *TINY,
                "--steps=2")
    assert "runs/digits_ali: step 2" in done.stdout
