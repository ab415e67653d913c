"""Several training processes on PyTorch's own engine: torchrun starts them, DDP or FSDP2 syncs them.

`torchrun --nproc_per_node N -m aigc_cli train CONFIG` sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address; `start_processes` joins the process group (nccl on CUDA, gloo on CPU). The
data stays exact: every process draws the same global batch from the same seeded generator and
keeps its own contiguous rows (`shard`), and DDP/FSDP average the gradients, so N processes take
the step one process would take on the whole batch. Process 0 alone writes files; checkpoints
hold the full (unsharded) model and optimizer state, so any world size resumes them.
"""

from __future__ import annotations

import atexit
import copy
import itertools
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from aigc_cli.backends import BACKENDS
from aigc_cli.errors import AigcError

# FSDP here means: shard the model, one optimizer, nothing that reads full weights between steps.
FSDP_BACKENDS = tuple(name for name, entry in BACKENDS.items() if entry.fsdp)


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "single"  # single | ddp | fsdp

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world_size


def start_processes(strategy: str, batch_size: int, backend_name: str, device: str) -> Processes:
    """Join torchrun's process group, or stay a single process when there is none."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Processes()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if batch_size % world_size:
        raise AigcError(f"train.batch_size={batch_size} does not divide over {world_size} processes",
                        f"set train.batch_size to a multiple of {world_size} (it is the global batch; each process takes batch_size/{world_size})")
    strategy = "ddp" if strategy == "auto" else strategy
    if strategy == "fsdp" and backend_name not in FSDP_BACKENDS:
        raise AigcError(f"train.strategy=fsdp does not support the {backend_name} backend",
                        f"use train.strategy=ddp (fsdp supports {', '.join(FSDP_BACKENDS)})")
    import torch.distributed as dist

    if device == "cuda":
        # "cuda" then means this process's own GPU everywhere (tensors, autocast, RNG state).
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group("gloo")
    atexit.register(_leave_process_group)
    if rank != 0:
        # The job prints one summary (or one --json object), process 0's; errors still reach stderr.
        sys.stdout = open(os.devnull, "w", encoding="utf-8")
    return Processes(rank, world_size, local_rank, strategy)


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def mean_over_processes(value: torch.Tensor, procs: Processes) -> torch.Tensor:
    if procs.world_size == 1:
        return value
    import torch.distributed as dist

    value = value.detach().clone()
    dist.all_reduce(value)
    return value / procs.world_size


def wait_for_all(procs: Processes) -> None:
    if procs.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def seed_own_noise(procs: Processes, seed: int, step: int) -> None:
    """Processes other than 0 draw their own dropout and diffusion noise, as different rows need;
    process 0 keeps the run's RNG stream, which is the one checkpoints save."""
    if procs.rank:
        torch.manual_seed(seed + 1_000_003 * procs.rank + step)


class BackendLoss(torch.nn.Module):
    """The backend's loss as one module's forward. DDP syncs gradients, FSDP gathers weights and
    torch.compile traces through a module's forward, and a backend's loss may call any part of
    its model (a DDPM's UNet, a GAN's two networks), so the loss itself is what gets wrapped."""

    def __init__(self, backend, model: torch.nn.Module):
        super().__init__()
        self.backend = backend
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, part: str) -> torch.Tensor:
        return self.backend.loss(self.model, (inputs, targets), part)


class ParallelModel:
    """The model as the loop trains it: plain, DDP-wrapped or FSDP2-sharded, optionally compiled.
    `model` stays the backend's own module (for DDP its weights are the trained ones; for FSDP
    they are shards, and `unsharded()` gathers the full model for saving)."""

    def __init__(self, backend, model: torch.nn.Module, procs: Processes, device: str, compile: bool = False, *, parts: tuple[str, ...]):
        self.model, self.procs = model, procs
        if procs.world_size > 1:
            model.to(device)  # "cuda" is this process's GPU now; a model loaded before that sits on GPU 0
        # The unwrapped root: state-dict helpers name parameters from it ("model.<name>"), alike for every strategy.
        self.root = BackendLoss(backend, model)
        self.module: torch.nn.Module = self.root
        self._skeleton = None
        if procs.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            self.module = DistributedDataParallel(self.module, device_ids=[procs.local_rank] if device == "cuda" else None,
                                                  find_unused_parameters=len(parts) > 1)  # a GAN's D step leaves G unused
        elif procs.strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            if procs.is_main:
                self._skeleton = _skeleton(model)
            marks = {name: p.lr_scale for name, p in model.named_parameters() if hasattr(p, "lr_scale")}
            for block in _repeated_blocks(model):
                fully_shard(block)
            fully_shard(self.module)
            for name, p in model.named_parameters():  # sharding made new Parameter objects: keep LoRA+'s marks
                if name in marks:
                    p.lr_scale = marks[name]
        if compile:
            self.module.compile()

    @property
    def sharded(self) -> bool:
        return self.procs.strategy == "fsdp"

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor, part: str) -> torch.Tensor:
        return self.module(inputs, targets, part)

    def train(self) -> None:
        self.module.train()
        if self.sharded:
            # FSDP2 keeps the root's weights gathered after a forward without backward (an evaluation);
            # put the shards back, the parameters the optimizer and the state-dict helpers know.
            self.module.reshard()

    def eval(self) -> None:
        self.module.eval()

    @contextmanager
    def gradient_sync(self, enabled: bool):
        """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
        if enabled or self.procs.strategy == "single":
            yield
        elif self.procs.strategy == "ddp":
            with self.module.no_sync():
                yield
        else:
            self.module.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self.module.set_requires_gradient_sync(True)

    def unsharded(self) -> torch.nn.Module | None:
        """The whole model for backend.save: on process 0 (None elsewhere). Every process must call it."""
        if not self.sharded:
            return self.model if self.procs.is_main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.procs.is_main:
            return None
        self._skeleton.load_state_dict({name.removeprefix("model."): tensor for name, tensor in full.items()}, assign=True)
        if hasattr(self._skeleton, "tie_weights"):
            self._skeleton.tie_weights()  # assign=True gives tied embeddings separate tensors
        return self._skeleton

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """Full optimizer state keyed by parameter name: the same for any world size and strategy.
        Every process must call it; process 0 gets the state."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=self.procs.world_size > 1)
        return get_optimizer_state_dict(self.root, optimizer, options=options)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        if all(isinstance(key, int) for key in state.get("state", {})):
            optimizer.load_state_dict(state)  # keyed by position: written before states were keyed by name
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.root, optimizer, state, options=StateDictOptions(full_state_dict=True))


def _repeated_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The members of every ModuleList (a transformer's blocks): FSDP's usual unit of sharding, so
    only one block's full weights exist at a time. Innermost first: FSDP2 shards nested units bottom-up."""
    blocks = [block for module in model.modules() if isinstance(module, torch.nn.ModuleList) for block in module]
    return blocks[::-1]


def _skeleton(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` whose tensors live on the meta device: its structure, config and save
    method without a second copy of the weights (they are loaded in when a checkpoint is saved)."""
    memo = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        meta = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = torch.nn.Parameter(meta, requires_grad=tensor.requires_grad) if isinstance(tensor, torch.nn.Parameter) else meta
    return copy.deepcopy(model, memo)
