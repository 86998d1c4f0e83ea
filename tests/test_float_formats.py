"""Block float formats in the walk, the CLI and qlab's folder (qlab.float_formats): a folder written in each format
loads back bit for bit as blockfloat's own dequantization of the ORIGINAL float weights; bits per weight equal the
closed forms summed by hand over the Linears; per-channel FP8 agrees with torch's float8 casts; bad input fails
with a message saying what to do. Runs `qlab` in this process on a tiny Llama folder (no 135M model load)."""

import contextlib
import io
import json
import math

import pytest
import torch

from qlab import blockfloat as bf
from qlab import float_formats as ff

TEXT = " ".join(f"Line {i}: the quick brown fox jumps over {i % 5} lazy dogs." for i in range(200))


def run(*argv, ok=True) -> dict:
    """`qlab ARGV --json` in this process: its last JSON line (and the exit code checked)."""
    from qlab.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "--json"])
    assert (code == 0) == ok, err.getvalue()[-2000:]
    return json.loads(out.getvalue().strip().splitlines()[-1])


def _folder(path, hidden, inter, tied=True):
    from test_gguf_files import _tiny, byte_bpe_tokenizer

    tok = byte_bpe_tokenizer(300, [TEXT])
    model = _tiny(tok, hidden, inter, 2, 4, 2, tied=tied, seed=0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny tied Llama (hidden 64, MLP 128: every block size 16/32/64 divides its rows), saved as a folder."""
    return _folder(tmp_path_factory.mktemp("ff") / "tiny", 64, 128)


def _linear_weights(model) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n != "lm_head"}


def closed_form_bits(name: str, N: int, K: int) -> int:
    """Stored bits of one [N, K] weight in format `name`, written out from the format's definition."""
    n = N * K
    if name.startswith("mxfp8") or name == "mxint8":
        return n * 8 + (n // 32) * 8  # 8-bit elements, one E8M0 byte per 32
    if name.startswith("mxfp6"):
        return n * 6 + (n // 32) * 8
    if name == "mxfp4":
        return n * 4 + (n // 32) * 8
    if name == "nvfp4":
        return n * 4 + (n // 16) * 8 + 32  # E2M1, one E4M3 per 16, one float32 per tensor
    if name == "nf4":
        return n * 4 + (n // 64) * 32  # a float32 absmax per 64
    if name == "nf4-dq":
        return n * 4 + (n // 64) * 8 + math.ceil(n / 64 / 256) * 32 + 32  # 8-bit absmax codes, a float32 per 256, mean
    assert name.startswith("fp8-")
    return n * 8 + N * 32  # one FP8 code per weight, one float32 per row


def fp8_oracle(W: torch.Tensor, name: str) -> torch.Tensor:
    """Per-channel FP8 through torch's own float8 cast: s = absmax/max in float32, cast(W/s)·s."""
    dtype, top = {"fp8-e4m3": (torch.float8_e4m3fn, 448.0), "fp8-e5m2": (torch.float8_e5m2, 57344.0)}[name]
    s = (W.double().abs().amax(-1, keepdim=True) / top).float()
    s = torch.where(s > 0, s, torch.ones_like(s))
    return (W.double() / s.double()).clamp(-top, top).to(dtype).float() * s


@pytest.mark.parametrize("fmt", list(ff.FORMATS))
def test_folder_loads_back_bit_for_bit_with_exact_bits_per_weight(tiny, tmp_path, fmt):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from qlab.model import load_model

    original = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    weights = _linear_weights(original)
    out = tmp_path / fmt
    summary = run("quantize", "--model", str(tiny), "--format", fmt, "--out", str(out))
    assert summary["format"] == fmt and summary["layers"] == len(weights) == 14
    loaded, _ = load_model(out)
    got = _linear_weights(loaded)
    for name, W in weights.items():
        if fmt in ff.FP8_ELEMENTS:
            oracle = fp8_oracle(W, fmt)
        elif fmt == "nf4-dq":
            oracle = bf.quantize(W, "nf4", double_quant=True).dequantize()
        else:
            oracle = bf.quantize(W, fmt).dequantize()
        assert torch.equal(got[name], oracle), (fmt, name)
    for key, t in original.state_dict().items():  # embeddings and norms stay as they were, the tie kept
        if key.removesuffix(".weight") not in weights:
            assert torch.equal(loaded.state_dict()[key], t), key
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    # bits: the closed form, summed by hand over the Linears, against the folder's bytes and the reported figure
    total = sum(closed_form_bits(fmt, *W.shape) for W in weights.values())
    n = sum(W.numel() for W in weights.values())
    packed = load_file(out / "blockfloat.safetensors")
    assert 8 * sum(t.numel() for t in packed.values()) == total
    assert summary["bits_per_weight"] == pytest.approx(total / n, abs=5e-5)  # the JSON rounds to 4 decimals
    meta = json.loads((out / "qlab.json").read_text())
    assert meta["format"] == fmt and meta["settings"]["quantizer"] == {"method": "rtn", "format": fmt}


def test_model_bits_per_weight_is_counted_from_storage(tiny):
    """QuantizationResult's figure, exactly: MXFP4 is 4 + 8/32; NVFP4 adds 32 bits per Linear; NF4-DQ per tensor."""
    import copy

    from transformers import AutoModelForCausalLM

    from qlab.pipeline import quantize_model

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    shapes = [tuple(W.shape) for W in _linear_weights(model).values()]
    n = sum(a * b for a, b in shapes)
    for fmt in ("mxfp4", "nvfp4", "nf4-dq", "fp8-e5m2"):
        res = quantize_model(copy.deepcopy(model), None, ff.FloatFormatQuantizer(fmt), progress=False)
        assert res.qtensors == {} and len(res.block_tensors) == len(shapes)
        assert res.storage_bits() == sum(closed_form_bits(fmt, *s) for s in shapes)
        assert res.bits_per_weight() == res.storage_bits() / n
        if fmt == "mxfp4":
            assert res.bits_per_weight() == 4 + 8 / 32
    # an affine run still counts through qlab.qtensor.storage_breakdown: 4 + (16 + 4)/64 asymmetric g64
    from qlab.rtn import RTNQuantizer

    res = quantize_model(copy.deepcopy(model), None, RTNQuantizer(4, 64), progress=False)
    assert res.block_tensors == {} and res.bits_per_weight() == 4 + 20 / 64


def test_fp8_rows_match_torch_casts_and_survive_packing():
    torch.manual_seed(1)
    W = torch.randn(48, 40) * torch.logspace(-6, 3, 48)[:, None]  # rows across nine decades
    W[5] = 0  # an all-zero row: scale 1, zero codes
    W[7, 3] = 1e-30  # far below the row's subnormals: flushes to 0
    for name in ff.FP8_ELEMENTS:
        q = ff.quantize_weight(W, name)
        assert torch.equal(q.dequantize(), fp8_oracle(W, name)), name
        assert q.storage_bits() == 48 * 40 * 8 + 48 * 32 and q.bits_per_weight() == 8 + 32 / 40
        data = ff.pack_weight(q)
        assert 8 * len(data) == q.storage_bits()
        back = ff.unpack_weight(data, name, W.shape)
        assert torch.equal(back.dequantize(), q.dequantize()) and torch.equal(back.codes, q.codes)
    for name in ("mxfp4", "nvfp4", "nf4", "nf4-dq"):  # the block formats go through blockfloat.pack
        q = ff.quantize_weight(W[:, :32] if name != "nf4" and name != "nf4-dq" else torch.randn(8, 128), name)
        assert torch.equal(ff.unpack_weight(ff.pack_weight(q), name, q.shape).dequantize(), q.dequantize())


def test_the_quantizer_implements_the_contract():
    from qlab.quantizer import BlockQuantizer

    q = ff.FloatFormatQuantizer("NF4")
    assert isinstance(q, BlockQuantizer) and q.forward_dtype is None
    assert q.format == "nf4" and q.config == {"method": "rtn", "format": "nf4"} and q.describe() == "RTN nf4"
    json.dumps(q.config)


def test_bad_input_gets_messages(tiny, tmp_path):
    from qlab.checkpoint import load_quantized
    from qlab.cli import FORMAT_HELP, build_parser, parse_setting
    from qlab.errors import BadArgumentError, FileFormatError
    from qlab.model import load_model

    assert all(name in FORMAT_HELP for name in ff.FORMATS)  # the help lists every format
    e = run("quantize", "--model", str(tiny), "--format", "fp5", ok=False)
    assert e["kind"] == "BadArgumentError" and "unknown weight format 'fp5'" in e["error"]
    assert all(name in e["error"] for name in ff.FORMATS)
    e = run("quantize", "--model", str(tiny), "--format", "mxfp4", "--bits", "4", "--group-size", "32", ok=False)
    assert "--bits and --group-size" in e["error"] and "does not apply to --format mxfp4" in e["error"]
    e = run("quantize", "--model", str(tiny), "--format", "nf4", "--method", "gptq", ok=False)
    assert "use --method rtn" in e["error"]
    # rows of 48: neither 32 nor 64 divides them; the message names the formats that fit
    odd = _folder(tmp_path / "odd", 48, 96)
    e = run("quantize", "--model", str(odd), "--format", "mxfp4", "--out", str(tmp_path / "no"), ok=False)
    assert "multiple of its block size 32" in e["error"] and "rows of 48" in e["error"]
    assert "nvfp4, fp8-e4m3, fp8-e5m2" in e["error"] and not (tmp_path / "no").exists()
    # settings of `qlab compare`
    assert parse_setting("rtn:MXFP4").format == "mxfp4" and parse_setting("rtn:4:64").format == "int"
    for text, words in [("gptq:nf4", "rtn:FORMAT"), ("rtn:fp5", "unknown weight format"), ("rtn:int", "rtn:FORMAT")]:
        with pytest.raises(BadArgumentError, match=words):
            parse_setting(text)
    assert build_parser().parse_args(["quantize"]).format == "int"
    # a folder of another layout (another qlab version), an unknown format, and a GPTQ export of a block folder
    out = tmp_path / "nv"
    run("quantize", "--model", str(tiny), "--format", "nvfp4", "--out", str(out))
    meta = json.loads((out / "qlab.json").read_text())
    with pytest.raises(FileFormatError, match="block-float weights.*GPTQ/AWQ"):
        load_quantized(out)
    e = run("export", "--model", str(out), "--format", "gptq", "--out", str(tmp_path / "g"), ok=False)
    assert e["kind"] == "FileFormatError" and "--format int" in e["error"]
    (out / "qlab.json").write_text(json.dumps({**meta, "layout": "qlab-blockfloat-2"}))
    with pytest.raises(FileFormatError, match="layout 'qlab-blockfloat-2'.*reads layout 'qlab-blockfloat-1'"):
        load_model(out)
    first = next(iter(meta["layers"]))
    (out / "qlab.json").write_text(json.dumps({**meta, "layers": {**meta["layers"], first: {
        "format": "mxfp3", "shape": meta["layers"][first]["shape"]}}}))
    with pytest.raises(FileFormatError, match="mxfp3.*known: mxfp8_e4m3"):
        load_model(out)
    (out / "qlab.json").write_text(json.dumps(meta))
    (out / "blockfloat.safetensors").write_bytes(b"\x08\0\0\0\0\0\0\0{}")
    with pytest.raises(FileFormatError, match="damaged"):
        load_model(out)


def test_compare_takes_float_format_settings(tiny, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    res = run("compare", "--model", str(tiny), "--dataset", str(text), "--tokens", "256", "--ctx", "64",
              "--settings", "rtn:mxfp4", "rtn:nf4-dq", "rtn:4:32")
    rows = {r["setting"]: r for r in res["rows"]}
    assert rows["rtn:mxfp4"]["format"] == "mxfp4" and rows["rtn:mxfp4"]["bits_per_weight"] == 4.25
    assert rows["rtn:4:32"]["format"] == "int" and rows["rtn:4:32"]["bits_per_weight"] == 4 + 20 / 32
    assert 4.125 < rows["rtn:nf4-dq"]["bits_per_weight"] < 4.2 and rows["rtn:nf4-dq"]["kl"] > 0
