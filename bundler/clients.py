"""Who a client is: the key its limits (bundler.limits) and its share of popularity
(bundler.combos) are counted under.

It is the connection's address, unless that address is a trusted proxy's
(``--trusted-proxies``): then the address the proxy says it forwarded for, read from
``--client-header`` (``X-Forwarded-For`` by default, ``Forwarded``, or a CDN's own
single-address header such as ``CF-Connecting-IP``). A chain is read from its right
end, skipping trusted proxies: the entries to the left of the first untrusted one were
written by the client itself and prove nothing. From an untrusted address the header is
never read, so nobody can choose whom the service takes them for.

An IPv6 client is its /64: one host is usually given a whole /64, so keying by the full
address would let it be 2**64 clients.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

UNKNOWN = "unknown"  # no usable peer address (a Unix socket, a test transport)


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """``CIDR,CIDR,...`` (a bare address is its /32 or /128); ValueError names a bad one."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if not item or item == "none":
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an address or CIDR network") from None
    return tuple(networks)


class ClientIds:
    def __init__(self, trusted_proxies: str, header: str) -> None:
        self.trusted = parse_networks(trusted_proxies)
        self.header = header.strip().lower()

    def of(self, peer: str | None, headers: Mapping[str, str]) -> str:
        """The client's key for a request from ``peer`` with ``headers``."""
        if not peer:
            return UNKNOWN
        if not self.trusted and ":" not in peer:
            return peer  # the common case, without parsing: an IPv4 peer, no proxies
        address = _address(peer)
        if address is None:
            return UNKNOWN
        if self._is_trusted(address):
            for hop in reversed(self._chain(headers)):
                forwarded = _address(hop)
                if forwarded is None:  # garbage: the last trusted hop is all we know
                    break
                address = forwarded
                if not self._is_trusted(forwarded):
                    break
        return _key(address)

    def _is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self.trusted)

    def _chain(self, headers: Mapping[str, str]) -> list[str]:
        """The addresses the header lists, client first; every line of it, in order."""
        getall = getattr(headers, "getall", None)
        lines = getall(self.header, []) if getall else [headers.get(self.header, "")]
        hops = [hop.strip() for line in lines for hop in line.split(",") if hop.strip()]
        if self.header != "forwarded":
            return hops
        # RFC 7239: for=192.0.2.60;proto=http, for="[2001:db8::17]:4711"
        found = []
        for element in hops:
            for pair in element.split(";"):
                name, _, value = pair.partition("=")
                if name.strip().lower() == "for":
                    found.append(value.strip().strip('"'))
        return found


def _address(text: str) -> IPAddress | None:
    """An address as a header or a peer writes it: bare, [v6]:port, v4:port."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _key(address: IPAddress) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
