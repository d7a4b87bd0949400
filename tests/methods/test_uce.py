import torch

from score_erasure.methods.uce import UCEConfig, uce_weight


def test_uce_closed_form_by_hand():
    # One scalar weight w, concept c = 1 guided to c* = 0, no preserved concept, λ = 1:
    # W' = (λ w + w·0·1) / (λ + 1·1) = w / 2.
    W = torch.tensor([[4.0]])
    out = uce_weight(W, torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.zeros(0, 1), UCEConfig(lamb=1.0))
    torch.testing.assert_close(out, torch.tensor([[2.0]]))


def test_uce_maps_the_concept_onto_its_guide_and_keeps_preserved_ones():
    torch.manual_seed(0)
    W = torch.randn(5, 8, dtype=torch.float64)
    c, c_star, keep = torch.randn(1, 8, dtype=torch.float64), torch.randn(1, 8, dtype=torch.float64), \
        torch.randn(2, 8, dtype=torch.float64)
    out = uce_weight(W, c, c_star, keep, UCEConfig(lamb=1e-6, erase_scale=1.0, preserve_scale=1.0))
    torch.testing.assert_close(out @ c.T, W @ c_star.T, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out @ keep.T, W @ keep.T, rtol=1e-4, atol=1e-4)


def test_uce_minimises_its_objective():
    torch.manual_seed(1)
    W = torch.randn(3, 4, dtype=torch.float64)
    c, c_star, keep = (torch.randn(n, 4, dtype=torch.float64) for n in (2, 2, 1))
    cfg = UCEConfig(lamb=0.5, erase_scale=1.0, preserve_scale=2.0)

    def objective(M):
        return (cfg.lamb * (M - W).pow(2).sum() + cfg.erase_scale * (M @ c.T - W @ c_star.T).pow(2).sum()
                + cfg.preserve_scale * (M @ keep.T - W @ keep.T).pow(2).sum())

    best = uce_weight(W, c, c_star, keep, cfg)
    for _ in range(10):
        assert objective(best) <= objective(best + 1e-3 * torch.randn_like(W))


def test_rows_pair_tail_tokens_and_all_tokens_of_equal_length_prompts():
    from score_erasure.backends import denoiser_for
    from score_erasure.methods.uce import paired_rows
    from score_erasure.testing import tiny_sd_pipeline

    d = denoiser_for(tiny_sd_pipeline())
    emb = d.encode(["a red star", "a red shape", "a star on fire", "a star"])
    length = emb.shape[1]  # 16: [CLS] a red star [SEP] + padding; "a star on fire" ends 2 tokens later
    rows, guides = paired_rows(d, ["a red star"], ["a red shape"], "tail")
    torch.testing.assert_close(rows, emb[0, 3:])  # from the last real token ("star", position 3) to the end
    torch.testing.assert_close(guides, emb[1, 3:])
    rows, guides = paired_rows(d, ["a red star"], ["a red shape"], "all")
    torch.testing.assert_close(rows, emb[0])
    torch.testing.assert_close(guides, emb[1])
    # Different lengths: aligned at the last real tokens, the longer one's overhang at the end dropped.
    rows, guides = paired_rows(d, ["a star on fire"], ["a star"], "all")
    torch.testing.assert_close(rows, emb[2, 4:])
    torch.testing.assert_close(guides, emb[3, 2:length - 2])


def test_rece_derived_embedding_is_the_ridge_least_squares_solution():
    """c' = argmin_x Σ_l ||W_l x - W⁰_l c||² + λ_r ||x||², against a direct least-squares solve."""
    from score_erasure.methods.rece import derived_map

    g = torch.Generator().manual_seed(0)
    current = [torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    original = [torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    c, lam = torch.randn(4, generator=g, dtype=torch.float64), 0.3
    A = torch.cat([*current, lam ** 0.5 * torch.eye(4, dtype=torch.float64)])
    b = torch.cat([*(W0 @ c for W0 in original), torch.zeros(4, dtype=torch.float64)])
    want = torch.linalg.lstsq(A, b[:, None]).solution[:, 0]
    torch.testing.assert_close(derived_map(current, original, lam) @ c, want)


def test_rece_keeps_the_candidate_with_the_smallest_concept_gap(spec):
    """UCE alone (round 0) and each round are candidates; the weights left are the best one's, not the last's."""
    from score_erasure.backends import denoiser_for
    from score_erasure.methods import get_method
    from score_erasure.testing import tiny_sd_pipeline

    rece = get_method("rece")
    runs = {}
    for epochs in (1, 2, 3):
        denoiser = denoiser_for(tiny_sd_pipeline(0))
        trace = rece.fit(denoiser, spec, rece.config({"epochs": epochs}), show_progress=False)
        runs[epochs] = (trace, denoiser.parameters("inputs"))
    denoiser = denoiser_for(tiny_sd_pipeline(0))
    get_method("uce").fit(denoiser, spec, get_method("uce").config(), show_progress=False)
    runs[0] = (None, denoiser.parameters("inputs"))
    trace, kept = runs[3]
    gaps = [r["loss"] for r in trace.rows]
    assert [r["step"] for r in trace.rows] == [0, 1, 2, 3] and trace.info["kept_epoch"] == gaps.index(min(gaps))
    assert gaps[:2] == [r["loss"] for r in runs[1][0].rows]  # each candidate's gap does not depend on later rounds
    same = runs[trace.info["kept_epoch"]][1]
    assert all(torch.equal(W, same[n]) for n, W in kept.items())
