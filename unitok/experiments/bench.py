"""`unitok bench`: speed as ratios against a baseline measured in the same run, on one machine.

Sampling: seconds per image of RDPM sampling (the quickstart's T and groups per block: one pass
per group, each feeding the cells the last group drew and the next group's queries after the
cached prompt) against raster-AR sampling (N sequential one-token passes with a KV cache), for N
positions, batch sizes and with/without guidance. RDPM forwards about twice N tokens per block
against AR's N in all, but takes `passes` sequential steps instead of N: it wins on latency, and
can lose on throughput; the table shows both.

Training: tokens/s of one optimizer step on mixed streams (4D masks of segments, unitok's loss)
against a plain `transformers` causal-LM step (``labels=``, causal mask) of the same size and length.
Tokenize: items/s of `unitok tokenize` (source, shard writer, parquet, manifest) against the raw
decode + encode of the same items in the same process (no shards, no bookkeeping), and with 2
local workers against 1, on digits-world images, tones and clips with the recipes' tokenizers,
on the CPU (local workers are CPU processes). One worker already spreads the encoder over every
core (torch's intra-op threads); a second worker adds what that leaves, mostly decoding, which
runs on one thread per process. Two workers against one worker held to one thread shows how the
workers themselves scale.
Speed does not depend on training, so models have random weights (the quickstart's size).
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from unitok.benchmarks.digits.clips import ClipWorldConfig
from unitok.benchmarks.digits.scenes import DigitsWorldConfig
from unitok.benchmarks.digits.tones import ToneWorldConfig
from unitok.benchmarks.digits.world import write_world_folders
from unitok.configs import SHIPPED
from unitok.core.seeds import item_generators
from unitok.lm.batch import collate
from unitok.lm.documents import MediaSpan, task_document
from unitok.lm.layout import DecodeSchedule, StreamLayout
from unitok.lm.losses import stream_loss
from unitok.lm.model import ModelSpec, StreamModel, build_transformer
from unitok.lm.sampling import GroupSampler, RasterSampler, SamplerConfig
from unitok.tokenizer.rdpm import QuantizerConfig, RDPMQuantizer
from unitok.tokenizer.vocabulary import MediaLayout, Vocabulary

TOKENIZER_SPECS = SHIPPED / "tokenizers"


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"cpu": cpu, "threads": torch.get_num_threads(), "device": device, "torch": torch.__version__}


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    return statistics.median(_seconds(fn) for _ in range(repeats))


def _interleaved(sides: dict, rounds: int) -> dict:
    """Median seconds of every side, after one warm-up each, timed in interleaved rounds so that
    drift in machine load hits every side alike."""
    for fn in sides.values():
        fn()
    seconds = {side: [] for side in sides}
    for _ in range(rounds):
        for side, fn in sides.items():
            seconds[side].append(_seconds(fn))
    return {side: statistics.median(times) for side, times in seconds.items()}


def _setup(spec: ModelSpec, num_blocks: int, num_positions: int, codebook: int = 512, text: int = 512,
           latent_channels: int = 4):
    """A vocabulary with one image range of spans up to `num_blocks` × `num_positions`, a random
    model, and a random quantizer for the codes' running states."""
    vocab = Vocabulary.build(text, "bench", [MediaLayout("image", "image", codebook, "bench", num_blocks, num_positions,
                                                         latent_channels)])
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    quantizer = RDPMQuantizer(QuantizerConfig(noise_steps=num_blocks - 1, codebook_size=codebook), latent_channels)
    return vocab, StreamModel(build_transformer(spec, vocab)).to(device).eval(), quantizer.to(device)


def bench_sampling(spec: ModelSpec, schedule: DecodeSchedule, positions=(64, 256), batches=(1, 64),
                   repeats: int = 2) -> list[dict]:
    """RDPM with the groups of `schedule` per generated block (T = len(groups)) against raster AR,
    per N and batch."""
    groups = schedule.groups
    rows = []
    for n in positions:
        vocab, model, quantizer = _setup(spec, len(groups) + 1, n)
        raster_vocab, _, raster_quantizer = _setup(spec, 1, n)
        prompt = (torch.arange(8) + vocab.range("text").offset).tolist()
        for batch in batches:
            for guidance in (1.0, 3.0):
                rdpm_sampler = GroupSampler(SamplerConfig(guidance_scale=guidance), schedule)
                raster_sampler = RasterSampler(SamplerConfig(guidance_scale=guidance))
                first = torch.randint(0, 512, (batch, 1, n), device=quantizer.codebook.device)
                rdpm = _timed(lambda: rdpm_sampler.sample(model, vocab, "image", quantizer, [prompt] * batch, first,
                                                          item_generators(range(batch))), repeats)
                raster = _timed(lambda: raster_sampler.sample(model, raster_vocab, "image", raster_quantizer,
                                                              [prompt] * batch, None, item_generators(range(batch))),
                                repeats)
                rows.append({
                    "positions": n, "batch": batch, "guidance": guidance > 1, "groups": list(groups),
                    "rdpm_s_per_image": rdpm / batch, "raster_s_per_image": raster / batch,
                    "rdpm_sequential_steps": schedule.passes, "raster_sequential_steps": n,
                    "rdpm_token_forwards": sum(bounds[-2] + n for bounds in schedule.bounds(n)),
                    "raster_token_forwards": n,
                    "speedup": raster / rdpm,  # > 1: RDPM is faster
                })
                print(f"  sampling N={n:<4} batch={batch:<3} guidance={guidance > 1!s:<5} "
                      f"rdpm {rdpm / batch:.4f}s/img  raster {raster / batch:.4f}s/img  speedup {raster / rdpm:.2f}x")
    return rows


def bench_training(spec: ModelSpec, schedule: DecodeSchedule, positions: int = 64, batch: int = 8,
                   repeats: int = 3) -> dict:
    """One optimizer step on mixed streams (generated blocks in the groups of `schedule`) vs a
    plain causal-LM step, same shapes, interleaved."""
    steps = len(schedule.groups)
    vocab, model, quantizer = _setup(spec, steps + 1, positions)
    layout = StreamLayout(decode={"image": schedule})
    model.train()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    docs = []
    for i in range(batch):
        text = (torch.randint(0, 512, (10,), generator=g) + vocab.range("text").offset).tolist()
        media = torch.randint(0, 512, (1, steps + 1, positions), generator=g)
        task = "text_to_image" if i % 4 else "image_to_text"  # mixed directions in one batch
        decided, undecided = (inputs[0].cpu() for inputs in quantizer.block_inputs(media.to(device)))
        span = MediaSpan("image", media[0] + vocab.range("image").offset, decided, undecided, ())
        bounds = schedule.bounds(positions) if task == "text_to_image" else None
        docs.append(task_document(vocab, layout, task, text, span, bounds))
    ours = collate([[d] for d in docs], vocab.special_id("<pad>")).to(device)
    plain_ids = ours.input_ids.clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def unitok_step():
        stream_loss(model, ours).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def plain_step():
        model.transformer(input_ids=plain_ids, labels=plain_ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    tokens = ours.input_ids.numel()
    seconds = _interleaved({"unitok": unitok_step, "plain": plain_step}, repeats)
    result = {"tokens_per_step": tokens, "sequence_length": ours.input_ids.shape[1], "batch": batch,
              "unitok_tokens_per_s": tokens / seconds["unitok"],
              "plain_causal_lm_tokens_per_s": tokens / seconds["plain"]}
    result["tokens_per_s_ratio"] = result["unitok_tokens_per_s"] / result["plain_causal_lm_tokens_per_s"]
    print(f"  training: unitok {result['unitok_tokens_per_s']:.0f} tok/s, plain causal LM "
          f"{result['plain_causal_lm_tokens_per_s']:.0f} tok/s, ratio {result['tokens_per_s_ratio']:.2f}")
    return result


TOKENIZE_WORLDS = {  # modality: (its digits world of `n` training items, the recipes' tokenizer spec)
    "image": (lambda n: DigitsWorldConfig(train_scenes=n, heldout_scenes=1), "image-rdpm-32.yaml"),
    "audio": (lambda n: ToneWorldConfig(train_clips=n, heldout_clips=1), "audio-rdpm-dtmf.yaml"),
    "video": (lambda n: ClipWorldConfig(train_clips=n, heldout_clips=1), "video-rdpm-clips.yaml"),
}


def bench_tokenize(modality: str, items: int, items_per_shard: int, batch: int) -> dict:
    """`unitok tokenize` on a folder of digits-world items, against a bare decode + encode loop."""
    from unitok.data.shard_writer import ShardWriter, TokenizeSettings, item_seed
    from unitok.data.sources import FolderSource
    from unitok.tokenizer.media_tokenizer import MediaTokenizer, TokenizerSpec
    from unitok.tokenizer.text_bpe import TextBPE, TextBPEConfig

    world, spec = TOKENIZE_WORLDS[modality]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_world_folders(world(items), {"train": tmp / "items"})
        source = FolderSource(tmp / "items")
        torch.manual_seed(0)
        tokenizer = MediaTokenizer(TokenizerSpec.load(TOKENIZER_SPECS / spec)).eval()
        text = TextBPE.train([item.caption for item in source], TextBPEConfig(vocab_size=320))
        vocab = Vocabulary.build(text.vocab_size, text.content_hash(), [tokenizer.layout()])
        settings = TokenizeSettings(items_per_shard=items_per_shard, batch_size=batch)

        def raw():
            for start in range(0, len(source), batch):
                chunk = [source[i] for i in range(start, min(len(source), start + batch))]
                x = torch.stack([tokenizer.adapter.to_tensor(item.open()) for item in chunk])
                with torch.no_grad():
                    tokenizer.encode_tensor(x, [item_seed(0, item.key, 0) for item in chunk])
                for item in chunk:
                    text.encode(item.caption)

        def tokenize(workers, threads=None):
            out = tmp / f"shards-{workers}-{time.monotonic_ns()}"
            default = torch.get_num_threads()
            torch.set_num_threads(threads or default)
            try:
                ShardWriter(out, tokenizer, text, vocab, settings, device="cpu").write(source, workers=workers)
            finally:
                torch.set_num_threads(default)

        seconds = _interleaved({"raw": raw, "one": lambda: tokenize(1), "two": lambda: tokenize(2),
                                "one_thread": lambda: tokenize(1, threads=1)}, rounds=3)
    per_s = {side: items / s for side, s in seconds.items()}
    result = {"items": items, "items_per_shard": items_per_shard, "raw_decode_encode_items_per_s": per_s["raw"],
              "tokenize_items_per_s": per_s["one"], "tokenize_2_workers_items_per_s": per_s["two"],
              "tokenize_1_thread_items_per_s": per_s["one_thread"],
              "tokenize_vs_raw_ratio": per_s["one"] / per_s["raw"],
              "workers_2_vs_1_speedup": per_s["two"] / per_s["one"],
              "workers_2_vs_1_thread_speedup": per_s["two"] / per_s["one_thread"]}
    print(f"  tokenize {modality}: raw {per_s['raw']:.0f} items/s, unitok tokenize {per_s['one']:.0f} items/s "
          f"(ratio {result['tokenize_vs_raw_ratio']:.2f}), 2 workers {per_s['two']:.0f} items/s "
          f"(speedup {result['workers_2_vs_1_speedup']:.2f}; {result['workers_2_vs_1_thread_speedup']:.2f} "
          f"over one worker on one thread)")
    return result


def quickstart_settings() -> tuple[ModelSpec, DecodeSchedule]:
    """The quickstart's transformer size and the decode schedule of its images."""
    from unitok.recipe.schema import load_recipe

    loaded = load_recipe("quickstart")
    steps = loaded.tokenizer_specs["image"].quantizer.noise_steps
    layout = loaded.recipe.layout.with_default_schedules({"image": steps})
    return loaded.model_spec, layout.schedule("image")


def run_bench(quick: bool = False) -> dict:
    """Tokenize first: its workers fork, before the other benches can start CUDA."""
    spec, schedule = quickstart_settings()
    if quick:  # smoke test sizes
        spec = ModelSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
        tokenize = {m: bench_tokenize(m, items=16, items_per_shard=4, batch=4) for m in TOKENIZE_WORLDS}
        schedule = DecodeSchedule(groups=(3, 1))
        rows = bench_sampling(spec, schedule, positions=(8, 16), batches=(1, 2), repeats=1)
        training = bench_training(spec, schedule, positions=8, batch=2, repeats=1)
    else:
        tokenize = {m: bench_tokenize(m, items, items_per_shard=items // 8, batch=64)
                    for m, items in (("image", 2048), ("audio", 512), ("video", 512))}
        rows = bench_sampling(spec, schedule)
        training = bench_training(spec, schedule)

    def speedup(n, batch):
        return next(r["speedup"] for r in rows if r["positions"] == n and r["batch"] == batch and not r["guidance"])

    n_small, n_large = sorted({r["positions"] for r in rows})
    b_small, b_large = sorted({r["batch"] for r in rows})
    return {
        "machine": _machine(),
        "model": vars(spec),
        "sampling": {
            f"n{n_small}_b{b_small}_speedup": speedup(n_small, b_small),
            f"n{n_large}_b{b_small}_speedup": speedup(n_large, b_small),
            f"n{n_large}_b{b_large}_speedup": speedup(n_large, b_large),
            "rows": rows,
        },
        "training": training,
        "tokenize": tokenize,
    }
