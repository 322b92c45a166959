"""``cftrade bench latency`` stays runnable and self-checking (a few ticks, both modes)."""

from __future__ import annotations

import json

from benchmarks import bench_latency


def test_bench_latency_small_run_checks_its_answer(capsys):
    assert bench_latency.main(["--ticks", "40", "--breakdown", "20", "--warmup", "10", "--rate", "400", "--split"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["bench"] == "latency" and out["checks"] == "ok"
    runs = (out, out["split"])
    for figures in [r[k] for r in runs for k in ("tick_to_order", "inject_to_order")] + [
            out["breakdown"]["tick_to_order_instrumented"], out["breakdown"]["inject_to_order_instrumented"]]:
        assert 0 < figures["p50_us"] <= figures["p99_us"] <= figures["max_us"]
    # t0 is the notice's emission, which comes after the injection it answers (checked per
    # tick by the bench itself), so every quantile of the emitted span is the smaller one
    for r in runs:
        assert r["tick_to_order"]["p50_us"] < r["inject_to_order"]["p50_us"]
    stages = out["breakdown"]["stages_p50_us"]
    assert set(stages) == {name for name, _, _ in bench_latency.BREAKDOWN}
    assert all(v >= 0 for v in stages.values())
