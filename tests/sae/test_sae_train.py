"""SAE trainer: the paper's schedules and loss by hand, learning on known sparse data, exact resume."""

from __future__ import annotations

import pytest
import torch

from saev_curate import load_sae
from saev_curate.core.errors import InputError
from saev_curate.sae.model import SAE, SAEConfig
from saev_curate.sae.training.trainer import (
    TrainConfig,
    l1_coefficient_at,
    lr_factor,
    train_on_activations,
    training_loss,
)


@pytest.fixture(scope="module")
def sparse_data():
    """Vectors built from 128 ground-truth directions, ~3 active each: an SAE should find them."""
    g = torch.Generator().manual_seed(0)
    dictionary = torch.randn(128, 24, generator=g)
    dictionary /= dictionary.norm(dim=-1, keepdim=True)
    active = torch.rand(12000, 128, generator=g) < 3 / 128
    codes = active * (torch.rand(12000, 128, generator=g) * 4 + 1)
    return codes @ dictionary + 0.01 * torch.randn(12000, 24, generator=g)


def _cfg(tmp_path, arch, **kw):
    base = dict(output_dir=str(tmp_path / arch), architecture=arch, expansion_factor=8, k=6, total_steps=40,
                batch_size=256, lr=2e-3, checkpoint_every=10, dead_after_tokens=2048, model_name="tiny",
                hook_name="blocks.1.hook_resid_post", dataset_path="synthetic")
    base.update(kw)
    return TrainConfig(**base)


def test_schedules_by_hand():
    cfg = TrainConfig(total_steps=100, lr_decay_fraction=0.2, l1_warmup_fraction=0.05, l1_coefficient=5.0)
    assert [lr_factor(s, cfg) for s in (0, 50, 79, 80, 90, 99)] == [1.0, 1.0, 1.0, 1.0, 0.5, pytest.approx(0.05)]
    assert [l1_coefficient_at(s, cfg) for s in (0, 2, 4, 50)] == [1.0, 3.0, 5.0, 5.0]
    warm = TrainConfig(total_steps=100, lr_warmup_steps=4)
    assert [lr_factor(s, warm) for s in (0, 3, 4)] == [0.25, 1.0, 1.0]


def test_standard_loss_is_mse_plus_decoder_norm_weighted_l1():
    cfg = TrainConfig(total_steps=100, l1_coefficient=5.0, l1_warmup_fraction=0.0)
    sae = SAE.init_paper(SAEConfig(d_in=4, d_sae=6), seed=3)
    with torch.no_grad():
        sae.b_enc.fill_(0.01)
        sae.W_dec.mul_(torch.arange(1, 7.0)[:, None])  # unequal decoder norms, so the weighting matters
    x = torch.randn(5, 4)
    loss, mse, aux, l0, fvu, counts = training_loss(sae, x, cfg, step=50, dead=None)
    expected_mse, expected_l1 = 0.0, 0.0
    for v in x:
        f = torch.relu(v @ sae.W_enc + sae.b_enc)
        expected_mse += float(((f @ sae.W_dec + sae.b_dec - v) ** 2).sum().detach())
        expected_l1 += sum(float(f[j]) * float(sae.W_dec[j].norm()) for j in range(6))
    assert float(mse) == pytest.approx(expected_mse / 5, rel=1e-5)
    assert float(aux) == pytest.approx(5.0 * expected_l1 / 5, rel=1e-5)
    assert float(loss) == pytest.approx(float(mse) + float(aux), rel=1e-6)
    assert counts.tolist() == (torch.relu(x @ sae.W_enc + sae.b_enc) > 0).sum(0).tolist()


@pytest.mark.parametrize("dense_fraction", [0.0, 1.0])  # both AuxK decoders: dense product, k-row gather
def test_aux_k_loss_trains_dead_latents_only(monkeypatch, dense_fraction):
    from saev_curate.sae.training import trainer as train_module

    monkeypatch.setattr(train_module, "DENSE_AUX_FRACTION", dense_fraction)
    cfg = TrainConfig(architecture="topk", k=2, aux_k_coefficient=1.0)
    sae = SAE.init_paper(SAEConfig(d_in=8, d_sae=32, architecture="topk", k=2), seed=0)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[20:] = True
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    loss, mse, aux, *_ = training_loss(sae, x, cfg, step=0, dead=dead)
    assert float(aux) > 0
    aux.backward()
    grad_rows = sae.W_dec.grad.abs().sum(-1)
    assert (grad_rows[:20] == 0).all() and (grad_rows[20:] > 0).any()
    # by hand: the 4 (= d_in/2) largest dead pre-activations decode, without b_dec, the live residual
    with torch.no_grad():
        pre = x @ sae.W_enc + sae.b_enc
        vals, idx = pre.masked_fill(~dead, -float("inf")).topk(4, dim=-1)
        err = sae(x) - x
        e_hat = torch.stack([sum(v * sae.W_dec[j] for v, j in zip(vs, js)) for vs, js in zip(vals, idx)])
        expected = min(12 / 4, 1.0) * (e_hat + err).pow(2).sum(-1).mean()
    assert float(aux) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("arch", ["standard", "topk"])
def test_learns_known_sparse_structure_and_saves_loadable_sae(tmp_path, sparse_data, arch):
    cfg = _cfg(tmp_path, arch, total_steps=300, checkpoint_every=None, l1_coefficient=1.0, lr=3e-3)
    sae = train_on_activations(cfg, sparse_data, progress=False)
    x = sparse_data[:2000]
    with torch.no_grad():
        recon, code = sae(x), sae.encode(x)
    fvu = float((recon - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    l0 = float((code > 0).sum(-1).float().mean())
    assert fvu < 0.25, f"{arch}: FVU {fvu:.3f} after training on clean sparse data"
    assert l0 <= (6 if arch == "topk" else 40)
    loaded = load_sae(cfg.output_dir)  # SAELens layout, raw activations in (scale folded)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), recon, atol=1e-4, rtol=1e-4)
    assert loaded.cfg.input_scale == 1.0 and loaded.cfg.extra["folded_input_scale"] > 0
    assert loaded.cfg.extra["tokens_seen"] == 300 * 256
    assert loaded.cfg.hook_name == "blocks.1.hook_resid_post" and loaded.cfg.hook_layer == 1
    assert loaded.sparsity is not None and loaded.sparsity.shape == (sae.cfg.d_sae,)


@pytest.mark.parametrize("arch", ["standard", "topk"])
def test_resume_after_crash_equals_uninterrupted_run(tmp_path, sparse_data, arch):
    straight = train_on_activations(_cfg(tmp_path / "a", arch), sparse_data, progress=False)

    def crash(step, stats):
        if step == 25:
            raise KeyboardInterrupt("killed")

    cfg = _cfg(tmp_path / "b", arch)
    with pytest.raises(KeyboardInterrupt):
        train_on_activations(cfg, sparse_data, progress=False, on_step=crash)
    steps_after_resume = []
    resumed = train_on_activations(cfg, sparse_data, progress=False, on_step=lambda s, _: steps_after_resume.append(s))
    assert steps_after_resume[0] == 20  # picked up at the last checkpoint, not from scratch
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), f"{arch}: {name} differs after resume"


def test_resume_refuses_a_different_run(tmp_path, sparse_data):
    cfg = _cfg(tmp_path, "topk")
    with pytest.raises(KeyboardInterrupt):
        train_on_activations(cfg, sparse_data, progress=False,
                             on_step=lambda s, _: (_ for _ in ()).throw(KeyboardInterrupt) if s == 15 else None)
    with pytest.raises(InputError, match=r"different run \(k: 6 -> 7\)"):
        train_on_activations(_cfg(tmp_path, "topk", k=7), sparse_data, progress=False)


def test_bad_config_and_data():
    with pytest.raises(InputError, match="architecture must be 'standard' or 'topk'"):
        TrainConfig(architecture="gated")
    with pytest.raises(InputError, match=r"non-empty \[N, d_in\] tensor"):
        train_on_activations(TrainConfig(output_dir="unused"), torch.zeros(0, 4), progress=False)
