"""Training-step time of the main job's image encoder: linear patch stem vs convolutional stem.

Side by side in one process, alternating (so both see the same machine load), 30 caption
steps each after one warm-up step, one thread. Writes bench/results_stem_step_time.json.

    OMP_NUM_THREADS=1 python bench/stem_step_time.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> int:
    import ablate_digits as a
    import torch

    import mmcore
    from mmcore import atomic_write_text
    from mmcore.spec import parse_spec

    torch.set_num_threads(1)
    out: dict[str, list[float]] = {}
    for _ in range(2):
        for stem in ("patch", "conv"):
            data = a.base_spec(40, {"encoders.image.stem": stem, "training.progress": False})
            spec = parse_spec(data, file=str(a.SPEC))
            trainer = mmcore.Trainer(mmcore.build(spec), spec.tasks, spec.training)
            trainer.train_step()  # warm-up
            t0 = time.perf_counter()
            for _ in range(30):
                trainer.train_step()
            out.setdefault(stem, []).append((time.perf_counter() - t0) / 30)
    ratio = sum(out["conv"]) / sum(out["patch"])
    result = {"seconds_per_step": out, "conv_over_patch": ratio, "threads": 1, "note": "shared machine, under load"}
    atomic_write_text(HERE / "results_stem_step_time.json", json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
