"""qlab.packing: round trip, and an independent bit-by-bit reading of the packed words."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlab import BadArgumentError
from qlab.packing import pack_rows, unpack_rows


def read_bitstream(packed: torch.Tensor, bits: int, rows: int) -> np.ndarray:
    """Oracle: expand every word into its 32 bits (LSB first) and read each code from the column's bit stream."""
    words = packed.numpy().astype(np.uint32)
    stream = ((words[:, None, :] >> np.arange(32, dtype=np.uint32)[None, :, None]) & 1).reshape(-1, words.shape[1])
    weights = 1 << np.arange(bits)
    return np.stack([(stream[r * bits:(r + 1) * bits] * weights[:, None]).sum(0) for r in range(rows)])


@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), cols=st.integers(1, 5), seed=st.integers(0, 1000))
def test_pack_matches_independent_reader_and_round_trips(bits, cols, seed):
    rows = 32 * 2  # a multiple of 32 fits every bit width
    codes = torch.randint(0, 2**bits, (rows, cols), generator=torch.Generator().manual_seed(seed))
    packed = pack_rows(codes, bits)
    assert packed.dtype == torch.int32 and packed.shape == (rows * bits // 32, cols)
    np.testing.assert_array_equal(read_bitstream(packed, bits, rows), codes.numpy())
    torch.testing.assert_close(unpack_rows(packed, bits, rows), codes.to(torch.uint8))


def test_4bit_word_holds_eight_codes_low_nibble_first():
    codes = torch.arange(8)[:, None]
    assert int(pack_rows(codes, 4)[0, 0]) == 0x76543210


def test_bad_shapes_and_codes():
    with pytest.raises(BadArgumentError, match="multiple of 8"):
        pack_rows(torch.zeros(12, 1, dtype=torch.int64), 4)
    with pytest.raises(BadArgumentError, match=r"\[0, 15\]"):
        pack_rows(torch.full((8, 1), 16), 4)
