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


def test_ab_table_gives_both_builds_and_their_difference_round_by_round(
    bench: ModuleType, tmp_path: Path
) -> None:
    for rnd, b_extra in ((1, 1.0), (2, 2.0)):
        for label, extra in (("direct", 0.0), ("ours", 2.0), ("ours_b", b_extra)):
            for scenario, base in (("c1", 1.0), ("stream_c1", 4.0)):
                result = {
                    "kind": "load",
                    "scenario": scenario,
                    "round": rnd,
                    "label": label,
                    "latency_ms": {"p50": base + extra},
                }
                if scenario == "stream_c1":
                    result["ttft_ms"] = {"p50": 0.5 + extra}
                (tmp_path / f"{scenario}_r{rnd}_{label}.json").write_text(json.dumps(result))

    table = bench.ab_table(tmp_path, _scenarios(bench), rounds=2)

    assert "| c1 | ours added p50 ms | 2.00 | 2.00 | **2.00** |" in table
    assert "| c1 | ours_b added p50 ms | 1.00 | 2.00 | **1.50** |" in table
    assert "| c1 | ours_b - ours p50 ms | -1.00 | 0.00 | **-0.50** |" in table
    assert "| stream_c1 | ours_b - ours TTFT p50 ms | -1.00 | 0.00 | **-0.50** |" in table
    assert (tmp_path / "ab.md").read_text() == table


def test_b_options_are_checked(bench: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--b-env", "NO_EQUALS_SIGN"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--b-tree", str(tmp_path)])  # not a checkout of the project
    args = bench.parse_args(["--b-env", "GATEWAY_ORG_RPM=0"])
    assert bench.ab_wanted(args)
    assert not bench.ab_wanted(bench.parse_args([]))
