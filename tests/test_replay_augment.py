"""Replay keeps raw (un-augmented, un-normalised) examples and re-augments them each time it replays them.

Also: replay memories allocate as examples arrive, so a huge budget on a small stream costs only the stream.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cl_bench.components.buffer import LogitReservoirBuffer, ReservoirBuffer
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Standardize, StreamInfo, TensorData
from cl_bench.data.augment import CropFlip
from cl_bench.engine.runner import run
from cl_bench.engine.spec import Protocol, RunSpec

CIFAR_NORM = Standardize(255.0, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def cifar_like(n: int, augment: bool, seed: int = 0) -> TensorData:
    """``n`` random CIFAR-shaped uint8 images with the CIFAR normalisation (and crop + flip when ``augment``)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return TensorData(x, torch.arange(n) % 10, CIFAR_NORM, augment=CropFlip() if augment else None)


def batches(data: TensorData, bs: int, seed: int = 0) -> list[Batch]:
    """Training batches as the CL loop builds them (raw inputs and view attached, one generator per batch)."""
    out = []
    for b, i in enumerate(range(0, len(data), bs)):
        idx = torch.arange(i, min(i + bs, len(data)))
        gen = torch.Generator().manual_seed(seed + b) if data.augment is not None else None
        x, y, raw = data.train_batch(idx, generator=gen)
        out.append(Batch(x, y, None, 0, raw=raw, view=data.view))
    return out


class Spy:
    """Records the inputs of every forward pass of a network."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.seen: list[torch.Tensor] = []
        net.register_forward_pre_hook(lambda _m, args: self.seen.append(args[0].detach().clone()))


def make(method: str, **config: Any) -> Any:
    m = METHODS.create(method, **config)
    m.setup(StreamInfo(input_shape=(3, 32, 32), n_classes=10, n_experiences=1, setting="class_il"), seed=0)
    return m


@pytest.mark.parametrize("augment", [True, False])
def test_er_replays_one_stored_example_with_fresh_augmentation(augment: bool) -> None:
    data = cifar_like(9, augment)
    er = make("er", buffer_size=1, replay_batch_size=1, hidden_size=16)
    first, *rest = batches(data, 1)
    er.observe(first)
    assert torch.equal(er.buffer.x[:1], data.x[:1])  # memory = the raw uint8 image, not the augmented view
    assert er.buffer.x.dtype == torch.uint8 and 0 <= er.buffer.x.float().div(255).min() <= 1
    er.buffer.add = lambda *a, **k: None  # keep that single example in memory
    spy = Spy(er.net)
    for b in rest[:2]:
        er.observe(b)
    replays = [x[-1] for x in spy.seen]  # ER's step batch = incoming + memory: the last row is the replay
    assert len(replays) == 2
    if augment:
        assert not torch.equal(replays[0], replays[1])  # a different crop / flip at each replay
        assert not torch.equal(replays[0], CIFAR_NORM(data.x[:1])[0])
    else:
        assert torch.equal(replays[0], replays[1])
        assert torch.equal(replays[0], CIFAR_NORM(data.x[:1])[0])  # exactly what the net saw when it arrived


@pytest.mark.parametrize("method", ["der", "derpp", "er_ace"])
def test_reservoir_methods_keep_raw_and_reaugment(method: str) -> None:
    data = cifar_like(6, augment=True)
    m = make(method, buffer_size=1, replay_batch_size=1, hidden_size=16)
    first, *rest = batches(data, 1)
    m.observe(first)
    stored_logits = None if method == "er_ace" else m.buffer.logits.clone()
    m.buffer.add = m.buffer.add_with_logits = lambda *a, **k: None
    assert torch.equal(m.buffer.x[:1], data.x[:1])
    spy = Spy(m.net)
    for b in rest[:2]:
        m.observe(b)
    # one forward of the incoming batch, then the memory forwards (one for DER and ER-ACE, two for DER++)
    per_step = len(spy.seen) // 2
    replays = [spy.seen[k * per_step + 1][0] for k in range(2)]
    assert not torch.equal(replays[0], replays[1])
    if stored_logits is not None:
        assert torch.equal(m.buffer.logits, stored_logits)  # DER keeps the logits as stored


def _experience(data: TensorData) -> Any:
    from cl_bench.core.types import Experience

    return Experience(0, data, data, tuple(range(10)))


@pytest.mark.parametrize("method", ["er_cb", "agem", "gem", "gdumb"])
def test_memory_filled_from_the_experience_holds_raw_inputs(method: str) -> None:
    if method == "gem":
        pytest.importorskip("quadprog")
    data = cifar_like(20, augment=True)
    config: dict[str, Any] = {"hidden_size": 16}
    config.update({"er_cb": {"buffer_size": 10}, "agem": {"patterns_per_exp": 10}, "gem": {"patterns_per_exp": 10},
                   "gdumb": {"buffer_size": 10, "fit_epochs": 1}}[method])  # fmt: skip
    m = make(method, **config)
    exp = _experience(data)
    m.begin_experience(exp)
    for b in batches(data, 5):
        m.observe(b)
    m.end_experience(exp)
    memory = {"er_cb": lambda: m.buffer.x, "gdumb": lambda: m.buffer.x, "agem": lambda: m.mem_x,
              "gem": lambda: m.memory[0][0]}[method]()  # fmt: skip
    assert memory.dtype == torch.uint8 and len(memory) == 10
    rows = {bytes(r.numpy()) for r in data.x}
    assert all(bytes(r.numpy()) in rows for r in memory)  # every stored example is an un-augmented original
    if method != "gdumb":  # the replay of the next batches re-augments the memory
        spy = Spy(m.net)
        nxt = batches(data, 5, seed=100)
        m.observe(nxt[0])
        m.observe(nxt[1])
        assert spy.seen and all(x.dtype == torch.float32 for x in spy.seen)


def test_reservoir_grows_by_doubling_up_to_the_budget() -> None:
    buf = ReservoirBuffer(10**9)
    x = torch.zeros(1438, 3, 32, 32, dtype=torch.uint8)
    sizes = []
    for i in range(0, 1438, 100):
        buf.add(x[i : i + 100], torch.zeros(len(x[i : i + 100]), dtype=torch.long))
        sizes.append(len(buf.x))
    assert len(buf) == 1438 and buf.seen == 1438
    assert sizes[0] == 100 and sizes[1] == 200 and sizes[2] == 400 and sizes[-1] <= 2 * 1438
    assert buf.x.numel() * buf.x.element_size() < 20 * 2**20  # megabytes, not the 3 TB of 10**9 slots
    small = LogitReservoirBuffer(5)
    for i in range(4):
        small.add_with_logits(x[i * 3 : i * 3 + 3], torch.arange(3), torch.randn(3, 10))
    assert len(small.x) == len(small.logits) == 5 and len(small) == 5 and small.seen == 12


def test_reservoir_contents_do_not_depend_on_growth() -> None:
    # Same draws and slots as a buffer preallocated at its capacity would give: the reservoir is unchanged.
    torch.manual_seed(0)
    x, y = torch.randn(300, 4), torch.randint(0, 10, (300,))
    a, b = ReservoirBuffer(50, seed=3), ReservoirBuffer(50, seed=3)
    b.x, b.y, b.t = torch.empty(50, 4), torch.empty(50, dtype=torch.long), torch.full((50,), -1)
    for i in range(0, 300, 7):
        a.add(x[i : i + 7], y[i : i + 7])
        b.add(x[i : i + 7], y[i : i + 7])
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def write_cifar10(folder: Path, per_batch: int = 12) -> None:
    """``cifar-10-batches-py/`` in torchvision's on-disk format (pickled dicts of uint8 rows)."""
    d = folder / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        blob = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                b"labels": [int(v) for v in rng.integers(0, 10, per_batch)]}  # fmt: skip
        (d / name).write_bytes(pickle.dumps(blob, protocol=2))
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_cases_per_batch": per_batch}
    (d / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def test_er_run_on_split_cifar10_with_a_huge_budget(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "data")
    memories: list[torch.Tensor] = []

    class Watched(METHODS.get("er").obj):  # type: ignore[misc, name-defined]
        def end_experience(self, exp: Any) -> None:
            super().end_experience(exp)
            memories.append(self.buffer.x)

    spec = RunSpec(method="er", method_config={"buffer_size": 10**9, "hidden_size": 16}, scenario="split_cifar10",
                   scenario_config={"root": str(tmp_path / "data"), "download": False},
                   protocol=Protocol(eval_every=0, epochs=1, batch_size=10))  # fmt: skip
    record = run(spec, tmp_path / "runs", method_cls=Watched)
    assert record["status"] == "completed"
    final = memories[-1]
    assert final.dtype == torch.uint8 and 60 <= len(final) <= 120  # 60 training images: storage doubled, not 10**9
