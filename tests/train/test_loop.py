"""Training loop: loss goes down on a fixed batch, checkpoints round-trip, resume is exact."""
import json

import pytest
import torch

from precipfast.config import RENAMED, DataConfig, EDMConfig, SamplerConfig, TrainConfig, UNetConfig, from_dict
from precipfast.denoiser import build_denoiser
from precipfast.train.checkpoint import load_checkpoint, read_config
from precipfast.train.loop import learning_rate_at, train
from precipfast.train.loss import batch_loss

TINY = UNetConfig(model_channels=8, channel_mult=(1, 2), attn_levels=(1,), channels_per_head=8)


class FixedBatch:
    """A fixed small batch built from a smooth field: the same every call (no randomness)."""

    def __init__(self, n=4, hw=16):
        g = torch.Generator().manual_seed(0)
        base = torch.rand(n, 1, hw, hw, generator=g)
        self.data = {"cond": base, "base": base,
                     "target": 0.3 * torch.sin(6 * base) + 0.05 * torch.randn(n, 1, hw, hw, generator=g)}

    def batch(self, batch_size, generator):
        return {k: v[:batch_size] for k, v in self.data.items()}


def test_loss_decreases_on_fixed_batch():
    torch.manual_seed(0)
    edm = EDMConfig(sigma_data=0.3)
    den = build_denoiser(TINY, edm)
    opt = torch.optim.Adam(den.parameters(), lr=3e-3)
    b = FixedBatch().batch(4, None)

    def eval_loss():
        # Averaged over many fixed noise draws so the comparison is not at the mercy of one sigma draw.
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return sum(float(batch_loss(den, b["target"], b["cond"], edm, g)) for _ in range(20)) / 20

    before = eval_loss()
    g = torch.Generator().manual_seed(1)
    for _ in range(40):
        loss = batch_loss(den, b["target"], b["cond"], edm, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.7 * before, (before, after)


def _cfgs(iterations):
    return (TrainConfig(stage="downscaling", iterations=iterations, batch_size=2, warmup_iterations=2, val_every=3,
                        checkpoint_every=3, val_members=2, val_steps=3, seed=5),
            DataConfig(), TINY, EDMConfig(sigma_data=0.3), SamplerConfig())


def test_checkpoint_round_trip_and_resume(tmp_path):
    data = FixedBatch()
    cfg = train(*_cfgs(6), data, data, tmp_path / "a", device="cpu", progress=False)
    assert cfg["step"] == 6 and len(cfg["history"]) == 2
    assert all(h["val_crps_mm_h"] >= 0 for h in cfg["history"])
    den, saved = load_checkpoint(tmp_path / "a")
    den2, _ = load_checkpoint(tmp_path / "a")
    x, c = torch.randn(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    assert torch.equal(den(x, torch.ones(1), c), den2(x, torch.ones(1), c))
    assert saved["unet"]["model_channels"] == 8

    # 3 iterations, stop, resume to 6: identical weights to the uninterrupted run.
    train(*_cfgs(3), data, data, tmp_path / "b", device="cpu", progress=False)
    tc, *rest = _cfgs(6)
    train(tc, *rest, data, data, tmp_path / "b", device="cpu", progress=False, resume=True)
    a, _ = load_checkpoint(tmp_path / "a", which="model")
    b, _ = load_checkpoint(tmp_path / "b", which="model")
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=k)


def test_a_checkpoint_written_before_the_rename_loads_and_resumes(tmp_path):
    """config.json with TrainConfig's old keys (steps, lr, warmup_steps, ema_halflife_steps), as the shipped
    checkpoints had them: read as the new ones, and resumed."""
    data = FixedBatch()
    train(*_cfgs(3), data, data, tmp_path, device="cpu", progress=False)
    path, old_name = tmp_path / "config.json", {new: old for old, new in RENAMED[TrainConfig].items()}
    cfg = json.loads(path.read_text())
    cfg["train"] = {old_name.get(k, k): v for k, v in cfg["train"].items()}
    path.write_text(json.dumps(cfg))
    assert {"steps", "lr"} <= set(read_config(tmp_path)["train"])
    assert from_dict(TrainConfig, read_config(tmp_path)["train"]) == _cfgs(3)[0]
    done = train(*_cfgs(6), data, data, tmp_path, device="cpu", progress=False, resume=True)
    assert done["step"] == 6 and read_config(tmp_path)["train"]["iterations"] == 6


def test_refuses_to_overwrite_without_resume(tmp_path):
    data = FixedBatch()
    train(*_cfgs(3), data, data, tmp_path, device="cpu", progress=False)
    with pytest.raises(ValueError, match="--resume"):
        train(*_cfgs(3), data, data, tmp_path, device="cpu", progress=False)


def test_warmup_then_decay():
    tc = TrainConfig(iterations=100, warmup_iterations=10, learning_rate=1.0)
    assert learning_rate_at(0, tc) == pytest.approx(0.1)
    assert learning_rate_at(9, tc) == pytest.approx(1.0)
    assert learning_rate_at(99, tc) == pytest.approx(0.1, abs=0.01)
    assert all(learning_rate_at(i, tc) >= learning_rate_at(i + 1, tc) for i in range(10, 99))


def test_frozen_mean_is_never_trained(tmp_path):
    """A "mean+edm" stage trains only its diffusion net: the regression mean it was given stays exact."""
    data = FixedBatch()
    reg = build_denoiser(TINY, EDMConfig(sigma_data=0.3, kind="regression"))
    frozen = {f"mean_net.{k}": v.clone() for k, v in reg.net.state_dict().items()}
    t, d, u, _, s = _cfgs(3)
    torch.manual_seed(t.seed)                               # train() seeds the same way before building
    init = build_denoiser(u, EDMConfig(sigma_data=0.1, kind="mean+edm")).net.state_dict()
    train(t, d, u, EDMConfig(sigma_data=0.1, kind="mean+edm"), s, data, data, tmp_path / "m", device="cpu",
          progress=False, frozen=frozen)
    for which in ("ema", "model"):
        den, _ = load_checkpoint(tmp_path / "m", which)
        for k, v in den.mean_net.state_dict().items():
            assert torch.equal(v, frozen[f"mean_net.{k}"]), (which, k)
        changed = [k for k, v in den.net.state_dict().items() if not torch.equal(v, init[k])]
        assert changed                                     # while the diffusion net did train
    with pytest.raises(ValueError, match="not parameters"):
        train(t, d, u, EDMConfig(sigma_data=0.1), s, data, data, tmp_path / "n", device="cpu", progress=False,
              frozen=frozen)


def test_crps_loss_is_the_fair_crps_of_the_members_in_mm_h():
    """The crps stage's loss against an independent computation: members from the generator's own latent,
    rates through the inverse transform, fair CRPS (Ferro 2014) by the double sum."""
    from precipfast.config import TransformConfig
    from precipfast.train.loss import crps_loss
    from precipfast.transform import inverse

    class Gen(torch.nn.Module):          # F(z; cond) = 0.5 z + 0.2 cond, D = F(x / sigma)
        def forward(self, z, c_noise, cond):
            return 0.5 * z + 0.2 * cond
    den = build_denoiser(TINY, EDMConfig(kind="crps"))
    den.net = Gen()
    den.train()
    g = torch.Generator().manual_seed(1)
    cond, target = torch.rand(2, 1, 3, 4, generator=g), 0.3 * torch.randn(2, 1, 3, 4, generator=g)
    tcfg = TransformConfig()
    got = crps_loss(den, target, cond, EDMConfig(kind="crps"), tcfg, torch.Generator().manual_seed(9), members=3)
    z = torch.randn(6, 1, 3, 4, generator=torch.Generator().manual_seed(9)).view(2, 3, 1, 3, 4)
    ens = inverse(cond[:, None] + 0.5 * z + 0.2 * cond[:, None], tcfg)         # (B, M, 1, H, W)
    truth = inverse(cond + target, tcfg)
    skill = (ens - truth[:, None]).abs().mean(1)
    spread = (ens[:, :, None] - ens[:, None]).abs().sum((1, 2)) / (2 * 3 * 2)
    torch.testing.assert_close(got, (skill - spread).mean())
    # Block means and maxima, in log space: the same members, pooled in mm/h by 2, then log1p.
    got2 = crps_loss(den, target, cond, EDMConfig(kind="crps"), tcfg, torch.Generator().manual_seed(9), members=3,
                     scales=(1, 2), space="log", max_scales=(2,))
    def fair(e, t):
        return ((e - t[:, None]).abs().mean(1) - (e[:, :, None] - e[:, None]).abs().sum((1, 2)) / (2 * 3 * 2)).mean()
    F = torch.nn.functional
    pool = lambda f, a: f(a.flatten(0, 1), 2).view(*a.shape[:3], 1, 2)  # noqa: E731
    want = (fair(torch.log1p(ens), torch.log1p(truth))
            + fair(torch.log1p(pool(F.avg_pool2d, ens)), torch.log1p(F.avg_pool2d(truth, 2)))
            + fair(torch.log1p(pool(F.max_pool2d, ens)), torch.log1p(F.max_pool2d(truth, 2)))) / 3
    torch.testing.assert_close(got2, want)
    # A perfect, spread-free ensemble scores 0.
    den.net = type("Exact", (torch.nn.Module,), {"forward": lambda self, z, c, cond: target.repeat_interleave(4, 0)})()
    assert float(crps_loss(den, target, cond, EDMConfig(kind="crps"), tcfg, members=4)) == pytest.approx(0, abs=1e-7)


def test_init_weights_are_trained_from(tmp_path):
    """A crps generator starts from the regression's network (init=) and then trains all of it."""
    data = FixedBatch()
    reg = build_denoiser(TINY, EDMConfig(sigma_data=0.3, kind="regression"))
    with torch.no_grad():
        for p in reg.net.parameters():
            p.add_(0.01)
    init = {f"net.{k}": v.clone() for k, v in reg.net.state_dict().items()}
    t, d, u, _, s = _cfgs(3)
    train(t, d, u, EDMConfig(sigma_data=0.3, kind="crps"), s, data, data, tmp_path / "c", device="cpu",
          progress=False, init=init)
    den, _ = load_checkpoint(tmp_path / "c", "model")
    moved = [k for k, v in den.net.state_dict().items() if not torch.equal(v, init[f"net.{k}"])]
    assert moved and all(den.net.state_dict()[k].shape == init[f"net.{k}"].shape for k in moved)
    # every weight moved by at most what 3 AdamW iterations can do from its start, so it started there
    for k, v in den.net.state_dict().items():
        assert float((v - init[f"net.{k}"]).abs().max()) < 0.05, k
    with pytest.raises(ValueError, match="initial weights"):
        train(t, d, u, EDMConfig(sigma_data=0.3, kind="crps"), s, data, data, tmp_path / "d", device="cpu",
              progress=False, init={"nope.weight": torch.zeros(1)})


def test_block_scales_prefer_errors_coherent_in_space():
    """Two generators with the same pixel marginals, N(0, 0.5^2) in working space: one draws every pixel
    independently, one shifts the whole field by one draw, as the truth does. The pixel CRPS cannot tell
    them apart; the block-mean CRPS (scale 4) prefers the coherent one by a wide margin."""
    from precipfast.config import TransformConfig
    from precipfast.train.loss import crps_loss

    class Indep(torch.nn.Module):
        def forward(self, z, c_noise, cond):
            return 0.5 * z

    class Coherent(torch.nn.Module):
        def forward(self, z, c_noise, cond):
            return 0.5 * z[..., :1, :1].expand_as(z)
    g = torch.Generator().manual_seed(2)
    cond = torch.full((256, 1, 8, 8), 1.5)
    target = 0.5 * torch.randn(256, 1, 1, 1, generator=g).expand(256, 1, 8, 8)
    scores = {}
    for name, net in (("indep", Indep()), ("coherent", Coherent())):
        den = build_denoiser(TINY, EDMConfig(kind="crps"))
        den.net = net
        for scales in ((1,), (4,), (1, 4)):
            scores[name, scales] = float(crps_loss(den, target, cond, EDMConfig(kind="crps"), TransformConfig(),
                                                   torch.Generator().manual_seed(3), scales=scales))
    assert scores["indep", (1,)] == pytest.approx(scores["coherent", (1,)], rel=0.1)
    assert scores["indep", (4,)] > 1.2 * scores["coherent", (4,)]
    assert scores["indep", (1, 4)] > 1.1 * scores["coherent", (1, 4)]
