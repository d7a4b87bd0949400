import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from score_erasure.toyworld import render, vocab


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_same_seed_same_pixels(seed):
    a = render.render(render.sample_scene(np.random.default_rng(seed)))
    b = render.render(render.sample_scene(np.random.default_rng(seed)))
    assert a.dtype == np.uint8 and a.shape == (32, 32, 3)
    np.testing.assert_array_equal(a, b)


def test_different_seeds_differ():
    images = [render.render(render.sample_scene(np.random.default_rng(s))) for s in range(8)]
    assert len({im.tobytes() for im in images}) == 8


def test_every_combination_renders_an_object_on_a_dark_background():
    rng = np.random.default_rng(0)
    for shape in vocab.SHAPES:
        for colour in vocab.COLOURS:
            for style in vocab.STYLES:
                for fire in (False, True):
                    scene = render.sample_scene(rng, shape.name, colour.name, style.name, fire)
                    image = render.render(scene).astype(int)
                    corners = np.concatenate([image[:2, :2], image[-2:, -2:]]).reshape(-1, 3)
                    assert corners.max() <= 45, "background must stay dark"
                    assert image.max() >= 120, "the object must be visible"


def test_fixed_attributes_are_kept():
    scene = render.sample_scene(np.random.default_rng(1), shape="star", colour="blue", style="striped", fire=True)
    assert (scene.shape, scene.colour, scene.style, scene.fire) == ("star", "blue", "striped", True)


def test_part_masks_are_where_the_renderer_draws_the_part():
    rng = np.random.default_rng(3)
    scene = render.sample_scene(rng, shape="star", style="solid", fire=True)
    image = render.render(scene).astype(int)
    drawn = np.abs(image - np.array(scene.background)).sum(-1) > 60
    obj, flames = render.part_mask(scene, "object"), render.part_mask(scene, "flames")
    assert obj.any() and flames.any() and (obj & flames).sum() <= 2  # at most a boundary cell half of each
    assert drawn[obj].mean() > 0.95 and drawn[flames].mean() > 0.9
    assert drawn[~obj & ~flames].mean() < 0.1  # little is drawn outside the two parts
    fiery = (image[..., 0] > 150) & (image[..., 0] > image[..., 2] + 100)
    assert fiery[flames].mean() > 0.9


def test_concept_renders_show_the_concept_with_its_mask():
    from score_erasure.toyworld.judge import WorldJudge
    from score_erasure.toyworld.specs import concept_renders

    images, masks = concept_renders("star", 6, seed=0)
    assert images.shape == (6, 32, 32, 3) and masks.shape == (6, 32, 32) and masks.any(axis=(1, 2)).all()
    assert WorldJudge.load().judge(images).has("shape", "star").all()
    _, fire = concept_renders("fire", 4, seed=0)
    _, obj = concept_renders("star", 4, seed=0)
    assert fire.mean() < obj.mean()  # flames, not the object
