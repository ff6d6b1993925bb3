"""torch_utils.misc and training_stats: sampler order and resume, parameter copying, statistics."""

import itertools

import numpy as np
import pytest
import torch

from torch_utils import misc, training_stats

def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))

def test_sampler_is_seeded_and_covers_dataset():
    data = list(range(20))
    a = take(misc.InfiniteSampler(data, seed=0), 20)
    assert a == take(misc.InfiniteSampler(data, seed=0), 20)
    assert a != take(misc.InfiniteSampler(data, seed=1), 20)
    assert sorted(take(misc.InfiniteSampler(data, shuffle=False), 20)) == data

@pytest.mark.parametrize('start', [0, 1, 7, 33, 70001])
def test_sampler_resume_replays_exactly(start):
    data = list(range(13))
    full = take(misc.InfiniteSampler(data, seed=5), start + 30)
    assert take(misc.InfiniteSampler(data, seed=5, start_idx=start), 30) == full[start:]

def test_sampler_ranks_partition_the_global_sequence():
    data = list(range(11))
    full = take(misc.InfiniteSampler(data, seed=2), 40)
    for rank in range(2):
        got = take(misc.InfiniteSampler(data, seed=2, rank=rank, num_replicas=2, start_idx=3), 17)
        assert got == full[6 + rank::2][:17]

def test_copy_params_and_buffers():
    src = torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        src.weight.fill_(2)
        src.running_mean.fill_(5)
    dst = torch.nn.BatchNorm1d(3)
    misc.copy_params_and_buffers(src, dst, require_all=True)
    assert torch.equal(dst.weight, src.weight) and torch.equal(dst.running_mean, src.running_mean)
    with pytest.raises(KeyError):
        misc.copy_params_and_buffers(torch.nn.Identity(), dst, require_all=True)

def test_constant_is_cached():
    a = misc.constant([1, 2, 3], dtype=torch.float32)
    assert a is misc.constant([1, 2, 3], dtype=torch.float32)
    assert misc.constant(1.0, shape=[2, 2]).shape == (2, 2)

def test_print_module_summary(capsys):
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    out = misc.print_module_summary(net, [torch.zeros(1, 4)])
    text = capsys.readouterr().out
    assert out.shape == (1, 2)
    assert 'Total' in text and str(4 * 8 + 8 + 8 * 2 + 2) in text

def test_training_stats_collector():
    collector = training_stats.Collector(regex='Test/.*')
    training_stats.report('Test/a', torch.tensor([1.0, 2.0, 3.0]))
    training_stats.report('Other/b', 1.0)
    collector.update()
    assert collector.names() == ['Test/a']
    assert collector.num('Test/a') == 3 and collector.mean('Test/a') == 2.0
    assert np.isclose(collector.std('Test/a'), np.std([1, 2, 3]))
    training_stats.report('Test/a', 10.0)
    collector.update()
    assert collector.num('Test/a') == 1 and collector['Test/a'] == 10.0

def test_rank0_first_orders_ranks_and_releases_on_error(monkeypatch):
    from torch_utils import distributed as dist # pylint: disable=import-outside-toplevel
    events = []
    monkeypatch.setattr(dist, 'barrier', lambda: events.append('barrier'))
    for rank in (0, 1):
        monkeypatch.setattr(dist, 'get_rank', lambda rank=rank: rank)
        events.clear()
        with dist.rank0_first():
            events.append('work')
        # Rank 0 works, then lets the others through; the others wait for that, then work.
        assert events == (['work', 'barrier'] if rank == 0 else ['barrier', 'work'])
    monkeypatch.setattr(dist, 'get_rank', lambda: 0)
    events.clear()
    with pytest.raises(RuntimeError):
        with dist.rank0_first():
            raise RuntimeError('download failed')
    assert events == ['barrier'] # The other ranks are released even though rank 0 failed.
