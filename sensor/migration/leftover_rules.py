"""PortSentry's leftover firewall rules, read as data: ``iptables-save`` and ``nft -j list ruleset``.

KILL_RUN_CMD in the how-tos inserted iptables DROP/REJECT (and rate-limited LOG)
rules for each blocked address; on nf_tables hosts they may also be native nft
rules.  A rule is only recognised when it names an address PortSentry recorded
(:mod:`sensor.migration.leftovers`) and has the exact shape its templates
produce; anything else is not ours to touch.  Pure: text in, rules out.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sensor.migration.leftovers import canonical


@dataclass(frozen=True)
class IptablesRule:
    """An iptables rule of the shape PortSentry's KILL_* templates insert."""

    family: int
    table: str
    chain: str
    spec: tuple[str, ...]
    address: str

    def delete_argv(self) -> list[str]:
        """The ``iptables -D`` command that removes exactly this rule."""
        tool = "iptables" if self.family == 4 else "ip6tables"
        return [tool, "-t", self.table, "-D", self.chain, *self.spec]

    def describe(self) -> str:
        """Human-readable form, as ``iptables-save`` prints it."""
        tool = "iptables" if self.family == 4 else "ip6tables"
        return f"{tool} -t {self.table} -A {self.chain} {shlex.join(self.spec)}"


@dataclass(frozen=True)
class IptablesDump:
    """Parsed ``iptables-save``: candidate rules, tables seen, nf_tables backend."""

    rules: tuple[IptablesRule, ...]
    tables: tuple[str, ...]
    nft_backend: bool


# Options PortSentry's templates produce (long forms folded onto short ones).
_IPT_OPTIONS = {"-s": "-s", "--source": "-s", "-i": "-i", "--in-interface": "-i", "-j": "-j",
                "--jump": "-j", "-m": "-m", "--match": "-m", "--reject-with": "--reject-with",
                "--limit": "--limit", "--limit-burst": "--limit-burst",
                "--log-prefix": "--log-prefix", "--log-level": "--log-level"}
# The how-tos' LOG rule rate-limits; any other match (-m comment included) is someone else's rule.
_IPT_MATCHES = {"limit"}
DEFAULT_CHAINS = frozenset({("filter", "INPUT")})
_IPTABLES = re.compile(r"^(?:.*/)?ip6?tables(?:-legacy|-nft)?$")
_IPT_CHAIN_OPTIONS = ("-I", "--insert", "-A", "--append")


def kill_chains(kill_run_cmd: str) -> frozenset[tuple[str, str]]:
    """(table, chain) pairs the iptables commands of a KILL_RUN_CMD insert into; INPUT if none.

    fail2ban's own ``f2b-*`` chains never count, even if named.
    """
    lexer = shlex.shlex(kill_run_cmd, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:
        return DEFAULT_CHAINS
    found: set[tuple[str, str]] = set()
    command: list[str] = []
    for token in [*tokens, ";"]:
        if token and all(c in "();&|" for c in token):
            found |= _command_chains(command)
            command = []
        else:
            command.append(token)
    return frozenset(found) or DEFAULT_CHAINS


def _command_chains(command: list[str]) -> set[tuple[str, str]]:
    """(table, chain) of one ``iptables -I CHAIN ...`` command."""
    if not command or _IPTABLES.match(command[0]) is None:
        return set()
    table, chains = "filter", []
    for option, value in itertools.pairwise(command[1:]):
        if option in ("-t", "--table"):
            table = value
        elif option in _IPT_CHAIN_OPTIONS:
            chains.append(value)
    return {(table, chain) for chain in chains if not chain.startswith("f2b-")}


def _ipt_options(tokens: list[str]) -> dict[str, list[str]] | None:
    """Option -> values for a rule, or None if it has anything PortSentry never wrote."""
    options: dict[str, list[str]] = {}
    index = 0
    while index < len(tokens):
        option = tokens[index]
        if option not in _IPT_OPTIONS or index + 1 >= len(tokens):
            return None
        options.setdefault(_IPT_OPTIONS[option], []).append(tokens[index + 1])
        index += 2
    return options


def _ours(options: dict[str, list[str]]) -> bool:
    """True for ``-s X -j DROP|REJECT`` and the how-tos' ``-s X -m limit -j LOG 'Portsentry...'``."""
    target = options.get("-j", [""])[-1]
    if any(m not in _IPT_MATCHES for m in options.get("-m", [])) or len(options.get("-s", [])) != 1:
        return False
    if target in ("DROP", "REJECT"):
        return "--log-prefix" not in options and "--limit" not in options
    prefix = " ".join(options.get("--log-prefix", []))
    return target == "LOG" and "portsentry" in prefix.lower()


def parse_iptables_save(text: str, family: int, recorded: Iterable[str],
                        chains: Iterable[tuple[str, str]] = DEFAULT_CHAINS) -> IptablesDump:
    """Rules in ``iptables-save`` output that PortSentry inserted for recorded addresses.

    Only rules in ``chains`` ((table, chain) pairs from :func:`kill_chains`) count; never fail2ban's
    ``f2b-*`` chains.
    """
    known = set(recorded)
    allowed = {(table, chain) for table, chain in chains if not chain.startswith("f2b-")}
    rules: list[IptablesRule] = []
    tables: list[str] = []
    table = "filter"
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            tables.append(table)
            continue
        if not line.startswith("-A "):
            continue
        try:
            tokens = shlex.split(line)
        except ValueError:
            continue
        if len(tokens) < 2 or (table, tokens[1]) not in allowed:
            continue
        options = _ipt_options(tokens[2:])
        if options is None or not _ours(options):
            continue
        address = canonical(options["-s"][0])
        if address is not None and address in known:
            rules.append(IptablesRule(family, table, tokens[1], tuple(tokens[2:]), address))
    return IptablesDump(tuple(rules), tuple(tables), "(nf_tables)" in text[:300])


@dataclass(frozen=True)
class NftRule:
    """A native nftables rule ``ip[6] saddr X [counter] drop|reject``."""

    family: str
    table: str
    chain: str
    handle: int
    address: str
    verdict: str

    def delete_argv(self) -> list[str]:
        """The ``nft delete rule`` command that removes exactly this rule."""
        return ["nft", "delete", "rule", self.family, self.table, self.chain, "handle", str(self.handle)]

    def describe(self) -> str:
        """Human-readable form, close to ``nft list ruleset``."""
        field = "ip6" if ":" in self.address else "ip"
        return (f"nft {self.family} {self.table} {self.chain}: {field} saddr {self.address} "
                f"{self.verdict} (handle {self.handle})")


def _nft_saddr(expr: dict[str, Any]) -> str | None:
    """The address of a ``ip/ip6 saddr == ADDR`` match, else None."""
    match = expr.get("match")
    if not isinstance(match, dict) or match.get("op") != "==":
        return None
    payload = match.get("left", {}).get("payload", {}) if isinstance(match.get("left"), dict) else {}
    if payload.get("field") != "saddr" or payload.get("protocol") not in ("ip", "ip6"):
        return None
    right = match.get("right")
    return canonical(right) if isinstance(right, str) else None


def _nft_shape(exprs: list[dict[str, Any]]) -> tuple[str, str] | None:
    """(address, verdict) when a rule is exactly saddr match, optional counter, drop/reject."""
    body = [e for e in exprs if "counter" not in e]
    if len(body) != 2:
        return None
    address = _nft_saddr(body[0])
    verdict = next(iter(body[1]), "")
    if address is None or verdict not in ("drop", "reject"):
        return None
    return address, verdict


def parse_nft_ruleset(json_text: str, recorded: Iterable[str],
                      skip_tables: Iterable[tuple[str, str]] = ()) -> list[NftRule]:
    """Native nft rules blocking recorded addresses; ``skip_tables`` are iptables-nft's own."""
    known = set(recorded)
    skip = set(skip_tables)
    data: Any = json.loads(json_text) if json_text.strip() else {"nftables": []}
    found: list[NftRule] = []
    for item in data.get("nftables", []):
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict) or (rule.get("family"), rule.get("table")) in skip:
            continue
        if "comment" in rule or str(rule.get("table", "")).startswith("f2b-") \
                or str(rule.get("chain", "")).startswith("f2b-"):
            continue  # an admin's annotated rule, or fail2ban's own
        shape = _nft_shape(rule.get("expr", []))
        if shape is None or shape[0] not in known:
            continue
        found.append(NftRule(str(rule["family"]), str(rule["table"]), str(rule["chain"]),
                             int(rule["handle"]), shape[0], shape[1]))
    return found
