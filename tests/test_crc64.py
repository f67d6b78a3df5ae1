"""wal._scan's CRC-64/NVME against crcmod (the reference), and where its folding constants come from.

The C code has two kernels: carry-less-multiply folding on x86-64 CPUs with PCLMULQDQ, and
slicing-by-8 tables everywhere else (and for the last bytes under 16). Both are compared with
crcmod at every length up to 300, at larger random lengths, chained at random split points and
over unaligned views.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from wal import _scan
from wal.format import CRC64_CHECK, crcmod_crc64

SCAN_SOURCE = Path(__file__).resolve().parent.parent / "wal" / "_scan.c"

# CRC-64/NVME's polynomial in normal form, its x^64 term included.
POLY = 0x1AD93D23594C93659
MASK64 = (1 << 64) - 1

KERNELS: dict[str, Callable[..., int]] = {
    "crc64nvme": _scan.crc64nvme,  # folding where the CPU can, as the log runs it
    "tables": _scan._crc64nvme_table,
}
kernels = pytest.mark.parametrize("crc", list(KERNELS.values()), ids=list(KERNELS))


# -- the constants, derived from the polynomial ------------------------------------------------


def reflect64(value: int) -> int:
    return int(f"{value:064b}"[::-1], 2)


def poly_divmod(dividend: int, divisor: int = POLY) -> tuple[int, int]:
    """Quotient and remainder of carry-less (GF(2)) polynomial division."""
    quotient, degree = 0, divisor.bit_length() - 1
    while dividend.bit_length() - 1 >= degree:
        shift = dividend.bit_length() - 1 - degree
        quotient |= 1 << shift
        dividend ^= divisor << shift
    return quotient, dividend


def times_x_to(n: int) -> int:
    """The constant that, carry-less multiplied with a reflected 64-bit value, multiplies it by
    x^n mod P: the product lands one bit short of the 128-bit reflected position, so the
    constant is x^(n - 1) mod P, reflected."""
    return reflect64(poly_divmod(1 << (n - 1))[1])


def expected_constants() -> dict[str, list[int]]:
    # FOLD[i] moves a 16-byte block d = 128 * (i + 1) bits forward: its first eight bytes (the
    # register's low half) by d + 64 bits, its last eight by d.
    fold = [[times_x_to(d + 64), times_x_to(d)] for d in range(128, 1025, 128)]
    mu = reflect64(poly_divmod(1 << 128)[0] & MASK64)  # Barrett's floor(x^128 / P), x^64 term apart
    return {"FOLD": [value for pair in fold for value in pair], "CRC64_MU": [mu]}


def constants_in_source() -> dict[str, list[int]]:
    text = SCAN_SOURCE.read_text()
    block = re.search(r"/\* crc-constants:(.*?)/\* end crc-constants \*/", text, re.S)
    assert block, "wal/_scan.c lost its crc-constants block"
    fold = re.search(r"FOLD\[8\]\[2\] = \{(.*?)\};", block.group(1), re.S)
    mu = re.search(r"#define CRC64_MU (0x[0-9A-F]+)ULL", block.group(1))
    assert fold and mu
    return {
        "FOLD": [int(value, 16) for value in re.findall(r"(0x[0-9A-F]+)ULL", fold.group(1))],
        "CRC64_MU": [int(mu.group(1), 16)],
    }


def test_the_folding_constants_are_the_ones_the_polynomial_gives() -> None:
    assert constants_in_source() == expected_constants()
    poly = re.search(r"#define CRC64_POLY (0x[0-9A-F]+)ULL", SCAN_SOURCE.read_text())
    assert poly and int(poly.group(1), 16) == reflect64(POLY & MASK64) == 0x9A6C9329AC4BC9B5


# -- the function ------------------------------------------------------------------------------


@kernels
def test_check_value(crc: Callable[..., int]) -> None:
    assert crc(b"123456789") == CRC64_CHECK == 0xAE8B14860A799888
    assert crc(b"") == 0
    assert crc(b"", 12345) == 12345
    assert crc(b"6789", crc(b"12345")) == CRC64_CHECK


@kernels
@settings(max_examples=30, deadline=None)
@given(data=st.binary(min_size=300 + 15, max_size=300 + 15), start=st.binary(max_size=40))
def test_every_length_up_to_300_and_every_alignment(
    crc: Callable[..., int], data: bytes, start: bytes
) -> None:
    previous = crcmod_crc64(start)
    view = memoryview(data)
    for length in range(301):
        expected = crcmod_crc64(data[:length])
        assert crc(data[:length]) == expected, length
        assert crc(data[:length], previous) == crcmod_crc64(start + data[:length]), length
    for offset in range(1, 16):  # views at odd addresses, which the folding loads must allow
        for length in (15, 16, 17, 127, 128, 129, 200, 300):
            assert crc(view[offset : offset + length]) == crcmod_crc64(data[offset : offset + length])


@kernels
@settings(max_examples=40, deadline=None)
@given(size=st.integers(301, 1 << 18), rng=st.randoms(use_true_random=False))
@example(size=128 * 5 + 15, rng=random.Random(1))  # lanes, blocks after them, and a tail
@example(size=1 << 20, rng=random.Random(2))
def test_larger_buffers_chained_at_any_split(crc: Callable[..., int], size: int, rng: random.Random) -> None:
    data = rng.randbytes(size)
    split = rng.randint(0, size)
    expected = crcmod_crc64(data)
    assert crc(data) == expected
    assert crc(data[split:], crc(data[:split])) == expected
    assert crc(bytearray(data)) == expected
    assert crc(memoryview(data)[split:]) == crcmod_crc64(data[split:])


@settings(max_examples=100)
@given(st.binary(max_size=5000), st.binary(max_size=50))
def test_it_agrees_with_awscrt(data: bytes, start: bytes) -> None:
    awscrt_crc64 = pytest.importorskip("awscrt.checksums").crc64nvme
    previous = awscrt_crc64(start)
    assert _scan.crc64nvme(data, previous) == awscrt_crc64(data, previous)


def test_bad_arguments_raise() -> None:
    with pytest.raises(TypeError):
        _scan.crc64nvme("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _scan.crc64nvme()  # type: ignore[call-arg]
    with pytest.raises(OverflowError):
        _scan.crc64nvme(b"x", 1 << 64)
    with pytest.raises(OverflowError):
        _scan.crc64nvme(b"x", -1)
    with pytest.raises(BufferError):
        _scan.crc64nvme(memoryview(b"abcd")[::2])  # not contiguous
