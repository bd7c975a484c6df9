from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lib.agent.coords import GRAMMAR_MAX, grammar_to_pixel, grammar_to_xy, pixel_to_grammar, xy_to_grammar


@given(st.data(), st.integers(1, 1000))
def test_pixel_grammar_pixel_is_exact_up_to_1000(data, size):
    p = data.draw(st.integers(0, size - 1))
    g = pixel_to_grammar(p, size)
    assert 0 <= g <= GRAMMAR_MAX
    assert grammar_to_pixel(g, size) == p


@given(st.integers(1001, 20000), st.integers(0, GRAMMAR_MAX))
def test_grammar_pixel_grammar_is_exact_above_1000(size, g):
    assert pixel_to_grammar(grammar_to_pixel(g, size), size) == g


@pytest.mark.parametrize("size", [1, 3, 5, 99, 301, 517, 999, 1001, 4097])
def test_borders_are_stable(size):
    assert pixel_to_grammar(0, size) == 0
    assert grammar_to_pixel(0, size) == 0
    assert grammar_to_pixel(GRAMMAR_MAX, size) == size - 1
    if size > 1:
        assert pixel_to_grammar(size - 1, size) == GRAMMAR_MAX


def test_size_one_maps_everything_to_zero():
    assert pixel_to_grammar(0, 1) == 0
    assert grammar_to_pixel(500, 1) == 0


def test_half_up_rounding_is_exact_integer_arithmetic():
    # 1 * 999 / 2 = 499.5 -> 500 (Python's round would give 500 too, but 2.5 -> 2 elsewhere)
    assert pixel_to_grammar(1, 3) == 500
    # 500 * 4 / 999 = 2.002 -> 2 ; 5 px: grammar 0, 250, 500, 749, 999 (1*999/4 = 249.75 -> 250)
    assert [pixel_to_grammar(p, 5) for p in range(5)] == [0, 250, 500, 749, 999]
    assert [grammar_to_pixel(g, 5) for g in (0, 250, 500, 749, 999)] == [0, 1, 2, 3, 4]


def test_out_of_range_values_are_clamped():
    assert grammar_to_pixel(1500, 10) == 9
    assert grammar_to_pixel(-3, 10) == 0
    assert pixel_to_grammar(50, 10) == GRAMMAR_MAX


def test_xy_helpers_use_width_for_x_and_height_for_y():
    shape = (300, 517)  # (H, W)
    assert xy_to_grammar(516, 0, shape) == (999, 0)
    assert xy_to_grammar(0, 299, shape) == (0, 999)
    assert grammar_to_xy(999, 999, shape) == (516, 299)


@pytest.mark.parametrize("bad", [1.5, 2.0, True, "3"])
def test_non_integers_are_rejected(bad):
    with pytest.raises(TypeError, match="integer"):
        pixel_to_grammar(bad, 10)


def test_size_must_be_positive():
    with pytest.raises(ValueError, match=">= 1"):
        grammar_to_pixel(3, 0)
