"""uda.models.sync_bn: AllReduceBatchNorm2d equals one nn.BatchNorm2d over the global batch.

The multi-process tests start ONE pair of forked gloo ranks (module-scoped fixture) that run
every distributed scenario and save their results; each test then compares one scenario with a
single-process reference computed here on the concatenated batch. The ranks get different local
batch sizes (3 and 2), so a mean of per-rank statistics would fail the comparison.

What is compared (atol 1e-5, rtol 1e-5 unless stated):
- outputs: rank r's output == rows of the reference output belonging to rank r;
- input gradients: rank r's x.grad == its rows of the reference x.grad, where each rank's loss
  is (y_r * w_r).sum() with w_r its rows of one fixed random tensor, so the ranks' losses add
  up to the reference loss (y * w).sum();
- weight / bias gradients: the SUM over ranks of the local .grad == the reference .grad (the
  layer returns local contributions; DDP would average them, giving reference / world size,
  which the DDP end-to-end test checks by multiplying by the world size);
- running_mean / running_var / num_batches_tracked after several steps == the reference's, on
  both ranks.
"""
from __future__ import annotations

import copy
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from conftest import free_port
from uda.models import SmallSegNet
from uda.models.sync_bn import AllReduceBatchNorm2d, broadcast_buffers_, convert_sync_batchnorm

WORLD = 2
SIZES = (3, 2)  # local batch sizes of rank 0 and rank 1: deliberately different
C, H, W = 4, 5, 6
TOL = dict(atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- shared inputs

def _inputs(step: int, shape=(sum(SIZES), C, H, W)) -> tuple[torch.Tensor, torch.Tensor]:
    """Global batch x and loss weights w for one step, identical in every process."""
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(shape, generator=g)
    if shape[1] == C:
        # Per-channel offsets up to 50 std: var = E[x^2] - mean^2 in float32 would lose
        # ~4 digits on the last channel; the statistics must survive it.
        x = x * torch.tensor([1.0, 0.1, 3.0, 2.0]).view(1, -1, 1, 1) \
            + torch.tensor([5.0, -3.0, 0.0, 100.0]).view(1, -1, 1, 1)
    return x, torch.randn(shape, generator=g)


def _rows(t: torch.Tensor, rank: int) -> torch.Tensor:
    start = sum(SIZES[:rank])
    return t[start:start + SIZES[rank]]


def _init_bn(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    """Non-trivial affine parameters and running statistics, identical in every process."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        if bn.affine:
            bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=g))
        if bn.track_running_stats:
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    return bn


def _steps(bn: nn.BatchNorm2d, steps: int, rank: int | None) -> dict:
    """Train-mode forward/backward for `steps` steps on rank `rank`'s rows (None: all rows)."""
    rec = {"y": [], "dx": [], "dw": [], "db": []}
    for step in range(steps):
        x, w = _inputs(step)
        if rank is not None:
            x, w = _rows(x, rank), _rows(w, rank)
        x.requires_grad_(True)
        bn.zero_grad(set_to_none=True)
        y = bn(x)
        (y * w).sum().backward()
        rec["y"].append(y.detach())
        rec["dx"].append(x.grad)
        if bn.affine:
            rec["dw"].append(bn.weight.grad.clone())
            rec["db"].append(bn.bias.grad.clone())
    rec["state"] = {k: v.clone() for k, v in bn.state_dict().items()}
    return rec


SCENARIOS = {  # name: (constructor kwargs, number of steps)
    "momentum": (dict(momentum=0.1), 2),
    "cumulative": (dict(momentum=None), 3),
    "no_affine_no_stats": (dict(affine=False, track_running_stats=False), 1),
}


def _ddp_net_step(rank: int | None) -> dict:
    """One step of a converted SmallSegNet (DDP on the ranks), loss = (logits * w).sum().

    In float64: in float32 the single-process reference itself is off from exact arithmetic
    by up to ~1e-4 on conv weight gradients (|grad| up to ~190), which would hide a real
    discrepancy under a tolerance that loose; in float64 both agree far below atol 1e-5.
    """
    torch.manual_seed(0)
    net = SmallSegNet(num_classes=3, width=4).double()
    x, w = (t.double() for t in _inputs(0, shape=(sum(SIZES), 3, 16, 16)))
    w = w[:, :3]
    if rank is not None:
        x, w = _rows(x, rank), _rows(w, rank)
        net = convert_sync_batchnorm(net)
        model = nn.parallel.DistributedDataParallel(net)
    else:
        model = net
    logits = model(x)
    (logits * w).sum().backward()
    # DDP averages parameter gradients over ranks; the summed loss's gradient is WORLD times that.
    scale = WORLD if rank is not None else 1
    return {"logits": logits.detach(),
            "grads": {n: p.grad * scale for n, p in net.named_parameters()},
            "buffers": {n: b.clone() for n, b in net.named_buffers()}}


def _bf16_step(rank: int | None) -> dict:
    """bfloat16 input under CPU autocast; the reference (rank None) is float32 BN on the same
    bf16 values upcast, which is what the layer's float32 statistics should reproduce."""
    x, w = _inputs(0)
    if rank is not None:
        x, w = _rows(x, rank), _rows(w, rank)
        bn = _init_bn(AllReduceBatchNorm2d(C))
        x = x.bfloat16().requires_grad_(True)
    else:
        bn = _init_bn(nn.BatchNorm2d(C))
        x = x.bfloat16().float().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = bn(x)
    (y.float() * w).sum().backward()
    state = {k: v.clone() for k, v in bn.state_dict().items()}
    return {"y": y.detach(), "dx": x.grad, "state": state}


# ----------------------------------------------------------------------------- the ranks

def _worker(rank: int, port: int, out: Path) -> None:
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=WORLD, timeout=timedelta(seconds=60))
        res = {}
        for name, (kwargs, steps) in SCENARIOS.items():
            res[name] = _steps(_init_bn(AllReduceBatchNorm2d(C, **kwargs)), steps, rank)

        # eval mode under a process group: plain nn.BatchNorm2d on the local rows, both with
        # running statistics and without (eval + track_running_stats=False uses local batch).
        x = _rows(_inputs(0)[0], rank)
        res["eval"] = {"y": _init_bn(AllReduceBatchNorm2d(C)).eval()(x),
                       "y_no_stats": AllReduceBatchNorm2d(C, track_running_stats=False).eval()(x)}

        # a process group of size 1 (each rank alone): plain nn.BatchNorm2d on the local rows.
        groups = [dist.new_group([r]) for r in range(WORLD)]
        res["group_of_one"] = _steps(_init_bn(AllReduceBatchNorm2d(C, process_group=groups[rank])),
                                     2, rank)

        # broadcast_buffers_: per-rank (unsynchronised) BN statistics, then broadcast.
        res["broadcast"] = {}
        for src in (0, 1):
            torch.manual_seed(0)
            net = SmallSegNet(num_classes=3, width=4)
            net(torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(rank)))
            before = {n: b.clone() for n, b in net.named_buffers()}
            broadcast_buffers_(net, src=src)
            res["broadcast"][src] = {"before": before,
                                     "after": {n: b.clone() for n, b in net.named_buffers()}}

        res["ddp_net"] = _ddp_net_step(rank)
        res["bf16"] = _bf16_step(rank)
        torch.save(res, out / f"rank{rank}.pt")
        dist.destroy_process_group()
    except BaseException:
        (out / f"rank{rank}.err").write_text(traceback.format_exc())
        raise SystemExit(1)




@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Results of both ranks (one launch shared by all multi-process tests)."""
    out = tmp_path_factory.mktemp("sync_bn")
    ctx = mp.get_context("fork")  # ~1 s start-up; the worker is module level, spawn works too
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, out)) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():  # a rank died mid-collective and left its peer waiting
            p.kill()
            p.join()
    errors = [(out / f"rank{r}.err").read_text() for r in range(WORLD)
              if (out / f"rank{r}.err").exists()]
    if errors or any(p.exitcode != 0 for p in procs):
        pytest.fail(f"rank exit codes {[p.exitcode for p in procs]}\n" + "\n".join(errors))
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


# ----------------------------------------------------------------------------- multi-process

def _check_against_reference(ranks: list[dict], name: str) -> None:
    kwargs, steps = SCENARIOS[name]
    ref = _steps(_init_bn(nn.BatchNorm2d(C, **kwargs)), steps, rank=None)
    for step in range(steps):
        for r in range(WORLD):
            got = ranks[r][name]
            torch.testing.assert_close(got["y"][step], _rows(ref["y"][step], r), **TOL)
            torch.testing.assert_close(got["dx"][step], _rows(ref["dx"][step], r), **TOL)
        if kwargs.get("affine", True):
            for key in ("dw", "db"):
                summed = sum(ranks[r][name][key][step] for r in range(WORLD))
                torch.testing.assert_close(summed, ref[key][step], **TOL)
    assert ranks[0][name]["state"].keys() == ref["state"].keys()
    for r in range(WORLD):
        for key, value in ref["state"].items():
            torch.testing.assert_close(ranks[r][name]["state"][key], value, **TOL)


@pytest.mark.ddp
def test_uneven_batches_match_batchnorm_over_concatenated_batch(ranks):
    _check_against_reference(ranks, "momentum")
    assert ranks[0]["momentum"]["state"]["num_batches_tracked"].item() == 2


@pytest.mark.ddp
def test_cumulative_average_momentum_none(ranks):
    _check_against_reference(ranks, "cumulative")
    assert ranks[1]["cumulative"]["state"]["num_batches_tracked"].item() == 3


@pytest.mark.ddp
def test_without_affine_and_running_stats(ranks):
    _check_against_reference(ranks, "no_affine_no_stats")
    assert ranks[0]["no_affine_no_stats"]["state"] == {}


@pytest.mark.ddp
def test_eval_mode_and_group_of_one_are_plain_batchnorm(ranks):
    x = _inputs(0)[0]
    y_ref = _init_bn(nn.BatchNorm2d(C)).eval()(x)
    for r in range(WORLD):
        assert torch.equal(ranks[r]["eval"]["y"], _rows(y_ref, r))
        local = nn.BatchNorm2d(C, track_running_stats=False).eval()(_rows(x, r))
        assert torch.equal(ranks[r]["eval"]["y_no_stats"], local)
        # group of one: each rank is its own world, i.e. nn.BatchNorm2d on its rows only.
        ref = _steps(_init_bn(nn.BatchNorm2d(C)), 2, r)
        got = ranks[r]["group_of_one"]
        for key in ("y", "dx", "dw", "db"):
            assert len(got[key]) == len(ref[key]) == 2, key
            assert all(torch.equal(a, b) for a, b in zip(got[key], ref[key])), key
        for key, value in ref["state"].items():
            assert torch.equal(got["state"][key], value)


@pytest.mark.ddp
def test_broadcast_buffers(ranks):
    for src in (0, 1):
        res = [ranks[r]["broadcast"][src] for r in range(WORLD)]
        names = list(res[src]["before"])
        assert any("running_mean" in n for n in names) and any("num_batches" in n for n in names)
        # the ranks saw different data, so broadcasting has something to fix
        assert not torch.equal(res[0]["before"]["stage1.0.1.running_mean"],
                               res[1]["before"]["stage1.0.1.running_mean"])
        for r in range(WORLD):
            for n in names:
                assert torch.equal(res[r]["after"][n], res[src]["before"][n]), (src, r, n)


@pytest.mark.ddp
def test_converted_net_under_ddp_matches_single_process(ranks):
    """End to end: SmallSegNet converted + DDP on batches 3 and 2 == one process on batch 5."""
    ref = _ddp_net_step(rank=None)
    for r in range(WORLD):
        got = ranks[r]["ddp_net"]
        torch.testing.assert_close(got["logits"], _rows(ref["logits"], r), **TOL)
        for n, g in ref["grads"].items():
            torch.testing.assert_close(got["grads"][n], g, **TOL, msg=lambda m, n=n: f"{n}: {m}")
        for n, b in ref["buffers"].items():
            torch.testing.assert_close(got["buffers"][n], b, **TOL, msg=lambda m, n=n: f"{n}: {m}")


# ----------------------------------------------------------------------------- single process

def test_without_process_group_is_exactly_batchnorm2d():
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    for kwargs in ({"momentum": 0.1}, {"momentum": None}, {"affine": False}):
        ours = _steps(_init_bn(AllReduceBatchNorm2d(C, **kwargs)), 2, rank=None)
        ref = _steps(_init_bn(nn.BatchNorm2d(C, **kwargs)), 2, rank=None)
        for key in ("y", "dx", "dw", "db"):
            assert all(torch.equal(a, b) for a, b in zip(ours[key], ref[key])), (kwargs, key)
        assert ours["state"].keys() == ref["state"].keys()
        assert all(torch.equal(ours["state"][k], v) for k, v in ref["state"].items())
    x = _inputs(0)[0]
    assert torch.equal(_init_bn(AllReduceBatchNorm2d(C)).eval()(x),
                       _init_bn(nn.BatchNorm2d(C)).eval()(x))


def test_broadcast_buffers_without_process_group_is_noop():
    net = SmallSegNet(num_classes=3, width=4)
    before = copy.deepcopy(net.state_dict())
    assert broadcast_buffers_(net) is net
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


class _Net(nn.Module):
    """BatchNorm2d (trainable, frozen, affine-free) next to norms that must stay untouched."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.frozen = nn.BatchNorm2d(8)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1),
                                   nn.BatchNorm2d(8, affine=False, momentum=None, eps=1e-3),
                                   nn.ReLU())
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.bn1d = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.block(self.frozen(F.relu(self.bn(self.conv(x)))))
        return self.head(self.bn1d(self.inorm(x).mean((2, 3)) + x.mean((2, 3))))


def _make_net() -> _Net:
    torch.manual_seed(0)
    net = _Net()
    # random running statistics everywhere, and several training steps' worth of counts
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(17)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_()
    net.frozen.eval()  # as BackboneSegmenter.freeze_bn() leaves a backbone BN
    net.frozen.weight.requires_grad_(False)
    net.frozen.bias.requires_grad_(False)
    return net


@pytest.mark.parametrize("cuda", [False, True], ids=["allreduce", "syncbn"])
def test_convert_sync_batchnorm(cuda):
    net = _make_net()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    training = {n: m.training for n, m in net.named_modules()}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    params = dict(net.named_parameters())
    requires = {n: p.requires_grad for n, p in params.items()}
    with torch.no_grad():
        y_before = copy.deepcopy(net).eval()(x)

    # backend_cuda=True builds nn.SyncBatchNorm even from CPU tensors (its forward needs CUDA)
    assert convert_sync_batchnorm(net, backend_cuda=True if cuda else None) is net
    synced = nn.SyncBatchNorm if cuda else AllReduceBatchNorm2d
    assert type(net.bn) is synced and type(net.block[1]) is synced
    assert type(net.frozen) is nn.BatchNorm2d  # frozen eval-mode BN left alone
    assert type(net.bn1d) is nn.BatchNorm1d and type(net.inorm) is nn.InstanceNorm2d
    assert net.block[1].eps == 1e-3 and net.block[1].momentum is None
    assert not net.block[1].affine and net.bn.track_running_stats

    # state exactly kept, parameters shared (an optimizer built earlier keeps working)
    assert {n: m.training for n, m in net.named_modules()} == training
    assert net.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert all(p is params[n] for n, p in net.named_parameters())
    assert {n: p.requires_grad for n, p in net.named_parameters()} == requires
    if not cuda:
        with torch.no_grad():
            assert torch.equal(net.eval()(x), y_before)


def test_convert_root_batchnorm_and_idempotence():
    bn = _init_bn(nn.BatchNorm2d(C))
    new = convert_sync_batchnorm(bn)
    assert type(new) is AllReduceBatchNorm2d and new.weight is bn.weight
    assert new.running_var is bn.running_var
    assert convert_sync_batchnorm(new) is new
    # eval mode but trainable: may be switched back to training later, so it is converted
    assert type(convert_sync_batchnorm(nn.BatchNorm2d(C).eval())) is AllReduceBatchNorm2d


@pytest.mark.ddp
def test_bfloat16_autocast_statistics_in_float32(ranks):
    ref = _bf16_step(rank=None)
    for r in range(WORLD):
        got = ranks[r]["bf16"]
        assert got["y"].dtype == got["dx"].dtype == torch.bfloat16  # input dtype kept
        # outputs / gradients only to bf16 precision (8 bits of mantissa)...
        torch.testing.assert_close(got["y"].float(), _rows(ref["y"], r), atol=2e-2, rtol=1e-2)
        torch.testing.assert_close(got["dx"].float(), _rows(ref["dx"], r), atol=2e-2, rtol=1e-2)
        # ...but the statistics were reduced in float32/float64, not in bf16
        for key, value in ref["state"].items():
            torch.testing.assert_close(got["state"][key], value, **TOL)
