"""CPU threads per worker process: a local multi-process scan shares the cores out."""
import os

import torch
from apache_beam.options.pipeline_options import PipelineOptions

from ecomatch_model.checkpoint import save
from pipelines.scan import local_worker_threads
from transforms.score import EcomatchModelHandler


def test_local_multi_process_runs_share_the_cores():
    cores = os.cpu_count() or 1
    opts = PipelineOptions(["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    assert local_worker_threads(opts) == max(1, cores // 2)
    assert local_worker_threads(PipelineOptions([])) is None
    assert local_worker_threads(PipelineOptions(["--direct_num_workers=2"])) is None  # threads, one process


def test_handler_applies_its_thread_cap(tiny_ckpt, tmp_path):
    save(tiny_ckpt, str(tmp_path / "m"))
    before = torch.get_num_threads()
    try:
        EcomatchModelHandler(str(tmp_path / "m"), torch_threads=1).load_model()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
