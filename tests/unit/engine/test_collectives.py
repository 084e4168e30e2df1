"""The collective helpers outside a process group: no-ops for one process; unwrap_model strips every wrapper."""

import torch


def test_single_process_helpers_are_no_ops(monkeypatch):
    from t2t.engine.collectives import all_reduce_sum, broadcast_object
    from t2t.engine.distributed import init_distributed

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.backend, info.device.type) == (0, 1, None, "cpu")
    assert info.is_main and not info.is_distributed
    t = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    assert broadcast_object({"a": 1}) == {"a": 1}


def test_unwrap_model_strips_every_wrapper():
    from t2t.engine.collectives import unwrap_model

    model = torch.nn.Linear(2, 2)
    assert unwrap_model(model) is model
    assert unwrap_model(torch.compile(model)) is model  # compiles lazily: nothing runs here
    assert unwrap_model(torch.nn.DataParallel(torch.compile(model))) is model
