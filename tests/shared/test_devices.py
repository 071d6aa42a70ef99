"""devices.py and model/attention.py: bf16 on CPUs (attention and activations in bf16, the same
answers), the allocator setting that keeps freed memory, and the DataLoader worker defaults."""
from __future__ import annotations

import copy
import json
import platform
import subprocess
import sys

import pytest
import torch
from helpers import ROOT

from vitclassifier import devices
from vitclassifier.model import attention
from vitclassifier.model.vit import create_model

ALLOCATOR_PROBE = """
import ctypes, json, torch
from vitclassifier import devices
class MallInfo(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo
def mapped_by_64_mib():
    before = libc.mallinfo2().hblkhd  # bytes in blocks mapped from the OS one by one
    block = torch.empty(64 * 2**20, dtype=torch.uint8)
    mapped, heap = libc.mallinfo2().hblkhd - before, libc.mallinfo2().arena
    del block
    return mapped, libc.mallinfo2().arena == heap  # after the free: the heap kept its memory?
default = mapped_by_64_mib()
print(json.dumps({"default": default, "changed": devices.keep_freed_memory(), "kept": mapped_by_64_mib()}))
"""


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="keep_freed_memory tunes glibc's allocator")
def test_keep_freed_memory_serves_big_tensors_from_the_heap_and_keeps_them():
    # a fresh process: the setting stays out of this one
    probe = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE], capture_output=True, text=True,
                           check=True, cwd=ROOT)
    figures = json.loads(probe.stdout)
    assert figures["default"][0] >= 64 * 2**20  # glibc's default: mapped from the OS, given back on free
    assert figures["changed"] and figures["kept"] == [0, True]


def test_worker_default_leaves_small_cpus_to_the_model(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert devices.loader_workers(3, cpu) == 3
    for cores, on_cpu, on_gpu in ((2, 0, 1), (4, 0, 2), (16, 2, 8), (64, 2, 8)):
        monkeypatch.setattr(devices, "usable_cores", lambda cores=cores: cores)
        assert (devices.loader_workers(None, cpu), devices.loader_workers(None, gpu)) == (on_cpu, on_gpu)


def test_usable_cores_follow_the_affinity(monkeypatch):
    monkeypatch.setattr(devices.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert devices.usable_cores() == 3  # taskset or a container's cpuset, not the machine's 64


def test_bf16_on_cpus_runs_attention_and_activations_in_bf16_with_the_same_answers(tiny_vit):
    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    torch.manual_seed(0)
    reference = create_model(str(tiny_vit), ["a", "b", "c"])[0].eval()  # fp32, PyTorch's SDPA attention
    images = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        expected = reference(pixel_values=images).logits
    for device, dtype in ((torch.device("cuda"), bf16), (cpu, None)):  # GPUs and fp32 are left alone
        untouched = copy.deepcopy(reference)
        attention.run_in_bf16(untouched, device, dtype, training=True)
        assert untouched.config._attn_implementation == "sdpa" and not untouched.vit.embeddings._forward_hooks

    same_maths = copy.deepcopy(reference)  # the attention function alone, in fp32: transformers' eager maths
    same_maths.set_attn_implementation(attention.register_bf16_softmax())
    with torch.no_grad():
        assert torch.allclose(same_maths(pixel_values=images).logits, expected, atol=1e-5)

    trained, served = copy.deepcopy(reference).train(), copy.deepcopy(reference)
    attention.run_in_bf16(trained, cpu, bf16, training=True)
    attention.run_in_bf16(served, cpu, bf16, training=False)
    assert trained.config._attn_implementation == served.config._attn_implementation == "bf16_softmax"
    assert {p.dtype for p in trained.parameters()} == {torch.float32}  # AdamW updates fp32 weights
    assert {p.dtype for p in served.parameters()} == {bf16}
    with devices.autocast(cpu, bf16):
        output = trained(pixel_values=images, output_hidden_states=True)
        loss = output.logits.float().logsumexp(dim=1).mean()
    assert {hidden.dtype for hidden in output.hidden_states} == {bf16}
    loss.backward()
    assert all(p.grad.dtype == torch.float32 and p.grad.isfinite().all() for p in trained.parameters())
    with torch.no_grad(), devices.autocast(cpu, bf16):
        for model in (trained.eval(), served):
            logits = model(pixel_values=images).logits.float()
            assert (logits - expected).abs().max() < 0.05 * expected.abs().max()
            assert (logits.argmax(1) == expected.argmax(1)).float().mean() >= 0.9
