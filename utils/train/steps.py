"""How many optimizer steps a run takes, and the step planner that draws them."""
from __future__ import annotations

import copy

from utils.common.errors import UserError
from utils.sampling.example_store import ExampleStore
from utils.sampling.planner import MixtureSampler, StepPlanner
from utils.train.config import TrainingParams


def plan_steps(stores: list[ExampleStore], weights: list[float], params: TrainingParams, world_size: int,
               max_example_tokens: int) -> tuple[StepPlanner, int, str]:
    """The global step planner, the total number of optimizer steps and where that number came from."""
    planner = make_planner(stores, weights, params, world_size, max_example_tokens)
    if params.max_steps:
        return planner, params.max_steps, "training_params.max_steps"
    epochs = params.num_train_epochs or 1.0
    num_examples = sum(len(s) for s in stores)
    dry = copy.deepcopy(planner)  # counted by drawing the steps: packing decides how many examples a step holds
    steps = 0
    while sum(dry.sampler.drawn) - len(dry.carry) < epochs * num_examples:
        dry.next_step()
        steps += 1
    return planner, max(1, steps), f"{epochs:g} epoch(s) over {num_examples:,} weighted examples"


def make_planner(stores: list[ExampleStore], weights: list[float], params: TrainingParams,
                 world_size: int, max_example_tokens: int) -> StepPlanner:
    """The global step plan; a token budget must hold the longest example."""
    if params.micro_batch_tokens is not None and params.micro_batch_tokens < max_example_tokens:
        raise UserError(f"training_params.micro_batch_tokens: {params.micro_batch_tokens} is smaller than "
                        f"the longest example ({max_example_tokens} tokens); raise it to at least that")
    sampler = MixtureSampler([len(s) for s in stores], weights, params.seed)
    return StepPlanner(sampler, [s.lengths for s in stores], [s.supervised_targets for s in stores],
                       num_bins=params.gradient_accumulation_steps * world_size,  # every rank's micro-batches
                       examples_per_bin=params.per_device_train_batch_size,
                       bin_tokens=params.micro_batch_tokens)
