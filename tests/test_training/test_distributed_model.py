"""One global batch through the whole model: 2 gloo processes (DDP-style averaging) == 1 process, for both model
types (their losses gather negatives across processes)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

GLOBAL_BATCH = 4


def _classes(config):
    from modeling_pathflip import PathFLIP2Model, PathFLIP2Processor, PathFLIPModel, PathFLIPProcessor

    if config.model_type == "pathflip2":
        return PathFLIP2Model, PathFLIP2Processor
    return PathFLIPModel, PathFLIPProcessor


def _loss_and_grads(rank: int, world_size: int, state: dict, config, tokenizer, bags) -> tuple:
    model_class, processor_class = _classes(config)
    model = model_class(config).train()
    model.load_state_dict(state)
    processor = processor_class.from_model_config(tokenizer, config)
    per_rank = GLOBAL_BATCH // world_size
    loss = model(**processor(bags[rank * per_rank : (rank + 1) * per_rank])).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _worker(rank, world_size, port, state, config, tokenizer, bags, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        loss, grads = _loss_and_grads(rank, world_size, state, config, tokenizer, bags)
        for grad in grads.values():  # what DDP does with gradients
            dist.all_reduce(grad)
            grad /= world_size
        dist.all_reduce(loss)
        results[rank] = (loss / world_size, grads)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("model_type", ["pathflip", "pathflip2"])
def test_two_processes_give_the_single_process_loss_and_gradients(
    model_type, config_factory, pathflip2_config_factory, tokenizer, bag_factory, free_port
):
    config = pathflip2_config_factory() if model_type == "pathflip2" else config_factory()
    torch.manual_seed(0)
    state = _classes(config)[0](config).state_dict()
    bags = [bag_factory(i, 15 + 4 * i) for i in range(GLOBAL_BATCH)]
    expected_loss, expected_grads = _loss_and_grads(0, 1, state, config, tokenizer, bags)
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(2, free_port, state, config, tokenizer, bags, results), nprocs=2, join=True)
    for rank in range(2):
        loss, grads = results[rank]
        torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=0)
        assert grads.keys() == expected_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, expected_grads[name], atol=1e-4, rtol=0, msg=name)
