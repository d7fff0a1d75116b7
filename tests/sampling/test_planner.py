"""The mixture sampler: the data order depends on the seed alone and tracks the weights exactly."""
from __future__ import annotations


def test_sampler_order_depends_on_seed_only():
    from utils.sampling.planner import MixtureSampler

    def order(seed):
        sampler = MixtureSampler([50, 30], [0.7, 0.3], seed)
        return [sampler.next() for _ in range(60)]

    assert order(0) == order(0)
    assert order(0) != order(5)
    drawn = order(3)
    assert sum(1 for s, _ in drawn if s == 0) == 42  # the mixture tracks the weights exactly
    assert len({i for s, i in drawn if s == 0}) == 42  # no example repeats within a pass over its source
