"""A run's settings survive: `qlab quantize` records every one in qlab.json, and `qlab export` carries them into
the GPTQ and AWQ quantization_config and the GGUF metadata (round trips with NON-default settings, on a tiny
Llama); the CLI's defaults are the quantizer classes' own."""

import contextlib
import io
import json

import pytest

TEXT = " ".join(f"Sentence {i}: the {w} fox jumps over {i % 7} lazy dogs near the {v} river." for i, (w, v) in
                enumerate(zip(["quick", "brown", "slow", "red", "old"] * 40, ["wide", "cold", "long", "deep"] * 50)))


def run(*argv) -> dict:
    """`qlab ARGV --json` in this process: the JSON object it prints last (AssertionError if it failed)."""
    from qlab.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "--json"])
    assert code == 0, err.getvalue()[-2000:]
    return json.loads(out.getvalue().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny Llama folder (hidden 64: groups of 32 divide every row) with a byte-level BPE tokenizer, and a text."""
    from test_gguf_files import _tiny, byte_bpe_tokenizer

    d = tmp_path_factory.mktemp("settings")
    tok = byte_bpe_tokenizer(300, [TEXT])
    model = _tiny(tok, 64, 128, 2, 4, 2, tied=True, seed=0)
    model.save_pretrained(d / "tiny")
    tok.save_pretrained(d / "tiny")
    (d / "text.txt").write_text(TEXT)
    return d


GPTQ_ARGS = ["--method", "gptq", "--bits", "4", "--group-size", "32", "--asym", "--damp", "0.05", "--act-order",
             "--static-groups", "--true-sequential", "--block-size", "16", "--forward-dtype", "bfloat16"]
AWQ_ARGS = ["--method", "awq", "--bits", "4", "--group-size", "32", "--sym", "--alpha-grid", "5", "--no-clip",
            "--duo-scaling", "--objective", "module", "--skip", "model.layers.1.mlp.down_proj"]


def quantize(folder, name, args) -> tuple[dict, dict]:
    """(the settings `qlab quantize --json` reports, those its qlab.json records)."""
    from qlab.checkpoint import read_settings

    out = folder / name
    summary = run("quantize", "--model", str(folder / "tiny"), "--dataset", str(folder / "text.txt"), "--nsamples",
                  "6", "--seqlen", "48", "--seed", "3", "--no-output-errors", "--out", str(out), *args)
    return summary["settings"], read_settings(out)


def expected_common(folder, method):
    import qlab

    return {"method": method, "bits": 4, "group_size": 32, "model": str(folder / "tiny"), "model_source": "folder",
            "calibration": {"dataset": str(folder / "text.txt"), "nsamples": 6, "seqlen": 48, "seed": 3},
            "qlab_version": qlab.__version__}


@pytest.fixture(scope="module")
def gptq_run(folder):
    return quantize(folder, "q_gptq", GPTQ_ARGS)


@pytest.fixture(scope="module")
def awq_run(folder):
    return quantize(folder, "q_awq", AWQ_ARGS)


def test_qlab_json_records_every_setting(folder, gptq_run, awq_run):
    reported, recorded = gptq_run
    assert recorded == reported
    assert {k: recorded[k] for k in expected_common(folder, "gptq")} == expected_common(folder, "gptq")
    assert recorded["symmetric"] is False and recorded["skip"] == []
    q = recorded["quantizer"]
    assert {k: q[k] for k in ("damp", "act_order", "static_groups", "true_sequential", "block_size", "forward_dtype",
                              "symmetric", "bits", "group_size")} == {
        "damp": 0.05, "act_order": True, "static_groups": True, "true_sequential": True, "block_size": 16,
        "forward_dtype": "bfloat16", "symmetric": False, "bits": 4, "group_size": 32}
    reported, recorded = awq_run
    assert recorded == reported
    assert {k: recorded[k] for k in expected_common(folder, "awq")} == expected_common(folder, "awq")
    assert recorded["symmetric"] is True and recorded["skip"] == ["model.layers.1.mlp.down_proj"]
    q = recorded["quantizer"]
    assert {k: q[k] for k in ("alpha_grid", "clip", "duo_scaling", "objective", "then")} == {
        "alpha_grid": 5, "clip": False, "duo_scaling": True, "objective": "module", "then": "rtn"}
    # every constructor argument that can change the result is in the quantizer's config (the contract): all but
    # progress (a bar), min_tokens (a refusal threshold) and max_pass_bytes (one pass or one pass per group: the
    # same codes, tests/test_gptq.py::test_true_sequential_single_pass_equals_group_by_group_passes)
    from qlab.awq import AWQQuantizer
    from qlab.gptq import GPTQQuantizer

    for cls, settings in ((GPTQQuantizer, gptq_run[1]), (AWQQuantizer, awq_run[1])):
        import inspect

        wanted = set(inspect.signature(cls.__init__).parameters) - {"self", "progress", "min_tokens", "max_pass_bytes"}
        assert wanted <= set(settings["quantizer"]), wanted - set(settings["quantizer"])


def test_gptq_export_carries_the_settings(folder, gptq_run):
    from transformers import GPTQConfig

    settings = gptq_run[1]
    run("export", "--format", "gptq", "--model", str(folder / "q_gptq"), "--out", str(folder / "gptq"))
    qc = json.loads((folder / "gptq" / "config.json").read_text())["quantization_config"]
    assert qc["meta"]["qlab"] == settings
    assert (qc["bits"], qc["group_size"], qc["sym"], qc["desc_act"]) == (4, 32, False, True)
    assert (qc["damp_percent"], qc["true_sequential"], qc["static_groups"]) == (0.05, True, True)
    assert json.loads((folder / "gptq" / "quantize_config.json").read_text()) == qc
    GPTQConfig.from_dict(dict(qc)).post_init()  # transformers accepts it


def test_awq_export_carries_the_settings(folder, awq_run):
    from transformers import AwqConfig

    settings = awq_run[1]
    run("export", "--format", "awq", "--model", str(folder / "q_awq"), "--out", str(folder / "awq"))
    qc = json.loads((folder / "awq" / "config.json").read_text())["quantization_config"]
    assert qc["meta"]["qlab"] == settings
    assert (qc["bits"], qc["group_size"], qc["zero_point"]) == (4, 32, True)
    assert qc["modules_to_not_convert"] == ["model.layers.1.mlp.down_proj"]  # the skipped Linear stays float
    from safetensors.torch import load_file

    sd = load_file(str(folder / "awq" / "model.safetensors"))
    assert "model.layers.1.mlp.down_proj.weight" in sd and "model.layers.1.mlp.down_proj.qweight" not in sd
    AwqConfig.from_dict(dict(qc))  # transformers accepts it


def test_gguf_export_carries_the_settings(folder, gptq_run):
    from qlab.gguf.reader import read_settings

    run("export", "--format", "gguf", "--type", "Q8_0", "--model", str(folder / "q_gptq"), "--out",
        str(folder / "q.gguf"))
    assert read_settings(folder / "q.gguf") == gptq_run[1]


def test_exporters_check_the_settings_against_the_tensors(folder, gptq_run):
    from qlab.checkpoint import load_quantized
    from qlab.errors import BadArgumentError
    from qlab.export_awq import save_awq_checkpoint
    from qlab.export_gptq import save_gptq_checkpoint

    model, tok, qts, meta = load_quantized(folder / "q_gptq")
    wrong = {**meta["settings"], "bits": 3}
    with pytest.raises(BadArgumentError, match="bits 3"):
        save_gptq_checkpoint(model, tok, qts, folder / "wrong", settings=wrong)
    awq_model, tok, awq_qts, awq_meta = load_quantized(folder / "q_awq")
    with pytest.raises(BadArgumentError, match="symmetric False"):
        save_awq_checkpoint(awq_model, tok, awq_qts, folder / "wrong", settings={**awq_meta["settings"],
                                                                                 "symmetric": False})
    assert not (folder / "wrong").exists()


def test_gptq_config_without_settings_invents_no_run_fields():
    from qlab.export_gptq import quantization_config

    qc = quantization_config(4, 128, True, False)
    assert not {"damp_percent", "true_sequential", "static_groups"} & set(qc)
    qc = quantization_config(4, 128, True, False, damp=0.02, act_order=True)
    assert (qc["damp_percent"], qc["desc_act"]) == (0.02, True)


# ---------------------------------------------------------------- defaults: the classes are the one source


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_cli_defaults_are_the_library_defaults(method):
    from qlab.checkpoint import quantizer_config
    from qlab.cli import build_parser, make_quantizer, parse_setting, quantizer_class

    cls = quantizer_class(method)
    library = quantizer_config(cls())
    assert quantizer_config(make_quantizer(build_parser().parse_args(["quantize", "--method", method]))) == library
    # `qlab compare` settings without sym/asym: the method's own grid
    s = parse_setting(f"{method}:{library['bits']}:64")
    assert quantizer_config(make_quantizer(s)) == {**library, "group_size": 64}


def test_flags_of_another_method_are_refused():
    from qlab.cli import build_parser, make_quantizer
    from qlab.errors import BadArgumentError

    with pytest.raises(BadArgumentError, match="--act-order only applies to --method gptq"):
        make_quantizer(build_parser().parse_args(["quantize", "--method", "rtn", "--act-order"]))
    with pytest.raises(BadArgumentError, match="--alpha-grid only applies to --method awq"):
        make_quantizer(build_parser().parse_args(["quantize", "--method", "gptq", "--alpha-grid", "4"]))
    gptq = make_quantizer(build_parser().parse_args(["quantize", "--method", "gptq", "--no-act-order",
                                                     "--no-true-sequential"]))
    assert (gptq.act_order, gptq.true_sequential) == (False, False)


def test_rtn_records_no_calibration(folder):
    from qlab.checkpoint import read_settings

    summary = run("quantize", "--model", str(folder / "tiny"), "--bits", "8", "--group-size", "32", "--out",
                  str(folder / "q_rtn"))
    settings = read_settings(folder / "q_rtn")
    assert settings == summary["settings"] and settings["calibration"] is None
    assert settings["quantizer"] == {"method": "rtn", "bits": 8, "group_size": 32, "symmetric": False,
                                     "zero_point": "integer"}
