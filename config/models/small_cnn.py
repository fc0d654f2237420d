"""A model of your own: the pipeline calls small_cnn(in_shape=(C, H, W), num_classes=K, dropout=p)."""
from torch import nn


def small_cnn(in_shape, num_classes, dropout=0.0):
    c, h, w = in_shape
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Dropout(dropout), nn.Linear(32 * h * w, 128), nn.ReLU(), nn.Linear(128, num_classes))
