"""The reliability diagram is written atomically as a real image file."""

from __future__ import annotations

from pathlib import Path

import torch

from calguide.calibration import save_reliability_diagram

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _data(n: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    c = 0.5 + 0.5 * torch.rand(n, generator=g)
    a = (torch.rand(n, generator=g) < c**2).float()
    return c, a


def test_writes_png_and_leaves_no_temp_files(tmp_path: Path) -> None:
    c, a = _data()
    out = save_reliability_diagram(c, a, tmp_path / "plots" / "diagram.png", title="test")
    assert out == tmp_path / "plots" / "diagram.png"
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in out.parent.iterdir()] == ["diagram.png"]


def test_overwrites_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "diagram.png"
    target.write_bytes(b"stale")
    c, a = _data(500)
    save_reliability_diagram(c, a, str(target), n_bins=10)
    assert target.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diagram.png"]


def test_accepts_grad_tensors_and_boundary_confidences(tmp_path: Path) -> None:
    c = torch.tensor([0.0, 1.0, 1.0, 0.7, 0.9], requires_grad=True)
    a = torch.tensor([0, 1, 0, 1, 1])
    out = save_reliability_diagram(c, a, tmp_path / "edge.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
