"""Automatic scoring of digits world media: pixel readers, a digit classifier, the Fréchet distance."""

from unitok.eval.classifier import (
    DigitClassifier,
    DigitClassifierConfig,
    heldout_accuracy,
    load_or_train_digit_classifier,
    train_digit_classifier,
)
from unitok.eval.frechet import frechet_distance
from unitok.eval.readers import BLANK, ink, read_attributes, read_color, read_position, read_size

__all__ = [
    "BLANK",
    "DigitClassifier",
    "DigitClassifierConfig",
    "frechet_distance",
    "heldout_accuracy",
    "ink",
    "load_or_train_digit_classifier",
    "read_attributes",
    "read_color",
    "read_position",
    "read_size",
    "train_digit_classifier",
]
