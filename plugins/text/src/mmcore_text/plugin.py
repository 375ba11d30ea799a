"""The ``mmcore`` entry point of mmcore-text: registers ``encoder:text.bytes`` and
``encoder:text.bpe``, and the ``mmcore tokenizer train`` command.

Imports only the options models and mmcore's light modules (pydantic, pluggy): no torch
and no ``tokenizers``, so ``mmcore plugins`` and ``mmcore spec validate`` stay fast. The
factories are lazy ``"module:callable"`` references, imported when a model is built; the
command imports the trainer when it runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from mmcore import Component, hookimpl

from .config import BPETextConfig, ByteTextConfig

__all__ = ["mmcore_register_components", "mmcore_add_commands"]


@hookimpl
def mmcore_register_components() -> list[Component]:
    return [
        Component(
            kind="encoder",
            name="text.bytes",
            modality="text",
            config=ByteTextConfig,
            factory="mmcore_text.encoder:TokenEmbedding",
            processor="mmcore_text.tokenizer:TextProcessor",
            description="UTF-8 byte tokenizer (256 bytes + specials, vocab 264) and a learned token embedding.",
        ),
        Component(
            kind="encoder",
            name="text.bpe",
            modality="text",
            config=BPETextConfig,
            factory="mmcore_text.encoder:TokenEmbedding",
            processor="mmcore_text.tokenizer:BPETextProcessor",
            description="Byte-level BPE tokenizer (a tokenizer.json) and a learned token embedding.",
        ),
    ]


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    """``mmcore tokenizer train FILES... --vocab-size N --out DIR [--min-frequency K]``."""
    from .bpe import BPETokenizer, train_bpe

    path = train_bpe(args.files, args.vocab_size, args.out, min_frequency=args.min_frequency)
    tok = BPETokenizer.from_file(path)
    print(f"vocab size: {tok.vocab_size}")
    print(f"wrote {path}")
    return 0


@hookimpl
def mmcore_add_commands(subparsers: Any) -> None:
    tp = subparsers.add_parser("tokenizer", help="train byte-level BPE tokenizers (text.bpe)")
    tsub = tp.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND")
    t = tsub.add_parser(
        "train",
        help="train a byte-level BPE tokenizer on text files and write DIR/tokenizer.json",
        description="Train a byte-level BPE tokenizer (every byte covered, special tokens <pad> <bos> <eos> "
        "<mask> <sep> <image> </image> <audio> </audio> with ids 0-8) and write DIR/tokenizer.json, "
        "for encoder text.bpe.",
    )
    t.add_argument("files", nargs="+", metavar="FILE", help="UTF-8 text files to train on")
    t.add_argument(
        "--vocab-size",
        type=int,
        required=True,
        metavar="N",
        help="vocabulary size, at least 265 (256 bytes + 9 specials)",
    )
    t.add_argument("--out", required=True, metavar="DIR", help="folder to write tokenizer.json into (created)")
    t.add_argument(
        "--min-frequency", type=int, default=2, metavar="K", help="merge only pairs seen at least K times (default 2)"
    )
    t.set_defaults(func=cmd_tokenizer_train)
    tp.set_defaults(func=lambda a: (tp.print_help(), 2)[1])
