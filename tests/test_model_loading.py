"""Model loading errors, the GGUF conversion cache, and determinism on the embedded model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from greater.cli import main
from greater.inference.model import _converted_gguf, embedded_gguf_path, load_model


def test_unsupported_gguf_architecture_is_one_clear_error(tmp_path, capsys, monkeypatch):
    import gguf

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "mamba9000")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    monkeypatch.setenv("GREATER_CACHE_DIR", str(tmp_path / "cache"))
    code = main(["evaluate", "--model", str(path), "--task", "gen/arithmetic", "--prompt", "hi", "--limit", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"could not load model '{path}'" in err
    assert "mamba9000 is not supported" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_gguf_conversion_is_cached_and_faithful(embedded_folder):
    assert (embedded_folder / "done.json").is_file()
    assert (embedded_folder / "model.safetensors").is_file()
    assert _converted_gguf(embedded_gguf_path(), torch.float32) == embedded_folder  # reused, not redone
    model, tok = load_model()
    ids = torch.tensor([tok("The capital of France is")["input_ids"]])
    with torch.no_grad():
        top = model(input_ids=ids).logits[0, -1].topk(3).indices.tolist()
    assert tok.decode([top[0]]).strip() == "Paris"
    assert not any(p.requires_grad for p in model.parameters())
