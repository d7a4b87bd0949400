"""MACE's parts: token matching, both closed forms against direct least squares, the attention maps and loss;
TRCE's first stage against direct least squares."""

import torch

from score_erasure.backends import denoiser_for
from score_erasure.methods import get_method
from score_erasure.methods.mace import AttentionMaps, attention_loss, fuse, matched_positions
from score_erasure.methods.uce import UCEConfig, uce_weight


def _lstsq(blocks):
    """argmin_W Σ ||W X_b - Y_b||² over (X_b, Y_b) blocks (columns are samples), through torch.linalg.lstsq."""
    X = torch.cat([x for x, _ in blocks], 1)
    Y = torch.cat([y for _, y in blocks], 1)
    return torch.linalg.lstsq(X.T, Y.T).solution.T


def test_matched_positions_leave_out_the_concept_tokens():
    # [CLS] a picture of a star [SEP] vs [CLS] a picture of a shape [SEP], padded to 9
    target, anchor = [101, 1, 2, 3, 1, 50, 102], [101, 1, 2, 3, 1, 60, 102]
    pairs, own = matched_positions(target, anchor, 9)
    assert own == [5] and pairs == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (6, 6), (7, 7), (8, 8)]
    pairs, own = matched_positions([101, 50, 51, 102], [101, 102], 6)  # a two-token concept, the empty anchor
    assert own == [1, 2] and pairs == [(0, 0), (3, 1), (4, 2), (5, 3)]


def test_the_refinement_is_the_least_squares_solution():
    """W_cfr = argmin λ||W' - W||² + Σ ||W' k - W v||² + s Σ ||W' p - W p||² (UCE's closed form, MACE's rows)."""
    g = torch.Generator().manual_seed(0)
    W, k, v, p = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((3, 5), (7, 5), (7, 5), (4, 5)))
    lam, s = 0.7, 0.3
    got = uce_weight(W, k, v, p, UCEConfig(erase_scale=1.0, preserve_scale=s, lamb=lam))
    eye = torch.eye(5, dtype=torch.float64)
    want = _lstsq([(lam ** 0.5 * eye, lam ** 0.5 * W), (k.T, W @ v.T), (s ** 0.5 * p.T, s ** 0.5 * W @ p.T)])
    torch.testing.assert_close(got, want)


def test_the_fusion_is_the_least_squares_solution_and_one_lora_fuses_to_itself():
    g = torch.Generator().manual_seed(1)
    W_cfr, W_0, W_1, W_2 = (torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(4))
    E_1, E_2, P = (torch.randn(n, 5, generator=g, dtype=torch.float64) for n in (6, 2, 4))
    lam, s = 0.5, 0.2
    got = fuse(W_cfr, [(W_1, E_1), (W_2, E_2)], W_0, P, lam, s)
    eye = torch.eye(5, dtype=torch.float64)
    want = _lstsq([(lam ** 0.5 * eye, lam ** 0.5 * W_cfr), (E_1.T, W_1 @ E_1.T), (E_2.T, W_2 @ E_2.T),
                   (s ** 0.5 * P.T, s ** 0.5 * W_0 @ P.T)])
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(fuse(W_cfr, [(W_1, E_1)], W_0, P, 0.0, 0.0), W_1)  # E_1 spans the space


def test_the_attention_maps_are_the_cross_attention_probabilities(pipe):
    denoiser = denoiser_for(pipe)
    cond, x, t = denoiser.encode(["a star"]), torch.randn(1, 4, 8, 8), denoiser.timesteps(4)[1]
    with AttentionMaps(denoiser.network) as maps:
        out = denoiser.predict(x, t, cond)
    recorded = maps.take()
    assert len(recorded) == len(maps.layers) > 0 and not maps.maps
    assert all(torch.allclose(a.sum(-1), torch.ones(())) and a.shape[-1] == cond.shape[1] for a in recorded)
    torch.testing.assert_close(out, denoiser.predict(x, t, cond))  # recording changes nothing
    mask = torch.zeros(8, 8, dtype=torch.bool)
    assert attention_loss(recorded, mask, [1]) == 0  # nothing inside an empty mask
    full = attention_loss(recorded, torch.ones(8, 8, dtype=torch.bool), [1, 2])
    assert full == sum(a[:, :, [1, 2]].pow(2).sum().sqrt() for a in recorded)


def test_mace_erases_several_concepts_in_one_run(pipe):
    from score_erasure.spec import ConceptSpec

    spec = ConceptSpec(concepts=["star", "circle"], target_prompts=["a star", "a circle"],
                       anchor_prompts=["a shape", "a shape"], retain_prompts=["a square"])
    denoiser, method = denoiser_for(pipe), get_method("mace")
    before = {k: v.detach().clone() for k, v in denoiser.parameters("xattn-kv").items()}
    trace = method.fit(denoiser, spec, method.config({"lora_steps": 2, "images": 1, "steps": 2}), show_progress=False)
    assert [r["concept"] for r in trace.rows] == [0.0, 0.0, 1.0, 1.0]
    after = denoiser.parameters("xattn-kv")
    assert all(not torch.equal(after[k], v) for k, v in before.items())
    assert not any("lora" in k for k, _ in denoiser.network.named_parameters())


def test_trce_stage_one_is_the_least_squares_solution_over_end_tokens(pipe):
    """W' = argmin λ||W' - W||² + Σ_i ||W' e_i - W e*_i||² + s Σ_p ||W' p - W p||², e_i the target prompts' first
    end-token states, e*_i their anchors', p every token of the retained prompts."""
    from score_erasure.methods.trce import end_token_rows
    from score_erasure.spec import ConceptSpec

    spec = ConceptSpec(concepts=["star"], target_prompts=["a star", "a picture of a star"],
                       anchor_prompts=["a shape", "a picture of a shape"], retain_prompts=["a circle"])
    denoiser, method = denoiser_for(pipe), get_method("trce")
    name = next(n for n, W in denoiser.parameters("xattn-kv").items() if W.ndim == 2)
    W = denoiser.parameters("xattn-kv")[name].detach().double().clone()
    e, e_star = (end_token_rows(denoiser, p).double() for p in (spec.target_prompts, spec.anchor_prompts))
    p = denoiser.token_states(denoiser.encode(spec.retain_prompts)).flatten(0, 1).double()
    lam, s = 0.3, 0.7
    method.fit(denoiser, spec, method.config({"iterations": 0, "lamb": lam, "preserve_scale": s, "trajectories": 1,
                                              "preserve_trajectories": 1, "steps": 2, "early": 1}),
               show_progress=False)
    eye = torch.eye(W.shape[1], dtype=torch.float64)
    want = _lstsq([(lam ** 0.5 * eye, lam ** 0.5 * W), (e.T, W @ e_star.T), (s ** 0.5 * p.T, s ** 0.5 * W @ p.T)])
    torch.testing.assert_close(denoiser.parameters("xattn-kv")[name].double(), want, atol=1e-5, rtol=1e-4)


def test_on_the_world_stage_two_trains_on_rendered_scenes_with_their_exact_masks(pipe):
    """The embedded world's concepts: the renderer's scenes and masks (at the latents' resolution), not samples."""
    import pytest

    from score_erasure.errors import UserError
    from score_erasure.methods.mace import MACEConfig, _rendered_data
    from score_erasure.spec import ConceptSpec
    from score_erasure.toyworld.specs import world_spec

    denoiser = denoiser_for(pipe)
    data = _rendered_data(denoiser, "fire", MACEConfig(images=3), 0)
    assert len(data) == 3 and all(x0.shape == (1, 4, 8, 8) and m.shape == (8, 8) and 0 < m.sum() < 64
                                  for x0, m in data)
    spec = world_spec("star")
    assert spec.world
    method = get_method("mace")
    method.fit(denoiser, spec, method.config({"lora_steps": 1, "images": 1, "steps": 2}), show_progress=False)
    other = ConceptSpec(concepts=["star"], target_prompts=["a star"], anchor_prompts=["a shape"])
    with pytest.raises(UserError, match="embedded world"):
        method.fit(denoiser, other, method.config({"lora_steps": 1, "images": 1, "masks": "renderer"}),
                   show_progress=False)
