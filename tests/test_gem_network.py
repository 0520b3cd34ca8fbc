"""GEM network (inputs → denoiser outputs) against the golden reference fixtures, plus loading and attention.

Parity groups prep, mask, cond, attn, den1, denL, ddim, out with the parity tolerances (masks and
integers exact; pre-transformer ≤ 1e-5 absolute; transformer, sampler and outputs ≤ 1e-4 · max(1, max|ref|)).
"""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from models.gem.attention import AttentionPlan, attend, make_plan, rope_tables, window_mask
from models.gem.checkpoint import GemCheckpointError, _translate, load_gem, read_checkpoint, remap_keys
from models.gem.dims import DENOISER_PREFIX, GemDims
from models.gem.network import GemNetwork
from models.gem.parity_net import GROUPS, check_network, heads_from_manifest
from models.gem.sampler import ddim_schedule
from tests.shared import fixture_dir

FIXTURES = fixture_dir("gem_parity")
CKPT = FIXTURES / "gem_smpl_reduced.ckpt"
SCENARIOS = sorted(p.stem for p in FIXTURES.glob("S*.pt")) or ["S1"]
needs_fixtures = pytest.mark.skipif(
    not (CKPT.is_file() and (FIXTURES / "S1.pt").is_file()),
    reason=f"GEM parity fixtures not found at {FIXTURES}",
)
_cache: dict[str, dict] = {}


def load(name: str) -> dict:
    if name not in _cache:
        _cache[name] = torch.load(FIXTURES / f"{name}.pt", weights_only=True)
    return _cache[name]


def inputs_of(scenario: dict) -> dict:
    inputs = {k.split("/", 1)[1]: v for k, v in scenario.items() if k.startswith("input/")}
    inputs.pop("noise", None)
    return inputs


@pytest.fixture(scope="module")
def net() -> GemNetwork:
    return load_gem(CKPT, num_heads=heads_from_manifest(CKPT))


@pytest.fixture(scope="module")
def reduced_sd() -> dict:
    return torch.load(CKPT, weights_only=True)["state_dict"]


# ---- parity ------------------------------------------------------------------------------------------------
@needs_fixtures
@pytest.mark.parametrize("name", SCENARIOS)
def test_network_parity(net, name):
    scenario = load(name)
    results = check_network(scenario, net)
    groups = {key.split("/", 1)[0] for key, *_ in results}
    expected = {"prep", "mask", "cond", "attn", "den1", "out"}
    expected |= {"denL", "ddim"} if scenario["meta"]["mode"] == "ddim" else set()
    assert expected <= groups <= set(GROUPS)
    failed = [(k, f"{err:.3g} > {tol:.3g}") for k, err, tol, ok in results if not ok]
    assert not failed, failed


@needs_fixtures
def test_check_network_from_path_reads_heads_from_manifest():
    assert heads_from_manifest(CKPT) == 4
    results = check_network(load("S4"), CKPT)
    assert results and all(ok for *_, ok in results)


@needs_fixtures
def test_window_mask_matches_reference_and_rule():
    assert torch.equal(window_mask(150), load("S2")["attn/window_mask"])
    for L, W in [(121, 120), (300, 120), (37, 10), (40, 9)]:
        h = W // 2
        loop = torch.ones(L, L, dtype=torch.bool)
        for i in range(L):  # the reference's window rule, one query at a time
            lo, hi = max(0, i - h), min(L, i + h)
            loop[i, min(L - W, lo) : max(W, hi)] = False
        assert torch.equal(window_mask(L, W), loop), (L, W)


@needs_fixtures
def test_regression_equals_first_zero_noise_ddim_call(net):
    """Cross-check of the fixture set: S1's first DDIM call (x_T = 0, t = 999) is S4's regression pass."""
    rec1, rec4 = {}, {}
    net.estimate(inputs_of(load("S1")), steps=2, noise="zero", record=rec1)
    net.estimate(inputs_of(load("S4")), mode="regression", record=rec4)
    assert torch.equal(rec1["den1/pred_x"], rec4["den1/pred_x"])


def test_schedule_timesteps_and_endpoints():
    s = ddim_schedule(50)
    assert s.timesteps[:4] == (0, 20, 41, 61) and s.timesteps[-2:] == (979, 999) and len(s.timesteps) == 50
    assert abs(s.alpha_bar[-1] - 2.43e-9) < 1e-10 and abs(s.alpha_bar[0] - 0.999959) < 1e-6
    assert s.alpha_bar_prev[0] == 1.0


# ---- dims and loading --------------------------------------------------------------------------------------
@needs_fixtures
def test_dims_from_reduced_checkpoint(net, reduced_sd):
    d = net.dims
    assert (d.latent_dim, d.num_layers, d.num_heads, d.head_dim, d.mlp_ratio) == (64, 2, 4, 16, 2.0)
    assert (d.motion_dim, d.pred_cam_dim, d.static_conf_dim, d.text_dim, d.img_dim) == (151, 3, 6, 1024, 1024)
    assert d.text_layers == (0, 1) and d.max_len == 120 and d.obs_hidden == 128
    assert GemDims.from_state_dict(reduced_sd).num_heads == 8  # the reference config's default
    with pytest.raises(ValueError, match="heads"):
        GemDims.from_state_dict(reduced_sd, num_heads=3)


def _official_size(key: str, shape: torch.Size) -> tuple[int, ...]:
    """A reduced checkpoint tensor's shape at the official size (D 64 → 1024, MLP 128 → 4096, ...)."""
    wide = {64: 1024, 128: 2048 if "embed_noisyobs" in key else 4096, 65: 1025, 192: 3072, 215: 1175}
    return tuple(wide.get(s, s) for s in shape)


@needs_fixtures
def test_full_size_inventory_maps_exactly(reduced_sd):
    """The official layout (16 layers, D 1024) on the meta device: each weight is named by a ckpt key."""
    full = {}
    for key, value in reduced_sd.items():
        layered = ".blocks.0." in key or ".text_encoder_layers.0." in key
        for i in range(16) if layered else [0]:
            name = key.replace("blocks.0.", f"blocks.{i}.").replace("layers.0.", f"layers.{i}.")
            full[name] = torch.empty(_official_size(key, value.shape), device="meta")
    dims = GemDims.from_state_dict(full)
    assert (dims.latent_dim, dims.num_layers, dims.num_heads, dims.head_dim, dims.mlp_hidden) == (
        1024, 16, 8, 128, 4096,
    )  # fmt: skip
    with torch.device("meta"):
        model = GemNetwork(dims)
    names = {n for n in (_translate(k) for k in remap_keys(full)) if n}
    assert names >= set(model.state_dict())
    # the official model's learned weights needed for estimation (the PE table is a buffer here)
    assert sum(p.numel() for p in model.parameters()) == 427_688_736


@needs_fixtures
def test_loading_errors(tmp_path, reduced_sd):
    data = CKPT.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(GemCheckpointError, match="truncated"):
        load_gem(tmp_path / "cut.ckpt")
    (tmp_path / "text.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(GemCheckpointError, match="text.ckpt"):
        load_gem(tmp_path / "text.ckpt")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(GemCheckpointError, match="empty"):
        load_gem(tmp_path / "empty.ckpt")
    with pytest.raises(GemCheckpointError, match="no such"):
        load_gem(tmp_path / "absent.ckpt")
    torch.save({"state_dict": {"conv1.weight": torch.zeros(8, 3, 3, 3)}}, tmp_path / "other.pt")
    with pytest.raises(GemCheckpointError, match="not a GEM estimation checkpoint"):
        load_gem(tmp_path / "other.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(GemCheckpointError, match="state_dict"):
        load_gem(tmp_path / "tensor.pt")

    key = DENOISER_PREFIX + "blocks.1.attn.value.weight"
    with pytest.raises(GemCheckpointError, match="missing.*blocks.1.attn.value.weight"):
        load_gem({k: v for k, v in reduced_sd.items() if k != key}, num_heads=4)
    with pytest.raises(GemCheckpointError, match="missing.*encoded_audio"):
        load_gem({k: v for k, v in reduced_sd.items() if "encoded_audio.2.bias" not in k}, num_heads=4)
    with pytest.raises(GemCheckpointError, match="unrecognised.*mystery"):
        load_gem({**reduced_sd, "mystery.weight": torch.zeros(2)}, num_heads=4)
    bad = dict(reduced_sd)
    bad[DENOISER_PREFIX + "blocks.0.gate_mlp"] = torch.zeros(1, 1, 65)
    with pytest.raises(GemCheckpointError, match="gate_mlp.*shape"):
        load_gem(bad, num_heads=4)


@needs_fixtures
def test_legacy_layouts_load_identically(tmp_path, net, reduced_sd):
    # "model." prefix on every key, embedders only under the denoiser namespace, old file format
    legacy = {}
    for k, v in reduced_sd.items():
        moved = not k.startswith(("pipeline.", "music_", "audio_"))
        legacy["model." + (DENOISER_PREFIX + k if moved else k)] = v
    torch.save({"state_dict": legacy}, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    other = load_gem(tmp_path / "legacy.ckpt", num_heads=4)
    ref = net.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in other.state_dict().items())


@needs_fixtures
def test_lightning_checkpoint_with_foreign_objects(tmp_path, monkeypatch, reduced_sd):
    """Non-tensor objects of classes that cannot even be imported: read with the restricted unpickler."""
    module = tmp_path / "foreign_cfg.py"
    module.write_text(
        textwrap.dedent("""
        class Config(dict):
            def __reduce__(self):
                return (Config, (), dict(self))
        class Callback:
            def __init__(self):
                self.state = [1, 2]
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import foreign_cfg

    ckpt = {"state_dict": reduced_sd, "hyper_parameters": foreign_cfg.Config(lr=1e-4)}
    ckpt["callbacks"] = {"ckpt": foreign_cfg.Callback()}
    torch.save(ckpt, tmp_path / "lightning.ckpt")
    module.unlink()
    monkeypatch.delitem(sys.modules, "foreign_cfg")
    sd = read_checkpoint(tmp_path / "lightning.ckpt")
    assert "foreign_cfg" not in sys.modules  # nothing from the file was imported
    assert sd.keys() == reduced_sd.keys()
    load_gem(sd, num_heads=4)


# ---- attention -------------------------------------------------------------------------------------------
def _dense(q, k, v, lengths, window):
    """Reference formulation: one (B, 1, L, L) mask from the same window rule, dense scores."""
    plan = make_plan(lengths, q.shape[2], q.shape[-1], window, dense=True)
    assert len(plan.blocks) == 1
    return attend(q, k, v, plan)


@pytest.mark.parametrize("lengths", [[300], [300, 300], [300, 173, 40]])
def test_banded_equals_dense_attention(lengths):
    g = torch.Generator().manual_seed(0)
    L, W, block = 300, 40, 32
    B = len(lengths)
    q, k, v = (torch.randn(B, 2, L, 16, generator=g) for _ in range(3))
    lengths = torch.tensor(lengths)
    plan = make_plan(lengths, L, 16, W, block=block)
    assert len(plan.blocks) == -(-L // block)
    for q0, q1, k0, k1, _ in plan.blocks:
        assert k1 - k0 <= (q1 - q0) + W + W // 2
    banded = attend(q, k, v, plan)
    torch.testing.assert_close(banded, _dense(q, k, v, lengths, W), rtol=0, atol=1e-5)
    # per person, the valid frames equal a run of that person alone
    for b, n in enumerate(lengths.tolist()):
        alone = attend(q[b : b + 1, :, :n], k[b : b + 1, :, :n], v[b : b + 1, :, :n],
                       make_plan(torch.tensor([n]), n, 16, W, block=block))  # fmt: skip
        torch.testing.assert_close(banded[b : b + 1, :n], alone, rtol=0, atol=1e-5)
    # explicit softmax with −inf outside the window (what the reference computes)
    mask = window_mask(L, W)
    scores = (q[:1] @ k[:1].transpose(-1, -2) / 4.0).masked_fill(mask, float("-inf"))
    explicit = (scores.softmax(-1) @ v[:1]).transpose(1, 2).flatten(2)
    torch.testing.assert_close(banded[:1], explicit, rtol=0, atol=1e-5)


def test_long_clip_plan_is_linear():
    """18,000 frames at the official head size: bounded slabs, no L×L tensor anywhere in the plan."""
    L = 18_000
    plan = make_plan(torch.tensor([L]), L, 128, 120, block=256)
    assert isinstance(plan, AttentionPlan) and plan.cos.shape == (L, 128)
    masks = [m for *_, m in plan.blocks if m is not None]
    assert sum(m.numel() for m in masks) <= L * (256 + 120)
    assert max(k1 - k0 for _, _, k0, k1, _ in plan.blocks) <= 256 + 120
    cos, _ = rope_tables(5000, 128, "cpu")
    assert torch.equal(cos[:5000], plan.cos[:5000])  # positions > 4096 use the same formula


# ---- estimate API ------------------------------------------------------------------------------------------
@needs_fixtures
def test_dense_and_banded_network_agree_on_window(net):
    inputs = inputs_of(load("S2"))  # L = 150 > 120: windowed
    banded = net.estimate(inputs, mode="regression", query_block=16)
    dense = net.estimate(inputs, mode="regression", attention="dense")
    for key in ("pred_x", "pred_cam", "static_conf_logits"):
        torch.testing.assert_close(banded[key], dense[key], rtol=0, atol=1e-5)


@needs_fixtures
def test_batched_people_equal_single_runs(net):
    a, b = inputs_of(load("S1")), inputs_of(load("S2"))  # 90 and 150 frames
    L = 150

    def pad(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x[-1:].expand(L - x.shape[0], *x.shape[1:])]) if x.shape[0] < L else x

    batch = {k: torch.stack([pad(a[k]), b[k]]) for k in a if k != "length"}
    batch["length"] = torch.tensor([90, 150])
    for mode, kw in (("regression", {}), ("ddim", {"steps": 4, "noise": "zero"})):
        out = net.estimate(batch, mode=mode, **kw)
        for i, single in enumerate((a, b)):
            ref = net.estimate(single, mode=mode, **kw)
            n = int(batch["length"][i])
            for key in ("pred_x", "pred_cam", "static_conf_logits"):
                torch.testing.assert_close(out[key][i : i + 1, :n], ref[key], rtol=0, atol=2e-5)
            assert not out["pred_x"][i, n:].any()


@needs_fixtures
def test_seeded_noise_is_reproducible(net):
    inputs = inputs_of(load("S3"))
    first = net.estimate(inputs, steps=3, noise=7)
    again = net.estimate(inputs, steps=3, noise=7)
    other = net.estimate(inputs, steps=3, noise=8)
    x_T = torch.randn(60, 151, generator=torch.Generator().manual_seed(7))
    explicit = net.estimate(inputs, steps=3, noise=x_T)
    assert torch.equal(first["pred_x"], again["pred_x"]) and torch.equal(first["pred_x"], explicit["pred_x"])
    assert not torch.equal(first["pred_x"], other["pred_x"])
    default = net.estimate(inputs, steps=3)
    assert torch.equal(default["pred_x"], net.estimate(inputs, steps=3, noise=0)["pred_x"])


@needs_fixtures
def test_input_validation(net):
    inputs = inputs_of(load("S3"))
    with pytest.raises(NotImplementedError, match="audio"):
        net.estimate({**inputs, "has_audio_mask": torch.ones(60, dtype=torch.bool)}, mode="regression")
    bad = inputs["kp2d"].clone()
    bad[5, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="kp2d.*non-finite"):
        net.estimate({**inputs, "kp2d": bad}, mode="regression")
    with pytest.raises(ValueError, match="bbx_xys.*shape"):
        net.estimate({**inputs, "bbx_xys": inputs["bbx_xys"][:-1]}, mode="regression")
    with pytest.raises(ValueError, match="CUDA"):
        net.estimate(inputs, mode="regression", bf16=True)
    nested = {k: v for k, v in inputs.items() if not k.endswith("_mask")}
    nested["mask"] = {k: v for k, v in inputs.items() if k.endswith("_mask")}
    torch.testing.assert_close(
        net.estimate(nested, mode="regression")["pred_x"], net.estimate(inputs, mode="regression")["pred_x"]
    )
