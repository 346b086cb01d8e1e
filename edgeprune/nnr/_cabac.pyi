"""Type stub of the C extension ``_cabac`` (``_cabac.c``): the narrow binding between the Python
bitstream code and the CABAC core. Arrays are numpy arrays of the dtype named; see the C docstrings."""

import numpy as np

MAX_GTX_FLAGS: int
MAX_ABS_LEVEL: int

class CabacError(Exception): ...

def encode(
    levels: np.ndarray,
    rows: int,
    width: int,
    *,
    dq: bool,
    profile: bool = ...,
    row_skip: bool = ...,
    estimator_search: bool = ...,
    num_gtx_flags: int = ...,
    qp_offset: int | None = ...,
    qp_density: int = ...,
    scan_order: int = ...,
    entry_points: np.ndarray | None = ...,
) -> tuple[bytes, int]: ...
def decode(
    payload: bytes,
    out: np.ndarray,
    rows: int,
    width: int,
    *,
    dq: bool,
    profile: bool = ...,
    num_gtx_flags: int = ...,
    has_qp_offset: bool = ...,
    qp_density: int = ...,
    scan_order: int = ...,
    entry_points: np.ndarray | None = ...,
    block_rows: tuple[int, int] | None = ...,
) -> tuple[int | None, int]: ...
def quantize(
    weights: np.ndarray, out: np.ndarray, step: float, *, dq: bool, rdoq: float = ..., num_gtx_flags: int = ...
) -> None: ...
def block_rows(rows: int, scan_order: int) -> int: ...
def step_size(qp: int, qp_density: int) -> float: ...
