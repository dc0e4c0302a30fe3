"""`vla bench` on the CPU: every stage of every variant for both experts, ratios and the step figures."""

import pytest

from vla_training.evaluation.bench import format_table, run_bench


def test_bench_gives_every_figure_on_cpu():
    result = run_bench("tiny", runners=["eager", "static", "graphs"], image_size=(56, 56), repeats=2, warmup=1,
                       variants=["regression", "ddim-5", "ddim-10"])
    assert result["runners"]["graphs"] == {"skipped": "CUDA only"}
    for runner in ("eager", "static"):
        figures = result["runners"][runner]
        for variant in ("regression", "ddim-5", "ddim-10"):
            stages = figures[variant]
            assert "error" not in stages, stages
            for stage in ("preprocess_ms", "backbone_ms", "sensor_ms", "expert_ms", "total_ms"):
                assert stages[stage]["p95"] >= stages[stage]["median"] > 0
        ratio = result["ratios"][runner]["ddim10_over_regression"]
        assert ratio == pytest.approx(figures["ddim-10"]["total_ms"]["median"] / figures["regression"]["total_ms"]["median"])
    step = result["expert_step"]
    assert "error" not in step, step
    assert step["step_ms_cached_samples1"] > 0 and step["step_ms_uncached_samples8"] > 0
    table = format_table(result)
    assert "| static | ddim-10 |" in table and "DDIM-10 / regression end to end" in table


def test_bench_rejects_unknown_runners():
    with pytest.raises(ValueError, match="runners: unknown"):
        run_bench("tiny", runners=["eager", "tensorrt"])
