"""A topic per input: each input's lines reach its own topic (or the default one), once."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.integration.conftest import Shipper, append, base_config
from tests.support.readback import collect_stray_sockets, read_topic

pytestmark = pytest.mark.kafka


def test_two_inputs_to_two_topics_and_one_to_the_default(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Callable[..., Shipper]
) -> None:
    """Lines of inputs with a topic go there, those of an input without one to kafka.topic;
    nothing crosses over, all are confirmed."""
    logs = tmp_path / "logs"
    logs.mkdir()
    alpha, beta = f"{topic}-alpha", f"{topic}-beta"
    cfg = base_config(kafka, topic, tmp_path, [str(logs / "default.log")])
    cfg["inputs"] += [
        {"paths": [str(logs / "alpha.log")], "start_at": "beginning", "topic": alpha},
        {"paths": [str(logs / "beta.log")], "start_at": "beginning", "topic": beta},
    ]
    want = {
        name: [f"{name} {uuid.uuid4().hex} {i}".encode() for i in range(3000)]
        for name in ("default", "alpha", "beta")
    }
    for name, lines in want.items():
        append(logs / f"{name}.log", lines)
    s = start_shipper(cfg)
    s.wait_for(lambda led: led["sent"] == 9000, 60, "all lines sent")
    assert s.stop() == 0
    final = s.final_ledger()
    assert final["lines_confirmed"] == 9000
    assert final["balanced"]
    for name, t in (("default", topic), ("alpha", alpha), ("beta", beta)):
        got = [r for part in read_topic(kafka.bootstrap, t).values() for r in part]
        assert got == want[name], name
    collect_stray_sockets()
