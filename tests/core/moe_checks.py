"""Checks shared by the MoE tests: a partitioned language model survives saving, loading and deployment."""

from pathlib import Path

import torch

import padnet


def assert_round_trip(pad, folder: Path, ids: torch.Tensor) -> None:
    """``pad`` (a PadModel of a causal LM) saved whole and loaded gives its logits on ``ids``; merged for
    inference it gives them too and generates."""
    pad.eval()
    ref = pad(input_ids=ids).logits
    pad.save_pretrained(folder, full=True)
    loaded = padnet.load_pretrained(folder)
    torch.testing.assert_close(loaded.eval()(input_ids=ids).logits, ref, atol=1e-6, rtol=1e-6)
    deployed = loaded.merge_and_unload()
    torch.testing.assert_close(deployed(input_ids=ids).logits, ref, atol=1e-5, rtol=1e-5)
    assert deployed.generate(ids, max_new_tokens=3, do_sample=False).shape == (ids.shape[0], ids.shape[1] + 3)
