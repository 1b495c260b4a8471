"""Noise schedules and ADM's timestep respacing.

Everything is computed in float64, as guided-diffusion does, so that respaced chains reproduce
the base chain's cumulative products to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

SCHEDULES = ("linear", "cosine")


def alpha_bar_betas(
    num_steps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> torch.Tensor:
    """Betas whose cumulative product follows ``alpha_bar`` on [0, 1] (Nichol & Dhariwal)."""
    betas = []
    for i in range(num_steps):
        t1, t2 = i / num_steps, (i + 1) / num_steps
        betas.append(min(1.0 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return torch.tensor(betas, dtype=torch.float64)


def beta_schedule(name: str, num_steps: int) -> torch.Tensor:
    """ADM's named schedules; ``linear`` is scaled so any step count spans the same noise range."""
    if num_steps < 1:
        raise ValueError(f"diffusion.steps must be >= 1, got {num_steps}")
    if name == "linear":
        scale = 1000.0 / num_steps
        return torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)
    if name == "cosine":
        return alpha_bar_betas(
            num_steps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        )
    raise ValueError(f"diffusion.schedule must be one of {list(SCHEDULES)}, got {name!r}")


def logsnr_timesteps(
    alphas_cumprod: torch.Tensor, count: int, end: float | None = None
) -> list[int]:
    """``count`` base timesteps spread uniformly in log-SNR from the chain's noisiest step to
    log-SNR ``end`` (default: the chain's least noisy step), each the nearest base step to its
    target; the noisiest step is always kept.

    Why an end above σ = 0: a few-step solver jumps from its last grid point straight to the
    data (first order), so ending at log-SNR 6 (σ/α ≈ 0.05) rather than at the chain's step 0
    (log-SNR 9.2) spends the steps where the denoiser still moves x (docs/few_step.md).
    """
    a = alphas_cumprod.to(torch.float64)
    name = f"logsnr{count}" + ("" if end is None else f":{end:g}")
    if count < 2 or count > len(a):
        raise ValueError(f"diffusion.respacing {name!r}: need 2 <= N <= {len(a)} steps")
    logsnr = torch.log(a) - torch.log1p(-a)  # decreasing in t
    last = float(logsnr[0]) if end is None else float(end)
    if not float(logsnr[-1]) < last <= float(logsnr[0]):
        raise ValueError(
            f"diffusion.respacing {name!r}: the end log-SNR must lie in "
            f"({float(logsnr[-1]):.2f}, {float(logsnr[0]):.2f}], the chain's range"
        )
    targets = torch.linspace(last, float(logsnr[-1]), count, dtype=torch.float64)
    kept = {int(torch.argmin((logsnr - v).abs())) for v in targets}
    lowest = min(kept)
    free = [t for t in range(lowest, len(a)) if t not in kept]
    while len(kept) < count:  # two targets met the same step: take the next free one
        if not free:
            raise ValueError(
                f"diffusion.respacing {name!r}: the chain has fewer than {count} steps between "
                "its noisiest step and that log-SNR"
            )
        gaps = sorted(kept)
        widest = max(range(len(gaps) - 1), key=lambda k: gaps[k + 1] - gaps[k])
        middle = (gaps[widest] + gaps[widest + 1]) // 2
        kept.add(middle if middle in free else free.pop())
        if middle in free:
            free.remove(middle)
    return sorted(kept)


def _logsnr_spec(spec: str) -> tuple[int, float | None]:
    """'logsnrN' -> (N, None); 'logsnrN:L' -> (N, L)."""
    body = spec[len("logsnr") :]
    count, _, end = body.partition(":")
    try:
        return int(count), (float(end) if end else None)
    except ValueError:
        raise ValueError(
            f"diffusion.respacing {spec!r}: expected 'logsnrN' or 'logsnrN:L' (N steps, integer; "
            "L the log-SNR of the least noisy step)"
        ) from None


def space_timesteps(
    num_timesteps: int,
    section_counts: str | Sequence[int],
    alphas_cumprod: torch.Tensor | None = None,
) -> list[int]:
    """The base timesteps kept by an ADM respacing string, sorted.

    ``"250"`` keeps 250 evenly spread steps; ``"10,15,20"`` splits the chain into three equal
    sections and keeps that many steps in each; ``"ddim50"`` keeps a fixed stride that gives
    exactly 50 steps (the DDIM paper's spacing); ``"logsnr20"`` keeps 20 steps uniform in
    log-SNR over the whole chain and ``"logsnr20:6"`` 20 steps uniform in log-SNR from the
    noisiest step down to log-SNR 6 (both need the chain's ``alphas_cumprod``). An empty string
    keeps every step.
    """
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec == "":
            return list(range(num_timesteps))
        if spec.startswith("logsnr"):
            count, end = _logsnr_spec(spec)
            if alphas_cumprod is None:  # the grid depends on the noise schedule: no default
                raise ValueError(f"diffusion.respacing {spec!r} needs the chain's alphas_cumprod")
            return logsnr_timesteps(alphas_cumprod, count, end)
        if spec.startswith("ddim"):
            try:
                desired = int(spec[len("ddim") :])
            except ValueError:
                raise ValueError(
                    f"diffusion.respacing {spec!r}: expected 'ddimN' with an integer N"
                ) from None
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(
                f"diffusion.respacing {spec!r}: no integer stride gives exactly {desired} of "
                f"{num_timesteps} steps"
            )
        try:
            counts = [int(part) for part in spec.split(",")]
        except ValueError:
            raise ValueError(
                f"diffusion.respacing {spec!r}: expected '', 'N', 'N1,N2,...', 'ddimN', "
                "'logsnrN' or 'logsnrN:L'"
            ) from None
    else:
        counts = [int(c) for c in section_counts]
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"diffusion.respacing {section_counts!r}: section counts must be >= 1")

    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(
                f"diffusion.respacing {section_counts!r}: cannot take {count} steps from a "
                f"section of {size} (chain of {num_timesteps} steps)"
            )
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


def respace_betas(
    betas: torch.Tensor, use_timesteps: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Betas of the shorter chain visiting ``use_timesteps``, and the map back to base steps.

    The new chain's cumulative products equal the base chain's at the kept steps.
    """
    keep = sorted(set(int(t) for t in use_timesteps))
    if not keep or keep[0] < 0 or keep[-1] >= len(betas):
        raise ValueError(f"respaced timesteps must lie in [0, {len(betas) - 1}]")
    alphas_cumprod = torch.cumprod(1.0 - betas.to(torch.float64), dim=0)
    kept_cumprod = alphas_cumprod[keep]
    previous = torch.cat([torch.ones(1, dtype=torch.float64), kept_cumprod[:-1]])
    new_betas = 1.0 - kept_cumprod / previous
    return new_betas, torch.tensor(keep, dtype=torch.long)
