"""The world's judge: a small CNN that reads shape, colour, style and fire off an image.

It is trained on rendered ground truth only, with blur, noise and contrast augmentations so that it
stays calibrated on the slightly soft images a diffusion model produces; the labels stay exact.
A character counts as present when its shape, colour and style all are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from score_erasure.io import load_tensors, save_tensors
from score_erasure.progress import progress_bar
from score_erasure.toyworld import render, vocab

WEIGHTS = Path(__file__).parent / "weights" / "judge.safetensors"
HEADS: dict[str, int] = {"shape": len(vocab.SHAPES), "colour": len(vocab.COLOURS), "style": len(vocab.STYLES),
                         "fire": 2}


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.MaxPool2d(2),
    )


class JudgeNet(nn.Module):
    FEATURES = 128

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(_block(3, 32), _block(32, 64), _block(64, 128))
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(128 * 4 * 4, self.FEATURES), nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(self.FEATURES, n) for name, n in HEADS.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (the feature extractor for FID/KID on this world)."""
        return self.embed(self.trunk(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(x)
        return {name: head(h) for name, head in self.heads.items()}


def to_input(images) -> torch.Tensor:
    """uint8 (N, H, W, 3) arrays or PIL images -> float (N, 3, 32, 32) in [-1, 1]."""
    if not isinstance(images, np.ndarray):
        images = np.stack([np.asarray(im.convert("RGB").resize((render.SIZE, render.SIZE))) for im in images])
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[-1] != render.SIZE:
        x = F.interpolate(x, size=(render.SIZE, render.SIZE), mode="area")
    return x


@dataclass
class Verdicts:
    """Per image: the argmax class of every head (as canonical names) and the probabilities."""

    shape: list[str]
    colour: list[str]
    style: list[str]
    fire: np.ndarray  # bool
    probs: dict[str, np.ndarray]

    def character(self, name: str) -> np.ndarray:
        who = vocab.character(name)
        return np.array([s == who.shape and c == who.colour and st == who.style
                         for s, c, st in zip(self.shape, self.colour, self.style, strict=True)])

    def has(self, family: str, value: str) -> np.ndarray:
        """Whether each image shows `value` of `family` ('fire' takes value 'fire')."""
        if family == "fire":
            return self.fire.copy()
        if family == "character":
            return self.character(value)
        return np.array([v == value for v in getattr(self, family)])


class WorldJudge:
    def __init__(self, net: JudgeNet):
        self.net = net.eval()

    @classmethod
    def load(cls, path: Path = WEIGHTS) -> WorldJudge:
        net = JudgeNet()
        tensors, _ = load_tensors(path)
        net.load_state_dict(tensors)
        return cls(net)

    @torch.no_grad()
    def judge(self, images, batch: int = 256) -> Verdicts:
        x = to_input(images)
        probs = {name: [] for name in HEADS}
        for i in range(0, len(x), batch):
            for name, logits in self.net(x[i:i + batch]).items():
                probs[name].append(logits.softmax(-1).numpy())
        p = {k: np.concatenate(v) for k, v in probs.items()}
        names = {family: [c.name for c in concepts] for family, concepts in vocab.FAMILIES.items()}
        return Verdicts(
            shape=[names["shape"][i] for i in p["shape"].argmax(1)],
            colour=[names["colour"][i] for i in p["colour"].argmax(1)],
            style=[names["style"][i] for i in p["style"].argmax(1)],
            fire=p["fire"].argmax(1) == 1,
            probs=p,
        )

    @torch.no_grad()
    def features(self, images, batch: int = 256) -> torch.Tensor:
        x = to_input(images)
        return torch.cat([self.net.features(x[i:i + batch]) for i in range(0, len(x), batch)])


def labels(scenes: list[render.Scene]) -> dict[str, torch.Tensor]:
    return {
        "shape": torch.tensor([vocab.index("shape", s.shape) for s in scenes]),
        "colour": torch.tensor([vocab.index("colour", s.colour) for s in scenes]),
        "style": torch.tensor([vocab.index("style", s.style) for s in scenes]),
        "fire": torch.tensor([int(s.fire) for s in scenes]),
    }


def render_labelled(n: int, seed: int, fire_rate: float = 0.5) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    scenes = [render.sample_scene(rng, fire_rate=fire_rate) for _ in range(n)]
    return render.render_batch(scenes), labels(scenes)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur, noise and contrast jitter, each per image, so generated (softer) images are read correctly."""
    n = len(x)
    sigma = torch.rand(n, generator=gen) * 0.9
    k = torch.arange(-2, 3, dtype=torch.float32)
    kernels = torch.exp(-(k[None] ** 2) / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    kernels = kernels / kernels.sum(1, keepdim=True)
    kernels = kernels.repeat_interleave(3, 0)  # one kernel per image channel, as grouped convolutions
    flat = F.pad(x, (2, 2, 2, 2), mode="replicate").reshape(1, n * 3, x.shape[2] + 4, x.shape[3] + 4)
    flat = F.conv2d(flat, kernels.view(n * 3, 1, 1, 5), groups=n * 3)
    blurred = F.conv2d(flat, kernels.view(n * 3, 1, 5, 1), groups=n * 3).reshape(x.shape)
    scale = 1 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.2
    noise = torch.randn(x.shape, generator=gen) * torch.rand(n, 1, 1, 1, generator=gen) * 0.06
    return ((blurred + 1) * scale - 1 + noise).clamp(-1, 1)


def train_judge(out: Path = WEIGHTS, n: int = 40_000, epochs: int = 6, seed: int = 0) -> JudgeNet:
    """Train the judge on fresh renders and save it as safetensors."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images, y = render_labelled(n, seed=10_000 + seed)
    x = to_input(images)
    net = JudgeNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (n // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    net.train()
    with progress_bar() as bar:
        task = bar.add_task("train judge", total=steps, info="")
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)
            for i in range(0, n - 127, 128):
                idx = order[i:i + 128]
                out_logits = net(_augment(x[idx], gen))
                loss = sum(F.cross_entropy(out_logits[h], y[h][idx]) for h in HEADS)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                bar.update(task, advance=1, info=f"loss {loss.item():.4f}")
    net.eval()
    save_tensors(net.state_dict(), out, {"n": n, "epochs": epochs, "seed": seed})
    return net


def accuracy(judge: WorldJudge, n: int = 2_000, seed: int = 12_345) -> dict[str, float]:
    """Per-head accuracy on freshly rendered scenes (a seed the training never used)."""
    images, y = render_labelled(n, seed=seed)
    v = judge.judge(images)
    return {head: float((v.probs[head].argmax(1) == y[head].numpy()).mean()) for head in HEADS}
