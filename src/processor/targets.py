"""Webhook targets: which URLs a subscription may send its jobs to.

A target is parsed as a URL (pydantic's, the WHATWG parser browsers use), and
stored in the form it was checked in: the router parses what is stored, so
what it calls is what was checked here (``http://0xA9FEA9FE/`` is stored as
``http://169.254.169.254/``, and refused as such). Text a parser would
silently repair (spaces, control characters, ``http:///path``, whose host a
WHATWG parser takes from the path) is refused instead.

Which hosts are allowed is a policy (``FC_TARGET_POLICY``):

- ``internal``, the default: any host but link-local addresses
  (``169.254.0.0/16``, ``fe80::/10``) and the cloud metadata address
  ``fd00:ec2::254``, since the router would otherwise call the metadata
  service of the machine it runs on. Private and loopback addresses and
  single-label names (``http://billing/hooks``) are allowed: platforms send
  webhooks to their own services.
- ``public``: only names with a dot and public addresses. Names are not
  resolved here (the router resolves them when it calls, and must check
  what they resolve to).

``FC_TARGET_NETWORKS`` lists networks allowed whatever the policy, for
example ``10.20.0.0/16`` with ``public``, or ``169.254.169.254/32``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import AnyHttpUrl, TypeAdapter, ValidationError

MAX_TARGET_LENGTH = 2048  # characters, as many HTTP clients and proxies accept
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
METADATA = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
METADATA_HOSTS = (ipaddress.ip_address("fd00:ec2::254"),)

_URL = TypeAdapter(AnyHttpUrl)
# A scheme, "://" and at least one character of authority: WHATWG parsers skip
# any number of slashes after http:, which would take a host from the path.
_AUTHORITY = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#\\]")
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\x9f]")  # controls and spaces, which parsers drop or reject


@dataclass(frozen=True)
class TargetPolicy:
    hosts: Literal["internal", "public"] = "internal"
    networks: tuple[Network, ...] = ()  # allowed whatever ``hosts`` says

    def refusal(self, host: str) -> str | None:
        """Why ``host`` (as the URL parser gives it) may not be called; None if it may."""
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            if self.hosts == "public" and "." not in host.strip("."):
                return f"host {host!r} is a single-label name, and FC_TARGET_POLICY is public"
            return None
        if any(address in network for network in self.networks):
            return None
        if address in METADATA_HOSTS or any(address in network for network in METADATA):
            return (
                f"host {host} is a link-local or cloud metadata address; "
                "allow it explicitly in FC_TARGET_NETWORKS if it is meant"
            )
        if self.hosts == "public" and not address.is_global:
            return f"host {host} is not a public address, and FC_TARGET_POLICY is public"
        return None


_configured = {"policy": TargetPolicy()}


def configure(policy: TargetPolicy) -> None:
    """Set the policy of this process: subscriptions are checked by it wherever
    they are validated, by the API and by the processor, which refuses a stored
    subscription that breaks it as invalid."""
    _configured["policy"] = policy


def current() -> TargetPolicy:
    return _configured["policy"]


def parse_networks(text: str) -> tuple[Network, ...]:
    """``FC_TARGET_NETWORKS``: networks in CIDR form, separated by commas."""
    try:
        return tuple(ipaddress.ip_network(part.strip()) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise ValueError(f"must be networks in CIDR form separated by commas ({error})") from None


def checked_target(text: str) -> str:
    """The target in normal form, or ``ValueError`` saying what is wrong with it."""
    if len(text) > MAX_TARGET_LENGTH:
        raise ValueError(f"is {len(text)} characters long; at most {MAX_TARGET_LENGTH} are allowed")
    if forbidden := _FORBIDDEN.search(text):
        raise ValueError(f"holds {forbidden.group()!r} at offset {forbidden.start()}; encode it (%XX)")
    if not _AUTHORITY.match(text):
        raise ValueError("must be an http:// or https:// URL with a host")
    try:
        url = _URL.validate_python(text)
    except ValidationError as error:
        problem = error.errors(include_url=False)[0]["msg"].removeprefix("Input should be a valid URL, ")
        raise ValueError(f"is not an http:// or https:// URL: {problem}") from None
    if url.port == 0:
        raise ValueError("port 0 cannot be called; use a port from 1 to 65535")
    if refusal := current().refusal(url.host or ""):
        raise ValueError(refusal)
    return str(url)
