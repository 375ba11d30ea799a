"""The LLaVA-style recipe (examples/recipes/llava_digits.py), end to end at tiny sizes: pretrain a
Llama-shaped LM, export it as a Hugging Face folder, load it into the captioning spec, train the
projector (and vision encoder) with the LM frozen, then the LM's LoRA adapters too."""

from __future__ import annotations

import json
import sys

import torch
from conftest import EXAMPLES

sys.path.insert(0, str(EXAMPLES / "recipes"))
import digits_av  # noqa: E402
import llava_digits as recipe  # noqa: E402

TINY_LM = ["backbone.width=32", "backbone.mlp_hidden=64", "training.batch_size=4", "training.warmup_steps=1"]
NAMES = ["zero", "one", "two", "three"]


def _data(tmp_path):
    corpus = tmp_path / "stdlib"
    corpus.mkdir()
    text = "Return the sum of a and b.\nOpen the file and read its lines.\nSplit the string on commas.\n"
    (corpus / "corpus_train.txt").write_text(text * 4)
    (corpus / "corpus_eval.txt").write_text(text)
    digits = tmp_path / "digits"
    (digits / "img").mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 8), ("eval", 4)):
        rows = []
        for i in range(n):
            pixels = (torch.rand(16, 16, generator=gen) * 255).int().tolist()
            name = f"img/{split}{i}.png"
            (digits / name).write_bytes(digits_av.png_gray(pixels))
            rows.append({"image": name, "target": NAMES[i % 4]})
        (digits / f"caption_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return corpus, digits


def test_pretrain_export_load_then_frozen_lm_stage_then_lora_stage(tmp_path):
    corpus, digits = _data(tmp_path)
    caption = [*TINY_LM, "training.warmup_steps=1", "training.log_every=1", "encoders.image.dim=16"]
    run = recipe.pipeline(
        tmp_path / "work",
        corpus,
        digits,
        lm_steps=3,
        stage1_steps=3,
        stage2_steps=3,
        lm_overrides=TINY_LM,
        caption_overrides=caption,
        scratch=False,
    )
    folder = run["folder"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_key_value_heads"] == 2
    lm = {k: v for k, v in run["lm"].state_dict().items() if k.startswith(("backbone.", "encoders.text."))}
    # the exported folder is what the captioner's LM starts from: build stage 1's spec untrained
    fresh = recipe.caption_spec(folder, digits, 3, caption)
    import mmcore

    loaded = mmcore.build(fresh).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in lm.items()), "the HF folder did not round-trip the LM"
    # stage 1: the LM is frozen, the projector and the vision encoder trained
    s1 = run["stage1"].state_dict()
    assert all(torch.equal(s1[k], v) for k, v in lm.items()), "stage 1 changed the frozen LM"
    for part in ("projectors.image.", "encoders.image."):
        keys = [k for k in s1 if k.startswith(part)]
        assert keys and any(not torch.equal(s1[k], loaded[k]) for k in keys), f"stage 1 did not train {part}"
    # stage 2: starts from stage 1's image side, trains LoRA adapters on the backbone
    s2 = run["stage2"].state_dict()
    spec2 = recipe.caption_spec(
        folder, digits, 3, [*caption, *recipe.stage_two_overrides(tmp_path / "work" / "stage1")]
    )
    start2 = mmcore.build(spec2).state_dict()
    for k in s1:
        if k.startswith(("projectors.image.", "encoders.image.", "fusion.")):
            assert torch.equal(start2[k], s1[k]), f"stage 2 did not start from stage 1's {k}"
    lora_b = [k for k in s2 if k.startswith("backbone.") and k.endswith("lora_B")]
    assert lora_b and any(s2[k].abs().sum() > 0 for k in lora_b), "stage 2 did not train the LoRA adapters"
    base = {k.replace(".base.", "."): v for k, v in s2.items() if ".base." in k}
    assert base and all(torch.equal(v, lm[k]) for k, v in base.items()), "stage 2 changed the LM's frozen weights"
    held_out = [json.loads(x) for x in (digits / "caption_eval.jsonl").read_text().splitlines()]
    scores = recipe.caption_scores(run["stage2"], digits, held_out)
    assert 0.0 <= scores["exact_match"] <= scores["first_word"] <= 1.0 and len(scores["examples"]) == 4


def test_the_captioning_spec_loads_a_transformers_llama_folder_unchanged(tmp_path):
    """The recipe's captioning spec, as committed, reads a folder transformers wrote
    (``save_pretrained`` of a random LlamaForCausalLM with the spec's sizes): the folder a user
    with a real checkpoint points it at. The LM then computes what transformers computes."""
    import transformers

    import mmcore

    config = transformers.LlamaConfig(
        vocab_size=264,  # text.bytes' ids
        hidden_size=96,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.save_pretrained(tmp_path / "llama", safe_serialization=True)
    _, digits = _data(tmp_path)
    model = mmcore.build(recipe.caption_spec(tmp_path / "llama", digits, 1))
    assert model.load_report is not None and "LlamaForCausalLM" in str(model.load_report)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids).logits
        table = model.encoders["text"].token_embedding
        got = model.backbone(embeds=table(ids)) @ table.weight.T  # the tied head's logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    image = model.encoders["image"]  # the main job's reading of a scan: one token after three 3x3 convolutions
    assert image.num_tokens == 1 and image.config.stem_layers == 3, image
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not {n for n in trainable if n.startswith(("backbone.", "encoders.text."))}, "the LM is not frozen"
    assert any(n.startswith("projectors.image.") for n in trainable), "the projector does not train"
