"""Several training processes from params: the `train` stage relaunches itself under torchrun.

`train.processes` (1, N, or auto = every visible GPU) decides how many data-parallel processes train.
With more than one, `python -m stages.train` (the parent) runs torchrun's launcher in its own process
(`torch.distributed.run --standalone --nproc_per_node N -m stages.train`, same cwd and environment),
waits, and exits with the workers' code. A worker knows it was launched from the variables the launcher
sets (WORLD_SIZE, LOCAL_RANK), so it never relaunches. Workers run in sessions of their own (torchrun
starts them so); each asks the kernel to kill it when its launcher dies, so a SIGKILLed stage (a killed
job, a killed `dvc repro`) leaves no worker training behind it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

from art2mus.config import TrainParams
from art2mus.errors import Art2MusError

logger = logging.getLogger(__name__)

LAUNCHED_VARIABLES = ("WORLD_SIZE", "LOCAL_RANK")  # set by torchrun (and accelerate launch) for every worker
LAUNCHER_PID = "ART2MUS_LAUNCHER_PID"  # the process that relaunched the stage, for its workers
PR_SET_PDEATHSIG = 1  # prctl(2)


def requested_processes(params: TrainParams) -> int:
    """How many data-parallel processes `params.processes` asks for: auto = every visible GPU (at least 1)."""
    import torch

    if params.processes == "auto":
        return max(1, torch.cuda.device_count())
    gpus = torch.cuda.device_count()
    if params.processes > 1 and gpus and params.processes > gpus:
        raise Art2MusError(f"train.processes is {params.processes} but {gpus} GPU(s) are visible; "
                           "set train.processes to at most that (or auto, one process per GPU)")
    return params.processes


def launched_child() -> bool:
    """Whether this process is a worker a launcher (torchrun, accelerate launch) started."""
    return any(name in os.environ for name in LAUNCHED_VARIABLES)


def die_with_launcher() -> None:
    """In a worker this module's launcher started: be killed when the launcher dies (Linux), even by SIGKILL,
    which it cannot pass on. A worker whose launcher is already gone exits at once."""
    launcher = os.environ.get(LAUNCHER_PID)
    if launcher is None or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(launcher):  # died before the request took effect
        os._exit(128 + signal.SIGKILL)


def relaunch_under_torchrun(processes: int, module: str = "stages.train") -> int:
    """Run `module` in `processes` workers under torchrun (a local rendezvous) and wait; their exit code.

    A worker that fails has said why on stderr (an Art2MusError as its one-line message); the launcher's
    own report of the failure is logged in one line, not raised as a traceback."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # --standalone: a rendezvous on a free loopback port (--master_port 0 hangs).
    arguments = ["--standalone", "--nproc_per_node", str(processes), "-m", module, *sys.argv[1:]]
    logger.info("train: %d data-parallel processes: torch.distributed.run %s", processes, " ".join(arguments))
    os.environ[LAUNCHER_PID] = str(os.getpid())  # the workers inherit it
    try:
        run(parse_args(arguments))
    except ChildFailedError as failure:
        rank, first = failure.get_first_failure()
        code = first.exitcode if first.exitcode > 0 else 128 - first.exitcode  # killed by a signal: 128 + signal
        logger.error("train: worker rank %d exited with %d (its message is above)", rank, first.exitcode)
        return code
    finally:
        os.environ.pop(LAUNCHER_PID, None)
    return 0
