"""The outer-product logistic regression of PSGD E.3 against the explicit feature matrix it avoids forming."""

import pytest
import torch

from harness.models.small import OuterProductLogistic, logistic_regression

MNIST_INFO = {"in_channels": 1, "image_size": 28, "num_classes": 10}


def test_logits_equal_explicit_outer_product_features():
    torch.manual_seed(0)
    model = OuterProductLogistic({"in_channels": 1, "image_size": 6, "num_classes": 4}).double()
    with torch.no_grad():
        model.weight.normal_()
        model.bias.normal_()
    x = torch.rand(5, 1, 6, 6, dtype=torch.float64)
    flat = x.flatten(1)
    features = torch.stack([torch.outer(v, v).flatten() for v in flat])  # vec(x xᵀ), row-major
    expected = features @ model.weight.T + model.bias
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)


def test_gradient_equals_explicit_features_gradient():
    torch.manual_seed(1)
    model = OuterProductLogistic({"in_channels": 1, "image_size": 5, "num_classes": 3}).double()
    x = torch.rand(4, 1, 5, 5, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    flat = x.flatten(1)
    features = (flat[:, :, None] * flat[:, None, :]).flatten(1)
    residual = torch.softmax(torch.zeros(4, 3, dtype=torch.float64), 1) - torch.nn.functional.one_hot(y, 3)
    torch.testing.assert_close(model.weight.grad, residual.T @ features / 4, rtol=1e-12, atol=1e-12)


def test_mnist_size_and_zero_init_as_the_reference():
    model = logistic_regression(MNIST_INFO, features="outer_product")
    assert sum(p.numel() for p in model.parameters()) == 784 ** 2 * 10 + 10
    assert all(not p.any() for p in model.parameters())


def test_unknown_features_are_refused():
    with pytest.raises(ValueError, match="model.features='pairs' is not known"):
        logistic_regression(MNIST_INFO, features="pairs")
