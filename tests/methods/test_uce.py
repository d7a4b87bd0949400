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
