"""Whole-model GGUF files: qlab's writer, reader, mixes and imatrix against llama.cpp itself.

Oracles: llama.cpp's quantizer (llama_model_quantize) run on qlab's own F32 file gives the per-tensor types
and bytes each mix must have; llama.cpp loads and runs every file qlab writes; transformers' GGUF loader
reads the embedded model's Q4_1 file; a naive full-forward imatrix checks the block-by-block one.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import torch

from qlab.errors import BadArgumentError, FileFormatError
from qlab.gguf import mixes
from qlab.gguf.imatrix import collect_imatrix, gguf_imatrix, naive_imatrix
from qlab.gguf.names import gguf_rows_from_hf, hf_name
from qlab.gguf.reader import _open, load_gguf_model, read_gguf, read_metadata, read_settings, tensor_types
from qlab.gguf.writer import export_gguf

try:
    import llama_cpp  # noqa: F401

    HAVE_LLAMA = True
except ImportError:  # pragma: no cover - CI builds it (the oracle is part of the set-up)
    HAVE_LLAMA = False
    if os.environ.get("CI"):
        raise RuntimeError("llama-cpp-python (the GGUF oracle) is missing in CI: the set-up must build it")

needs_llama = pytest.mark.skipif(not HAVE_LLAMA, reason="llama-cpp-python not installed (pip install it)")
MIXES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M",
         "Q5_K_S", "Q5_K_M", "Q6_K"]


def _tiny(tokenizer, hidden, inter, layers, heads, kv, tied, seed):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer.get_vocab()), hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                      max_position_embeddings=512, tie_word_embeddings=tied, rms_norm_eps=1e-5,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # columns of different scales, as real weights have
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(1 + torch.rand(p.shape[1]) * 3)
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return model


def byte_bpe_tokenizer(vocab_size: int, texts: list[str]):
    """A small byte-level BPE (GPT-2 style, as SmolLM2's) trained on `texts`, so the tiny models stay tiny."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")


@pytest.fixture(scope="module")
def tokenizer():
    return byte_bpe_tokenizer(400, ["The quick brown fox jumps over the lazy dog. " * 3,
                                    "Once upon a time there was a cat that sat on the mat because it was warm."] * 20)


@pytest.fixture(scope="module", params=["k256_untied", "k_fallback_tied"])
def tiny(request, tokenizer):
    """Two tiny llamas: rows that fit 256-element super-blocks (untied, GQA 4) and rows that do not (tied)."""
    if request.param == "k256_untied":
        return _tiny(tokenizer, 256, 256, 12, 4, 1, tied=False, seed=1)
    return _tiny(tokenizer, 160, 256, 8, 5, 5, tied=True, seed=2)


@pytest.fixture(scope="module")
def tiny_files(tiny, tokenizer, tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    return d, export_gguf(tiny, tokenizer, d / "f32.gguf", "F32", progress=False)


def _raw(path):
    return {t.name: (t.tensor_type.name, np.asarray(t.data).view(np.uint8).tobytes()) for t in _open(path).tensors}


# ---------------------------------------------------------------- writer / reader round trip


def test_f32_roundtrip_and_permutation(tiny, tiny_files):
    d, f32 = tiny_files
    meta, tensors = read_gguf(f32)
    sd = tiny.state_dict()

    assert meta["general.architecture"] == "llama"
    for g, a in tensors.items():
        np.testing.assert_array_equal(a, sd[hf_name(g)].numpy(), err_msg=g)
    # the file itself holds llama.cpp's interleaved row order: row 2i of a head is HF row i, row 2i+1 is i + d/2
    raw = {t.name: t for t in _open(f32).tensors}["blk.0.attn_q.weight"]
    q = np.asarray(raw.data).reshape(tensors["blk.0.attn_q.weight"].shape)
    w = sd["model.layers.0.self_attn.q_proj.weight"].numpy()
    hd = tiny.config.hidden_size // tiny.config.num_attention_heads
    np.testing.assert_array_equal(q[0], w[0])
    np.testing.assert_array_equal(q[1], w[hd // 2])
    np.testing.assert_array_equal(gguf_rows_from_hf(w, tiny.config.num_attention_heads), q)


def test_metadata(tiny, tokenizer, tiny_files):
    meta = read_metadata(tiny_files[1])
    cfg = tiny.config
    assert meta["llama.block_count"] == cfg.num_hidden_layers
    assert meta["llama.embedding_length"] == cfg.hidden_size
    assert meta["llama.feed_forward_length"] == cfg.intermediate_size
    assert meta["llama.attention.head_count"] == cfg.num_attention_heads
    assert meta["llama.attention.head_count_kv"] == cfg.num_key_value_heads
    assert meta["tokenizer.ggml.model"] == "gpt2"
    vocab = tokenizer.get_vocab()
    tokens = meta["tokenizer.ggml.tokens"]
    assert all(tokens[i] == t for t, i in vocab.items())
    assert meta["tokenizer.ggml.token_type"][tokenizer.bos_token_id] == 3  # CONTROL
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    assert meta["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert meta["tokenizer.ggml.bos_token_id"] == tokenizer.bos_token_id


def test_load_gguf_model_matches_source(tiny, tokenizer, tiny_files):
    model, _ = load_gguf_model(tiny_files[1], tokenizer=tokenizer)
    ids = torch.tensor([tokenizer.encode("The cat sat on the mat because it was warm.")])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, tiny(ids).logits, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- mixes and bytes against llama.cpp


@needs_llama
def test_mix_types_and_bytes_match_llama_cpp(tiny, tokenizer, tiny_files):
    d, f32 = tiny_files
    for ft in MIXES + ["F16"]:
        ref = mixes.llama_cpp_quantize(f32, d / f"llama-{ft}.gguf", ft, nthread=1)
        ours = export_gguf(tiny, tokenizer, d / f"qlab-{ft}.gguf", ft, progress=False)
        a, b = _raw(ours), _raw(ref)
        assert a.keys() == b.keys()
        for name in a:
            assert a[name][0] == b[name][0], f"{ft} {name}: qlab {a[name][0]} vs llama.cpp {b[name][0]}"
            assert a[name][1] == b[name][1], f"{ft} {name} ({a[name][0]}): bytes differ from llama.cpp"
        assert os.path.getsize(ours) == os.path.getsize(ref) or ft == "F16"


def test_pre_tokenizer_of_smollm(embedded):
    from qlab.gguf.writer import _pre_tokenizer

    assert _pre_tokenizer(embedded[1]) == "smollm"  # the hash llama.cpp's convert_hf_to_gguf.py lists for SmolLM


def test_recipe_rules_on_embedded_shapes():
    """SmolLM2's shapes (576 columns: k-quants only fit ffn_down) under Q4_K_M, from the rules in llama-quant.cpp."""
    shapes = {"token_embd.weight": (49152, 576)}
    for i in range(30):
        shapes |= {f"blk.{i}.attn_v.weight": (192, 576), f"blk.{i}.ffn_down.weight": (576, 1536),
                   f"blk.{i}.attn_q.weight": (576, 576), f"blk.{i}.attn_norm.weight": (576,)}
    types = {r.name: r.qtype for r in mixes.recipe("Q4_K_M", shapes, 30, 3)}
    assert types["token_embd.weight"] == "Q8_0"  # tied: output rules, 576 % 256 != 0
    assert types["blk.0.attn_norm.weight"] == "F32"
    more = [i for i in range(30) if i < 3 or i >= 26 or (i - 3) % 3 == 2]
    for i in range(30):
        assert types[f"blk.{i}.ffn_down.weight"] == ("Q6_K" if i in more else "Q4_K")
        assert types[f"blk.{i}.attn_v.weight"] == ("Q8_0" if i in more else "Q5_0")  # Q6_K / Q4_K fall back
        assert types[f"blk.{i}.attn_q.weight"] == "Q5_0"
    with pytest.raises(BadArgumentError):
        mixes.file_type("Q7_K")


@needs_llama
def test_imatrix_walk_and_llama_cpp_bytes(tiny, tokenizer, tiny_files):
    d, f32 = tiny_files
    ids = torch.randint(0, tiny.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
    im = collect_imatrix(tiny, ids, progress=False)
    ref = naive_imatrix(tiny, ids)
    assert im.keys() == ref.keys() and len(im) == 7 * tiny.config.num_hidden_layers
    for k in im:
        np.testing.assert_allclose(im[k], ref[k], rtol=1e-5, err_msg=k)
    for ft in ("Q4_K_M", "Q4_0", "Q3_K_M"):
        ours = export_gguf(tiny, tokenizer, d / f"qlab-im-{ft}.gguf", ft, imatrix=im, progress=False)
        theirs = mixes.llama_cpp_quantize(f32, d / f"llama-im-{ft}.gguf", ft, imatrix=gguf_imatrix(im))
        a, b = _raw(ours), _raw(theirs)
        for name in a:
            assert a[name] == b[name], f"{ft} + imatrix: {name} differs from llama.cpp"
    # Q4_0 with an imatrix gives the first n/8 ffn_down Q4_1 (llama.cpp's guard)
    assert tensor_types(d / "qlab-im-Q4_0.gguf")["blk.0.ffn_down.weight"] == "Q4_1"


# ---------------------------------------------------------------- bad input


def _small_file(path):
    import gguf

    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_token_list(["a", "b", "c"])
    w.add_tensor("x.weight", np.arange(64 * 4, dtype=np.float32).reshape(4, 64))
    w.add_tensor("y.weight", gguf.quants.quantize(np.ones((2, 64), np.float32), gguf.GGMLQuantizationType.Q8_0),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_corrupted_files_raise_file_format_error(tmp_path):
    good = _small_file(tmp_path / "good.gguf")
    meta, tensors = read_gguf(good)
    assert tensors["x.weight"].shape == (4, 64) and np.allclose(tensors["y.weight"], 1, atol=1e-3)
    data = good.read_bytes()
    cases = {f"truncated at {n}": data[:n] for n in (0, 3, 10, 23, 40, 100, len(data) // 2, len(data) - 40)}
    cases["bad magic"] = b"GGUX" + data[4:]
    cases["version 99"] = data[:4] + struct.pack("<I", 99) + data[8:]
    cases["absurd tensor count"] = data[:8] + struct.pack("<Q", 2**60) + data[16:]
    cases["absurd kv count"] = data[:16] + struct.pack("<Q", 2**40) + data[24:]
    k = data.index(b"tokenizer.ggml.tokens") + len(b"tokenizer.ggml.tokens") + 8  # after value type, item type
    cases["absurd array length"] = data[:k] + struct.pack("<Q", 2**40) + data[k + 8:]
    cases["not gguf"] = b"hello world, this is not a model" * 10
    for k in range(24, 200, 7):  # flipped bytes inside the metadata
        cases[f"flip byte {k}"] = data[:k] + bytes([data[k] ^ 0xFF]) + data[k + 1:]
    failures = []
    for label, blob in cases.items():
        p = tmp_path / "bad.gguf"
        p.write_bytes(blob)
        try:
            read_gguf(p)
        except FileFormatError:
            continue
        except Exception as e:  # noqa: BLE001
            failures.append(f"{label}: {e.__class__.__name__}: {e}")
        else:
            if label.startswith(("truncated", "bad", "version", "absurd", "not")):
                failures.append(f"{label}: read without error")
    assert not failures, failures


def test_truncated_model_file(tiny_files, tmp_path):
    f32 = tiny_files[1]
    p = tmp_path / "cut.gguf"
    with open(f32, "rb") as f:
        p.write_bytes(f.read(os.path.getsize(f32) - 1000))
    with pytest.raises(FileFormatError):
        read_gguf(p)


def test_atomic_write(tiny, tokenizer, tmp_path, monkeypatch):
    """A failed write leaves nothing behind; qlab's own file is replaced only with overwrite=True (and a failed
    replacement keeps it); a user's file of the same name is never replaced."""
    from qlab.errors import OutputPathError
    from qlab.gguf import writer

    def boom(*a, **k):
        raise RuntimeError("disk full")

    target = tmp_path / "model.gguf"
    with monkeypatch.context() as m:
        m.setattr(writer, "_quantize_rows", boom)
        with pytest.raises(RuntimeError):
            export_gguf(tiny, tokenizer, target, "Q4_K_M", progress=False)
    assert list(tmp_path.iterdir()) == []
    export_gguf(tiny, tokenizer, target, "Q8_0", progress=False)
    ours = target.read_bytes()
    with pytest.raises(OutputPathError, match="--overwrite"):
        export_gguf(tiny, tokenizer, target, "Q4_0", progress=False)
    with monkeypatch.context() as m:
        m.setattr(writer, "_quantize_rows", boom)
        with pytest.raises(RuntimeError):
            export_gguf(tiny, tokenizer, target, "Q4_K_M", progress=False, overwrite=True)
    assert target.read_bytes() == ours
    export_gguf(tiny, tokenizer, target, "Q4_0", progress=False, overwrite=True)
    assert target.read_bytes() != ours and read_metadata(target)["general.file_type"] == 2  # MOSTLY_Q4_0
    user = tmp_path / "user.gguf"
    user.write_bytes(b"previous content")
    with pytest.raises(OutputPathError, match="not written by qlab"):
        export_gguf(tiny, tokenizer, user, "Q8_0", progress=False, overwrite=True)
    assert user.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf", "user.gguf"]
    with pytest.raises(BadArgumentError):
        export_gguf(tiny, tokenizer, tmp_path / "m.gguf", "Q9_K", progress=False)



def test_settings_round_trip(tiny, tokenizer, tmp_path):
    """export_gguf(settings=...) stores the run's settings under one metadata key; qlab's reader and gguf-py's
    GGUFReader both give back the same dict; a file without settings reads as None; bad settings are refused."""
    import gguf

    from qlab.gguf.names import SETTINGS_KEY

    settings = {"method": "gptq", "bits": 4, "group_size": 128, "damping": 0.01, "act_order": True,
                "calibration": {"source": "embedded", "samples": 32, "seq_len": 512}, "skip": ["lm_head"],
                "note": "ünïcode ✓", "seed": None}
    path = export_gguf(tiny, tokenizer, tmp_path / "s.gguf", "Q8_0", progress=False, settings=settings)
    assert read_settings(path) == settings
    field = gguf.GGUFReader(str(path)).get_field(SETTINGS_KEY)
    assert json.loads(field.contents()) == settings
    assert read_metadata(path)["general.quantized_by"] == "qlab"
    plain = export_gguf(tiny, tokenizer, tmp_path / "plain.gguf", "Q8_0", progress=False)
    assert read_settings(plain) is None and gguf.GGUFReader(str(plain)).get_field(SETTINGS_KEY) is None
    for bad in ({"damping": float("nan")}, {"x": object()}, ["not", "a", "dict"]):
        with pytest.raises(BadArgumentError, match="settings"):
            export_gguf(tiny, tokenizer, tmp_path / "bad.gguf", "Q8_0", progress=False, settings=bad)
    assert not (tmp_path / "bad.gguf").exists()
    for text in ("[1, 2]", "{not json"):  # a damaged value is a FileFormatError naming the key
        w = gguf.GGUFWriter(str(tmp_path / "damaged.gguf"), "llama")
        w.add_string(SETTINGS_KEY, text)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file(progress=False)
        w.close()
        with pytest.raises(FileFormatError, match=SETTINGS_KEY):
            read_settings(tmp_path / "damaged.gguf")
        (tmp_path / "damaged.gguf").unlink()

# ---------------------------------------------------------------- the embedded model, end to end


def test_reads_llama_cpp_embedded_q4_1_file(embedded):
    """qlab's reader on llama.cpp's own file == transformers' GGUF loader (the exact dequantized variant)."""
    from qlab.model import embedded_gguf_path, load_model

    meta, tensors = read_gguf(embedded_gguf_path())
    exact, _ = load_model("smollm2-135m-q4_1-exact")
    sd = exact.state_dict()

    assert meta["general.file_type"] == 3 and len(tensors) == 272
    for g, a in tensors.items():
        np.testing.assert_array_equal(a, sd[hf_name(g)].numpy(), err_msg=g)


@needs_llama
@pytest.mark.slow
def test_llama_cpp_perplexity_agrees(embedded, tmp_path):
    """llama.cpp runs qlab's files; its perplexity matches qlab's evaluation of the same dequantized weights.

    Float comparison (transformers, float matmuls): F32 within 0.5 %; quantized files within 2 %: ggml rounds the
    activations to 8 bits inside every quantized matmul (Q8_0 included: 0.5-1 % on this small model).
    ggml-rounded comparison (qlab.gguf.crosscheck): qlab applies ggml's activation rounding; since the rounding is
    discontinuous, each run is one draw of a noise that llama.cpp itself re-draws when only its float order
    changes (flash attention on/off), so means over draws are compared: Q8_0 within 0.5 % on 2,048 tokens."""
    from qlab.data import eval_tokens
    from qlab.eval import perplexity
    from qlab.gguf.crosscheck import llama_cpp_agreement
    from qlab.gguf.reader import llama_cpp_evaluate

    model, tok = embedded
    tokens = eval_tokens(tok, "wiki", max_tokens=512)
    self_kl = {}
    for qtype, tol in [("F32", 0.005), ("Q8_0", 0.02), ("Q4_0", 0.02)]:
        path = export_gguf(model, tok, tmp_path / f"m-{qtype}.gguf", qtype, progress=False)
        ours, _ = load_gguf_model(path, tokenizer=tok)
        p_qlab = perplexity(ours, tokens, progress=False).perplexity
        p_llama = llama_cpp_evaluate(path, tokens).perplexity
        assert abs(p_llama / p_qlab - 1) < tol, (qtype, p_qlab, p_llama)
        if qtype in ("F32", "Q8_0"):
            a = llama_cpp_agreement(path, eval_tokens(tok, "wiki", max_tokens=2048 if qtype == "Q8_0" else 512),
                                    draws=2, settings=("default", "flash_attn"), model=ours)
            self_kl[qtype] = a.kl_llama_self["flash_attn"]
            if qtype == "F32":  # no rounding anywhere: llama.cpp agrees with itself and with qlab
                assert a.llama_spread < 5e-4 and abs(a.gap_ggml) < 0.005 and a.ppl_ggml[0] == a.ppl_float, a
            else:  # the 0.5 % for Q8_0, once qlab rounds activations as ggml does
                assert abs(a.gap_ggml) < 0.005, a
        del ours
        path.unlink()
    # activation rounding makes llama.cpp's own float-order changes visible: >100x the F32 file's
    assert self_kl["Q8_0"] > 100 * max(self_kl["F32"], 1e-9), self_kl


def test_block_fields_decode_legacy_blocks():
    """The field decoder's values rebuild each block as gguf-py's reference dequantizer does."""
    import gguf

    from qlab.gguf import quantize
    from qlab.gguf.reader import block_fields

    x = np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32)
    for qtype, formula in [
        ("Q4_0", lambda f: (f["qs"].astype(np.float32) - 8) * f["d"]),
        ("Q4_1", lambda f: f["qs"] * f["d"] + f["m"]),
        ("Q5_0", lambda f: ((f["qs"] | (f["qh"] << 4)).astype(np.float32) - 16) * f["d"]),
        ("Q5_1", lambda f: (f["qs"] | (f["qh"] << 4)) * f["d"] + f["m"]),
        ("Q8_0", lambda f: f["qs"] * f["d"]),
    ]:
        raw = quantize(x, qtype)
        fields = {f["field"]: f["values"] for f in block_fields(raw, qtype)}
        ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype]).reshape(-1)
        np.testing.assert_allclose(formula(fields), ref, atol=1e-6, err_msg=qtype)
    with pytest.raises(BadArgumentError):
        block_fields(raw[:10], "Q8_0")


# ---------------------------------------------------------------- llama.cpp's arithmetic: activation rounding


@pytest.mark.parametrize("qtype", ["F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                                   "Q6_K"])
def test_ggml_activation_rounding_matches_ggml_matmul(qtype):
    """A Linear under ggml_activations equals ggml's own matmul arithmetic (its CPU type traits: from_float of
    the vec_dot_type, then vec_dot), not the float product of the dequantized weights."""
    import ctypes

    import ggml_cpu_oracle
    import ggml_oracle

    from qlab.gguf import dequantize, quantize
    from qlab.gguf.crosscheck import activation_type, ggml_activations

    cpu, base = ggml_cpu_oracle.require(), ggml_oracle.require()
    act = activation_type(qtype)
    assert cpu.traits(qtype).vec_dot_type == ggml_oracle.GGML_TYPE_IDS[act]  # qlab's table is ggml's
    rng = np.random.default_rng(0)
    K, N, M = 512, 8, 3
    W = rng.standard_normal((N, K)).astype(np.float32)
    X = (rng.standard_normal((M, K)) * np.exp(rng.standard_normal(K))).astype(np.float32)  # uneven channels
    if qtype == "F16":
        Wq, W_hat = W.astype(np.float16).view(np.uint8).reshape(-1), W.astype(np.float16).astype(np.float32)
    else:
        Wq = quantize(W, qtype)
        W_hat = dequantize(Wq, qtype, W.shape)
    Wq = Wq.reshape(N, -1)
    xq = np.zeros((M, base.row_size(act, K)), dtype=np.uint8)
    for m in range(M):
        ggml_cpu_oracle.FROM_FLOAT(cpu.traits(act).from_float)(np.ascontiguousarray(X[m]).ctypes.data,
                                                               xq[m].ctypes.data, K)
    vec_dot = ggml_cpu_oracle.VEC_DOT(cpu.traits(qtype).vec_dot)
    y_ggml = np.zeros((M, N), dtype=np.float32)
    s = ctypes.c_float()
    for m in range(M):
        for n in range(N):
            w, x = np.ascontiguousarray(Wq[n]), np.ascontiguousarray(xq[m])
            vec_dot(K, ctypes.byref(s), 0, w.ctypes.data, 0, x.ctypes.data, 0, 1)
            y_ggml[m, n] = s.value
    lin = torch.nn.Linear(K, N, bias=False)
    lin.weight.data = torch.from_numpy(W_hat)
    with torch.no_grad(), ggml_activations(lin, {"": qtype}):
        y = lin(torch.from_numpy(X)).numpy()
    y_float = X @ W_hat.T
    scale = np.abs(X) @ np.abs(W_hat).T
    err, err_float = np.abs(y - y_ggml) / scale, np.abs(y_float - y_ggml) / scale
    # Q8_1's sum field s = fp16(d * sum q) is not emulated (Q4_1/Q5_1): a residual well below the rounding effect
    assert err.max() < (2e-4 if act == "Q8_1" else 2e-6), (qtype, err.max(), err_float.max())
    assert err.max() < err_float.max() / 10, (qtype, err.max(), err_float.max())
    with torch.no_grad():  # the hooks are gone after the block
        np.testing.assert_allclose(lin(torch.from_numpy(X)).numpy(), y_float, rtol=1e-5, atol=1e-5)


def test_ggml_activations_bad_input():
    from qlab.gguf.crosscheck import activation_type, ggml_activations, roundtrip_activations

    lin = torch.nn.Linear(64, 4)
    with pytest.raises(BadArgumentError):
        with ggml_activations(lin, {}):
            pass
    with pytest.raises(BadArgumentError):
        activation_type("Q7_K")
    with pytest.raises(BadArgumentError):
        roundtrip_activations(torch.ones(2, 48), "Q8_0")
    x = torch.randn(2, 64)
    assert torch.equal(roundtrip_activations(x, "F32"), x)


# ---------------------------------------------------------------- SentencePiece-style (llama) tokenizers


def _spm_tokenizer():
    """A Llama-2-style tokenizer built offline: "▁" for spaces (one prepended), BPE with byte fallback, the 256
    byte tokens <0x00>..<0xFF> in the vocabulary right after <unk> <s> </s>."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    norm = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    text = ["The quick brown fox jumps over the lazy dog.", "Once upon a time there was a cat that sat on the mat.",
            "It was warm, so the cat slept; the dog did not."] * 20
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = norm
    bpe.train_from_iterator(text, trainers.BpeTrainer(vocab_size=150, show_progress=False))
    trained = json.loads(bpe.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(t, len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tk.normalizer = norm
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@needs_llama
def test_llama_spm_tokenizer_loaded_by_llama_cpp(tmp_path):
    """qlab writes a byte-fallback BPE tokenizer as tokenizer.ggml.model = "llama"; llama.cpp loads the model and
    tokenizes texts (unseen words, accents, CJK and emoji through byte fallback) exactly as Hugging Face does."""
    from qlab.gguf.reader import open_llama

    tok = _spm_tokenizer()
    model = _tiny(tok, 64, 128, 2, 4, 2, tied=True, seed=3)
    path = export_gguf(model, tok, tmp_path / "spm.gguf", "Q8_0", progress=False)
    meta = read_metadata(path)
    assert meta["tokenizer.ggml.model"] == "llama"
    types = meta["tokenizer.ggml.token_type"]
    assert types[3 + 0x41] == 6 and types[0] == 2 and types[1] == 3  # BYTE, UNKNOWN, CONTROL
    assert meta["tokenizer.ggml.add_space_prefix"] is True
    llm = open_llama(path, 64)
    try:
        for text in ["The quick brown fox sat on the mat.", "Hello  world, it was warm!", "café déjà vu",
                     "漢字 and emoji 🦙 too", "  leading spaces\nnew line\ttab", "x"]:
            want = tok.encode(text, add_special_tokens=False)
            got = llm.tokenize(text.encode(), add_bos=False, special=False)
            assert got == want, (text, got, want)
        llm.reset()
        llm.eval(tok.encode("The cat sat", add_special_tokens=False))  # it runs
        ids = torch.tensor([tok.encode("The cat sat", add_special_tokens=False)])
        with torch.no_grad():
            ref = model(ids).logits[0]
        got = torch.from_numpy(np.array(llm.scores[: ids.shape[1]], dtype=np.float32))
        assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.5
    finally:
        llm.close()


def test_missing_llama_cpp_says_make_oracle(tiny_files, monkeypatch):
    """Without llama-cpp-python every llama.cpp entry point raises LlamaCppMissingError naming `make oracle`
    (None in sys.modules makes `import llama_cpp` fail as if it were not installed)."""
    import sys

    from qlab.errors import LlamaCppMissingError
    from qlab.gguf import mixes
    from qlab.gguf.crosscheck import llama_cpp_available
    from qlab.gguf.reader import ggml_runtime_facts, llama_cpp_evaluate, open_llama

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    monkeypatch.setitem(sys.modules, "llama_cpp.llama", None)
    assert not llama_cpp_available()
    f32 = tiny_files[1]
    calls = [lambda: open_llama(f32), lambda: llama_cpp_evaluate(f32, torch.arange(8)), ggml_runtime_facts,
             lambda: mixes.llama_cpp_quantize(f32, f32.with_name("never.gguf"), "Q8_0")]
    for call in calls:
        with pytest.raises(LlamaCppMissingError, match="make oracle"):
            call()
    assert not f32.with_name("never.gguf").exists()
