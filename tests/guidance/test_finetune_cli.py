"""`ddlm finetune` (guidance/cli_finetune.py): on a tiny molecules model it writes a run that `ddlm eval` loads,
whose samples the surrogate scores higher than the base model's at the same seed; bad input is one line, exit 2."""

import importlib.util
import json
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from ddlm.cli import main
from ddlm.tasks.molecules import data

from cli_harness import run_cli

needs_molecules = pytest.mark.skipif(importlib.util.find_spec("moses") is None
                                     or importlib.util.find_spec("rdkit") is None,
                                     reason=f"MOSES data or RDKit not installed: {data.INSTALL_HINT}; "
                                     "pip install 'ddlm[molecules]'")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A molecules-tiny MDLM run (4 steps on 5,000 SMILES)."""
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("ft") / "base"
    assert main(["train", "--preset", "molecules-tiny", "--out", str(run), "--quiet"]) == 0
    return run


@needs_molecules
@pytest.mark.slow
def test_finetune_writes_a_loadable_model_whose_samples_score_higher(tiny_run, tmp_path, capsys):
    from ddlm.guidance import surrogate
    from ddlm.pipeline import SequenceModel

    out = tmp_path / "tuned"
    code, stdout, err = run_cli(["finetune", str(tiny_run), "--reward", "qed", "--out", str(out), "--max-steps",
                                 "30", "--batch-size", "8", "--steps", "8", "--lr", "3e-2", "--beta", "0",
                                 "--surrogate-records", "1500", "--surrogate-epochs", "3"])
    assert code == 0, err
    assert "surrogate epoch 3/3" in err and "drakes 30/30" in err and "fine-tuned" in stdout
    report = json.loads((out / "drakes.json").read_text())
    assert report["reward"] == "qed" and len(report["history"]) == 30
    base, tuned = SequenceModel.from_pretrained(tiny_run), SequenceModel.from_pretrained(out)
    net, info = surrogate.load(out, tuned)
    assert info["fit"]["n_train"] + info["fit"]["n_test"] <= 1500

    def scores(model):
        with torch.no_grad():
            return net(model.generate(n=200, steps=8, seed=3, decode=False).tokens)  # (200,)

    # the surrogate's mean over 200 samples at the same seed rises by more than 0.02 and 5 standard errors of the
    # difference (measured 0.608 -> 0.644, standard error 0.0003; this weak surrogate saturates near 0.645)
    before, after = scores(base), scores(tuned)
    se = float((before.var() / 200 + after.var() / 200).sqrt())
    assert float(after.mean() - before.mean()) > max(0.02, 5 * se), (float(before.mean()), float(after.mean()), se)
    # the fine-tuned folder is a model `ddlm eval --task molecules` reads, and a surrogate --surrogate reuses
    assert main(["eval", str(out), "--task", "molecules", "--samples", "8", "--no-fcd", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_samples"] == 8
    again = tmp_path / "again"
    code, stdout, err = run_cli(["finetune", str(tiny_run), "--surrogate", str(out), "--out", str(again),
                                 "--max-steps", "1", "--steps", "4", "--quiet"])
    assert code == 0 and err == "" and (again / "model" / "config.json").is_file()
    # an earlier fine-tuned run is replaced only with --overwrite
    code, _, err = run_cli(["finetune", str(tiny_run), "--surrogate", str(out), "--out", str(again),
                            "--max-steps", "1", "--steps", "4", "--quiet"])
    assert code == 2 and "--overwrite" in err
    code, _, err = run_cli(["finetune", str(tiny_run), "--surrogate", str(out), "--out", str(again),
                            "--max-steps", "1", "--steps", "4", "--quiet", "--overwrite"])
    assert code == 0, err


@needs_molecules
def test_grpo_finetune_writes_a_loadable_model_and_its_history(tiny_run, tmp_path):
    """--method grpo scores the model's own samples with RDKit's QED: no surrogate, grpo.json with every step."""
    from ddlm.pipeline import SequenceModel

    out = tmp_path / "grpo"
    code, stdout, err = run_cli(["finetune", str(tiny_run), "--method", "grpo", "--reward", "qed", "--out", str(out),
                                 "--max-steps", "3", "--batch-size", "4", "--steps", "4", "--coupled"])
    assert code == 0, err
    assert "grpo 3/3" in err and "4 coupled masks per record" in err and "(grpo): mean qed of the samples" in stdout
    report = json.loads((out / "grpo.json").read_text())
    assert report["method"] == "grpo" and report["reward"] == "qed" and len(report["history"]) == 3
    assert report["settings"]["group"] == 4 and report["settings"]["coupled"] is True
    assert report["history"][0]["kl"] == 0.0
    assert all(0.0 <= h["reward"] <= 1.0 for h in report["history"])
    assert not (out / "surrogate").exists()
    code, _, err = run_cli(["finetune", str(tiny_run), "--method", "grpo", "--reward", "qed", "--out", str(out),
                            "--max-steps", "1", "--batch-size", "2", "--steps", "2", "--quiet", "--overwrite"])
    assert code == 0, err  # an earlier grpo run is ddlm's to replace
    tuned = SequenceModel.from_pretrained(out)  # (this 4-step base draws few valid molecules: the toy oracle in
    assert len(tuned.generate(n=2, steps=4, seed=0).texts) == 2  # test_grpo.py is what shows the reward rising)


@needs_molecules
def test_ctrl_c_ends_finetuning_after_the_step_and_keeps_the_model_so_far(tiny_run, tmp_path):
    out = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "ddlm", "finetune", str(tiny_run), "--method", "grpo", "--reward", "qed", "--out",
           str(out), "--max-steps", "100000", "--batch-size", "2", "--steps", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "grpo 1/100000" not in line:  # the first step is done
            line = proc.stderr.readline()
            assert line or proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        stdout, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.count("\n") == 1 and "interrupted after" in err and str(out) in err and stdout == ""
    report = json.loads((out / "grpo.json").read_text())
    assert report["interrupted"] is True and 1 <= len(report["history"]) < 100000
    assert (out / "model" / "config.json").is_file()
    # the stop wrote a checkpoint: --resume continues the run from the step it ended at
    done = len(report["history"])
    code, _, err = run_cli(cmd[3:-6] + ["--max-steps", str(done + 1), "--batch-size", "2", "--steps", "2",
                                        "--resume"])
    assert code == 0, err
    assert f"resuming {out} at step {done}" in err
    again = json.loads((out / "grpo.json").read_text())
    assert again["resumed_at"] == done and again["history"][:done] == report["history"]
    assert len(again["history"]) == done + 1 and again["interrupted"] is False


@needs_molecules
def test_a_resumed_grpo_run_equals_the_unbroken_run(tiny_run, tmp_path):
    """2 steps, then --resume to 4, against 4 steps at once: the same history and the same fine-tuned weights."""
    from ddlm.pipeline import SequenceModel

    def grpo(out, steps, *extra):
        argv = ["finetune", str(tiny_run), "--method", "grpo", "--reward", "qed", "--out", str(out), "--max-steps",
                str(steps), "--batch-size", "3", "--steps", "3", "--quiet", *extra]
        code, _, err = run_cli(argv)
        assert code == 0, err
        return json.loads((out / "grpo.json").read_text())

    straight = grpo(tmp_path / "straight", 4)
    assert grpo(tmp_path / "parts", 2)["history"] == straight["history"][:2]
    assert sorted(p.name for p in (tmp_path / "parts" / "checkpoints").iterdir()) == [
        "step-00000001.pt", "step-00000001.sha256", "step-00000002.pt", "step-00000002.sha256"]
    resumed = grpo(tmp_path / "parts", 4, "--resume")
    assert resumed["history"] == straight["history"] and resumed["resumed_at"] == 2
    a, b = (SequenceModel.from_pretrained(tmp_path / d).backbone.state_dict() for d in ("straight", "parts"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # groups decoded in another order: recorded in the settings, kept by --resume, another history
    order = ["--sampler", "planned", "--planner", "top_margin", "--planner-option", "gumbel=0.5"]
    planned = grpo(tmp_path / "planned", 2, *order)
    assert {k: planned["settings"][k] for k in ("sampler", "planner", "planner_options")} == {
        "sampler": "planned", "planner": "top_margin", "planner_options": {"gumbel": "0.5"}}
    assert straight["settings"]["sampler"] is None and planned["history"] != straight["history"][:2]
    assert grpo(tmp_path / "planned", 3, *order, "--resume")["history"][:2] == planned["history"]


@needs_molecules
def test_export_writes_a_grpo_checkpoints_weights_with_the_base_models_config(tiny_run, tmp_path):
    """`ddlm export` of step 1 of a 2-step GRPO run: the checkpoint's backbone, loadable; without the run's model/
    the base named in the checkpoint gives the config and tokenizer, and the weights are the same."""
    from ddlm.pipeline import SequenceModel
    from ddlm.train.checkpoint import list_checkpoints, read_checkpoint, verify

    out = tmp_path / "grpo"
    code, _, err = run_cli(["finetune", str(tiny_run), "--method", "grpo", "--reward", "qed", "--out", str(out),
                            "--max-steps", "2", "--batch-size", "2", "--steps", "2", "--ckpt-every", "1", "--quiet"])
    assert code == 0, err
    path = next(p for p in list_checkpoints(out) if p.name == "step-00000001.pt")
    state = read_checkpoint(path, verify(path))
    assert state["base"] == str(tiny_run.resolve())
    for name in ("with-model", "from-base"):
        if name == "from-base":
            shutil.rmtree(out / "model")
        code, _, err = run_cli(["export", str(out), "--step", "1", "--out", str(tmp_path / name)])
        assert code == 0, err
        got = SequenceModel.from_pretrained(tmp_path / name).backbone.state_dict()
        assert all(torch.equal(got[k], state["backbone"][k]) for k in got)
    final = SequenceModel.from_pretrained(tmp_path / "with-model").backbone.state_dict()
    base = SequenceModel.from_pretrained(tiny_run).backbone.state_dict()
    assert not all(torch.equal(final[k], base[k]) for k in final)  # fine-tuned weights, not the base's


@needs_molecules
def test_finetune_refuses_bad_input_in_one_line(tiny_run, tmp_path):
    cases = []
    cases.append((["finetune", str(tiny_run), "--reward", "nope", "--out", str(tmp_path / "a")], "unknown reward"))
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("mine\n")
    cases.append((["finetune", str(tiny_run), "--reward", "qed", "--out", str(foreign)], "not a ddlm run"))
    cases.append((["finetune", str(tiny_run), "--reward", "qed", "--out", str(foreign), "--overwrite"],
                  "not a ddlm run"))
    cases.append((["finetune", str(tiny_run), "--reward", "qed", "--out", str(tiny_run), "--overwrite"],
                  "the model being fine-tuned"))
    cases.append((["finetune", str(tiny_run), "--out", str(tmp_path / "b")], "give the reward"))
    cases.append((["finetune", str(tiny_run), "--surrogate", str(tmp_path), "--out", str(tmp_path / "c")],
                  "holds no surrogate"))
    cases.append((["finetune", str(tiny_run), "--method", "grpo", "--surrogate", str(tmp_path), "--reward", "qed",
                   "--out", str(tmp_path / "e")], "leave out --surrogate"))
    cases.append((["finetune", str(tiny_run), "--method", "grpo", "--out", str(tmp_path / "f")], "give the reward"))
    cases.append((["finetune", str(tiny_run), "--method", "grpo", "--reward", "qed", "--tau", "2", "--out",
                   str(tmp_path / "g")], "--tau belongs to --method drakes"))
    cases.append((["finetune", str(tiny_run), "--reward", "qed", "--masks", "2", "--out", str(tmp_path / "h")],
                  "--masks belongs to --method grpo"))
    cases.append((["finetune", str(tiny_run), "--reward", "qed", "--coupled", "--out", str(tmp_path / "i")],
                  "--coupled belongs to --method grpo"))
    cases.append((["finetune", str(tiny_run), "--reward", "qed", "--floor", "2", "--out", str(tmp_path / "i")],
                  "--floor belongs to --method grpo"))
    cases.append((["finetune", str(tiny_run), "--method", "grpo", "--reward", "qed", "--coupled", "--masks", "3",
                   "--out", str(tmp_path / "j")], "--masks must be even"))
    cases.append((["finetune", str(tiny_run), "--method", "grpo", "--reward", "qed", "--planner", "top_margin",
                   "--out", str(tmp_path / "j")], "--planner sets the decoding order of --sampler planned"))
    cases.append((["finetune", str(tiny_run), "--method", "grpo", "--reward", "qed", "--sampler", "ancestral",
                   "--planner-option", "gumbel=1", "--out", str(tmp_path / "j")], "add --sampler planned"))
    cases.append((["finetune", str(tiny_run), "--method", "grpo", "--reward", "qed", "--sampler", "planned",
                   "--planner-option", "eta=1", "--out", str(tmp_path / "j")], "does not take option 'eta'"))
    cases.append((["finetune", str(tiny_run), "--method", "grpo", "--reward", "qed", "--sampler", "planned",
                   "--planner", "sideways", "--out", str(tmp_path / "j")], "sideways"))
    cases.append((["finetune", str(tiny_run), "--reward", "qed", "--sampler", "planned", "--out",
                   str(tmp_path / "j")], "--sampler belongs to --method grpo"))
    cases.append((["finetune", str(tiny_run), "--reward", "qed", "--planner", "top_margin", "--out",
                   str(tmp_path / "j")], "--planner belongs to --method grpo"))
    earlier = tmp_path / "earlier"  # an earlier grpo run: --resume continues it, --overwrite replaces it
    grpo = ["finetune", str(tiny_run), "--method", "grpo", "--reward", "qed", "--out", str(earlier), "--batch-size",
            "2", "--steps", "2"]
    assert main(grpo + ["--max-steps", "1", "--quiet"]) == 0
    cases.append((grpo, "add --resume to continue it, --overwrite to start again"))
    cases.append((grpo + ["--resume", "--max-steps", "1"], "has done 1 steps; give --max-steps above 1"))
    cases.append((grpo + ["--resume", "--max-steps", "2", "--lr", "1e-3"], "other settings (lr 0.0002 -> 0.001)"))
    cases.append((grpo + ["--resume", "--overwrite"], "give one of them"))
    cases.append((grpo + ["--resume", "--max-steps", "2", "--sampler", "planned"],
                  "other settings (sampler None -> 'planned' and 1 more)"))
    from ddlm.train.checkpoint import load_latest, save_checkpoint
    on_gpu = tmp_path / "on-gpu"  # a run made on a GPU: its CUDA generator state does not continue on the CPU
    shutil.copytree(earlier, on_gpu)
    state = load_latest(on_gpu, log=lambda line: None)
    save_checkpoint(on_gpu, {**state, "step": 2, "grpo": {**state["grpo"], "device": "cuda"}})
    cases.append(([*grpo[:7], str(on_gpu), *grpo[8:], "--resume", "--max-steps", "3"],
                  "was made on the cuda and continues exactly only there; add --device cuda"))
    cases.append((["finetune", str(tiny_run), "--method", "grpo", "--reward", "qed", "--resume", "--out",
                   str(tmp_path / "k")], "holds no GRPO checkpoint"))
    cases.append((["finetune", str(tiny_run), "--reward", "qed", "--resume", "--out", str(earlier)],
                  "--resume belongs to --method grpo"))
    other = tmp_path / "other-base"  # the same settings on another base model
    assert main(["train", "--preset", "molecules-tiny", "--out", str(other), "--quiet", "--seed", "1"]) == 0
    cases.append((["finetune", str(other)] + grpo[2:] + ["--resume", "--max-steps", "2"],
                  "the base model's weights differ"))
    stream = tmp_path / "stream"
    assert main(["train", "--preset", "tiny", "--out", str(stream), "--quiet", "--max-steps", "1"]) == 0
    cases.append((["finetune", str(stream), "--reward", "qed", "--out", str(tmp_path / "d")], "records"))
    for argv, message in cases:
        code, _, err = run_cli(argv)
        assert code == 2 and err.count("\n") == 1 and message in err, (argv, err)
    assert (foreign / "chapter1.tex").read_text() == "mine\n"
    assert not any((tmp_path / name).exists() for name in "abcdefghijk")  # refused: nothing written
    assert (tiny_run / "model" / "config.json").is_file()
