"""Distillation with the student sharded over N processes by FSDP2 (torch.distributed.fsdp.fully_shard).

`distill_sharded_` has `distill_`'s contract: it trains `student` in place and returns a `DistillReport`. It writes
the student, its teacher (a `TeacherCache`, or a model every rank keeps whole) and the batches to one file in
`workdir` (a model as its class, config and state dict: every rank rebuilds it from its config, which every cut
keeps expressible, so no hook or cache a forward left on the module travels), starts N Python processes (plain
subprocesses, as torchrun would, so a Celery prefork child can launch them) that join a gloo group through a file
store, and waits. Every rank builds the
student on the meta device, shards every decoder layer and then the root with `fully_shard` over a 1-D CPU mesh
(`init_device_mesh("cpu", (N,))`), materialises its shards from the file (memory-mapped), and runs `distill_` with
`ranks=RankSlice(rank, N)`: rows [r B / N, (r + 1) B / N) of every micro-batch, the loss scaled so FSDP2's
mean-reduced gradients are those of the whole batch (`trainer`'s docstring). AdamW's state lives with each rank's
shard. Rank 0 gathers the full state dict (`get_model_state_dict(full_state_dict=True, cpu_offload=True)`) and
writes it with the report; the student here loads it. Rank 0's progress events come back through a JSON-lines
file; a cancel, or a rank that fails, stops them all (the error names the rank and ends with its log).

The result is the one-process result up to the order of floating-point sums (tests/compressor/distill/
test_sharded.py). Not here yet: CUDA / NCCL ranks, mixed precision and activation checkpointing policies, on-policy
steps (each rank would sample its own rows from another random stream). The launcher releases the student's
weights while the ranks train, not a live teacher's (the pipeline evaluates against it afterwards).

    report = distill_sharded_(student, teacher=cache, batches=batches, config=recipe.distill, steps=100, nproc=2,
                              workdir=staging / "fsdp")
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist

from compressor.distill.trainer import DistillReport, RankSlice, distill_
from compressor.progress import Cancelled, Reporter
from compressor.recipe import DistillConfig

JOB, RESULT, STORE, EVENTS = "job.pt", "result.pt", "store", "events.jsonl"
POLL_S = 0.2
_ENTRY = "import sys; from compressor.distill.sharded import rank_main; rank_main(*sys.argv[1:])"


def check_sharded(config: DistillConfig, *, nproc: int, device: torch.device | str = "cpu") -> None:
    """What N > 1 processes refuse, before any work: on-policy steps, batches smaller than N, a non-CPU device."""
    if nproc < 2:
        raise ValueError(f"sharded distillation needs at least 2 processes, got {nproc}")
    if config.on_policy > 0:
        raise ValueError("distill.on_policy with several processes is not supported yet (each rank would sample "
                         "its rows from another random stream); run it with nproc 1")
    if config.batch_size < nproc:
        raise ValueError(f"distill.batch_size ({config.batch_size}) must be at least the number of processes "
                         f"({nproc}): every process takes rows of each micro-batch")
    if torch.device(device).type != "cpu":
        raise ValueError(f"sharded distillation runs on the CPU (gloo) in this version, not {device}; use nproc 1 "
                         "on a GPU")


def distill_sharded_(student: torch.nn.Module, *, teacher, batches: Sequence[dict], config: DistillConfig,
                     steps: int, nproc: int, workdir: Path, reporter: Reporter | None = None,
                     stage: str = "distill", layer_map: Sequence[int] | None = None, seed: int = 0) -> DistillReport:
    """`distill_` with the student sharded over `nproc` processes (see the module docstring); `workdir` holds the
    hand-over files and is removed at the end. While the ranks train, `student`'s weights are released here (each
    parameter left empty); they come back trained, or, when the ranks fail or are cancelled, as they were."""
    reporter = reporter or Reporter()
    check_sharded(config, nproc=nproc, device=next(student.parameters()).device)
    workdir = Path(workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    try:
        teacher = _portable(teacher) if isinstance(teacher, torch.nn.Module) else teacher
        torch.save({"student": _portable(student), "teacher": teacher, "batches": list(batches), "config": config,
                    "steps": steps, "stage": stage, "layer_map": None if layer_map is None else list(layer_map),
                    "seed": seed, "threads": max(1, torch.get_num_threads() // nproc)}, workdir / JOB)
        shapes = _release_(student)                        # the ranks hold the student now
        result = None
        try:
            _launch(workdir, nproc, reporter)
            result = torch.load(workdir / RESULT, weights_only=False, mmap=True)
        finally:
            state = (result or torch.load(workdir / JOB, weights_only=False, mmap=True)["student"])["state"]
            _refill_(student, state, shapes)
        return result["report"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _release_(model: torch.nn.Module) -> list[torch.Size]:
    """Free every parameter's storage, keeping the parameter objects (tied ones stay one); returns their shapes."""
    shapes = []
    for p in model.parameters():
        shapes.append(p.shape)
        p.data = torch.empty(0, dtype=p.dtype, device=p.device)
    return shapes


@torch.no_grad()
def _refill_(model: torch.nn.Module, state: dict, shapes: list[torch.Size]) -> None:
    """Give the parameters `_release_` emptied their storage back and copy `state` in."""
    for p, shape in zip(model.parameters(), shapes):
        p.data = torch.empty(shape, dtype=p.dtype, device=p.device)
    model.load_state_dict(state)


def _launch(workdir: Path, nproc: int, reporter: Reporter) -> None:
    """Start the ranks as plain subprocesses (a Celery prefork child may start those, not multiprocessing children),
    wait for them, forward rank 0's progress, stop them all on a cancel or when one fails."""
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    procs = []
    for rank in range(nproc):
        with open(workdir / f"rank{rank}.log", "wb") as log:
            procs.append(subprocess.Popen([sys.executable, "-c", _ENTRY, str(rank), str(nproc), str(workdir)],
                                          env=env, stdout=log, stderr=subprocess.STDOUT))
    seen = 0
    try:
        while any(p.poll() is None for p in procs) and not any(p.returncode for p in procs):
            time.sleep(POLL_S)
            seen = _forward(workdir / EVENTS, seen, reporter)
            reporter.check_cancel()
        _forward(workdir / EVENTS, seen, reporter)
        failed = [r for r, p in enumerate(procs) if p.returncode]
        if failed:
            tail = (workdir / f"rank{failed[0]}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"sharded distillation: rank {failed[0]} exited with {procs[failed[0]].returncode}"
                               f"\n{tail}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()


def _forward(path: Path, seen: int, reporter: Reporter) -> int:
    """Report the events rank 0 appended to `path` past line `seen`; returns the lines read so far."""
    if not path.is_file():
        return seen
    text = path.read_text()
    lines = text.splitlines()
    complete = lines if text.endswith("\n") else lines[:-1]           # the last line may be half written
    for line in complete[seen:]:
        ev = json.loads(line)
        reporter.report(ev["stage"], step=ev["step"], total=ev["total"], message=ev["message"], loss=ev["loss"],
                        tokens_per_s=ev["tokens_per_s"], eta_s=ev["eta_s"])
    return max(seen, len(complete))


def _portable(model: torch.nn.Module) -> dict:
    """A model as what rebuilds it: class, config, state dict and the names of its frozen parameters."""
    return {"cls": type(model), "config": model.config, "state": model.state_dict(), "training": model.training,
            "frozen": [n for n, p in model.named_parameters() if not p.requires_grad],
            "buffers": dict(model.named_buffers())}


def _rebuild(spec) -> torch.nn.Module:
    """The model of `_portable(model)`: built from its config, then the state copied in (tied weights stay tied,
    non-persistent buffers are computed as a load computes them)."""
    if not isinstance(spec, dict):
        return spec
    state = spec["state"]
    model = spec["cls"]._from_config(spec["config"]).to(next(iter(state.values())).dtype)
    with torch.no_grad():
        model.load_state_dict(state)
    for name, p in model.named_parameters():
        p.requires_grad_(name not in spec["frozen"])
    return model.train(spec["training"])


def _sharded_student(spec: dict, mesh) -> torch.nn.Module:
    """This rank's student, never whole here: built on the meta device from its config, sharded, materialised as
    this rank's shards only (`to_empty`), filled from the memory-mapped full state dict (`set_model_state_dict`
    distributes it one tensor at a time), the buffers (rotary frequencies: not in the state dict) copied in."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    state = spec["state"]
    with torch.device("meta"):
        student = spec["cls"]._from_config(spec["config"]).to(next(iter(state.values())).dtype)
    shard_student_(student, mesh)
    student.to_empty(device="cpu")
    set_model_state_dict(student, state, options=StateDictOptions(full_state_dict=True))
    with torch.no_grad():
        for name, buf in spec["buffers"].items():
            student.get_buffer(name).copy_(buf)
    for name, p in student.named_parameters():
        p.requires_grad_(name not in spec["frozen"])
    return student.train(spec["training"])


def shard_student_(student: torch.nn.Module, mesh) -> None:
    """fully_shard every decoder layer (its parameters gathered for its forward and backward only), then the root
    (embeddings, final norm, head)."""
    from torch.distributed.fsdp import fully_shard

    from compressor.families import resolve_adapter
    for layer in resolve_adapter(student).decoder_layers(student):
        fully_shard(layer, mesh=mesh)
    fully_shard(student, mesh=mesh)


def _log_event(path: Path):
    def write(ev) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(ev.to_dict()) + "\n")
    return write


def rank_main(rank: str, nproc: str, workdir: str) -> None:
    """One rank (the entry point of its process): join the group, build and shard the student, distil its rows;
    rank 0 writes its progress to events.jsonl and the full state at the end."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh

    rank, nproc, folder = int(rank), int(nproc), Path(workdir)
    dist.init_process_group("gloo", init_method=f"file://{folder / STORE}", rank=rank, world_size=nproc)
    try:
        job = torch.load(folder / JOB, weights_only=False, mmap=True)
        torch.set_num_threads(job["threads"])
        student = _sharded_student(job["student"], init_device_mesh("cpu", (nproc,)))
        teacher = _rebuild(job["teacher"])
        report = distill_(student, teacher=teacher, batches=job["batches"], config=job["config"],
                          steps=job["steps"], reporter=Reporter(_log_event(folder / EVENTS) if rank == 0 else None),
                          stage=job["stage"], layer_map=job["layer_map"], seed=job["seed"],
                          ranks=RankSlice(rank, nproc))
        state = get_model_state_dict(student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        report.rank_peak_rss_mb = [0.0] * nproc
        dist.all_gather_object(report.rank_peak_rss_mb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        if rank == 0:
            torch.save({"state": state, "report": report}, folder / f".{RESULT}")
            os.replace(folder / f".{RESULT}", folder / RESULT)
        dist.barrier()
    finally:
        dist.destroy_process_group()
