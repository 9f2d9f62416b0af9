"""The SD-FSMIS network on the tiny configuration: shapes, stems, SII, QE, VTCT, training."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import IMAGE_SIZE, random_images, square_mask
from diffusers.models.attention_processor import AttnProcessor2_0

from SDFSMISLib.inference.postprocess import Threshold, binarize
from SDFSMISLib.inference.slice_prediction import segment_slices
from SDFSMISLib.model.config import preset
from SDFSMISLib.model.network import SDFSMISNet, marigold_stem
from SDFSMISLib.model.query_enhancement import query_prototype, support_prototypes
from SDFSMISLib.model.support_injection import CONTEXT_KEY

LATENT = IMAGE_SIZE // 8


def test_shapes_through_every_stage(tiny_model: SDFSMISNet) -> None:
    images, masks = random_images(2, seed=1), torch.stack([square_mask(), square_mask(start=8)])
    latents = tiny_model.encode_latents(images)
    assert latents.shape == (2, 4, LATENT, LATENT)
    with torch.no_grad():
        support = tiny_model.encode_support(images[None], masks[None])  # one group of 2 shots
    assert support.condition.shape == (1, 1, tiny_model.config.condition_dim)
    assert support.fg_prototype.shape == support.bg_prototype.shape == (1, 4)
    assert len(support.context.tokens) == len(tiny_model.injecting_layers) == 10  # 3 down, 1 mid, 6 up
    first = support.context.tokens[tiny_model.injecting_layers[0]][0]
    assert first.shape == (1, 2 * LATENT * LATENT, tiny_model.config.unet["block_out_channels"][0])
    with torch.no_grad():
        prediction = tiny_model.predict_latents(random_images(3, seed=2), support)
        foreground = tiny_model.decode_foreground(prediction)
    assert prediction.shape == (3, 4, LATENT, LATENT)
    assert foreground.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert foreground.min() >= 0 and foreground.max() <= 1
    masks_out = segment_slices(tiny_model, random_images(3, seed=2), images, masks)
    assert masks_out.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and masks_out.dtype == bool


def test_marigold_stem_reproduces_base_conv_on_duplicated_input() -> None:
    torch.manual_seed(0)
    base = torch.nn.Conv2d(4, 16, 3, padding=1)
    stem = marigold_stem(base)
    x = torch.randn(2, 4, 8, 8)
    assert stem.in_channels == 8
    torch.testing.assert_close(stem(torch.cat([x, x], dim=1)), base(x), rtol=1e-5, atol=1e-6)


def test_without_qe_the_query_stem_sees_the_latent_twice() -> None:
    """With QE off the query latent is duplicated, which the fresh stem maps onto SD's conv_in."""
    torch.manual_seed(0)
    model = SDFSMISNet.from_config(preset("tiny", query_enhancement=False)).eval()
    seen = []
    model.query_stem.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0]))
    query = random_images(1, seed=30)
    with torch.no_grad():
        model.predict_latents(query, model.encode_support(random_images(1, 31), square_mask()[None]))
    stem_input = seen[0]
    assert torch.equal(stem_input[:, :4], stem_input[:, 4:])
    assert torch.equal(stem_input[:, :4], model.encode_latents(query))


def _unet_output(model: SDFSMISNet, x: torch.Tensor, condition: torch.Tensor, **kwargs) -> torch.Tensor:
    return model.unet(model.query_stem(x), torch.ones(x.shape[0], dtype=torch.long),
                      encoder_hidden_states=condition, **kwargs).sample


def test_injection_processors_equal_plain_attention_without_support(tiny_model: SDFSMISNet) -> None:
    plain = copy.deepcopy(tiny_model)
    plain.unet.set_attn_processor(AttnProcessor2_0())
    x = torch.randn(2, 8, LATENT, LATENT)
    condition = torch.randn(2, 1, tiny_model.config.condition_dim)
    with torch.no_grad():
        torch.testing.assert_close(_unet_output(tiny_model, x, condition), _unet_output(plain, x, condition),
                                   rtol=1e-5, atol=1e-5)


def _predict(model: SDFSMISNet, query: torch.Tensor, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.predict_latents(query, model.encode_support(images, masks))


def test_kv_bank_output_depends_on_support_and_nothing_leaks(tiny_model: SDFSMISNet) -> None:
    query = random_images(1, seed=3)
    support_a, support_b = random_images(1, seed=4), random_images(1, seed=5)
    mask_a, mask_b = square_mask()[None], square_mask(start=4, stop=30)[None]
    first = _predict(tiny_model, query, support_a, mask_a)
    other = _predict(tiny_model, query, support_b, mask_b)
    again = _predict(tiny_model, query, support_a, mask_a)
    assert (first - other).abs().max() > 1e-4
    assert torch.equal(first, again)


def test_batch_items_see_only_their_own_support(tiny_model: SDFSMISNet) -> None:
    queries = random_images(2, seed=6)
    images = random_images(2, seed=7)[:, None]
    masks = torch.stack([square_mask(), square_mask(start=4, stop=50)])[:, None]
    with torch.no_grad():
        support = tiny_model.encode_support(images, masks)  # two groups of one shot
        batched = tiny_model.predict_latents(queries, support, torch.tensor([0, 1]))
    alone = [_predict(tiny_model, queries[i:i + 1], images[i], masks[i]) for i in range(2)]
    torch.testing.assert_close(batched, torch.cat(alone), rtol=1e-4, atol=1e-5)


def test_support_pass_tokens_change_the_query_pass(tiny_model: SDFSMISNet) -> None:
    x = torch.randn(1, 8, LATENT, LATENT)
    with torch.no_grad():
        support = tiny_model.encode_support(random_images(1, seed=8), square_mask()[None])
        condition = support.condition
        without = _unet_output(tiny_model, x, condition)
        with_support = _unet_output(tiny_model, x, condition,
                                    cross_attention_kwargs={CONTEXT_KEY: support.context.reading(None)})
    assert (without - with_support).abs().max() > 1e-4


def test_spatial_prior_starts_as_the_paper_network_and_then_reads_the_support_mask(tiny_model: SDFSMISNet) -> None:
    model = SDFSMISNet.from_config(tiny_model.config.replace(spatial_prior=True)).eval()
    state = tiny_model.state_dict()
    with torch.no_grad():
        model.query_stem.weight[:, :8] = state.pop("query_stem.weight")
    model.load_state_dict(state, strict=False)
    assert model.query_stem.in_channels == 12 and not model.query_stem.weight[:, 8:].any()
    query, support = random_images(1, seed=12), random_images(1, seed=13)
    near, far = square_mask()[None], square_mask(start=30, stop=60)[None]
    torch.testing.assert_close(_predict(model, query, support, near), _predict(tiny_model, query, support, near))
    # Two masks with the same support image: only the prior channels can tell them apart once the
    # attention path is the same, so give those channels weight and compare against the paper network.
    with torch.no_grad():
        model.query_stem.weight[:, 8:].normal_(0, 0.1)
    moved = _predict(model, query, support, far) - _predict(tiny_model, query, support, far)
    assert moved.abs().max() > 1e-3


def test_marigold_stem_zero_copies_add_inputs_that_change_nothing() -> None:
    base = torch.nn.Conv2d(4, 6, 3, padding=1)
    stem = marigold_stem(base, copies=2, zero_copies=1)
    x, extra = torch.randn(1, 4, 5, 5), torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(stem(torch.cat([x, x, extra], dim=1)), base(x))


def test_cross_attn_variant_starts_as_pretrained_and_learns() -> None:
    torch.manual_seed(0)
    model = SDFSMISNet.from_config(preset("tiny", injection="cross-attn")).eval()
    x = torch.randn(1, 8, LATENT, LATENT)
    with torch.no_grad():
        support = model.encode_support(random_images(1, seed=9), square_mask()[None])
        kwargs = {"cross_attention_kwargs": {CONTEXT_KEY: support.context.reading(None)}}
        torch.testing.assert_close(_unet_output(model, x, support.condition, **kwargs),
                                   _unet_output(model, x, support.condition), rtol=0, atol=0)
    loss = model.episode_loss(random_images(1, 10), square_mask()[None], random_images(1, 11), square_mask()[None])
    loss.backward()
    added = model.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.support_cross_attention
    assert added.to_out[0].weight.grad is not None and added.to_out[0].weight.grad.abs().sum() > 0


def test_query_enhancement_matches_hand_computation() -> None:
    # Four query positions with 2-d latents; prototypes fg = (1, 0), bg = (0, 1).
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [-1.0, 0.0]]).T.reshape(1, 2, 1, 4)
    fg, bg = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    # p_fg = softmax over (cos_bg, cos_fg): 0.731, 0.269, 0.710, 0.269 -> positions 0 and 2 pass 0.7.
    expected = torch.tensor([[1.0, 0.05]])
    torch.testing.assert_close(query_prototype(query, fg, bg), expected)


def test_query_enhancement_topk_fallback_matches_hand_computation() -> None:
    width = 16  # k = int(16 * 0.1875) = 3
    angles = [math.radians(50 + 5 * i) for i in range(width)]
    vectors = [(math.cos(a), math.sin(a)) for a in angles]
    query = torch.tensor(vectors).T.reshape(1, 2, 1, width)

    def p_fg(v: tuple[float, float]) -> float:  # cosine to fg (1, 0) and bg (0, 1), 2-way softmax
        norm = math.hypot(*v)
        return 1 / (1 + math.exp(v[1] / norm - v[0] / norm))

    assert max(p_fg(v) for v in vectors) < 0.7
    top = sorted(range(width), key=lambda i: -p_fg(vectors[i]))[:3]
    expected = torch.tensor([[sum(vectors[i][c] for i in top) / 3 for c in range(2)]])
    torch.testing.assert_close(query_prototype(query, torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])),
                               expected)


def test_support_prototypes_are_masked_averages() -> None:
    latents = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]])[None]
    fg, bg = support_prototypes(latents, mask)
    torch.testing.assert_close(fg, torch.tensor([[1.0]]), rtol=0, atol=1e-5)
    torch.testing.assert_close(bg, torch.tensor([[3.0]]), rtol=0, atol=1e-5)


def test_frozen_encoders_get_no_gradient_and_trained_parts_do(tiny_model: SDFSMISNet) -> None:
    tiny_model.train()
    loss = tiny_model.episode_loss(random_images(2, 12), torch.stack([square_mask()] * 2),
                                   random_images(2, 13), torch.stack([square_mask(start=20)] * 2))
    loss.backward()
    assert all(p.grad is None for p in tiny_model.vae.parameters())
    assert all(p.grad is None for p in tiny_model.dino.parameters())
    assert not tiny_model.vae.training and not tiny_model.dino.training
    for part in (tiny_model.condition_mlp, tiny_model.unet, tiny_model.query_stem, tiny_model.support_stem):
        assert sum(p.grad.abs().sum() for p in part.parameters() if p.grad is not None) > 0


def test_a_few_optimiser_steps_reduce_the_loss_on_a_fixed_episode(tiny_model: SDFSMISNet) -> None:
    episode = (random_images(1, 14), square_mask()[None], random_images(1, 15), square_mask(start=20)[None])
    trainable = [p for m in tiny_model.trainable_modules().values() for p in m.parameters()]
    optimiser = torch.optim.AdamW(trainable, lr=1e-3)
    losses = []
    for _ in range(8):
        optimiser.zero_grad()
        loss = tiny_model.episode_loss(*episode)  # eval mode: posterior means, a fixed target
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_vtct_off_uses_a_null_condition() -> None:
    torch.manual_seed(0)
    model = SDFSMISNet.from_config(preset("tiny", vtct=False)).eval()
    with torch.no_grad():
        support = model.encode_support(random_images(1, 16), square_mask()[None])
    assert torch.count_nonzero(support.condition) == 0


def test_k_shot_condition_is_the_shot_average_through_the_mlp(tiny_model: SDFSMISNet) -> None:
    images, masks = random_images(2, 17), torch.stack([square_mask(), square_mask(start=8)])
    with torch.no_grad():
        joint = tiny_model.encode_support(images, masks).condition
        from SDFSMISLib.model.visual_condition import masked_patch_prototype
        prototypes = masked_patch_prototype(tiny_model.dino, images, masks, "crop")
        expected = tiny_model.condition_mlp(prototypes.mean(0, keepdim=True))
    torch.testing.assert_close(joint, expected)


@pytest.mark.parametrize("mode", ["relative", "absolute"])
def test_threshold_and_largest_component(mode: str) -> None:
    foreground = torch.zeros(1, 10, 10).numpy()
    foreground[0, 1:4, 1:4] = 0.8  # 9 px
    foreground[0, 6:8, 6:8] = 0.8  # 4 px, smaller component
    foreground[0, 9, 0] = 0.1  # below both thresholds
    kept = binarize(foreground, Threshold(mode, 0.25 if mode == "relative" else 0.5))
    assert kept.sum() == 9 and kept[0, 2, 2]
    assert binarize(foreground, Threshold(mode, 0.25 if mode == "relative" else 0.5), False).sum() == 13


def test_bad_options_are_input_errors() -> None:
    from SDFSMISLib.errors import InputError

    with pytest.raises(InputError, match="injection must be 'kv-bank' or 'cross-attn'"):
        preset("tiny", injection="bank")
    with pytest.raises(InputError, match="threshold value must lie in"):
        Threshold("relative", 2.0)
