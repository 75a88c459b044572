"""The one image loader: each odd file is loaded correctly or refused with its reason."""

import numpy as np
import pytest
from PIL import Image

from nhr.images import ImageLimits, ImageRefused, fit_long_side, open_image, parse_colour, try_open
from tests.fakes.image_zoo import ZOO_LIMITS, bomb_png, write_zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    return folder, write_zoo(folder)


def test_every_zoo_file_has_its_expected_outcome(zoo):
    folder, cases = zoo
    for name, case in cases.items():
        image, reason = try_open(folder / case.file, ZOO_LIMITS, name)
        if case.expect == "ok":
            assert reason is None, f"{name} refused: {reason}"
            assert image.mode == "RGB"
            assert case.check(image), f"{name}: wrong pixels"
        else:
            assert image is None and reason == case.expect, f"{name}: {reason} != {case.expect}"


def test_zoo_from_bytes_matches_from_paths(zoo):
    folder, cases = zoo
    for name, case in cases.items():
        _, by_path = try_open(folder / case.file, ZOO_LIMITS)
        _, by_bytes = try_open((folder / case.file).read_bytes(), ZOO_LIMITS)
        assert by_path == by_bytes, name


def test_sixteen_bit_is_scaled_not_clipped():
    ramp = np.tile(np.linspace(0, 65535, 256), (8, 1)).astype(np.uint16)
    img = open_image(Image.fromarray(ramp))
    grey = np.asarray(img)[..., 0]
    assert grey[0, 0] == 0 and grey[0, -1] == 255
    assert (grey == 255).mean() < 0.01  # the clipping bug made 99.6 % of it white


def test_alpha_goes_on_the_stated_background():
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    limits = ImageLimits(background=parse_colour("#102030"))
    assert open_image(rgba, limits).getpixel((1, 1)) == (16, 32, 48)


def test_bomb_is_refused_before_decoding_and_message_names_the_limit():
    with pytest.raises(ImageRefused) as err:
        open_image(bomb_png(20000, 20000), ImageLimits(max_pixels=10_000_000), "row 7")
    assert err.value.reason == "too_many_pixels"
    assert "row 7" in str(err.value) and "IMAGE_MAX_PIXELS" in str(err.value)


def test_limits_on_sides_and_aspect():
    assert try_open(Image.new("RGB", (4000, 2)), ImageLimits(min_side=16))[1] == "too_small"
    assert try_open(Image.new("RGB", (900, 100)), ImageLimits(max_aspect=6))[1] == "extreme_aspect"
    assert try_open(Image.new("RGB", (600, 100)), ImageLimits(max_aspect=6))[1] is None


def test_real_photos_load_and_fit():
    skdata = pytest.importorskip("skimage.data")
    datasets = pytest.importorskip("sklearn.datasets")
    photos = [skdata.astronaut(), skdata.camera(), *datasets.load_sample_images().images]
    for arr in photos:
        img = open_image(Image.fromarray(arr), ImageLimits(min_side=64, max_aspect=4))
        assert img.mode == "RGB" and img.size == (arr.shape[1], arr.shape[0])
        small = fit_long_side(img, 256)
        assert max(small.size) == 256
    with pytest.raises(ValueError, match="colour"):
        parse_colour("reddish")
