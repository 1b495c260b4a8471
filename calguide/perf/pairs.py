"""A benchmark's pair: a random-weight denoiser and guidance classifier with the config's
flags and conventions (``digits``: the tiny UNet and the digits ResNet; ``adm128``: ADM-128 and
ResNet-101), one batch mid-chain, and a guided step through the sampling module's own call
path. The cost of a step does not depend on the weights' values."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import torch

from calguide import assembly
from calguide.config import compose_spec, release
from calguide.config.lab import guidance_config
from calguide.config.shared import ClassifierConfig, DiffusionConfig
from calguide.diffusion import ddpm_step
from calguide.modules.sampling import SamplingModule
from calguide.nets import create_unet
from calguide.perf.timing import interleaved_medians

# (denoiser config, classifier config): flags and params come from conf/, as in real runs.
PAIRS = {"digits": ("unet_tiny", "digits_resnet"), "adm128": ("adm128", "resnet101")}


def pair_spec(pair: str) -> tuple[dict, ClassifierConfig, DiffusionConfig]:
    """A pair's denoiser flags, classifier and diffusion sections, as a run composes them."""
    denoiser, classifier = PAIRS[pair]
    overrides = [f"denoiser={denoiser}", f"classifier={classifier}", "classifier.checkpoint=null"]
    spec = compose_spec("sample", [*overrides, "denoiser.checkpoint=null"])
    release()
    return dict(spec.denoiser.flags), spec.classifier, spec.diffusion


def chain_of(diffusion: DiffusionConfig, flags: dict, respacing: str, sampler: str = "ddpm"):
    """The pair's chain at ``respacing`` (and the sampler entry), built as a run builds it."""
    spec = dataclasses.replace(diffusion, respacing=respacing, sampler=sampler, sampler_params={})
    return assembly.chain(spec, flags), assembly.sampler(spec)


class Pair:
    """Random-weight denoiser + guidance classifier of a pair, and one batch mid-chain."""

    def __init__(self, pair: str, batch: int, device: torch.device) -> None:
        flags, clf, diffusion = pair_spec(pair)
        if device.type != "cuda":
            flags["use_fp16"] = False  # ADM's fp16 blocks are for GPUs; half convs crawl on CPU
        torch.manual_seed(0)
        self.flags = flags
        self.unet = create_unet(**flags).to(device).eval().requires_grad_(False)
        # Random weights with the config's convention (EluCD's Softplus(β) for the ResNets).
        self.classifier = assembly.classifier(clf, None, "bench classifier")[0].to(device).eval()
        size, channels = flags["image_size"], flags.get("in_channels", 3)
        self.shape = (channels, size, size)
        self.diffusion = diffusion
        self.chain, _ = chain_of(diffusion, flags, "250")
        self.x = torch.randn(batch, *self.shape, device=device)
        self.labels = torch.randint(0, flags["num_classes"], (batch,), device=device)
        i = self.chain.num_timesteps // 2
        self.t = torch.full((batch,), i, device=device, dtype=torch.long)
        self.t_model = self.chain.model_timesteps(self.t)
        self.noise = torch.randn_like(self.x)
        self.device = device

    def guidance(
        self, strategy: str | None, classifier: torch.nn.Module, schedule: str = "constant"
    ):
        if strategy is None:
            return None
        params = {"gamma": 0.3} if schedule == "elucd" else {}
        spec = guidance_config(strategy, scale=1.0, schedule=schedule, schedule_params=params)
        return assembly.guidance_of(
            spec, classifier, input_mode="x0", temperature=1.0, num_timesteps=1000
        )

    def step(
        self, strategy: str | None, *, fresh_nets: bool = False, **switches
    ) -> Callable[[], torch.Tensor]:
        """One DDPM step through SamplingModule's call path with the given sampling switches
        (``fresh_nets``: on copies of the nets, which switches may convert in place)."""
        unet, classifier = self.unet, self.classifier
        if fresh_nets:
            unet, classifier = copy.deepcopy(unet), copy.deepcopy(classifier)
        module = SamplingModule(
            unet,
            self.chain,
            sample_shape=self.shape,
            class_cond=bool(self.flags.get("class_cond")),
            guidance=self.guidance(strategy, classifier),
            progress=False,
            **switches,
        ).to(self.device)
        call = module.model_fn(self.labels)
        guidance = module.bound_guidance(self.labels)
        x = self.x.contiguous(
            memory_format=torch.channels_last
            if switches.get("channels_last")
            else torch.contiguous_format
        )

        def run() -> torch.Tensor:
            out = call(x, self.t_model)
            result = ddpm_step(self.chain, out, x, self.t, self.noise, guidance=guidance).sample
            if guidance is not None:
                guidance.diagnostics.clear()
            return result

        return run


SAMPLER_GRID = {"dpmpp_2m": (10, 15, 20, 25), "ddpm": (100, 250)}
# Each sampler on its option's grid family (conf/diffusion/dpmpp.yaml: logsnrN:6).
GRID_FAMILY = {"dpmpp_2m": "logsnr{n}:6", "ddpm": "{n}"}


def bench_samplers(p: Pair, repeats: int, warmup: int) -> dict:
    """Seconds per guided sample (EluCD's score and additive schedule, vanilla) for each
    sampler and step count: NFE × one step through the sampler entry / batch. A
    DPM-Solver++ step is timed in its second-order form (with a previous data prediction)."""
    runs: dict[str, Callable[[], torch.Tensor]] = {}
    for name, counts in SAMPLER_GRID.items():
        for nfe in counts:
            grid = GRID_FAMILY[name].format(n=nfe)
            chain, sampler = chain_of(p.diffusion, p.flags, grid, name)
            module = SamplingModule(
                p.unet, chain, sample_shape=p.shape, class_cond=bool(p.flags.get("class_cond")),
                guidance=p.guidance("vanilla", p.classifier, schedule="elucd"), progress=False,
            ).to(p.device)  # fmt: skip
            call, guidance = module.model_fn(p.labels), module.bound_guidance(p.labels)
            t = torch.full_like(p.t, nfe // 2)
            state = sampler.start(p.x)
            _, state = sampler.step(
                chain, call, p.x, t + 1, p.noise, state, guidance=guidance, clip_denoised=True
            )

            def run(sampler=sampler, chain=chain, call=call, guidance=guidance, t=t, state=state):
                out, _ = sampler.step(
                    chain, call, p.x, t, p.noise, state, guidance=guidance, clip_denoised=True
                )
                guidance.diagnostics.clear()
                return out.sample

            runs[f"{name} {nfe}"] = run
    timed = interleaved_medians(runs, repeats, warmup, p.device)
    batch = p.x.shape[0]
    out = {}
    for key, step_s in timed.items():
        nfe = int(key.split()[-1])
        out[key] = {"nfe": nfe, "step_s": step_s, "sample_s": nfe * step_s / batch}
    reference = out["ddpm 250"]["sample_s"]
    for entry in out.values():
        entry["vs_ddpm250"] = entry["sample_s"] / reference
    return out
