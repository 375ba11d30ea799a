"""The docs are checked against the code: the spec reference, the plugin tutorial and its hook reference."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib

import pytest
from conftest import ROOT

from mmcore.cli import read_catalog
from mmcore.docgen import spec_reference


def test_spec_reference_is_generated_from_the_models(manager):
    dists = {"mmcore"} | {e["distribution"] for e in read_catalog(ROOT / "registry.toml").values()}
    expected = spec_reference(manager.registry, dists)
    actual = (ROOT / "docs" / "spec.md").read_text()
    assert actual == expected, "docs/spec.md is stale: run `python -m mmcore.docgen`"


def tutorial_files() -> dict[str, str]:
    text = (ROOT / "docs" / "plugins.md").read_text()
    blocks = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, flags=re.S)
    return {path: body for path, body in blocks}


def test_plugin_written_from_the_tutorial_installs_lists_and_builds(tmp_path):
    files = tutorial_files()
    assert {"pyproject.toml", "src/mmcore_series/plugin.py", "tests/test_series.py", "example.toml"} <= set(files)
    pkg = tmp_path / "mmcore-series"
    for rel, body in files.items():
        dst = (tmp_path if rel == "example.toml" else pkg) / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(body)
    site = tmp_path / "site"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(pkg),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    listed = subprocess.run([sys.executable, "-m", "mmcore", "plugins"], capture_output=True, text=True, env=env)
    assert "series  (mmcore-series 0.1.0)" in listed.stdout and "encoder:series.linear" in listed.stdout
    # the tutorial's own tests: the conformance kit on series.linear, and its bad-value test
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(pkg / "tests")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert tests.stdout.splitlines()[-1].startswith("2 passed")
    code = (
        "import mmcore\n"
        "model = mmcore.build('example.toml')\n"
        "batch = model.preprocess([{'series': [0.1, 0.5, 0.2], 'text': 'rising', 'label': 1},\n"
        "                          {'series': [0.9, 0.3], 'text': 'falling', 'label': 0}])\n"
        "out = model(batch)\n"
        "out.loss.backward()\n"
        "print(type(model.projectors['series']).__name__, tuple(out.outputs['label'].logits.shape))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "LinearProjector (2, 2)"


def test_hook_reference_is_generated_from_the_hookspecs():
    from mmcore import hookspecs
    from mmcore.docgen import plugins_doc

    text = (ROOT / "docs" / "plugins.md").read_text()
    assert text == plugins_doc(text), "the hook reference in docs/plugins.md is stale: run `python -m mmcore.docgen`"
    hooks = [n for n, f in vars(hookspecs).items() if hasattr(f, "mmcore_spec")]
    assert hooks and all(f"### `{n}(" in text for n in hooks)


def test_examples_doc_shows_current_summaries(manager):
    from mmcore.docgen import examples_doc

    assert (ROOT / "docs" / "examples.md").read_text() == examples_doc(ROOT), (
        "docs/examples.md is stale: run `python -m mmcore.docgen`"
    )


def _pct(x: float, digits: int) -> str:
    return f"{100 * x:.{digits}f} %"


def _section(doc: str, heading: str) -> str:
    """The text of ``doc``'s section that starts with ``heading``, up to the next ``## `` heading."""
    text = (ROOT / doc).read_text()
    assert heading in text, f"{doc} lost its section {heading!r}"
    return text.split(heading, 1)[1].split("\n## ", 1)[0]


def _rows(section: str) -> dict[str, list[str]]:
    """The markdown table rows of ``section`` by their first cell: ``{label: [other cells]}``,
    bold and code marks removed, so a figure is checked on the row of the model it belongs to."""
    rows = {}
    for line in section.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.replace("**", "").replace("`", "").strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def _json(path: str) -> dict:
    import json

    return json.loads((ROOT / path).read_text())


def test_figures_in_the_docs_are_quoted_from_committed_results_files():
    """bench/README.md's int8 section, row by row, is the results files bench/quantize.py wrote:
    bench/results_quantize.json (decoding, one thread, and sizes of the random model),
    bench/results_quantize_2threads.json (the same with two threads),
    bench/results_quantize_stdlib_lm.json (the language model docs/tasks.md's distillation
    section trained as its teacher) and bench/results_quantize_demo.json (the demo model whose
    figures examples/results/digits_av.json holds: the int8 comparison evaluated that very model).
    README.md: test_readme_quotes_the_main_jobs_results."""
    section = _section("bench/README.md", "## int8 quantization: `bench/quantize.py`")
    flat = " ".join(section.split())  # line breaks in prose do not matter
    rows = _rows(section)
    one = _json("bench/results_quantize.json")["decode_and_size"]["results"]
    two = _json("bench/results_quantize_2threads.json")["results"]["decode"]
    for batch, r in one["decode"].items():
        cells = rows[batch.replace("_", " ")]
        assert cells[:2] == [f"{r['float_tokens_per_s']:.0f}", f"{r['int8_tokens_per_s']:.0f}"], cells
        assert cells[2:5] == [f"{r[k]:.2f}x" for k in ("speedup", "speedup_median", "speedup_paired_median")], cells
        b = batch.split("_")[1]
        assert f"{100 * r['greedy_token_agreement']:.0f} % at batch {b}" in flat
    one_b, eight = two["batch_1"], two["batch_8"]
    quote = (
        f"({one_b['float_tokens_per_s']:.0f} and {eight['float_tokens_per_s']:.0f} float new tokens/s at batch 1 and 8), "
        f"and the int8/float ratio was {one_b['speedup']:.2f}x (batch 1) and {eight['speedup']:.2f}x (batch 8) best "
        f"round, per-round median {one_b['speedup_paired_median']:.2f}x (batch 1) and "
        f"{eight['speedup_paired_median']:.2f}x (batch 8)"
    )
    assert quote in flat, f"bench/README.md does not quote {quote!r} (bench/results_quantize_2threads.json)"

    def size_cells(r: dict) -> list[str]:
        ratio = r["float_bytes"] / r["int8_bytes"]
        return [f"{r['float_bytes'] / 1e6:.2f} MB", f"{r['int8_bytes'] / 1e6:.2f} MB ({ratio:.1f}x)"]

    assert rows["random text model above (width 256, 4 layers)"][:2] == size_cells(one["size"])
    lm = _json("bench/results_quantize_stdlib_lm.json")["results"]["eval runs/stdlib_lm"]
    f, i = lm["float"]["perplexity"], lm["int8"]["perplexity"]
    cells = rows["runs/stdlib_lm (width 128, 4 layers; the distillation teacher)"]
    assert cells == [*size_cells(lm), f"perplexity {f:.3f}", f"{i:.3f} ({100 * (i / f - 1):+.1f} %)"], cells
    # the quantized language model is the distillation teacher docs/tasks.md describes
    teacher = _json("examples/results/distill_stdlib.json")["teacher"]
    assert abs(f - teacher["eval"]["perplexity"]) < 1e-6 and lm["float_bytes"] == teacher["bytes"]
    demo = _json("examples/results/digits_av.json")["mmcore"]
    match = demo["tasks"]["match"]
    assert match["accuracy"] == demo["match_accuracy"]
    qmatch = _json("bench/results_quantize_demo.json")["results"]["eval runs/demo match"]
    assert abs(qmatch["float"]["accuracy"] - match["accuracy"]) < 1e-6  # the model the demo figures describe
    cells = rows["runs/demo, match task (image + audio encoders quantized too)"]
    assert cells[:3] == [*size_cells(qmatch), f"accuracy {_pct(qmatch['float']['accuracy'], 2)}"], cells
    assert cells[3].startswith(_pct(qmatch["int8"]["accuracy"], 2)), cells
    # the earlier models' figures the section still mentions are results_quantize.json's
    old = _json("bench/results_quantize.json")["metric_change"]["results"]
    for key, metric, fmt in (
        ("eval runs/demo match", "accuracy", "{:.2%}"),
        ("eval runs/stdlib_lm", "perplexity", "{:.3f}"),
    ):
        for side in ("float", "int8"):
            figure = fmt.format(old[key][side]["metrics"][metric]).replace("%", " %")
            assert figure in flat, f"bench/README.md does not quote {figure} (bench/results_quantize.json, {key})"


def _toml_blocks(path: str) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", (ROOT / path).read_text(), flags=re.S)


def test_training_lora_example_adapts_what_its_summary_says():
    """docs/training.md: the LoRA example's targets, matched on a backbone as the builder matches
    them, adapt exactly the layers its `trains:` summary lists (attention qkv and proj, not the
    MLP's proj, which a bare "proj" also matches)."""
    import tomllib

    import mmcore

    example = next(tomllib.loads(b) for b in _toml_blocks("docs/training.md") if 'train = "lora"' in b)
    backbone = example["backbone"]
    text = (ROOT / "docs" / "training.md").read_text()
    summary = re.search(r"^  backbone: (.*)$", text, flags=re.M).group(1)
    listed = {re.sub(r"\.lora_[AB] \(\d+\)$", "", part) for part in summary.split(", ")}
    assert listed == {"blocks.*.attn.qkv", "blocks.*.attn.proj"}
    model = mmcore.build(
        {
            "spec_version": 1,
            "backbone": {
                "width": 32,
                "depth": 2,
                "heads": 4,
                "context_length": 32,
                "mlp": backbone["mlp"],
                "train": backbone["train"],
                "lora": backbone["lora"],
            },
            "encoders": {"text": {"component": "text.bytes", "max_length": 16}},
            "heads": {"lm": {"component": "lm"}},
        }
    )
    adapted = {
        re.sub(r"^blocks\.\d+\.", "blocks.*.", n)
        for n, m in model.backbone.named_modules()
        if isinstance(m, mmcore.LoRALinear)
    }
    assert adapted == listed


def test_generation_prompt_snippet_runs_and_beams_come_best_first(monkeypatch):
    """docs/tasks.md: the Python generation snippet runs as written (on a small lm-trained model),
    builds the prompt `mmcore generate` builds, and beam search returns its sequences best first
    by the documented rule, logprob / length ** length_penalty (<eos> counted when finished)."""
    import torch

    import mmcore
    from mmcore.generation import GenerationConfig

    text = (ROOT / "docs" / "tasks.md").read_text()
    doc = text.split("<!-- docs-test: generation-prompt -->", 1)[1]
    assert "`logprob / length ** length_penalty`" in doc and "**best first**" in doc
    snippet = re.search(r"```python\n(.*?)```", doc, flags=re.S).group(1)
    torch.manual_seed(0)
    small = mmcore.build(
        {
            "spec_version": 1,
            "backbone": {"width": 32, "depth": 2, "heads": 4, "context_length": 96},
            "encoders": {"text": {"component": "text.bytes", "max_length": 48}},
            "heads": {"lm": {"component": "lm"}},
            "tasks": {"lm": {"objective": "lm", "train": "corpus.txt"}},
        }
    ).eval()
    with torch.no_grad():
        for p in small.parameters():
            p.normal_(0.0, 0.3)
    monkeypatch.setattr(mmcore, "load", lambda path: small)
    scope: dict = {}
    exec(compile(snippet, "docs/tasks.md", "exec"), scope)
    out, cfg, proc = scope["out"], scope["cfg"], small.processors["text"]
    assert len(out) == 4 and len(scope["texts"]) == 4
    ids = scope["batch"].inputs["text"]["ids"]
    assert ids[0, : len("Return the") + 1].tolist() == [proc.bos_id, *proc.encode("Return the")]
    assert proc.sep_id not in ids.tolist()[0] and proc.eos_id not in ids.tolist()[0]

    def score(prompt: str, gen: list[int]) -> float:
        finished = len(gen) < cfg.max_new_tokens
        seq = [proc.bos_id, *proc.encode(prompt)]
        eos = proc.eos_id if cfg.eos_id is None else cfg.eos_id
        full = seq + gen + ([eos] if finished else [])
        inputs = {"ids": torch.tensor([full]), "mask": torch.ones(1, len(full), dtype=torch.bool)}
        with torch.no_grad():
            logits = small(mmcore.Batch({"text": inputs}), compute_loss=False).outputs["lm"].logits[0]
        logp = logits.float().log_softmax(-1)
        new = full[len(seq) :]
        total = sum(float(logp[len(seq) - 1 + i, t]) for i, t in enumerate(new))
        return total / len(new) ** cfg.length_penalty

    for i, prompt in enumerate(["Return the", "Open a"]):
        first, second = out[2 * i], out[2 * i + 1]
        assert first != second
        assert score(prompt, first) >= score(prompt, second) - 1e-5
    # finished hypotheses of several lengths: an <eos> the model often picks, all four returned
    prompts = ["Return the", "Open a", "the"]
    batch = small.preprocess(scope["prompt_records"](small, prompts), targets=())
    greedy = mmcore.generate(small, batch, GenerationConfig(max_new_tokens=3, eos_id=-1))
    cfg = GenerationConfig(max_new_tokens=8, num_beams=4, num_return_sequences=4, eos_id=greedy[0][1])
    out = mmcore.generate(small, batch, cfg)
    lengths = set()
    for i, prompt in enumerate(prompts):
        rows = out[4 * i : 4 * i + 4]
        lengths |= {len(r) for r in rows}
        scores = [score(prompt, r) for r in rows]
        assert all(a >= b - 1e-5 for a, b in zip(scores, scores[1:], strict=False)), scores
    assert len(lengths) > 1  # the lengths differ, so the length normalisation matters


def test_image_text_fusion_figures_in_the_docs_are_the_results_file():
    """docs/tasks.md's image + text table quotes examples/recipes/results/image_text_fusions.json
    (written by examples/recipes/image_text_fusions.py), fusions and baselines alike."""
    import json

    results = json.loads((ROOT / "examples" / "recipes" / "results" / "image_text_fusions.json").read_text())
    text = (ROOT / "docs" / "tasks.md").read_text()
    section = text.split("## Image + text: which fusion reads the picture", 1)[1].split("\n## ", 1)[0]

    def pct(x: float) -> str:
        return f"{100 * x:.1f} %"

    image = tomllib.loads((ROOT / "examples" / "image_text.toml").read_text())["encoders"]["image"]
    tokens = (image["image_size"] // image["patch_size"]) ** 2
    assert f"{tokens} image tokens" in section, f"the section does not say the spec's {tokens} image tokens"
    base = results["baselines"]
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ")}
    for label, figure in (
        ("chance (10 digits)", base["chance"]),
        (
            f'most frequent training caption ("{base["most_frequent_caption"]["caption"]}")',
            base["most_frequent_caption"]["exact_match"],
        ),
        ("logistic regression on the 256 pixels (scikit-learn)", base["logistic_regression_on_pixels"]),
        ("RBF SVM on the 256 pixels (scikit-learn)", base["rbf_svm_on_pixels"]),
    ):
        assert label in rows and f"| {pct(figure)} |" in rows[label], f"the row {label!r} does not quote {pct(figure)}"
    assert len({run["seed"] for run in results["fusions"]}) >= 2, "each fusion is reported on two seeds"
    for run in results["fusions"]:
        label = f"| `{run['fusion']}`, seed {run['seed']},"
        row = next((line for line in section.splitlines() if line.startswith(label)), None)
        assert row is not None, f"no row {label!r} in docs/tasks.md's image + text table"
        assert pct(run["exact_match"]) in row and pct(run["without_image"]) in row and f"{run['steps']:,}" in row
    # the run without dropout (the spec before it), which the section quotes to say why the spec has it
    before = json.loads((ROOT / "examples" / "recipes" / "results" / "image_text_fusions_no_dropout.json").read_text())
    for fusion in dict.fromkeys(run["fusion"] for run in before["fusions"]):
        figures = " / ".join(pct(run["exact_match"]) for run in before["fusions"] if run["fusion"] == fusion)
        assert f"`{fusion}` {figures}" in " ".join(section.split()), f"the section does not quote {fusion} {figures}"
    longer = json.loads((ROOT / "examples" / "recipes" / "results" / "image_text_fusions_early_2500.json").read_text())
    assert {run["steps"] for run in longer["fusions"]} == {2500}, "the file is the 2,500-step run"
    figures = " / ".join(pct(run["exact_match"]) for run in longer["fusions"])
    assert "2,500 steps with dropout" in section and f"{figures} (seeds 0 / 1)" in " ".join(section.split()), figures
    # the std-0.02 stem's run, which the section quotes to say why the spec starts the stem at fan-in scale
    normal = json.loads((ROOT / "examples" / "recipes" / "results" / "image_text_fusions_stem_normal.json").read_text())
    assert normal["overrides"] == ['encoders.image.stem_init="normal"'], normal["overrides"]
    for run in normal["fusions"]:
        assert f"`{run['fusion']}` {pct(run['exact_match'])}" in section, run["fusion"]
    # settings run with training.ema, one file per seed: both arms (the averages, and the raw weights of the
    # setting without them) of each fusion, quoted as "`fusion` seed 0 / seed 1"
    flat = " ".join(section.split())
    for stem in ("image_text_fusions_ls_ema", "image_text_fusions_dropout02_ema"):
        runs = [
            run
            for name in (f"{stem}.json", f"{stem}_seed1.json")
            for run in json.loads((ROOT / "examples" / "recipes" / "results" / name).read_text())["fusions"]
        ]
        assert [run["seed"] for run in runs] == [0, 0, 0, 1, 1, 1], f"{stem}: seed 0's file, then seed 1's"
        for key in ("exact_match", "exact_match_raw_weights"):
            for fusion in dict.fromkeys(run["fusion"] for run in runs):
                figures = " / ".join(pct(run[key]) for run in runs if run["fusion"] == fusion)
                assert f"`{fusion}` {figures}" in flat, f"the section does not quote {stem}'s {fusion} {key} {figures}"
    # the two runs of the 2,500-step setting with 4 resampler latents, both seeds in one file each
    for name in ("image_text_fusions_latents4_2500_ls_ema.json", "image_text_fusions_latents4_2500_ls_ema_rerun.json"):
        runs = json.loads((ROOT / "examples" / "recipes" / "results" / name).read_text())["fusions"]
        assert [run["seed"] for run in runs] == [0, 1, 0, 1, 0, 1], f"{name}: each fusion on seeds 0 and 1"
        for fusion in dict.fromkeys(run["fusion"] for run in runs):
            figures = " / ".join(pct(run["exact_match"]) for run in runs if run["fusion"] == fusion)
            assert f"`{fusion}` {figures}" in flat, f"the section does not quote {name}'s {fusion} {figures}"


def test_image_text_fusion_rounds_in_tuning_quote_their_results_files():
    """docs/tuning.md's image + text table: each row's figures are its results files' (seed 0 / seed 1
    per fusion, and the mean number of held-out images named over a row of six runs)."""
    import json
    import re

    page = (ROOT / "docs" / "tuning.md").read_text()
    section = page.split("## Image + text: the three fusions", 1)[1].split("\n## ", 1)[0]
    held_out = section.split(VALIDATION_TABLE, 1)[0]
    rows = [line for line in held_out.splitlines() if line.startswith("| ") and ".json`" in line]
    assert len(rows) >= 9, "the table lists every image + text results file"
    names = set()
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        files = re.findall(r"`(image_text_fusions[\w-]*\.json)`", cells[-1])
        names |= set(files)
        reports = [json.loads((ROOT / "examples" / "recipes" / "results" / name).read_text()) for name in files]
        assert all(r.get("on", "eval") == "eval" for r in reports), f"{files}: a validation run in the held-out table"
        runs = [run for report in reports for run in report["fusions"]]
        assert f"{runs[0]['steps']:,}" == cells[1], f"{files}: {runs[0]['steps']} steps, the row says {cells[1]}"
        for cell, fusion in zip(cells[2:5], ("early", "cross_attention", "resampler"), strict=True):
            want = " / ".join(f"{100 * run['exact_match']:.1f}" for run in runs if run["fusion"] == fusion)
            assert cell == want, f"{files}: {fusion} is {want!r}, the row says {cell!r}"
        mean = f"{sum(run['exact_match'] for run in runs) * 359 / len(runs):.1f}" if len(runs) == 6 else ""
        assert cells[5] == mean, f"{files}: images a run {mean!r}, the row says {cells[5]!r}"
    names |= _image_text_validation_rows(section.split(VALIDATION_TABLE, 1)[1])
    on_disk = {p.name for p in (ROOT / "examples" / "recipes" / "results").glob("image_text_fusions*.json")}
    assert on_disk <= names, f"results files the table does not list: {sorted(on_disk - names)}"


VALIDATION_TABLE = "### On the validation split"


def _image_text_validation_rows(part: str) -> set[str]:
    """docs/tuning.md's image + text rows on the validation split (``--on validation``): each fusion's
    images named, seed 0 / seed 1, out of the split's images; the mean of cross_attention's and the
    resampler's runs (empty in a row without both); the RBF SVM's count on the same split. Returns the files the rows quote."""
    import json
    import re

    rows = [line for line in part.split("\n## ", 1)[0].splitlines() if line.startswith("| ") and ".json`" in line]
    assert rows, "the validation table lists its results files"
    names = set()
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        [name] = re.findall(r"`(image_text_fusions[\w-]*\.json)`", cells[-1])
        names.add(name)
        report = json.loads((ROOT / "examples" / "recipes" / "results" / name).read_text())
        assert report["on"] == "validation", f"{name}: not a validation run"
        n = int(report["data"].split(", ")[1].split()[0])
        runs = report["fusions"]
        assert f"{runs[0]['steps']:,}" == cells[1], f"{name}: {runs[0]['steps']} steps, the row says {cells[1]}"
        for cell, fusion in zip(cells[2:5], ("early", "cross_attention", "resampler"), strict=True):
            want = " / ".join(f"{round(run['exact_match'] * n)}" for run in runs if run["fusion"] == fusion)
            assert cell == want, f"{name}: {fusion} is {want!r}, the row says {cell!r}"
        pair = [run["exact_match"] * n for run in runs if run["fusion"] in ("cross_attention", "resampler")]
        both = {run["fusion"] for run in runs} >= {"cross_attention", "resampler"}
        mean = f"{sum(pair) / len(pair):.2f}" if both else ""  # a row of one fusion has no pair
        assert cells[5] == mean, f"{name}: the pair's mean {mean!r}, the row says {cells[5]!r}"
        assert cells[6] == f"{round(report['baselines']['rbf_svm_on_pixels'] * n)} of {n}", f"{name}: the SVM"
    return names


def test_task_figures_quote_the_results_files():
    """Every figure a recipe script wrote to examples/results/ is what docs/tasks.md shows."""
    import json

    page = (ROOT / "docs" / "tasks.md").read_text()
    files = sorted((ROOT / "examples" / "results").glob("*.json"))
    assert files, "no results files under examples/results"
    for path in files:
        figures = json.loads(path.read_text())["figures"]
        assert len(figures) >= 2, f"{path.name}: a figure needs its baseline beside it"
        missing = {k: v for k, v in figures.items() if f"| {v}" not in page and f"**{v}**" not in page}
        assert not missing, f"docs/tasks.md does not quote {path.name}: {missing} (rerun the recipe, update the page)"
        # mmcore's own figure must sit on a line that names mmcore: a baseline's equal value elsewhere on the
        # page (language id: naive Bayes and mmcore both 96.1 %) must not stand in for it
        lines = page.splitlines()
        unnamed = {
            k: v
            for k, v in figures.items()
            if "mmcore" in k
            and not any("mmcore" in line and (f"| {v}" in line or f"**{v}**" in line) for line in lines)
        }
        assert not unnamed, f"docs/tasks.md has no mmcore row quoting {path.name}: {unnamed}"


def test_distillation_table_is_its_results_file():
    """docs/tasks.md's distillation table, row by row, is examples/results/distill_stdlib.json
    (written by examples/recipes/distill_stdlib.py): each model's perplexity, steps, parameters,
    file size and seconds a step, and the baselines on the same held-out file."""
    results = _json("examples/results/distill_stdlib.json")
    section = _section("docs/tasks.md", "## Knowledge distillation")
    rows = _rows(section)
    for label, figure in results["figures"].items():
        assert label in rows, f"docs/tasks.md's distillation table has no row {label!r}"
        assert figure in rows[label], f"row {label!r} does not quote {figure} (examples/results/distill_stdlib.json)"
    models = {"teacher": results["teacher"], **results["students"]}
    for label, run in models.items():
        cells = rows[label]
        wanted = [f"{run['steps']:,}", f"{run['params']:,}", f"{run['bytes'] / 1e6:.2f} MB"]
        assert cells[:3] == wanted, (label, cells, wanted)
        assert cells[4] == f"{run['seconds_per_step']:.2f}", (label, cells)
        if label != "teacher":
            assert cells[5] == f"{run['seconds_per_step_vs_alone']:.2f}x", (label, cells)
    flat = " ".join(section.split())
    assert f"{results['data']['eval_docs']} documents, {results['teacher']['eval']['tokens']:,.0f} predicted" in flat
    assert f"({results['teacher']['train_seconds']:,.0f} s)" in flat  # the teacher's training time
    for label, run in results["students"].items():
        if run["distill"]:
            assert f"{-100 * run['perplexity_vs_alone']:.0f} %" in flat, f"the reading lacks {label}'s gain"


def test_distill_recipe_reuses_a_teacher_record_only_for_the_model_it_describes(tmp_path):
    """distill_stdlib.py reports the teacher's recorded run (teacher_run.json, written by
    --train-teacher / --teacher-only) only while model.safetensors is the file it trained; for any
    other model it says the teacher's training is not known."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location(
        "_distill_stdlib", ROOT / "examples" / "recipes" / "distill_stdlib.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (tmp_path / "model.safetensors").write_bytes(b"the trained teacher")
    run = {"spec": "stdlib_lm.toml", "precision": "bf16", "steps": 2000, "train_seconds": 250.0}
    digest = script.sha256(str(tmp_path / "model.safetensors"))
    (tmp_path / script.TEACHER_RUN).write_text(json.dumps({**run, "model_sha256": digest}))
    assert script.recorded_teacher_run(tmp_path) == run
    (tmp_path / "model.safetensors").write_bytes(b"a teacher trained since, by other means")
    assert script.recorded_teacher_run(tmp_path)["spec"] is None
    assert "not known" in script.recorded_teacher_run(tmp_path)["note"]


@pytest.mark.slow
def test_distill_recipe_trains_the_rows_the_table_shows(tmp_path):
    """examples/recipes/distill_stdlib.py, run end to end on a tiny corpus and tiny models (2 steps
    each), trains the teacher and one student per row of docs/tasks.md's distillation table, the
    alone student without a teacher and each distilled one with its own setting, and reports
    each against the alone student."""
    import json

    lines = [f"Return the {w} of the object, or None when it has no {w}." for w in ("name", "size", "type", "mode")]
    data = tmp_path / "data" / "stdlib"
    data.mkdir(parents=True)
    (data / "corpus_train.txt").write_text("\n".join(lines * 4) + "\n")
    (data / "corpus_eval.txt").write_text("\n".join(lines[:2]) + "\n")
    baselines = {"corpus_eval_docs": 2, "unigram_eval_perplexity": 20.0, "byte_5gram_eval_perplexity": 9.0}
    (data / "baselines.json").write_text(json.dumps(baselines))
    common = (
        "spec_version = 1\n[encoders.text]\ncomponent = 'text.bytes'\nmax_length = 32\n"
        "[heads.lm]\ncomponent = 'lm'\n[tasks.pretrain]\nobjective = 'lm'\n"
        "train = 'data/stdlib/corpus_train.txt'\neval = 'data/stdlib/corpus_eval.txt'\n"
    )
    (tmp_path / "teacher.toml").write_text(
        common + "[backbone]\nwidth = 32\ndepth = 1\nheads = 2\ncontext_length = 32\n"
        "[training]\nsteps = 2\nbatch_size = 4\neval_batches = 1\n"
    )
    (tmp_path / "student.toml").write_text(
        common + "teacher = 'runs/teacher'\ndistill_alpha = 0.9\ndistill_temperature = 1.0\ndistill_hidden = 1.0\n"
        "[backbone]\nwidth = 16\ndepth = 1\nheads = 2\ncontext_length = 32\n"
        "[training]\nsteps = 2\nbatch_size = 4\neval_batches = 1\n"
    )
    script = ROOT / "examples" / "recipes" / "distill_stdlib.py"
    committed = ROOT / "examples" / "results" / "distill_stdlib.json"
    before = committed.read_text()
    args = ["--spec", "student.toml", "--teacher-spec", "teacher.toml", "--out", "out", "--no-results"]

    def run(*extra: str) -> None:
        res = subprocess.run(
            [sys.executable, str(script), *args, *extra],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            timeout=300,
        )
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]

    # --teacher-only trains the teacher, records its run beside it and stops; the students' run
    # then reports that record (the teacher's steps and wall time) as --train-teacher would
    run("--teacher-only")
    record = json.loads((tmp_path / "runs" / "teacher" / "teacher_run.json").read_text())
    assert record["steps"] == 2 and record["train_seconds"] > 0 and not (tmp_path / "out").exists()
    run()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["teacher"]["train_seconds"] == record["train_seconds"]
    assert report["teacher"]["spec"] == "teacher.toml" and report["students_not_trained_yet"] == []
    assert committed.read_text() == before, "--no-results must leave examples/results/distill_stdlib.json alone"
    table = _rows(_section("docs/tasks.md", "## Knowledge distillation"))
    students = report["students"]
    assert set(students) == set(table) - {"model", "unigram", "byte 5-gram", "teacher"}
    assert students["student alone"]["distill"] is None
    assert students["distilled, alpha 0.9, T 1, hidden states 1"]["distill"] == {
        "alpha": 0.9,
        "temperature": 1.0,
        "hidden": 1.0,
    }
    assert report["teacher"]["steps"] == 2 and report["teacher"]["params"] > students["student alone"]["params"]
    alone = students["student alone"]["eval"]["perplexity"]
    for row in students.values():
        assert row["steps"] == 2 and row["eval"]["tokens"] == report["teacher"]["eval"]["tokens"]
        assert row["perplexity_vs_alone"] == round(row["eval"]["perplexity"] / alone - 1, 4)
    # the same seed and data: only the teacher's terms make the distilled students differ from the alone one
    assert len({round(row["eval"]["perplexity"], 6) for row in students.values()}) == len(students)
    assert report["baselines"] == {k: baselines[k] for k in ("unigram_eval_perplexity", "byte_5gram_eval_perplexity")}


def test_translation_and_digit_strings_sections_state_their_sources():
    """docs/tasks.md: the translation baseline row is examples/results/translation_baselines.json,
    mmcore's rows examples/results/translation.json and the sample translations rows of
    examples/results/translation_predictions.jsonl (all written by translation.py --train); the digit
    strings baselines are examples/results/digit_strings_baselines.json and
    mmcore's row is examples/results/digit_strings.json (digit_strings.py --train), for the spec's steps."""
    mt = _json("examples/results/translation_baselines.json")
    section = _section("docs/tasks.md", "## Machine translation, English to Spanish")
    assert _rows(section)["copy the source"][:2] == [mt["figures"]["copy BLEU"], mt["figures"]["copy chrF"]]
    flat = " ".join(section.split())
    assert f"{mt['data']['train']:,} training and {mt['data']['eval']} held-out pairs" in flat
    # mmcore's rows are examples/results/translation.json, the samples rows of the predictions file
    mm = _json("examples/results/translation.json")["figures"]
    rows = _rows(section)
    greedy, beams = rows["mmcore, 2,500 steps, greedy"], rows["mmcore, 2,500 steps, 4 beams"]
    assert greedy[:3] == [mm[f"mmcore greedy {k}"] for k in ("BLEU", "chrF", "exact")]
    assert beams[:3] == [mm[f"mmcore 4 beams {k}"] for k in ("BLEU", "chrF", "exact")]
    assert greedy[3] == mm["mmcore held-out perplexity"]
    import json

    predictions = ROOT / "examples" / "results" / "translation_predictions.jsonl"
    written = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
    by_source = {r["source"].replace("|", "\\|"): [r["prediction"], r["reference"]] for r in written}
    samples = {k: v for k, v in rows.items() if len(v) == 2 and k != "English"}  # the 3-column table
    assert len(samples) == 8 and all(by_source[k] == v for k, v in samples.items()), samples
    assert f"four of the {sum(r['exact'] for r in written)} it gets exactly right" in flat
    strings = _json("examples/results/digit_strings_baselines.json")
    section = _section("docs/tasks.md", "## Several objects in one picture")
    rows = _rows(section)
    assert rows["RBF SVM on each 8x8 cell (told where each digit is)"] == [
        strings["figures"]["svm string"],
        strings["figures"]["svm digit"],
    ]
    assert rows["logistic regression on each 8x8 cell (told where each digit is)"] == [
        strings["figures"]["logistic regression string"],
        strings["figures"]["logistic regression digit"],
    ]
    flat = " ".join(section.split())
    assert f"{strings['strings']['train']:,} training strips, {strings['strings']['eval']} held out" in flat
    # mmcore's row is examples/results/digit_strings.json (digit_strings.py --train), trained on the same
    # split as the baselines file's (the same baseline figures), for the steps the spec holds
    trained = _json("examples/results/digit_strings.json")
    assert trained["baselines"] == strings["baselines"]
    spec = tomllib.loads((ROOT / "examples" / "digit_strings.toml").read_text())
    assert trained["mmcore"]["steps"] == spec["training"]["steps"]
    label = f"mmcore, {spec['training']['steps']:,} steps of {spec['training']['batch_size']} (examples/results/digit_strings.json)"
    assert rows[label] == [trained["figures"]["mmcore string"], trained["figures"]["mmcore digit"]]
    margin = trained["mmcore"]["string"] - trained["baselines"]["rbf_svm_per_cell_string"]
    assert f"the stronger one (the RBF SVM) by {100 * margin:.1f} points" in flat
    seed1 = [
        r
        for r in _json("bench/results_ablate_strings.json")
        if r["setting"] == "base" and r["steps"] == spec["training"]["steps"] and r["seed"] == 1
    ]
    assert f"a second seed of the same spec: {_pct(seed1[-1]['string'], 1)}" in flat
    assert f"one thread, it took {trained['mmcore']['train_seconds_under_load']:.0f} s" in flat


def test_readme_quotes_the_main_jobs_results():
    import json

    readme = (ROOT / "README.md").read_text()
    figures = json.loads((ROOT / "examples" / "results" / "digits_av.json").read_text())["figures"]
    for key in ("caption mmcore", "transcribe mmcore", "match mmcore", "caption svm", "match composed"):
        assert f"{figures[key]}" in readme, (
            f"README.md does not quote {key} = {figures[key]} (examples/results/digits_av.json)"
        )


def test_tuning_tables_are_written_from_the_ablation_results():
    """docs/tuning.md's ablation tables are exactly what bench/ablate_digits.py, ablate_main.py,
    ablate_text.py and ablate_glyphs.py write from their committed results files (--write-docs): a figure edited by hand, or a results file
    rerun without rewriting the page, fails here."""
    import importlib.util
    import json
    import sys

    page = (ROOT / "docs" / "tuning.md").read_text()
    checked = 0
    sys.path.insert(0, str(ROOT / "bench"))  # ablate_main imports ablate_digits
    for name in ("ablate_digits", "ablate_main", "ablate_text", "ablate_glyphs"):
        spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "bench" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        results = json.loads((ROOT / "bench" / f"results_{name}.json").read_text())
        if name in ("ablate_digits", "ablate_main", "ablate_glyphs"):
            sections = [((mod.BEGIN, mod.END), results)]
        else:
            recipes = dict.fromkeys(r["recipe"] for r in results)
            sections = [(mod.markers(r), [x for x in results if x["recipe"] == r]) for r in recipes]
        for (begin, end), rows in sections:
            assert begin in page and end in page, f"docs/tuning.md lacks the markers {begin!r} ... {end!r}"
            written = page.split(begin, 1)[1].split(end, 1)[0]
            assert written.strip() == mod.table(rows).strip(), (
                f"docs/tuning.md's table between {begin!r} and {end!r} is not bench/{name}.py's table of "
                f"bench/results_{name}.json: run `python bench/{name}.py --write-docs`"
            )
            checked += 1
    assert checked >= 4  # the digits' tables, the whole main job's and at least two text recipes


def test_the_long_kill_run_in_the_docs_is_its_results_file():
    """docs/security.md's figures of the 18-kill run are those bench/results_faults_long.json
    holds (written by tests/test_faults.py::test_sigkill_many_times_then_resume_matches with
    MMCORE_FAULT_LOG set)."""
    import json

    run = json.loads((ROOT / "bench" / "results_faults_long.json").read_text())
    assert run["kills"] == len(run["log"]) == run["kills_at_file_operations"] + run["timed_kills"]
    text = " ".join((ROOT / "docs" / "security.md").read_text().split())
    quote = (
        f"{run['kills']} kills ({run['kills_at_file_operations']} at file operations of "
        f"{run['file_operations_of_a_run']}, {run['timed_kills']} timed), all survived"
    )
    assert quote in text, f"docs/security.md does not quote {quote!r} (bench/results_faults_long.json)"


def test_recipe_times_table_is_its_results_file():
    """docs/tasks.md's table of the recipes' training times is what bench/recipe_times.py writes from
    bench/results_recipe_times.json (--write-docs), and it covers every recipe the script knows."""
    import json

    from conftest import load_script

    mod = load_script("bench/recipe_times.py")
    results = json.loads(mod.RESULTS.read_text())
    assert set(results["recipes"]) == set(mod.RECIPES), "rerun bench/recipe_times.py for every recipe"
    page = (ROOT / "docs" / "tasks.md").read_text()
    written = page.split(mod.BEGIN, 1)[1].split(mod.END, 1)[0]
    assert written.strip() == mod.table(results).strip(), "rerun bench/recipe_times.py --write-docs"
    for name, row in results["recipes"].items():  # each figure is the script's arithmetic on what it measured
        if "skipped" in row:
            continue
        for run in row["trainings"]:
            for s in run["stages"]:
                first = (s.get("first_pass_steps", 0), s.get("first_pass_seconds", 0.0))
                assert abs(mod.stage_seconds(s["steps"], s["seconds_per_step"], *first) - s["seconds"]) < 0.1, name
            total = mod.training_seconds(run["stages"], run["evaluations"], run["seconds_per_evaluation"])
            assert abs(total - run["estimated_train_seconds"]) < 0.2, name
        assert abs(mod.recipe_seconds(row["trainings"]) - row["estimated_train_seconds"]) < 0.2, name
        assert row["within_budget"] == (row["estimated_train_seconds"] <= row["budget_seconds"]), name


def test_diabetes_search_table_is_its_results_file():
    """docs/tasks.md's table of the diabetes settings search shows every candidate of
    examples/recipes/results/diabetes_search.json with its per-seed and mean R²."""
    search = _json("examples/recipes/results/diabetes_search.json")
    rows = _rows(_section("docs/tasks.md", "## Regression on tabular data"))
    linear = search.pop("linear baselines on the same 274 / 68 patients")
    assert search, "the search results file lists no candidate"
    for name, result in search.items():
        assert rows.get(name) == [" / ".join(f"{r:.3f}" for r in result["r2"]), f"{result['mean_r2']:.3f}"], name
    pair = f"{linear['linear_regression']['r2']:.3f} / {linear['ridge_cv']['r2']:.3f}"
    assert rows["LinearRegression / RidgeCV on the same 274 / 68 patients"][0] == pair


def test_vision_readme_small_picture_settings_build_the_measured_model():
    """plugins/vision/README.md's settings for small pictures trained from scratch are the ones glyphs rounds 11-12
    measured (`small`: round 9's settings, with the stem's batch norm, now its default): they build one image token
    and those runs' parameter count (bench/results_ablate_glyphs.json)."""
    import json

    import mmcore
    from mmcore.spec import parse_spec

    text = (ROOT / "plugins" / "vision" / "README.md").read_text()
    block = re.search(r"```toml\n(\[encoders\.image\].*?)```", text, re.S)
    assert block, "plugins/vision/README.md lost its small-picture TOML block"
    data = tomllib.loads(block.group(1))
    data.update(spec_version=1, name="small-pictures")
    data["tasks"] = {"letter": {"objective": "classification", "train": "t.jsonl", "labels": list("AEFKMNPRSX")}}
    model = mmcore.build(parse_spec(data, file="README.md"))
    runs = json.loads((ROOT / "bench" / "results_ablate_glyphs.json").read_text())
    runs = runs["runs"] if isinstance(runs, dict) else runs
    measured = {r["parameters"] for r in runs if r["setting"] == "small"}
    assert model.encoders["image"].num_tokens == 1
    assert model.heads["letter"].pooling == "mean"
    assert measured == {sum(p.numel() for p in model.parameters())}, measured
