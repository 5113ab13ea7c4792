"""The evaluation suite on real (tiny) runs, trainers.evaluate and trainers.experiment."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from gali_tf import classifier, data, features, networks, training
from gali_tf.evaluation import suite
from gali_tf.evaluation.svm import SVMConfig
from gali_tf.features import FeatureConfig
from gali_tf.errors import ConfigError
from gali_tf.model import ModelConfig
from trainers import experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(model_dir, dataset, tuples, **network):
    training.train(training.TrainConfig(
        model_dir=str(model_dir),
        data=data.DataConfig(dataset=dataset, image_size=8 if dataset == "digits" else None),
        network=networks.NetworkConfig(**network),
        model=ModelConfig(tuples=tuples, instance_noise=0.0), batch_size=50, steps=2,
        verbose=0, jit_compile=False, image_every=0, checkpoint_every=2))
    return str(model_dir)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("digits"), "digits", "gali4_mask",
                  arch="small", latent_dim=3, width=4)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("toy"), "toy25", "ali", arch="mlp", latent_dim=2,
                  mlp_hidden=8)


@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
    export_dir = str(tmp_path_factory.mktemp("classifier") / "export")
    classifier.train_classifier(classifier.ClassifierConfig(
        data=data.DataConfig(dataset="digits", image_size=8), export_dir=export_dir,
        epochs=1, batch_size=100, width=4, feature_dim=8, verbose=0))
    return export_dir


def _m(path, prefix="feature"):
    return FeatureConfig(path, "features", flag_prefix=prefix)


def test_digits_report_has_every_image_metric(digits_run, digits_classifier, tmp_path):
    config = suite.EvalConfig(feature=_m(digits_classifier), fid_samples=200,
                              fid_cache_dir=str(tmp_path / "fid_cache"),
                              svm=SVMConfig(per_class=20, draws=2, validation_size=100),
                              num_pictures=16)
    report = suite.evaluate_run(digits_run, config)
    assert report.step == 2 and report.dataset == "digits"
    assert set(report.metrics) == {"pixel_mse", "feature_mse", "svm_error", "fid", "kid",
                                   "inpaint_pixel_mse", "inpaint_feature_mse",
                                   "mean_image_mse", "class_mean_image_mse",
                                   "class_agreement", "latent_snr"}
    assert 0.0 < report.metrics["pixel_mse"]["mean"] < 1.0
    # The baselines: the class mean image is closer to x than the mean image (it knows
    # the class), and both ignore the code.
    baseline = report.metrics["mean_image_mse"]["mean"]
    assert 0.0 < report.metrics["class_mean_image_mse"]["mean"] < baseline < 1.0
    # Class agreement with the classifier's accuracy on x next to it (the fixture's
    # classifier is barely trained: the values are checked by hand in test_evaluation).
    agreement = report.metrics["class_agreement"]
    assert agreement["n"] == data.DIGITS_NUM_TEST and 0.0 <= agreement["mean"] <= 1.0
    assert f"{agreement['classifier_accuracy']:.4f}" in agreement["what"]
    assert report.metrics["latent_snr"]["latent_dim"] == 3
    assert report.metrics["pixel_mse"]["n"] == data.DIGITS_NUM_TEST
    assert 0.0 <= report.metrics["svm_error"]["mean"] <= 1.0
    assert report.metrics["svm_error"]["draws"] == 2
    assert report.metrics["svm_error"]["distinct_draws"] == 2 and "std" in report.metrics["svm_error"]
    # FID: 200 samples against the whole test split, its features cached.
    assert report.metrics["fid"]["n"] == 200
    assert report.metrics["fid"]["num_real"] == data.DIGITS_NUM_TEST
    assert report.metrics["fid"]["reference_cache"].startswith(
        f"computed, cached in {tmp_path / 'fid_cache'}")
    assert digits_classifier in report.metrics["fid"]["network"]
    # Every metric on the classifier names its weights, so tables can tell a retrained one.
    fingerprints = {report.metrics[m]["network_fingerprint"] for m in (
        "feature_mse", "class_agreement", "fid", "kid", "inpaint_feature_mse")}
    assert fingerprints == {features.weights_fingerprint(digits_classifier)}
    assert any("not the papers' FID Inception" in note for note in report.notes)
    assert report.metrics["fid"]["papers_fid"] is False
    assert set(report.pictures) == {"samples", "reconstructions", "interpolations"}

    json_path, markdown_path = suite.write_report(report)
    assert json_path == os.path.join(digits_run, "eval", "2.json")
    with open(json_path) as f:
        saved = json.load(f)
    assert saved["metrics"]["fid"]["mean"] == pytest.approx(report.metrics["fid"]["mean"])
    for path in saved["pictures"].values():
        assert os.path.getsize(os.path.join(digits_run, "eval", path)) > 100
    with open(markdown_path) as f:
        markdown = f.read()
    assert "| svm_error |" in markdown and "![interpolations](2/interpolations.png)" in markdown
    assert any(name.startswith("events.out.tfevents")
               for name in os.listdir(os.path.join(digits_run, "eval")))
    assert not [n for n in os.listdir(os.path.join(digits_run, "eval")) if n.endswith(".tmp")]


def test_fid_network_defaults_to_the_feature_model(digits_run, digits_classifier):
    report = suite.evaluate_run(digits_run, suite.EvalConfig(
        metrics=("fid",), fid=_m(digits_classifier, "fid"), fid_samples=100,
        fid_cache_dir=""))
    assert set(report.metrics) == {"fid", "kid"}
    assert "--fid_model=" in report.metrics["fid"]["network"]
    assert report.metrics["kid"]["network"] == report.metrics["fid"]["network"]


def test_toy_report_counts_modes_and_draws_the_scatter(toy_run):
    report = suite.evaluate_run(toy_run, suite.EvalConfig(mode_samples=2000))
    assert set(report.metrics) == {"point_mse", "modes_covered", "within_3std"}
    assert 1 <= report.metrics["modes_covered"]["mean"] <= 25
    assert sum(report.metrics["modes_covered"]["counts"]) == 2000
    assert set(report.pictures) == {"scatter"}


@pytest.mark.parametrize("metrics, expected", [
    (("svm",), "--metrics=svm: --dataset=toy25 has no class labels"),
    (("fid",), "--metrics=fid: toy data are 2-d points"),
    (("inpainting",), "--metrics=inpainting: --tuples=ali has no masked encoder inputs"),
    (("bleu",), "--metrics=bleu: unknown bleu"),
])
def test_metrics_that_do_not_apply_are_one_line_errors(toy_run, metrics, expected):
    with pytest.raises(ConfigError) as info:
        suite.evaluate_run(toy_run, suite.EvalConfig(metrics=metrics))
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_modes_need_the_toy_and_fid_needs_a_network(digits_run):
    for metrics, expected in ((("modes",), "--metrics=modes: mode coverage needs"),
                              (("fid",), "--metrics=fid: no FID network: give --fid_model")):
        with pytest.raises(ConfigError, match=expected):
            suite.evaluate_run(digits_run, suite.EvalConfig(metrics=metrics))


def test_evaluate_tool_bad_fid_model_is_one_line_and_writes_nothing(digits_run, tmp_path):
    before = sorted(os.listdir(digits_run))
    done = subprocess.run(
        [sys.executable, "-m", "trainers.evaluate", f"--model_dir={digits_run}",
         "--metrics=fid", f"--fid_model={tmp_path}/missing"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --fid_model={tmp_path}/missing"), last
    assert sorted(os.listdir(digits_run)) == before


def test_parse_variants_checks_names_and_files(tmp_path):
    flagfile = tmp_path / "a.flags"
    flagfile.write_text("--tuples=ali\n")
    assert experiment.parse_variants([f"A:{flagfile}"]) == [("A", str(flagfile))]
    for items, expected in (([f"{flagfile}"], "expected NAME:FLAGFILE"),
                            ([f"A:{tmp_path}/none.flags"], "no flagfile"),
                            ([f"A:{flagfile}", f"A:{flagfile}"], "names repeat"),
                            ([], "at least one")):
        with pytest.raises(experiment.ExperimentError, match=expected):
            experiment.parse_variants(items)


def test_experiment_tool_trains_evaluates_and_tabulates(tmp_path):
    config = tmp_path / "toy.flags"
    config.write_text(
        "--variants=ALI:configs/toy25_ali.flags\n--seeds=1\n--steps=4\n--eval_points=2\n"
        "--train_flags=--verbose=2,--mlp_hidden=8,--jit_compile=false,--mixed_precision=float32\n"
        "--metrics=modes\n--eval_flags=--mode_samples=500\n--title=tiny toy\n")
    out, results = tmp_path / "out", tmp_path / "results"
    command = [sys.executable, "-m", "trainers.experiment", f"--config={config}", f"--out={out}",
               f"--results={results}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # The children's progress reaches the experiment's screen.
    assert "  ALI seed 0 training: step 4/4 [====================] 100% " in done.stdout
    assert "  ALI seed 0 evaluation at step 4: [1/1] modes: " in done.stdout
    table = (results / "table.md").read_text()
    assert "## tiny toy" in table and f"--config={config}" in table
    assert "| ALI | 1 |" in table and "modes covered (of 25)" in table
    assert "final step 4; 2 evaluated points" in table
    with open(results / "table.json") as f:
        result = json.load(f)
    run = out / "ALI" / "seed_0"
    # A learning curve: the run kept a checkpoint at each point and was evaluated there.
    reports = [json.loads((run / "eval" / f"{step}.json").read_text()) for step in (2, 4)]
    assert [r["step"] for r in reports] == [2, 4]
    assert result["table"]["ALI"]["modes_covered"]["values"] == \
        [reports[-1]["metrics"]["modes_covered"]["mean"]]
    kept = json.loads((results / "metrics" / "ALI_seed_0.json").read_text())
    assert [p["step"] for p in kept["points"]] == [2, 4]
    assert kept["points"][0]["metrics"]["modes_covered"]["mean"] == \
        reports[0]["metrics"]["modes_covered"]["mean"]
    assert kept["seed"] == 0 and kept["train_seconds"] > 0 and kept["commit"]
    assert kept["train_commit"] == kept["commit"]   # trained and evaluated by this code
    assert json.loads((run / "times.json").read_text())["eval_commit"] == kept["commit"]
    assert "--model_dir=OUT/ALI/seed_0" in kept["train_command"]
    assert str(out) not in json.dumps(kept)   # commands and notes name OUT, not this machine
    assert "--seed=0" in (run / "train.log").read_text().splitlines()[0]
    assert (results / "curves.png").read_bytes()[:4] == b"\x89PNG"

    # The table is made again from the metrics files alone (the runs may be gone).
    shutil.rmtree(out)
    (results / "table.md").unlink()
    again = subprocess.run([*command[:-2], f"--results={results}", "--report_only"],
                           cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "| ALI | 1 |" in (results / "table.md").read_text()

    # Nor is it trained again on a machine without its run directory: the table grows
    # across sessions from the committed metrics files.
    kept_again = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                timeout=600)
    assert kept_again.returncode == 0, kept_again.stderr[-3000:]
    assert "ALI seed 0: kept from" in kept_again.stdout
    assert not (out / "ALI" / "seed_0" / "train.log").exists()
    assert json.loads((results / "metrics" / "ALI_seed_0.json").read_text()) == kept

    # A results folder that grew across sessions: a seed beyond --seeds and a run of
    # another budget stay out of the table, and the table says so.
    for seed, final in ((3, 4), (0, 4)):
        other = dict(kept, seed=seed, variant="ALI" if seed else "GALI-4")
        other["points"] = [dict(kept["points"][-1], step=final + (0 if seed else 96))]
        (results / "metrics" / f"{other['variant']}_seed_{seed}.json").write_text(
            json.dumps(other))
    grown = subprocess.run([*command[:-2], f"--results={results}", "--report_only",
                            "--variants=ALI:configs/toy25_ali.flags,"
                            "GALI-4:configs/toy25_gali4.flags"],
                           cwd=REPO, capture_output=True, text=True, timeout=600)
    assert grown.returncode == 0, grown.stderr[-3000:]
    table = (results / "table.md").read_text()
    assert "| ALI | 1 |" in table and "| GALI-4 |" not in table
    assert ("Left out of this table: ALI seed 3 (not among the seeds 0); GALI-4 seed 0 "
            "(final step 100, not the budget's 4).") in table

    # A second table of other variants from the same metrics files (GALI-PT against the
    # table's GALI-4 runs) has files of its own name: the first table stays.
    other = subprocess.run([*command[:-2], f"--results={results}", "--report_only",
                            "--table=ali_only", "--title=ALI alone"],
                           cwd=REPO, capture_output=True, text=True, timeout=600)
    assert other.returncode == 0, other.stderr[-3000:]
    assert "## ALI alone" in (results / "ali_only.md").read_text()
    assert "ALI" in json.loads((results / "ali_only.json").read_text())["table"]
    assert (results / "ali_only_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (results / "table.md").read_text() == table


def test_train_and_eval_flags_name_the_experiment_s_own_files_as_out():
    # e.g. GALI-PT's M is the classifier the experiment trains into OUT/classifier.
    assert experiment.in_out("--feature_model=OUT/classifier", "/runs/x/") == \
        "--feature_model=/runs/x/classifier"
    assert experiment.in_out("--init_from=OUT", "/runs/x") == "--init_from=/runs/x"
    for unchanged in ("--feature_model=OUTSIDE/m", "--feature_model=runs/OUT/m",
                      "--verbose=2", "--nojit_compile"):
        assert experiment.in_out(unchanged, "/runs/x") == unchanged


def test_first_seed_leaves_the_lower_seeds_to_another_process():
    assert list(experiment.seeds_this_invocation(0, 3)) == [0, 1, 2]
    assert list(experiment.seeds_this_invocation(2, 3)) == [2]
    for first, seeds, expected in ((0, 0, "--seeds=0: expected at least 1"),
                                   (3, 3, "--first_seed=3: expected 0..2"),
                                   (-1, 3, "--first_seed=-1: expected 0..2")):
        with pytest.raises(experiment.ExperimentError, match=expected):
            experiment.seeds_this_invocation(first, seeds)


def test_a_table_name_is_a_file_name_and_the_default_keeps_curves_png(tmp_path):
    assert experiment.table_files(str(tmp_path), "table") == (
        str(tmp_path / "table"), str(tmp_path / "curves.png"))
    assert experiment.table_files(str(tmp_path), "gali_pt") == (
        str(tmp_path / "gali_pt"), str(tmp_path / "gali_pt_curves.png"))
    for bad in ("", "a/b", "..", ".hidden", "a b"):
        with pytest.raises(experiment.ExperimentError, match="expected a file name"):
            experiment.table_files(str(tmp_path), bad)


def test_curve_points_drop_pictures_and_skip_a_point_with_nothing_to_compute():
    args = ["--metrics=reconstruction,pictures", "--svm_draws=10"]
    assert experiment.point_metrics(args, final=True) == args
    assert experiment.point_metrics(args, final=False) == ["--metrics=reconstruction",
                                                           "--svm_draws=10"]
    assert experiment.point_metrics(["--metrics=pictures"], final=False) is None
    assert experiment.point_metrics(["--svm_draws=10"], final=False) == ["--svm_draws=10"]


def test_a_report_without_the_asked_metrics_is_not_reused(tmp_path):
    # A pictures-only evaluation of the final checkpoint, made by hand, once left a
    # table's final point empty: the experiment took it for its own.
    report = tmp_path / "6000.json"
    report.write_text(json.dumps({"metrics": {}, "seconds_per_metric": {"pictures": 1.0}}))
    assert not experiment._report_has_metrics(str(report), ["--metrics=reconstruction,pictures"])
    assert experiment._report_has_metrics(str(report), ["--metrics=pictures", "--svm_draws=3"])
    assert experiment._report_has_metrics(str(report), ["--svm_draws=3"])  # all that apply
    report.write_text("{not json")
    assert not experiment._report_has_metrics(str(report), ["--metrics=pictures"])


def test_a_curve_point_without_its_checkpoint_is_skipped_with_a_note(tmp_path, capsys):
    # A run trained before --eval_points kept fewer checkpoints: its table point stays.
    report, seconds, command = experiment._evaluate_at(
        "ALI", 0, str(tmp_path), 3, ["--metrics=modes"], final=False)
    assert (report, seconds, command) == (None, 0.0, [])
    assert ("note: ALI seed 0: no point at step 3 on its curve: checkpoint ckpt-3 cannot be "
            "used: its .index file is missing") in capsys.readouterr().out
    assert os.listdir(tmp_path) == []


def test_the_recorded_command_line_quotes_what_the_shell_would_split(monkeypatch):
    monkeypatch.setattr(experiment, "_ARGV", ["experiment.py", "--title=ALI vs GALI-4",
                                              "--seeds=3"])
    assert experiment.command_line() == \
        "python -m trainers.experiment '--title=ALI vs GALI-4' --seeds=3"


def test_a_failed_step_of_an_experiment_is_one_line(tmp_path):
    failing = [sys.executable, "-c", "print('noise'); print('error: --tuples=x: bad'); exit(2)"]
    with pytest.raises(experiment.ExperimentError) as info:
        experiment._run(failing, str(tmp_path / "log"), "X seed 0 training")
    assert str(info.value) == "X seed 0 training failed (exit 2): error: --tuples=x: bad"
    assert "noise" in (tmp_path / "log").read_text()


def test_evaluate_defaults_are_the_library_defaults():
    """trainers.evaluate with no flag but --model_dir builds EvalConfig's defaults (its
    flags clash with the trainer's, so it parses them in a process of its own)."""
    script = (
        "import dataclasses\n"
        "from absl import flags\n"
        "from gali_tf.evaluation import suite\n"
        "from gali_tf.features import FeatureConfig\n"
        "from trainers import evaluate\n"
        "evaluate.define_flags()\n"
        "flags.FLAGS(['evaluate', '--model_dir=RUN'])\n"
        "library = dataclasses.replace(suite.EvalConfig(),\n"
        "                              fid=FeatureConfig(flag_prefix='fid'))\n"
        "print(evaluate.config_from_flags() == library)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "True"


def test_svm_draws_of_one_labelled_set_are_reported_without_a_spread(digits_run):
    # The papers' protocol on 1,500 digits: the 10,000-example validation set leaves 100
    # examples per class, exactly the labelled set, so every draw is the same.
    config = suite.EvalConfig(metrics=("svm",), svm=SVMConfig(per_class=100, draws=3))
    lines = []
    report = suite.evaluate_run(digits_run, config, progress=lines.append)
    # A long protocol shows its progress: each metric and each draw.
    assert lines[0] == "[1/1] svm ..." and lines[-1].startswith("[1/1] svm: ")
    # The split allows one labelled set: it is drawn once, and the report says why.
    assert [line.split(":")[0] for line in lines[1:-1]] == ["  svm draw 1/1"]
    entry = report.metrics["svm_error"]
    assert entry["draws"] == 1 and entry["distinct_draws"] == 1 and "std" not in entry
    assert "no spread" in entry["what"]
    assert any("one draw, not the 3 asked" in note for note in report.notes)
    # A single draw has no spread either, and its report is written like any other.
    one = suite.evaluate_run(digits_run, suite.EvalConfig(
        metrics=("svm",), svm=SVMConfig(per_class=20, draws=1, validation_size=100)))
    assert "std" not in one.metrics["svm_error"] and not one.notes
    assert "| svm_error | " in suite.report_markdown(one)


def test_progress_lines_of_a_child_are_relayed_whole(tmp_path, capsys):
    log_path = tmp_path / "train.log"
    log_path.write_text("python -m trainers.main\nstep 1/4 [=>  ] 25% 9 images/s\n"
                        "noise\n[1/2] svm ...\nstep 2/4 [==")
    with open(log_path) as reader:
        experiment._relay_progress(reader, "ALI seed 0 training")
        with open(log_path, "a") as writer:   # the child finishes the line it was writing
            writer.write("> ] 50% 9 images/s\n")
        experiment._relay_progress(reader, "ALI seed 0 training")
    assert capsys.readouterr().out.splitlines() == [
        "  ALI seed 0 training: step 1/4 [=>  ] 25% 9 images/s",
        "  ALI seed 0 training: [1/2] svm ...",
        "  ALI seed 0 training: step 2/4 [==> ] 50% 9 images/s"]
