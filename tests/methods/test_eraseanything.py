"""EraseAnything: its attention map is the block's own, its attention term sums what it should, and its two levels
alternate with their own rates."""

import torch

from score_erasure.backends import denoiser_for
from score_erasure.methods import get_method
from score_erasure.methods.eraseanything import JointAttention, attention_to
from score_erasure.methods.loop import finetune
from score_erasure.testing import FAST_CONFIGS as FAST
from score_erasure.testing import tiny_flux_pipeline


def test_the_captured_map_is_the_joint_attention_the_block_computes():
    denoiser = denoiser_for(tiny_flux_pipeline(0))
    attn = denoiser.network.transformer_blocks[-1].attn
    seen = {}
    hooks = [attn.to_v.register_forward_hook(lambda _m, _a, out: seen.__setitem__("v", out)),
             attn.add_v_proj.register_forward_hook(lambda _m, _a, out: seen.__setitem__("ev", out)),
             attn.to_out[0].register_forward_pre_hook(lambda _m, args: seen.__setitem__("out", args[0])),
             attn.to_add_out.register_forward_pre_hook(lambda _m, args: seen.__setitem__("eout", args[0]))]
    x = denoiser.noise(2, torch.Generator().manual_seed(0))
    with torch.no_grad(), JointAttention(denoiser.network) as capture:
        denoiser.predict(x, denoiser.timesteps(4)[1], denoiser.encode(["a star", "a circle"]))
    for h in hooks:
        h.remove()
    probs = capture.probs()
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    heads = probs.shape[1]
    v = torch.cat([seen["ev"], seen["v"]], dim=1).unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, heads, L, d)
    out = (probs @ v).transpose(1, 2).flatten(2)
    text = seen["eout"].shape[1]
    torch.testing.assert_close(out[:, :text], seen["eout"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[:, text:], seen["out"], atol=1e-5, rtol=1e-4)


def test_the_attention_term_sums_the_norms_over_batch_and_heads_of_each_column():
    probs = torch.zeros(2, 3, 4, 5)  # batch 2, heads 3, 4 queries, 5 keys
    probs[:, :, :, 1] = 0.5
    probs[0, 0, 2, 3] = 1.0
    # column 1: every query has ‖(0.5,)·6‖ = 0.5·√6; column 3: one query has norm 1
    expected = 4 * 0.5 * 6 ** 0.5 + 1.0
    torch.testing.assert_close(attention_to(probs, [1, 3]), torch.tensor(expected))


def test_the_levels_alternate_each_at_its_own_rate():
    p = torch.nn.Parameter(torch.zeros(()))
    moved = []

    def step(k):
        moved.append(float(p.detach()))
        return p * 1.0, {}

    finetune({"p": p}, step, 3, 1e-3, label="t", show_progress=False, lr_at=lambda k: 1e-3 if k % 2 == 0 else 5e-4)
    moved.append(float(p.detach()))
    steps = [moved[i] - moved[i + 1] for i in range(3)]
    # Adam's steps on a constant gradient are the rate itself
    assert abs(steps[0] - 1e-3) < 1e-6 and abs(steps[1] - 5e-4) < 1e-6 and abs(steps[2] - 1e-3) < 1e-6


def test_eraseanything_runs_both_levels_and_edits_the_text_queries_and_keys():
    from score_erasure.spec import ConceptSpec

    spec = ConceptSpec(concepts=["star"], target_prompts=["a star", "a red star"],
                       anchor_prompts=["a shape", "a red shape"],
                       retain_prompts=["a circle", "a square", "a blue triangle"])
    denoiser = denoiser_for(tiny_flux_pipeline(0))
    before = {k: v.detach().clone() for k, v in denoiser.network.named_parameters()}
    method = get_method("eraseanything")
    trace = method.fit(denoiser, spec, method.config(FAST["eraseanything"]), show_progress=False)
    assert {"esd", "attn"} <= set(trace.rows[0]) and {"lora", "rsc"} <= set(trace.rows[1])
    changed = {k for k, v in denoiser.network.named_parameters() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("transformer_blocks.") and ("add_q_proj" in k or "add_k_proj" in k)
                           for k in changed)
