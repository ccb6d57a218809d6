"""The fused DyT/Derf paths (compiled CPU, Triton) against the reference formula, and selection.

Each case compares the output and all gradients (dx, dα, ds, dγ, dβ) with `dyt_reference` /
`derf_reference` for the same upstream gradient. The Triton kernels are checked on CPU through
Triton's interpreter in a subprocess (TRITON_INTERPRET must be set before triton is imported):
`python tests/test_fused_norms.py` runs those cases and exits non-zero on any mismatch.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from helpers import NORM_INPUT_NAMES, norm_inputs

from megadyt.norms import dispatch, fused_cpu
from megadyt.norms.derf import ERF, derf, derf_reference
from megadyt.norms.dyt import TANH, dyt, dyt_reference, rational_tanh

FUNCTIONS = {"dyt": TANH, "derf": ERF}

TOL = {
    torch.float32: dict(out=(2e-5, 2e-5), grad=(1e-4, 1e-4)),
    torch.bfloat16: dict(out=(1.6e-2, 1e-2), grad=(2e-2, 2e-2)),
    torch.float16: dict(out=(2e-3, 2e-3), grad=(4e-3, 4e-3)),
}
NAMES = NORM_INPUT_NAMES


make_inputs = norm_inputs  # shared with the GPU kernel tests


def call(kind, impl, t):
    if kind == "dyt":
        return dyt(t["x"], t["alpha"], t["weight"], t["bias"], impl=impl)
    return derf(t["x"], t["alpha"], t["shift"], t["weight"], t["bias"], impl=impl)


def call_reference(kind, t):
    if kind == "dyt":
        return dyt_reference(t["x"], t["alpha"], t["weight"], t["bias"])
    return derf_reference(t["x"], t["alpha"], t["shift"], t["weight"], t["bias"])


def run(kind, impl, inputs, upstream, requires=NAMES):
    """Output and {name: grad} (None where no grad was asked for) for one implementation."""
    t = {
        k: None if v is None else v.detach().clone().requires_grad_(k in requires)
        for k, v in inputs.items()
    }
    y = call_reference(kind, t) if impl == "reference" else call(kind, impl, t)
    if y.requires_grad:
        y.backward(upstream)
    return y, {k: None if v is None else v.grad for k, v in t.items()}


def check_against_reference(kind, impl, shape, dtype, with_bias, requires=NAMES):
    """Assert that `impl` matches the reference in value, dtype and every gradient."""
    inputs, upstream = make_inputs(kind, shape, dtype, with_bias)
    y, grads = run(kind, impl, inputs, upstream, requires)
    y_ref, grads_ref = run(kind, "reference", inputs, upstream, requires)
    (o_rtol, o_atol), (g_rtol, g_atol) = TOL[dtype]["out"], TOL[dtype]["grad"]
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=o_rtol, atol=o_atol)
    for name in NAMES:
        got, want = grads[name], grads_ref[name]
        assert (got is None) == (want is None), f"{name}: grad presence differs"
        if want is not None:
            assert got.dtype == want.dtype, f"{name}: grad dtype {got.dtype} != {want.dtype}"
            rtol, atol = (o_rtol, o_atol) if name == "x" else (g_rtol, g_atol)
            scale = max(1.0, want.abs().max().item())  # sums over rows: tolerance scales
            torch.testing.assert_close(got, want, rtol=rtol, atol=atol * scale, msg=name)
    return y


@pytest.fixture(autouse=True)
def _keep_compile_state(monkeypatch):
    """Compiled functions are shared across tests (compiling is slow); failures are not."""
    monkeypatch.setattr(fused_cpu, "_failure", None)


# ------------------------------------------------------------------------ compiled CPU path


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 7), (3, 5, 33), (17, 129)])
@pytest.mark.parametrize("kind", ["dyt", "derf"])
def test_compiled_matches_reference_fp32(kind, shape, with_bias):
    y = check_against_reference(kind, "compiled", shape, torch.float32, with_bias)
    assert type(y.grad_fn).__name__ == "_FusedElementwiseNormBackward"
    if shape != (1, 7):  # sizes 1 run the eager bodies by design
        assert any(key[0] is FUNCTIONS[kind] for key in fused_cpu._compiled), "nothing compiled"


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("kind", ["dyt", "derf"])
def test_compiled_matches_reference_bf16(kind, with_bias):
    check_against_reference(kind, "compiled", (3, 5, 33), torch.bfloat16, with_bias)
    shifted = kind == "derf"
    key = (FUNCTIONS[kind], shifted, "bwd_cols", torch.bfloat16, torch.bfloat16)
    assert key in fused_cpu._compiled


@pytest.mark.parametrize(
    "requires", [("x",), ("alpha", "weight"), ("shift", "bias"), ()], ids=lambda r: "+".join(r)
)
def test_compiled_requires_grad_combinations(requires):
    check_against_reference("derf", "compiled", (17, 129), torch.float32, True, requires)


def test_compiled_under_no_grad_and_inference_mode():
    inputs, _ = make_inputs("dyt", (17, 129), torch.float32, True)
    want = call_reference("dyt", inputs)
    params = {k: v.requires_grad_() if k != "x" and v is not None else v for k, v in inputs.items()}
    with torch.no_grad():
        y = call("dyt", "compiled", params)
    assert y.grad_fn is None
    torch.testing.assert_close(y, want, rtol=2e-5, atol=2e-5)
    with torch.inference_mode():
        torch.testing.assert_close(call("dyt", "compiled", inputs), want, rtol=2e-5, atol=2e-5)


def test_compiled_non_contiguous_input():
    inputs, upstream = make_inputs("derf", (40, 33), torch.float32, True)
    inputs["x"] = inputs["x"].t().contiguous().t()  # same values, column-major strides
    upstream = upstream.t().contiguous().t()
    assert not inputs["x"].is_contiguous()
    y, grads = run("derf", "compiled", inputs, upstream)
    y_ref, grads_ref = run("derf", "reference", inputs, upstream)
    torch.testing.assert_close(y, y_ref, rtol=2e-5, atol=2e-5)
    for name in NAMES:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-4, atol=1e-4)


def test_cpu_tanh_accuracy():
    """The compiled path's rational tanh stays within ~3.3e-7 relative of tanh."""
    z = torch.cat([torch.linspace(-20, 20, 20001), torch.logspace(-12, 1, 2001)])
    z = torch.cat([z, -z[-2001:], torch.tensor([0.0, float("inf"), -float("inf")])])
    want = torch.tanh(z.double())
    got = rational_tanh(z).double()
    rel = (got - want).abs() / want.abs().clamp_min(1e-30)
    assert rel[:-3].max() < 4e-7
    assert got[-3:].tolist() == [0.0, 1.0, -1.0]
    assert torch.isnan(rational_tanh(torch.tensor([float("nan")]))).all()


def test_compiled_backward_is_deterministic():
    """Activation recompute replays the forward; backward sums must not vary run to run."""
    inputs, upstream = make_inputs("dyt", (64, 96), torch.float32, True)
    first = run("dyt", "compiled", inputs, upstream)
    second = run("dyt", "compiled", inputs, upstream)
    assert torch.equal(first[0], second[0])
    for name in ("x", "alpha", "weight", "bias"):
        assert torch.equal(first[1][name], second[1][name]), name


def test_modules_pass_impl_through():
    from megatron.core.transformer.transformer_config import TransformerConfig

    from megadyt.norms import Derf, DyT

    config = TransformerConfig(
        num_layers=1, hidden_size=33, num_attention_heads=1, use_cpu_initialization=True
    )
    x = torch.randn(4, 3, 33) * 2
    for cls in (DyT, Derf):
        ref, fused = cls(config, 33, impl="reference"), cls(config, 33, impl="compiled")
        assert "impl='compiled'" in repr(fused) and "impl='reference'" in repr(ref)
        fused.load_state_dict(ref.state_dict())
        y, y_ref = fused(x), ref(x)
        assert type(y.grad_fn).__name__ == "_FusedElementwiseNormBackward"
        y.square().sum().backward()
        y_ref.square().sum().backward()
        torch.testing.assert_close(y, y_ref, rtol=2e-5, atol=2e-5)
        for (name, p), p_ref in zip(fused.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-4, msg=name)
    with pytest.raises(ValueError, match="auto, reference, compiled, triton"):
        DyT(config, 33, impl="fast")


# ------------------------------------------------------------------------------- selection


def _args(shape, dtype=torch.float32, device="cpu"):
    n = shape[-1]
    x = torch.zeros(shape, dtype=dtype, device=device)
    return TANH, x, torch.ones(1, dtype=dtype), None, torch.ones(n, dtype=dtype), None


def test_auto_selection_on_cpu(monkeypatch):
    big = (dispatch.CPU_AUTO_MIN_NUMEL // 512 + 1, 512)
    assert dispatch.resolve_impl("auto", *_args(big)) == "compiled"
    assert dispatch.resolve_impl("auto", *_args(big, torch.bfloat16)) == "compiled"
    assert dispatch.resolve_impl("auto", *_args((4, 512))) == "reference"  # too small to pay
    assert dispatch.resolve_impl("auto", *_args(big, torch.float64)) == "reference"
    assert dispatch.resolve_impl("compiled", *_args(big, torch.float64)) == "reference"
    assert dispatch.resolve_impl("reference", *_args(big)) == "reference"
    f, x, a, s, w, b = _args(big)
    assert dispatch.resolve_impl("auto", f, x, a, s, w[:-1], b) == "reference"  # bad weight
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert dispatch.resolve_impl("auto", *_args(big)) == "reference"  # outer compile fuses it


def test_compile_failure_falls_back_once_with_warning(monkeypatch):
    def broken(fn):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(fused_cpu, "_torch_compile", broken)
    monkeypatch.setattr(fused_cpu, "_compiled", {})
    big = (dispatch.CPU_AUTO_MIN_NUMEL // 512 + 1, 512)
    assert dispatch.resolve_impl("auto", *_args(big)) == "compiled"
    inputs, upstream = make_inputs("dyt", big, torch.float32, True)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler here") as record:
        y, grads = run("dyt", "auto", inputs, upstream)
        y2, _ = run("dyt", "auto", inputs, upstream)
        run("derf", "compiled", *make_inputs("derf", (17, 129), torch.float32, False))
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    assert fused_cpu.failure() is not None and not fused_cpu.available()
    assert dispatch.resolve_impl("auto", *_args(big)) == "reference"
    y_ref, grads_ref = run("dyt", "reference", inputs, upstream)
    torch.testing.assert_close(y, y_ref, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(y2, y_ref, rtol=2e-5, atol=2e-5)
    for name in ("x", "alpha", "weight", "bias"):
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-4, atol=1e-3)
    assert type(y2.grad_fn).__name__ != "_FusedElementwiseNormBackward"  # second call: formula


@pytest.mark.parametrize("fn", ["dyt", "derf"])
def test_unknown_impl_raises(fn):
    inputs, _ = make_inputs(fn, (2, 8), torch.float32, False)
    with pytest.raises(ValueError, match="'fastest'.*auto, reference, compiled, triton"):
        call(fn, "fastest", inputs)


def test_explicit_triton_without_triton_raises(monkeypatch):
    monkeypatch.setattr(dispatch, "_triton_module", None)
    monkeypatch.setattr(dispatch, "_triton_error", "ModuleNotFoundError: No module named 'triton'")
    inputs, _ = make_inputs("dyt", (2, 8), torch.float32, False)
    with pytest.raises(RuntimeError, match="needs the triton package"):
        call("dyt", "triton", inputs)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_explicit_triton_on_cpu_without_interpreter_raises():
    if dispatch.triton_backend() is None:
        pytest.skip(f"triton does not import: {dispatch.triton_error()}")
    if dispatch.triton_backend().INTERPRETED:
        pytest.skip("this process runs Triton's interpreter")
    inputs, _ = make_inputs("dyt", (2, 8), torch.float32, False)
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        call("dyt", "triton", inputs)


# ----------------------------------------------------------------- Triton, via interpreter


HOPPER_SMS = 132  # H100 SXM and H200
LLAMA_SHAPES = [(4096, 4096), (8192, 8192)]  # tokens x width of LLaMA-7B/70B activations


def _compile_for_hopper(kernel, pointers: dict, ints: tuple, constexprs: dict, num_warps: int):
    """`kernel` compiled to an sm_90 cubin, specialised as a launch specialises it on such
    shapes: 16-byte aligned pointers, integer arguments divisible by 16."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {**pointers, **dict.fromkeys(ints, "i32"), **dict.fromkeys(constexprs, "constexpr")}
    attrs = {(kernel.arg_names.index(k),): [["tt.divisibility", 16]] for k in (*pointers, *ints)}
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


def _launched_kernels(backend):
    """(name, kernel, pointers, ints, constexprs, num_warps) of every kernel launch forward and
    backward make for LLAMA_SHAPES on a Hopper GPU, DyT without and Derf with shift and bias."""
    import triton

    out = {}
    for (m, n), dt, name in itertools.product(LLAMA_SHAPES, ("fp32", "bf16"), ("tanh", "erf")):
        (f, df), shifted = backend.TRITON_FUNCTIONS[name], name == "erf"
        x = torch.empty(
            m, n, dtype=torch.float32 if dt == "fp32" else torch.bfloat16, device="meta"
        )
        flags = dict(HAS_SHIFT=shifted, HAS_BIAS=shifted)
        math = dict(PRECISE=dt == "fp32", FAST=True)
        fwd = backend.forward_config(x)
        bwd = backend.backward_config(x, programs=backend.PROGRAMS_PER_SM * HOPPER_SMS)
        n_row = triton.cdiv(m, bwd.rows_per_prog)
        rows, slots = triton.next_power_of_2(n_row), n_row * triton.cdiv(n, bwd.block_n)
        io = dict.fromkeys(("x_ptr", "y_ptr", "a_ptr", "s_ptr", "w_ptr", "b_ptr"), f"*{dt}")
        grads = dict.fromkeys(("dy_ptr", "x_ptr", "a_ptr", "s_ptr", "w_ptr", "dx_ptr"), f"*{dt}")
        parts = dict.fromkeys(("dw_part", "db_part", "da_part", "ds_part"), "*fp32")
        sums = dict(parts, **dict.fromkeys(("dw_ptr", "db_ptr", "da_ptr", "ds_ptr"), f"*{dt}"))
        launches = [
            ("fwd", backend._fwd_kernel, io, ("M", "N"), dict(F=f, **flags, **math,
             BLOCK_M=fwd.block_m, BLOCK_N=fwd.block_n), fwd.num_warps),
            ("bwd", backend._bwd_kernel, {**grads, **parts}, ("M", "N"), dict(
             F=f, DF=df, **flags, **math, ROWS_PER_PROG=bwd.rows_per_prog,
             BLOCK_M=bwd.block_m, BLOCK_N=bwd.block_n), bwd.num_warps),
            ("sum", backend._bwd_sum_kernel, sums, ("n_rows", "N", "n_slots"), dict(
             **flags, ROWS=rows, BLOCK=max(1, min(n, 4096 // rows)),
             SLOTS=triton.next_power_of_2(slots)), 4),
        ]  # fmt: skip
        for kind, kernel, pointers, ints, constexprs, warps in launches:
            key = (kind, dt, name, tuple(sorted((k, str(v)) for k, v in constexprs.items())))
            out[key] = (f"{kind} {name} {dt} {m}x{n}", kernel, pointers, ints, constexprs, warps)
    return list(out.values())


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_triton_kernels_compile_for_hopper():
    """The interpreter accepts code real compilation rejects (e.g. non-constexpr globals), so
    also compile each kernel, in the launch configurations the backend picks for LLaMA widths on
    a Hopper GPU, ahead of time to an sm_90 cubin (needs no GPU, only triton's ptxas), and check
    it keeps everything in registers: no local memory in the PTX nor in the cubin, where
    ptxas's register spills would show."""
    backend = dispatch.triton_backend()
    if backend is None or backend.INTERPRETED:
        pytest.skip("triton does not import, or this process runs its interpreter")
    import triton

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    assert cuobjdump.exists(), "triton ships cuobjdump with its NVIDIA backend"
    for name, kernel, pointers, ints, constexprs, warps in _launched_kernels(backend):
        compiled = _compile_for_hopper(kernel, pointers, ints, constexprs, warps)
        assert ".local" not in compiled.asm["ptx"], name
        cubin = Path(tempfile.mkdtemp()) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([str(cuobjdump), "-res-usage", str(cubin)], capture_output=True,
                               text=True, check=True).stdout  # fmt: skip
        assert "LOCAL:0" in usage and "STACK:0" in usage, f"{name} spills: {usage}"


TRITON_SHAPES = [(1, 7), (3, 5, 33), (17, 129), (70, 300), (5, 1100)]  # last: 2-3 column blocks


def triton_interpreter_cases() -> int:
    """Run every Triton case against the reference (needs TRITON_INTERPRET=1); return count."""
    backend = dispatch.triton_backend()
    assert backend is not None, dispatch.triton_error()
    assert backend.INTERPRETED, "TRITON_INTERPRET=1 was not set before importing triton"
    count = 0
    for kind in ("dyt", "derf"):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for shape in TRITON_SHAPES:
                for with_bias in (False, True):
                    check_against_reference(kind, "triton", shape, dtype, with_bias)
                    count += 1
        check_against_reference(kind, "triton", (17, 129), torch.float32, True, ("x",))
        check_against_reference(kind, "triton", (17, 129), torch.float32, True, ("weight",))
        count += 2
    return count


def triton_launch_configs() -> int:
    """Launch shapes other than the default ones (what a benchmark sweep tries: one row or many
    per step, more warps, a row count that does not divide the rows) give the default's
    results: the forward bit for bit, the backward's sums up to their order. Returns count."""
    backend = dispatch.triton_backend()
    config = backend.LaunchConfig
    sweeps = [(config(1, 64), config(1, 64, 4, 8)), (config(8, 128, 8), config(4, 128, 8, 16))]
    count = 0
    for kind, dtype in (("dyt", torch.float32), ("derf", torch.float32), ("derf", torch.bfloat16)):
        inputs, upstream = make_inputs(kind, (70, 300), dtype, True)
        args = [FUNCTIONS[kind], *(inputs[k] for k in ("x", "alpha", "shift", "weight", "bias"))]
        y = backend.forward(*args)
        grads = backend.backward(args[0], upstream, *args[1:])
        for forward_config, backward_config in sweeps:
            torch.testing.assert_close(
                backend.forward(*args, config=forward_config), y, rtol=0, atol=0
            )
            swept = backend.backward(args[0], upstream, *args[1:], config=backward_config)
            for got, want in zip(swept, grads, strict=True):
                torch.testing.assert_close(
                    got, want, **dict(zip(("rtol", "atol"), TOL[dtype]["grad"]))
                )
            count += 1
    return count


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_triton_kernels_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve())],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "triton interpreter: 64 cases match the reference" in proc.stdout
    assert "6 other launch configurations match the default" in proc.stdout


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    n = triton_interpreter_cases()
    print(f"triton interpreter: {n} cases match the reference")
    n = triton_launch_configs()
    print(f"triton interpreter: {n} other launch configurations match the default")
