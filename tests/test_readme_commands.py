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
        "--jit_compile=false", "--mixed_precision=float32",
        "--image_every=0", "--checkpoint_every=2"]


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


def test_tools_keep_tensorflow_start_up_lines_off_the_screen(tmp_path):
    """A bad command prints its one error line and nothing else: not the screenful of
    C++ log lines `import tensorflow` writes; TF_CPP_MIN_LOG_LEVEL=0 brings them back."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    for module in ("trainers.evaluate", "export.main"):
        done = subprocess.run([sys.executable, "-m", module], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2
        assert done.stderr.startswith("error: --model_dir is required"), done.stderr[-2000:]
        assert len(done.stderr.splitlines()) == 1, done.stderr[-2000:]
    loud = subprocess.run([sys.executable, "-m", "trainers.evaluate"], cwd=tmp_path,
                          env=dict(env, TF_CPP_MIN_LOG_LEVEL="0"), capture_output=True,
                          text=True, timeout=300)
    assert "absl::InitializeLog" in loud.stderr and loud.returncode == 2


def test_the_start_up_filter_keeps_everything_but_tensorflow_log_lines():
    from trainers import startup
    text = ("WARNING: All log messages before absl::InitializeLog() is called are written "
            "to STDERR\n"
            "I0000 00:00:1796226498.031750   13842 port.cc:153] oneDNN custom operations\n"
            "E0000 00:00:1796226509.251038   13910 cuda_platform.cc:52] failed call to cuInit\n"
            "To enable the following instructions: AVX2 FMA, in other operations, rebuild\n"
            "/x.py:3: DeprecationWarning: something the user should see\n"
            "ImportError: libcudnn.so.9: cannot open shared object file\n")
    assert startup.without_start_up_lines(text) == (
        "/x.py:3: DeprecationWarning: something the user should see\n"
        "ImportError: libcudnn.so.9: cannot open shared object file\n")
