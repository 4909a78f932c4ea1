"""bench/gateway_overhead.py's verdict table, from load results written as the load generator
writes them (no servers): with LiteLLM measured, and without (``--skip-litellm``)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gateway_overhead.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gateway_overhead", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _load(out: Path, scenario: str, label: str, p50: float, ttft: float | None = None) -> None:
    result = {
        "kind": "load",
        "scenario": scenario,
        "round": 1,
        "label": label,
        "latency_ms": {"p50": p50},
        "throughput_rps": 1000 / p50,
        "errors": 0,
    }
    if ttft is not None:
        result["ttft_ms"] = {"p50": ttft}
    (out / f"{scenario}_r1_{label}.json").write_text(json.dumps(result))


def _scenarios(bench: ModuleType) -> list[object]:
    return [bench.Scenario("c1", 1, 10, False), bench.Scenario("stream_c1", 1, 10, True)]


def test_without_litellm_the_table_has_our_rows_and_the_targets(
    bench: ModuleType, tmp_path: Path
) -> None:
    for label, extra in (("direct", 0.0), ("ours", 1.5)):
        _load(tmp_path, "c1", label, 1.0 + extra)
        _load(tmp_path, "stream_c1", label, 4.0 + extra, ttft=0.5 + extra)

    table = bench.ratios(tmp_path, ["direct", "ours"], _scenarios(bench), rounds=1)

    assert "| c1 | ours added p50 ms | 1.50 | **1.50** |" in table
    assert "| stream_c1 | ours added TTFT p50 ms | 1.50 | **1.50** |" in table
    assert "litellm" not in table.split("| target |")[0]
    assert "| stream_c1 added TTFT p50 (ms) | 1.500 | <= 2 | yes |" in table


def test_with_litellm_ours_is_compared_in_the_same_round(bench: ModuleType, tmp_path: Path) -> None:
    for label, extra in (("direct", 0.0), ("ours", 1.0), ("litellm", 4.0)):
        _load(tmp_path, "c1", label, 1.0 + extra)
        _load(tmp_path, "stream_c1", label, 4.0 + extra, ttft=0.5 + extra)

    table = bench.ratios(tmp_path, ["direct", "ours", "litellm"], _scenarios(bench), rounds=1)

    assert "| c1 | ours/litellm added p50 | 0.250 | **0.250** |" in table
    assert "| c1 added p50 ours/litellm | 0.250 | <= 0.5 | yes |" in table
