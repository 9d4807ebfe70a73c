"""Does a long prompt stall the router's event loop while it is tokenised? (issue #11, item 2)

A byte-level BPE tokenizer is trained here (2,000 tokens; the ``tokenizers`` library, as the
router uses for a model's ``tokenizer.json``), a random-word prompt of ``--words`` words goes
through the router to a fake decode engine, and ``GET /livez`` is polled every 50 ms meanwhile.
Printed: how long the request took and the longest gap between two ``/livez`` answers, with the
router's GIL-free path (``Tokenizer.encode_batch`` in a worker thread) and, for comparison,
with plain ``encode`` in that thread (which holds the GIL, so the loop cannot run).

    python bench/tokenize_stall.py --words 100000
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import tempfile
import time
from pathlib import Path

import aiohttp
from prfaas.engine.router import tokenizer as router_tokenizer
from prfaas.engine.router.config import RouterConfig
from prfaas.engine.router.fakes import FakeEngine
from prfaas.engine.router.service import RouterService
from tokenizers import Tokenizer, models, pre_tokenizers, trainers


def _words(seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        "".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 8))) for _ in range(3000)
    ]


def _train(out: Path) -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rng = random.Random(0)
    words = _words(0)
    corpus = [" ".join(rng.choices(words, k=50)) for _ in range(2000)]
    trainer = trainers.BpeTrainer(
        vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    tok.save(str(out / "tokenizer.json"))


async def _run(tok_dir: Path, prompt: str, gil_free: bool) -> tuple[float, int, float]:
    tok = router_tokenizer.FastPromptTokenizer(tok_dir)
    if not gil_free:  # what the router did before: encode, which holds the GIL
        tok._encode = lambda text, add_special_tokens=True: list(  # type: ignore[method-assign]
            tok._tok.encode(text, add_special_tokens=add_special_tokens).ids
        )
    async with FakeEngine("decode") as dec:
        cfg = RouterConfig.model_validate(
            {
                "model": "m",
                "local_datacenter": "a",
                "datacenters": {"a": {"prefill": [], "decode": [dec.url]}},
                "max_model_len": 4_000_000,
                "health": {"enabled": False},
            }
        )
        async with (
            RouterService(cfg, port=0, tokenizer=tok) as svc,
            aiohttp.ClientSession() as http,
        ):
            answered: list[float] = []
            done = asyncio.Event()

            async def poll() -> None:
                while not done.is_set():
                    async with http.get(svc.url + "/livez") as r:
                        await r.read()
                    answered.append(time.perf_counter())
                    await asyncio.sleep(0.05)

            poller = asyncio.create_task(poll())
            await asyncio.sleep(0.3)
            t0 = time.perf_counter()
            body = {"prompt": prompt, "max_tokens": 1}
            async with http.post(svc.url + "/v1/completions", json=body) as r:
                await r.read()
            took = time.perf_counter() - t0
            done.set()
            await poller
    gaps = [b - a for a, b in itertools.pairwise(answered)]
    return took, len(answered), max(gaps, default=0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--words", type=int, default=100_000, help="prompt length in words")
    args = p.parse_args()
    rng = random.Random(1)
    prompt = " ".join(rng.choices(_words(0), k=args.words))
    with tempfile.TemporaryDirectory() as d:
        _train(Path(d))
        print(f"prompt: {len(prompt) / 1e6:.2f} MB of text; /livez polled every 0.05 s")
        for gil_free, name in ((False, "encode (holds the GIL)"), (True, "encode_batch (router)")):
            took, n, gap = asyncio.run(_run(Path(d), prompt, gil_free))
            print(
                f"{name:24s} request {took:6.2f} s  /livez answers {n:4d}  longest gap {gap:5.2f} s"
            )


if __name__ == "__main__":
    main()
