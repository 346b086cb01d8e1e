"""Mutation fuzzing of the whole .nnr reader (bitstream -> tensors -> topology -> rebuilt model).

Shared by the bounded test (tests/test_safety_fuzz.py) and the long run
(benchmarks/fuzz_nnr_reader.py). A case *escapes* when ``decode_model`` raises anything but an
:class:`EdgepruneError`; the fix for an escape is a check in the reader, never a wider except.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from edgeprune.errors import EdgepruneError
from edgeprune.nnr.bitstream import UnitType, parse_units, write_topology_unit
from edgeprune.nnr.model import ModelEncodeOptions, decode_model, encode_model
from edgeprune.nnr.tensors import pack_topology_text, topology_json

HOSTILE_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    1 << 31,
    1 << 62,
    -(1 << 62),
    1e308,
    -0.0,
    "",
    "#0",
    "@x",
    "&0",
    "=x" * 40,
    [],
    {},
    [[]],
    [1, 2, 3],
    [65536] * 4,
    {"float": "nan"},
    {"dtype": "float64"},
    "os:system",
    ["py.getitem", ["#0", 0]],
]


def seed_streams() -> list[bytes]:
    """Small real streams: a squeeze-and-excitation net (conv, BN, mul, sigmoid) and a 1-D conv net."""
    from edgeprune import models

    torch.manual_seed(0)
    streams = []
    for model, shape in ((models.SENet(width=4), (1, 3, 8, 8)), (models.conv1d_net(length=16), (1, 1, 16))):
        streams.append(encode_model(model.eval(), torch.zeros(shape), ModelEncodeOptions(threads=1)).data)
    return streams


def _tpl(data: bytes):  # noqa: ANN202 - the parsed TPL unit
    return next(u for u in parse_units(data) if u.unit_type == UnitType.TPL)


def _replace(data: bytes, unit, new: bytes) -> bytes:  # noqa: ANN001
    return data[: unit.offset] + new + data[unit.offset + unit.size :]


def _mutate_json(value: Any, rng: random.Random, depth: int = 0) -> Any:
    """Replace, drop or duplicate one randomly chosen value somewhere inside ``value``."""
    if isinstance(value, dict) and value and depth < 8 and rng.random() < 0.8:
        key = rng.choice(sorted(value))
        out = dict(value)
        roll = rng.random()
        if roll < 0.1:
            del out[key]
        elif roll < 0.2:
            out[key] = rng.choice(HOSTILE_VALUES)
        else:
            out[key] = _mutate_json(value[key], rng, depth + 1)
        return out
    if isinstance(value, list) and value and depth < 8 and rng.random() < 0.8:
        items = list(value)
        i = rng.randrange(len(items))
        roll = rng.random()
        if roll < 0.1:
            del items[i]
        elif roll < 0.15:
            items.insert(i, items[i])
        else:
            items[i] = _mutate_json(items[i], rng, depth + 1)
        return items
    if isinstance(value, int) and not isinstance(value, bool) and rng.random() < 0.5:
        return rng.choice([value + 1, value - 1, -value, value * 65536, 0, (1 << 63) - 1])
    return rng.choice(HOSTILE_VALUES)


def bit_flips(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncation(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def unit_size(data: bytes, rng: random.Random) -> bytes:
    """Rewrite the size field of one unit (short or long form) with a nearby or absurd value."""
    units = parse_units(data)
    unit = rng.choice(units)
    header = 4 if data[unit.offset] >> 7 else 2
    size = rng.choice([0, 1, unit.size - 1, unit.size + 1, unit.size * 2, (1 << (8 * header - 1)) - 1])
    field = (size & ((1 << (8 * header - 1)) - 1)) | (data[unit.offset] >> 7 << (8 * header - 1))
    return data[: unit.offset] + field.to_bytes(header, "big") + data[unit.offset + header :]


def _with_topology(data: bytes, topology: Any) -> bytes:
    """``data`` with a TPL unit that packs ``topology`` as the encoder does (whatever JSON value it is)."""
    return _with_text(data, json.dumps(topology))


def _with_text(data: bytes, text: str) -> bytes:
    """``data`` with a TPL unit that packs ``text`` (JSON or not) as the encoder packs its JSON."""
    return _replace(data, _tpl(data), write_topology_unit(pack_topology_text(text)))


# What json.dumps never writes: numbers past Python's 4,300-digit int limit or float range, bare
# NaN/Infinity, lone surrogates (invalid UTF-8 once packed), stray brackets and quotes.
TEXT_EDITS = ["1" * 5000, "-" + "9" * 4400, "1e999999", "NaN", "-Infinity", "\\ud800", "\ud800", "]", "{", '"', ","]


def json_text_mutation(data: bytes, rng: random.Random) -> bytes:
    """Edit the topology's JSON text itself at a random place (a valid packed unit around invalid JSON)."""
    text = topology_json(_tpl(data).fields["topology_data"])
    i = rng.randrange(len(text))
    edit = rng.choice(TEXT_EDITS)
    return _with_text(data, text[:i] + edit + text[i + rng.randint(0, 3) :])


def json_mutation(data: bytes, rng: random.Random) -> bytes:
    """Mutate the topology JSON and write a well-formed TPL unit (the NDUs' CRC stays valid)."""
    topology = json.loads(topology_json(_tpl(data).fields["topology_data"]))
    for _ in range(rng.randint(1, 3)):
        topology = _mutate_json(topology, rng)
    return _with_topology(data, topology)


def payload_with_valid_crc(data: bytes, rng: random.Random) -> bytes:
    """Flip bits inside one NDU and update the CRC in the topology, so the CABAC decoder sees them."""
    units = parse_units(data)
    ndus = [u for u in units if u.unit_type == UnitType.NDU]
    unit = rng.choice(ndus)
    body = bytearray(data[unit.offset : unit.offset + unit.size])
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(body) - len(unit.payload), len(body))
        body[i] ^= 1 << rng.randrange(8)
    mutated = _replace(data, unit, bytes(body))
    topology = json.loads(topology_json(_tpl(mutated).fields["topology_data"]))
    ndus = [u for u in parse_units(mutated) if u.unit_type == UnitType.NDU]
    topology["crc32"] = zlib.crc32(b"".join(mutated[u.offset : u.offset + u.size] for u in ndus))
    return _with_topology(mutated, topology)


MUTATORS: list[Callable[[bytes, random.Random], bytes]] = [
    bit_flips,
    truncation,
    unit_size,
    json_mutation,
    json_text_mutation,
    payload_with_valid_crc,
]


def cases(seeds: list[bytes], n: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """``n`` mutated streams, deterministic for ``seed``."""
    rng = random.Random(seed)
    for _ in range(n):
        mutate = rng.choice(MUTATORS)
        yield mutate.__name__, mutate(rng.choice(seeds), rng)


def run_case(data: bytes) -> str:
    """'ok', 'refused', or 'escape: <type>: <message>'."""
    try:
        model, example, _ = decode_model(data)
        with torch.no_grad():
            model(example)
        return "ok"
    except EdgepruneError as exc:
        if "\n" in str(exc):
            return f"escape: multi-line message: {exc!s:.200}"
        return "refused"
    except Exception as exc:  # noqa: BLE001 - exactly what the fuzzer is looking for
        return f"escape: {type(exc).__name__}: {str(exc)[:200]}"
