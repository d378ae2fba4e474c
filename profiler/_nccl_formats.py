"""NCCL enums and line formats, 2.4 to current, in one place (the parsers only use these)."""

from __future__ import annotations

import re

__all__ = ["DTYPES", "REDOPS", "OP_NAMES", "ALGOS", "PROTOS", "PREFIX_RE", "COLL_RE", "TUNING_RE",
           "INIT_RE", "CHANNELS_RE", "VERSION_RE", "RING_RE", "CHANNEL_RING_RE", "TREES_RE",
           "CONNECTION_RE", "NETWORK_RE", "NET_USING_RE", "NET_PLUGIN_RE", "NVLS_RE",
           "DRIVER_RE", "GATHER_LIKE"]

#: ncclDataType_t -> (torch-style name, element bytes). bfloat16 since 2.10, fp8 since 2.24.
DTYPES: dict[int, tuple[str, int]] = {
    0: ("int8", 1), 1: ("uint8", 1), 2: ("int32", 4), 3: ("uint32", 4), 4: ("int64", 8),
    5: ("uint64", 8), 6: ("float16", 2), 7: ("float32", 4), 8: ("float64", 8),
    9: ("bfloat16", 2), 10: ("float8_e4m3fn", 1), 11: ("float8_e5m2", 1),
}
#: ncclRedOp_t (avg since 2.10; larger values are user-defined PreMulSum ops).
REDOPS = {0: "sum", 1: "prod", 2: "max", 3: "min", 4: "avg"}
#: NCCL's collective names -> commscope's torch-style `op`.
OP_NAMES = {
    "AllReduce": "all_reduce", "AllGather": "all_gather", "ReduceScatter": "reduce_scatter",
    "Broadcast": "broadcast", "Reduce": "reduce", "Send": "send", "Recv": "recv",
    "AllToAll": "all_to_all", "AlltoAll": "all_to_all", "Gather": "gather", "Scatter": "scatter",
}
#: Ops whose nccl-tests size S is count x elem x nranks (NCCL logs the per-rank count).
GATHER_LIKE = frozenset({"all_gather", "reduce_scatter", "gather", "scatter"})
#: Numeric algorithm / protocol ids of the older tuning lines.
ALGOS = {0: "TREE", 1: "RING", 2: "COLLNET_DIRECT", 3: "COLLNET_CHAIN", 4: "NVLS", 5: "NVLS_TREE",
         6: "PAT"}
PROTOS = {0: "LL", 1: "LL128", 2: "SIMPLE"}

_COLLS = "|".join(sorted(OP_NAMES, key=len, reverse=True))

# `host:pid:tid [dev] NCCL INFO ` (or WARN). Searched backwards from the NCCL marker, so a
# launcher's or logger's prefix before it, or a torn record glued in front, does not matter.
PREFIX_RE = re.compile(r"([^\s:\[\]]+):(\d+):(\d+) \[(\d+)\] \Z")

COLL_RE = re.compile(
    rf"({_COLLS}): opCount (?P<opcount>[0-9a-fA-F]+) sendbuff (?P<sendbuff>\S+) "
    r"recvbuff (?P<recvbuff>\S+) count (?P<count>\d+) datatype (?P<datatype>\d+) "
    r"op (?P<redop>\d+) root (?P<root>-?\d+) comm (?P<comm>\S+)"
    r"(?: \[nranks=(?P<nranks>\d+)\])? stream (?P<stream>\S+)")

# Newer: `AllReduce: 8589934592 Bytes -> Algo RING proto SIMPLE channel{Lo..Hi}={0..23}`;
# older: `AllReduce: 256 Bytes -> Algo 0 proto 0 time 25.2` (numeric ids, maybe no coll name).
TUNING_RE = re.compile(
    rf"(?:({_COLLS}): )?(?P<bytes>\d+) Bytes -> Algo (?P<algo>\S+) proto (?P<proto>\S+)"
    r"(?: time (?P<time>[\d.]+))?(?:.*?channel\{Lo\.\.Hi\}=\{(?P<lo>\d+)\.\.(?P<hi>\d+)\})?")

# `comm 0x.. rank R nranks N cudaDev D [nvmlDev M] [busId B] [commId 0x..] - Init COMPLETE`,
# also as `ncclCommInitRank[Config] comm ...` and the `Init START` twin.
INIT_RE = re.compile(
    r"(?:(?P<fn>ncclCommInit\w*|ncclCommSplit|ncclCommDup) )?comm (?P<comm>0x[0-9a-fA-F]+) "
    r"rank (?P<rank>\d+) nranks (?P<nranks>\d+) cudaDev (?P<cuda_dev>-?\d+)"
    r"(?: nvmlDev (?P<nvml_dev>\d+))?(?: busId (?P<bus_id>[0-9a-fA-F]+))?"
    r"(?: commId (?P<comm_id>0x[0-9a-fA-F]+))?.*?- Init (?P<phase>START|COMPLETE)")

CHANNELS_RE = re.compile(
    r"(?P<coll>\d+) coll channels,(?: (?P<collnet>\d+) collnet channels,)?"
    r"(?: (?P<nvls>\d+) nvls channels,)? (?P<p2p>\d+) p2p channels,"
    r" (?P<p2p_peer>\d+) p2p channels per peer")
VERSION_RE = re.compile(r"NCCL version (?P<version>\S+)")
RING_RE = re.compile(r"Ring (?P<channel>\d+) : (?P<path>[\d >-]+)")
CHANNEL_RING_RE = re.compile(r"Channel (?P<channel>\d+)/(?P<nchannels>\d+) : (?P<path>[\d ]+)$")
TREES_RE = re.compile(r"Trees (?P<trees>(?:\[\d+\] \S+ ?)+)")
CONNECTION_RE = re.compile(
    r"Channel (?P<channel>\d+)(?:/\d+)? : (?P<src>\d+)\[\S*?\] -> (?P<dst>\d+)\[\S*?\]"
    r"(?: \[(?P<dir>send|receive)\])? via (?P<transport>[A-Za-z0-9]+)(?P<detail>/\S*)?")
NETWORK_RE = re.compile(r"Using network (?P<network>\S+)")
NET_USING_RE = re.compile(r"NET/(?P<net>\w+) ?: Using (?P<devices>.+)")
NET_PLUGIN_RE = re.compile(r"NET/Plugin ?: (?P<text>.+)")
NVLS_RE = re.compile(r"NVLS (?P<text>.+)")
DRIVER_RE = re.compile(r"cudaDriverVersion (?P<driver>\d+)")
