"""Tests of checkpointed reverse mode (`method="checkpointed"`): the same hypergradient as `reverse` for
every segment length, the recomputation schedule, and memory ∝ T/segment + segment.

References: `reverse`, the closed form of T gradient-descent steps on ridge regression, and the peak bytes
of the distinct storages held by autograd's saved tensors or by the states `step` returns. Everything is
float64.
"""

import pytest
import torch

from bilevel_cli.core import hypergradient, momentum
from problems import (C, DTYPE, assert_same, peak_bytes, recording_times, representation_problem, ridge_closed_form,
                      ridge_problem)


T_SEGMENTS = 10
SEGMENTS = [1, 2, 3, 4, T_SEGMENTS, T_SEGMENTS + 5, None]  # 3 and 4 do not divide T; None is ⌈√T⌉ = 4


@pytest.mark.parametrize("segment", SEGMENTS)
def test_checkpointed_equals_reverse_for_every_segment(ridge_data, classification_data, segment):
    """For segment lengths 1, 2, 3, 4, T, T + 5 and the default, checkpointed equals reverse to 1e-12
    relative error, with the same outer value: momentum on ridge (c and η; the velocity buffer is in the
    checkpoints) and a representation network (two matrix hyperparameters, also in E directly), T = 10."""
    options = {} if segment is None else {"segment": segment}
    for step, outer, w0, hparams in [ridge_problem(ridge_data, momentum), representation_problem(classification_data)]:
        value, expected = hypergradient(step, outer, w0, hparams, T_SEGMENTS, method="reverse")
        other_value, grads = hypergradient(step, outer, w0, hparams, T_SEGMENTS, method="checkpointed", **options)
        assert other_value.item() == pytest.approx(value.item(), rel=1e-14)
        assert_same(grads, expected, rtol=1e-12)


@pytest.mark.parametrize("T", [1, 5, 20, 100])
def test_checkpointed_matches_ridge_closed_form(ridge_data, T):
    """c and η in one call, default segment: dE/dc and dE/dη match the spectral closed form to 1e-10."""
    step, outer, w0, hparams = ridge_problem(ridge_data)
    _, grads = hypergradient(step, outer, w0, hparams, T, method="checkpointed")
    _, dc, deta = ridge_closed_form(ridge_data, C, hparams["lr"].item(), T)
    assert grads["c"].item() == pytest.approx(dc, rel=1e-10)
    assert grads["lr"].item() == pytest.approx(deta, rel=1e-10)


def test_checkpointed_recomputes_segments_last_first(ridge_data):
    """T = 7, segment 3: one pass t = 0..6 (keeping checkpoints at 0, 3, 6), then the segments recomputed
    from their checkpoints, last first: [6], [3, 4, 5], [0, 1, 2]."""
    step, outer, w0, hparams = ridge_problem(ridge_data)
    counting_step, seen = recording_times(step)
    hypergradient(counting_step, outer, w0, hparams, 7, method="checkpointed", segment=3)
    assert seen == [0, 1, 2, 3, 4, 5, 6, 6, 3, 4, 5, 0, 1, 2]


def test_checkpointed_memory_is_a_fifth_of_reverse_at_T_400():
    """At T = 400 the default segment (20) keeps at most a fifth of the bytes reverse keeps (checkpoints
    counted); segment 1 (every state a checkpoint) and segment T (one segment, the whole graph) each keep
    more than twice the default: the cost ∝ T/segment + segment is smallest near √T."""
    reverse, default = peak_bytes("reverse", 400), peak_bytes("checkpointed", 400)
    assert default <= reverse / 5, (default, reverse)
    for segment in (1, 400):
        assert peak_bytes("checkpointed", 400, segment=segment) > 2 * default


@pytest.mark.parametrize("segment", [0, -2])
def test_checkpointed_segment_below_one_raises(ridge_data, segment):
    """segment < 1 is a ValueError that names the option."""
    step, outer, w0, hparams = ridge_problem(ridge_data)
    with pytest.raises(ValueError, match="segment"):
        hypergradient(step, outer, w0, hparams, 5, method="checkpointed", segment=segment)


def test_checkpointed_T_zero_and_unused_hparam(ridge_data):
    """T = 0 never calls `step` and returns E(w0) with the direct term only (c for ½c², 0 for η); an hparam
    that nothing reads gets an exact zero of its shape; the value carries no graph."""
    _, outer, w0, hparams = ridge_problem(ridge_data)
    hparams["unused"] = torch.ones(2, 3, dtype=DTYPE, requires_grad=True)

    def step(w, h, t):
        raise AssertionError("step must not be called when T = 0")

    value, grads = hypergradient(step, outer, w0, hparams, 0, method="checkpointed")
    assert list(grads) == list(hparams) and not value.requires_grad
    expected = 0.5 * (ridge_data["yv"] @ ridge_data["yv"]).item() + 0.5 * C**2
    assert value.item() == pytest.approx(expected, rel=1e-14)
    assert grads["c"].item() == pytest.approx(C, rel=1e-14)
    assert grads["lr"].item() == 0.0
    assert torch.equal(grads["unused"], torch.zeros(2, 3, dtype=DTYPE))
