"""The decode path under mutated input: every outcome is an image or a PixStream error with a
code. A bounded run here; `make fuzz` runs bench/fuzz.py for as long as asked."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import fuzz
from pixstream import errors
from pixstream.ops import codec
from pixstream.worker.renderpool import RenderPool

pytestmark = pytest.mark.unit

CRASHERS = sorted((Path(__file__).parents[1] / "data" / "fuzz").iterdir())
#: The foreign exception each regression file raised from the codec before issue 10.
BEFORE = {"typeerror": "TypeError", "indexerror": "IndexError", "keyerror": "KeyError",
          "structerror": "struct.error", "runtimeerror": "RuntimeError"}  # fmt: skip


def test_every_seed_is_a_valid_image_of_its_format() -> None:
    seeds = fuzz.seeds()
    assert {codec.sniff_format(data[:16]) for data in seeds.values()} == {
        "jpeg", "png", "gif", "webp", "tiff", "avif"
    }  # fmt: skip
    for name, data in seeds.items():
        assert fuzz.run_case(data).code in ("ok", "animation_not_supported"), name


@settings(
    max_examples=4000,
    deadline=None,
    derandomize=True,  # the same cases on every run of `make test`; `make fuzz` explores
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    name=st.sampled_from(sorted(fuzz.seeds())),
    rng=st.randoms(use_true_random=False),
    rounds=st.sampled_from([1, 2, 4, 8]),
)
def test_mutated_inputs_end_as_an_image_or_a_coded_error(
    name: str, rng: random.Random, rounds: int
) -> None:
    data = fuzz.mutate(fuzz.seeds()[name], rng, rounds=rounds)
    outcome = fuzz.run_case(data)
    assert outcome.crash is None, f"{outcome.crash!r} from a mutated {name}"
    assert outcome.code == "ok" or outcome.code.islower()


# As in production: Pillow's warnings about odd tags are warnings, not the errors pytest makes.
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", CRASHERS, ids=[p.name for p in CRASHERS])
def test_fuzzed_crashers_are_corrupt_image(path: Path) -> None:
    kind = path.name.split("-")[0]
    assert kind in BEFORE, f"name regression files <exception>-<hash>.<ext>: {path.name}"
    with pytest.raises(errors.CorruptImage) as info:
        codec.decode(path.read_bytes(), max_pixels=fuzz.MAX_PIXELS, max_frames=fuzz.MAX_FRAMES)
    cause = info.value.__cause__
    assert cause is not None
    name = f"{type(cause).__module__}.{type(cause).__name__}".removeprefix("builtins.")
    assert name == BEFORE[kind]  # still the same foreign exception inside, now with a code


def test_the_crashers_are_small() -> None:
    assert CRASHERS
    assert all(path.stat().st_size < 4096 for path in CRASHERS)


async def test_peak_rss_of_a_fuzz_batch_stays_under_the_bound() -> None:
    # In a fresh child, so the peak is the batch's own and not this test process's.
    async with RenderPool(processes=1, memory_limit_bytes=2_000_000_000) as pool:
        batch = await pool.call(fuzz.run_batch, 7, 10_000)
    assert not batch.crashes, batch.crashes[:3]
    assert sum(batch.codes.values()) == 10_000
    assert batch.codes["ok"] > 500  # the mutations still reach the decoders' insides
    assert batch.peak_rss_mb < fuzz.RSS_BOUND_MB
