"""The FF core: labels, layers, losses, the training primitive, negatives and classifiers."""

import pytest
import torch
from omegaconf import OmegaConf

from ffpipe.errors import ConfigError, NonFiniteLossError
from ffpipe.ff import FFLayer, PerfOptLayer, embed_label, ff_loss, goodness, normalize, train_unit
from ffpipe.model import FFNet
from ffpipe.negatives import AdaptiveNeg, FixedNeg, RandomNeg, build_negatives
from ffpipe.optim import Trainee, cooldown_factor

ADAM = {"name": "adam", "lr": 0.003, "cooldown_from": None}


def blobs(n=256, dim=40, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, dim, generator=g) * 2
    y = torch.randint(0, classes, (n,), generator=g)
    return 0.3 * (protos[y] + 0.3 * torch.randn(n, dim, generator=g)), y


def net_cfg(classifier="softmax", widths=(32, 32), kind="ff"):
    model = OmegaConf.create({"kind": kind, "widths": list(widths), "norm": "rms", "goodness": "mean",
                              "loss": "symba", "threshold": 1.0, "alpha": 4.0, "heads": "all"})
    clf = OmegaConf.create({"name": classifier, "skip_first": True, "optimizer": "adam", "lr": 0.01,
                            "weight_decay": 0.0})
    return model, clf, OmegaConf.create(ADAM)


def test_embed_label_one_hot_and_neutral():
    x = torch.ones(3, 12)
    out = embed_label(x, torch.tensor([0, 4, 9]), 10)
    assert torch.equal(out[:, :10], torch.eye(10)[[0, 4, 9]]) and torch.all(out[:, 10:] == 1)
    assert torch.allclose(embed_label(x, None, 10)[:, :10], torch.full((3, 10), 0.1))
    assert torch.all(x == 1)  # the input is not modified


def test_normalize_and_goodness():
    x = torch.tensor([[3.0, 4.0]])
    assert torch.allclose(normalize(x, "l2").norm(), torch.tensor(1.0))
    assert torch.allclose(normalize(x, "rms").pow(2).mean(), torch.tensor(1.0))
    assert goodness(x, "sum").item() == 25 and goodness(x, "mean").item() == 12.5
    with pytest.raises(ConfigError, match="model.norm"):
        FFLayer(4, 4, norm="batch")


def test_losses_prefer_positive_goodness():
    hi, lo = torch.tensor([5.0]), torch.tensor([0.0])
    for kind in ("hinton", "symba"):
        assert ff_loss(hi, lo, kind, 2.0, 1.0) < ff_loss(lo, hi, kind, 2.0, 1.0)


def test_cooldown_is_linear_after_start():
    f = [cooldown_factor(e, 10, 0.5) for e in range(10)]
    assert f[:5] == [1.0] * 5 and f[5] == 1.0 and f[9] == pytest.approx(0.2)
    assert all(a > b for a, b in zip(f[5:], f[6:]))
    assert cooldown_factor(7, 10, None) == 1.0


def test_train_unit_separates_positive_from_negative():
    x, y = blobs()
    layer = Trainee("layer.0", FFLayer(40, 64), ADAM, 20)
    g = torch.Generator().manual_seed(0)
    neg = (y + 1) % 10
    stream = (torch.stack([embed_label(x, y, 10), embed_label(x, neg, 10)], 1),)
    first = train_unit(layer, stream, 1, 32, g, 0)
    last = train_unit(layer, stream, 10, 32, g, 1)
    assert float(last.loss) < float(first.loss)
    assert float(last.metric) > 0  # positives have higher goodness than negatives
    assert last.steps == 10 * 8 and last.samples == 2560


def test_train_unit_reports_first_non_finite_step():
    x, y = blobs(n=64)
    x[40] = float("nan")
    layer = Trainee("layer.3", FFLayer(40, 16), ADAM, 5)
    stream = (torch.stack([embed_label(x, y, 10), embed_label(x, (y + 1) % 10, 10)], 1),)
    with pytest.raises(NonFiniteLossError, match=r"layer\.3 at epoch 2 step \d"):
        train_unit(layer, stream, 1, 16, torch.Generator().manual_seed(0), 2)


def test_perf_opt_layer_learns_by_cross_entropy():
    x, y = blobs()
    layer = Trainee("layer.0", PerfOptLayer(40, 64, 10), ADAM, 10)
    stats = train_unit(layer, (embed_label(x, None, 10), y), 10, 32, torch.Generator().manual_seed(0), 0)
    assert float(stats.metric) > 0.8


@pytest.mark.parametrize("sampler", [RandomNeg(), FixedNeg(), AdaptiveNeg()])
def test_negatives_are_never_the_true_label(sampler):
    x, y = blobs(n=500)
    net = FFNet(*net_cfg(), input_dim=40, num_classes=10, total_epochs=2)
    g = torch.Generator().manual_seed(0)
    for chapter in range(3):
        neg = sampler.labels(chapter, net, x, y, g)
        assert neg.shape == y.shape and not torch.any(neg == y)
        assert neg.min() >= 0 and neg.max() < 10


def test_fixed_negatives_stay_fixed_and_random_ones_change():
    x, y = blobs(n=500)
    net = FFNet(*net_cfg(), input_dim=40, num_classes=10, total_epochs=2)
    g = torch.Generator().manual_seed(0)
    fixed, rnd = FixedNeg(), RandomNeg()
    assert torch.equal(fixed.labels(0, net, x, y, g), fixed.labels(1, net, x, y, g))
    assert not torch.equal(rnd.labels(0, net, x, y, g), rnd.labels(1, net, x, y, g))


def test_adaptive_negatives_pick_the_best_wrong_label():
    x, y = blobs(n=100)
    net = FFNet(*net_cfg(), input_dim=40, num_classes=10, total_epochs=2)
    scores = net.goodness_scores(x, 1)
    scores.scatter_(1, y[:, None], float("-inf"))
    ada = AdaptiveNeg()
    ada.labels(0, net, x, y, torch.Generator())
    assert torch.equal(ada.labels(1, net, x, y, torch.Generator()), scores.argmax(1))


def test_goodness_scores_match_one_label_at_a_time():
    x, _ = blobs(n=30)
    net = FFNet(*net_cfg(widths=(16, 16, 16)), input_dim=40, num_classes=10, total_epochs=1)
    batched = net.goodness_scores(x, 1)
    for label in (0, 7):
        h, total = embed_label(x, torch.full((30,), label), 10), 0
        for i, t in enumerate(net.layers):
            h = t.module(h)
            total = total + (t.module.goodness(h) if i >= 1 else 0)
        assert torch.allclose(batched[:, label], total, atol=1e-5)


@pytest.mark.parametrize("classifier", ["softmax", "goodness"])
def test_ff_net_learns_blobs(classifier):
    x, y = blobs(n=600)
    model, clf, opt = net_cfg(classifier, widths=(64, 64))
    opt.lr = 0.01
    net = FFNet(model, clf, opt, input_dim=40, num_classes=10, total_epochs=10)
    g = torch.Generator().manual_seed(0)
    neg = RandomNeg()
    for chapter in range(10):
        stream = net.input_stream(x, y, neg.labels(chapter, net, x, y, g))
        for layer in net.layers:
            train_unit(layer, stream, 1, 50, g, chapter)
            stream = layer.module.propagate(stream)
        if net.classifier.head is not None:
            train_unit(net.classifier.head, (net.classifier.features(x), y), 1, 50, g, chapter)
    assert float(net.accuracy(x, y)) > 0.9


def test_bad_model_settings_are_config_errors():
    model, clf, opt = net_cfg(widths=(32,))
    with pytest.raises(ConfigError, match="skip_first"):
        FFNet(model, clf, opt, input_dim=40, num_classes=10, total_epochs=1)
    for widths in ([], [0, 4], ["a"]):
        model.widths = widths
        with pytest.raises(ConfigError, match="widths"):
            FFNet(model, clf, opt, input_dim=40, num_classes=10, total_epochs=1)
    model, clf, opt = net_cfg(kind="perf_opt")
    model.heads = "first"
    with pytest.raises(ConfigError, match="heads"):
        FFNet(model, clf, opt, input_dim=40, num_classes=10, total_epochs=1)
    with pytest.raises(ConfigError, match="negatives=none"):
        build_negatives(OmegaConf.create({"name": "random"}), "perf_opt")
    with pytest.raises(ConfigError, match="lr"):
        Trainee("x", FFLayer(4, 4), {"name": "adam", "lr": 0.0}, 1)


@pytest.mark.parametrize("norm", ["rms", "l2"])
def test_input_layer_matches_the_generic_layer_on_embedded_pairs(norm):
    """FFInputLayer's shared-image shortcut computes the same loss and gradients as FFLayer."""
    from ffpipe.ff import FFInputLayer
    x, y = blobs(n=64)
    neg = (y + 3) % 10
    fast = FFInputLayer(40, 32, 10, norm=norm, alpha=4.0)
    slow = FFLayer(40, 32, norm=norm, alpha=4.0)
    slow.load_state_dict(fast.state_dict())
    x0 = x.clone()
    x0[:, :10] = 0
    loss_fast, gap_fast = fast.objective(x0, y, neg)
    loss_slow, gap_slow = slow.objective(torch.stack([embed_label(x, y, 10), embed_label(x, neg, 10)], 1))
    loss_fast.backward()
    loss_slow.backward()
    assert torch.allclose(loss_fast, loss_slow, atol=1e-6) and torch.allclose(gap_fast, gap_slow, atol=1e-5)
    assert torch.allclose(fast.linear.weight.grad, slow.linear.weight.grad, atol=1e-6)
    assert torch.allclose(fast.linear.bias.grad, slow.linear.bias.grad, atol=1e-6)
    (pn,) = fast.propagate((x0, y, neg))
    assert torch.allclose(pn[:, 0], slow(embed_label(x, y, 10)), atol=1e-5)
    assert torch.allclose(pn[:, 1], slow(embed_label(x, neg, 10)), atol=1e-5)
