"""Overlay legends wrap their text to the panel instead of cutting it off."""

import numpy as np

from gsva.evaluation.overlays import render_prediction, text_width, wrap_text


def test_wrapped_lines_fit_and_keep_every_word():
    text = "Sure, the left red square: [SEG], the blue circle behind it: [REJ], " * 4 + "x" * 120
    lines = wrap_text(text, 200)
    assert len(lines) > 4 and all(text_width(line) <= 200 for line in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")
    words = text.split()[:-1]  # every word that fits a line is broken only between words
    assert " ".join(lines).split()[: len(words)] == words


def test_a_long_answer_makes_the_legend_taller_not_cut():
    image = np.zeros((64, 64, 3), np.uint8)
    masks = [np.zeros((64, 64), bool)]
    short = render_prediction(image, ["red"], masks, [False], "Sure, red: [SEG].")
    long = render_prediction(image, ["red"], masks, [False], "Sure, " + "red and green and blue, " * 20 + "red: [SEG].")
    assert long.shape[1] == short.shape[1] and long.shape[0] > short.shape[0] + 3 * 18
